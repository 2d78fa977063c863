//! Scraping a service's `/metrics` the way Prometheus does, and reading it
//! with Prometheus' own parser (`prometheus_client`'s OpenMetrics parser,
//! from `.venv-clients`, run by `tests/py/metrics_scrape.py`), so tests check
//! what a real scraper reads rather than our own idea of the format.
//!
//! Without that venv (`scripts/venv-clients.sh` makes it) [`parser`] prints
//! a notice and tests skip, unless `PORTHOLE_REQUIRE_PEERS` is set (CI).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::ConsoleSvc;

/// The Python that has `prometheus_client`, or `None` with a notice.
pub fn parser() -> Option<PathBuf> {
    let venv = std::env::var_os("PORTHOLE_VENV_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-clients"));
    let python = venv.join("bin/python");
    let usable = std::process::Command::new(&python)
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .output()
        .is_ok_and(|o| o.status.success());
    if usable {
        return Some(python);
    }
    eprintln!(
        "notice: {} has no prometheus_client; skipping this metrics test (run scripts/venv-clients.sh)",
        venv.display()
    );
    assert!(
        std::env::var_os("PORTHOLE_REQUIRE_PEERS").is_none(),
        "a test peer is missing and PORTHOLE_REQUIRE_PEERS is set (CI): see the notice above"
    );
    None
}

/// One scrape as the parser read it.
#[derive(Debug, Deserialize)]
pub struct Scrape {
    pub content_type: String,
    /// Family name → (type, unit).
    pub families: HashMap<String, (String, String)>,
    samples: Vec<(String, BTreeMap<String, String>, Option<f64>)>,
}

impl Scrape {
    /// Scrape `url` (`http://host:port/metrics`) with `python`.
    pub async fn take(python: &Path, url: &str) -> Result<Scrape> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/metrics_scrape.py");
        let mut cmd = tokio::process::Command::new(python);
        cmd.arg(&script).arg(url).kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .with_context(|| format!("scraping {url} took over 30 s"))??;
        if !out.status.success() {
            bail!(
                "scraping {url}: the parser refused it: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).context("the scrape script's JSON")
    }

    /// The type of family `name` (`counter`, `gauge`, `histogram`).
    pub fn family_type(&self, name: &str) -> Option<&str> {
        self.families.get(name).map(|(t, _)| t.as_str())
    }

    /// The value of sample `name` whose labels are exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .with_context(|| format!("no sample {name}{want:?} in the scrape"))?
            .2
            .with_context(|| format!("{name}{want:?} is not finite"))
    }

    /// Like [`Scrape::value`], 0 when the series is absent (not yet seen).
    pub fn value_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    /// Every label value of every sample (to check that none is unbounded).
    pub fn label_values(&self) -> impl Iterator<Item = &str> {
        self.samples
            .iter()
            .flat_map(|(_, l, _)| l.values().map(String::as_str))
    }
}

/// Where a console-svc started with `service.metrics_listen` serves
/// `/metrics`: it logs the bound address (port 0 gets a free one).
pub async fn console_svc_url(svc: &ConsoleSvc) -> Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(url) = svc.log_lines().iter().find_map(|l| url_in(l)) {
            return Ok(url);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("console-svc never logged its metrics address (is service.metrics_listen set?)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn url_in(line: &str) -> Option<String> {
    let (_, rest) = line.split_once("metrics on http://")?;
    let (addr, _) = rest.split_once("/metrics")?;
    Some(format!("http://{addr}/metrics"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_address_is_read_from_the_log_line() {
        let line = "2026-12-01T08:57:32Z  INFO porthole_common::metrics: metrics on http://127.0.0.1:41234/metrics addr=127.0.0.1:41234";
        assert_eq!(
            super::url_in(line).as_deref(),
            Some("http://127.0.0.1:41234/metrics")
        );
        assert_eq!(super::url_in("console-svc serving"), None);
    }
}
