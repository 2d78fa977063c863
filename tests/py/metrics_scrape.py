"""Scrape a Porthole /metrics endpoint as Prometheus would and print what
Prometheus' own parser read, as JSON, for the Rust tests (tests/src/metrics.rs).

    metrics_scrape.py URL

The endpoint serves OpenMetrics text (its Content-Type says so), so it is
parsed with prometheus_client.openmetrics.parser, which also checks the
format (the closing # EOF, counter _total samples, unit suffixes). Output:
{"content_type": ..., "families": {name: [type, unit]},
 "samples": [[name, {label: value}, value], ...]}; non-finite values are null.
"""
import json
import math
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main():
    url = sys.argv[1]
    with urllib.request.urlopen(url, timeout=10) as resp:
        content_type = resp.headers.get("Content-Type", "")
        text = resp.read().decode("utf-8")
    families = {}
    samples = []
    for family in text_string_to_metric_families(text):
        families[family.name] = [family.type, family.unit]
        for s in family.samples:
            value = s.value if math.isfinite(s.value) else None
            samples.append([s.name, s.labels, value])
    json.dump({"content_type": content_type, "families": families, "samples": samples},
              sys.stdout, allow_nan=False)


if __name__ == "__main__":
    main()
