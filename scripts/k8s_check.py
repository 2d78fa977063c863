"""Helpers for scripts/k8s-check.sh (run with .venv-k8s's Python, which has
PyYAML through yamllint and checkov).

  k8s_check.py same A.yaml B.yaml      # two renderers' output: the same objects?
  k8s_check.py json IN.yaml OUT.json   # rendered YAML -> a JSON list (the rehearsal reads it)
  k8s_check.py mutate IN.yaml OUT.yaml WHAT
                                       # a canary the validators must refuse
  k8s_check.py containerfile deploy-k8s/Containerfile RENDERED.yaml
                                       # the image file against the manifests
Exit code 1 with one line per problem on stderr.
"""

import json
import re
import sys

import yaml


def load(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def key(doc):
    return (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])


def same(a_path, b_path):
    a = {key(d): d for d in load(a_path)}
    b = {key(d): d for d in load(b_path)}
    problems = []
    for k in sorted(set(a) ^ set(b)):
        problems.append(f"{k} is in only one of {a_path}, {b_path}")
    for k in sorted(set(a) & set(b)):
        if a[k] != b[k]:
            problems.append(f"{k} differs between {a_path} and {b_path}")
    return problems


def to_json(in_path, out_path):
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(load(in_path), f, indent=1, sort_keys=True)
    return []


def workloads(docs):
    return [d for d in docs if d["kind"] in ("StatefulSet", "Deployment")]


def mutate(in_path, out_path, what):
    """Canaries: a field no schema has (kubernetes-validate --strict must
    refuse it), and a container that may write its root file system
    (checkov must refuse it)."""
    docs = load(in_path)
    c = workloads(docs)[0]["spec"]["template"]["spec"]["containers"][0]
    if what == "unknown-field":
        c["readinessProbes"] = c.get("readinessProbe", {})
    elif what == "writable-root":
        c["securityContext"]["readOnlyRootFilesystem"] = False
    else:
        return [f"unknown mutation {what}"]
    with open(out_path, "w", encoding="utf-8") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)
    return []


BUILD_TOOLS = {"build-essential", "gcc", "g++", "cc", "make", "cargo", "rustc", "protobuf-compiler",
               "libprotobuf-dev", "pkg-config", "git"}


def stages(text):
    """FROM lines and the instructions of each stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            out.append({"base": parts[0], "name": name, "lines": []})
        elif out:
            out[-1]["lines"].append((word.upper(), rest.strip()))
    return out


def apt_packages(stage):
    pkgs = []
    for word, rest in stage["lines"]:
        if word != "RUN":
            continue
        for m in re.finditer(r"apt-get install ([^&;|]*)", rest):
            pkgs += [p for p in m.group(1).split() if not p.startswith("-")]
    return pkgs


def containerfile(path, rendered):
    problems = []
    with open(path, encoding="utf-8") as f:
        st = stages(f.read())
    names = {s["name"]: s for s in st if s["name"]}
    for s in st:
        base = s["base"]
        if base in names:
            continue
        tag = base.rsplit("/", 1)[-1]
        if "@sha256:" not in base and (":" not in tag or tag.endswith(":latest")
                                        or not re.search(r":\d+\.\d+", tag)):
            problems.append(f"FROM {base}: pin the base by version or digest")
    finals = {}
    for d in workloads(load(rendered)):
        for c in d["spec"]["template"]["spec"]["containers"]:
            image = c["image"].split("@")[0].rsplit(":", 1)[0]
            if image.startswith("porthole/"):
                finals[image.split("/", 1)[1]] = (d, c)
    for svc, (d, c) in sorted(finals.items()):
        s = names.get(svc)
        where = f"{d['kind']}/{d['metadata']['name']}"
        if s is None:
            problems.append(f"{where} runs image porthole/{svc}: the Containerfile has no stage {svc}")
            continue
        chain, cur = [], s
        while cur is not None:
            chain.append(cur)
            cur = names.get(cur["base"])
        if chain[-1]["base"].startswith("docker.io/library/rust"):
            problems.append(f"stage {svc} is built on the build image")
        pkgs = [p for c_ in chain for p in apt_packages(c_)]
        tools = sorted(set(pkgs) & BUILD_TOOLS)
        if tools:
            problems.append(f"stage {svc} installs build tools: {' '.join(tools)}")
        users = [rest for w, rest in s["lines"] if w == "USER"]
        if not users or users[-1].split(":")[0] in ("0", "root"):
            problems.append(f"stage {svc} does not end as a non-root USER")
        else:
            uid = int(users[-1].split(":")[0])
            want = d["spec"]["template"]["spec"].get("securityContext", {}).get("runAsUser")
            if want is not None and want != uid:
                problems.append(f"stage {svc} runs as {uid}, {where} as runAsUser {want}")
        cmd = (c.get("command") or [""])[0]
        copied = [rest.split()[-1] for w, rest in s["lines"] if w == "COPY"]
        if f"/usr/local/bin/{cmd}" not in copied:
            problems.append(f"{where} runs {cmd!r}, which stage {svc} does not put in /usr/local/bin")
        if svc == "console-svc" and not {"ipmitool", "socat"} <= set(pkgs):
            problems.append("stage console-svc needs ipmitool and socat")
        if svc == "deploy" and not {"qemu-utils", "qemu-block-extra"} <= set(pkgs):
            problems.append("stage deploy needs qemu-utils and qemu-block-extra (qemu's iSCSI driver)")
        if svc == "deploy" and not {"isolinux", "syslinux-common"} <= set(pkgs):
            problems.append("stage deploy needs isolinux and syslinux-common (the boot ISOs it builds)")
    return problems


def main(argv):
    cmd, args = argv[1], argv[2:]
    problems = {"same": same, "json": to_json, "mutate": mutate, "containerfile": containerfile}[cmd](*args)
    for p in problems:
        print(f"k8s_check.py {cmd}: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
