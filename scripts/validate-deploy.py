#!/usr/bin/env python3
"""Checks every file under deploy/ with the ecosystem's own validators, plus the few things no
validator and no test run covers. Run through scripts/validate-deploy, which installs them.

What tiendo reads (the Compose service's environment and mounts, the Kubernetes Deployment,
its ConfigMap and Secret references, the targets) is proven by running tiendo that way in
tests/deploy.rs, not here. This script adds:
  - the Compose file against the Compose specification's JSON schema;
  - every Kubernetes manifest through kubernetes-validate --strict;
  - Prometheus config, rules and rule tests through promtool;
  - the Grafana dashboard's queries through promtool, and its and the rules' metric names
    against src/telemetry.rs (a dashboard naming a metric tiendo lacks shows nothing, quietly);
  - the Dockerfile through hadolint, and its COPY sources (no image is built here).
Prints "ok <file> (<check>)" or "FAIL <file>: <why>"; exits 1 on a failure, or on a file under
deploy/ that nothing checked.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
checked: set[Path] = set()
failures = 0


def check(path: Path, how: str, fn, *args) -> None:
    """Runs fn(*args), which returns a list of problems; prints the outcome for path."""
    global failures
    try:
        problems = fn(*args)
    except Exception as e:  # a file that does not parse is a failure of the file
        problems = [f"{type(e).__name__}: {e}"]
    checked.add(path.resolve())
    for p in problems:
        print(f"FAIL {path.relative_to(ROOT)}: {p}")
    failures += len(problems)
    if not problems:
        print(f"ok {path.relative_to(ROOT)} ({how})")


def tool(*cmd: str) -> list[str]:
    """Runs a validator; its output is the problem if it fails."""
    p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return [] if p.returncode == 0 else [f"{' '.join(cmd[:3])}…:\n{p.stdout.rstrip()}"]


def compose_schema(path: Path, schema: Path) -> list[str]:
    doc = yaml.safe_load(path.read_text())
    validator = jsonschema.Draft7Validator(json.loads(schema.read_text()))
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]


TELEMETRY = (ROOT / "src/telemetry.rs").read_text()
DECLARED = set(re.findall(r'"(tiendo_[a-z0-9_]+)"', TELEMETRY))
# The histograms, by the kind METRICS gives each constant: their _bucket, _sum and _count.
CONSTANTS = dict(re.findall(r'pub const (\w+): &str = "(tiendo_[a-z0-9_]+)";', TELEMETRY))
HISTOGRAMS = {CONSTANTS[c] for c in re.findall(r'\((\w+), "histogram"', TELEMETRY)}


def metric_names(exprs: list[str]) -> list[str]:
    problems = []
    for expr in exprs:
        for name in sorted(set(re.findall(r"\btiendo_[a-z0-9_]+", expr))):
            base = re.sub(r"_(bucket|sum|count)$", "", name) if name not in DECLARED else name
            if base not in DECLARED or (base != name and base not in HISTOGRAMS):
                problems.append(f"{name} is not a metric of src/telemetry.rs ({expr})")
    return problems


def rules(path: Path) -> list[str]:
    exprs = [r["expr"] for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]
    return tool("promtool", "check", "rules", str(path)) + metric_names(exprs)


def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))


def dashboard(path: Path) -> list[str]:
    """Its queries, with Grafana's variables filled in, through promtool as recording rules."""
    d = json.loads(path.read_text())
    exprs = [t["expr"] for p in panels(d.get("panels", [])) for t in p.get("targets", [])
             if t.get("expr")]
    filled = [re.sub(r"\$\{?__rate_interval\}?|\$\{?__interval\}?", "5m", e) for e in exprs]
    filled = [re.sub(r"\$\{?(\w+)(:\w+)?\}?", "x", e) for e in filled]
    rules_doc = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(filled)]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        yaml.safe_dump(rules_doc, f)
        f.flush()
        problems = tool("promtool", "check", "rules", f.name)
    return ([] if exprs else ["no queries"]) + problems + metric_names(exprs)


def dockerfile(path: Path, hadolint: str) -> list[str]:
    """hadolint, and every COPY source present in the build context (the repository)."""
    problems = tool(hadolint, "--failure-threshold", "warning", str(path))
    for instruction in DockerfileParser(path=str(path)).structure:
        if instruction["instruction"] != "COPY" or "--from=" in instruction["value"]:
            continue
        for src in instruction["value"].split()[:-1]:
            if not src.startswith("--") and not (ROOT / src).exists():
                problems.append(f"COPY {src}: not in the build context")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--compose-schema", type=Path, required=True)
    ap.add_argument("--kubernetes-validate", required=True)
    ap.add_argument("--kubernetes-version", required=True)
    ap.add_argument("--hadolint", required=True)
    a = ap.parse_args()

    check(DEPLOY / "compose.yaml", "Compose specification schema", compose_schema,
          DEPLOY / "compose.yaml", a.compose_schema)
    check(DEPLOY / "Dockerfile", "hadolint; COPY sources exist", dockerfile,
          DEPLOY / "Dockerfile", a.hadolint)
    for m in sorted((DEPLOY / "k8s").glob("*.yaml")):
        if m.name != "kustomization.yaml":
            check(m, f"kubernetes-validate --strict {a.kubernetes_version}", tool,
                  a.kubernetes_validate, "--strict", "-k", a.kubernetes_version, str(m))
    prom = DEPLOY / "prometheus"
    check(prom / "prometheus.yml", "promtool check config", tool,
          "promtool", "check", "config", str(prom / "prometheus.yml"))
    check(prom / "tiendo-alerts.yml", "promtool check rules; metric names", rules,
          prom / "tiendo-alerts.yml")
    check(prom / "tiendo-alerts.test.yml", "promtool test rules", tool,
          "promtool", "test", "rules", str(prom / "tiendo-alerts.test.yml"))
    for d in sorted((DEPLOY / "grafana/dashboards").glob("*.json")):
        check(d, "queries through promtool; metric names", dashboard, d)
    for y in sorted((DEPLOY / "grafana/provisioning").rglob("*.y*ml")):
        check(y, "YAML parses", lambda p=y: [] if yaml.safe_load(p.read_text()) else ["empty"])

    # Read by what runs them: tests/deploy.rs (tiendo's config, targets, the kustomization's
    # manifests, the example Secret, the Compose Redis's start script), and the docs.
    run_by_tests = ["compose/tiendo.toml", "tiendo.example.toml", "targets.example.csv",
                    "k8s/kustomization.yaml", "k8s/README.md", "Dockerfile.dockerignore",
                    "redis/start.sh"]
    checked.update((DEPLOY / f).resolve() for f in run_by_tests)
    global failures
    for f in sorted(DEPLOY.rglob("*")):
        if f.is_file() and f.resolve() not in checked:
            print(f"FAIL {f.relative_to(ROOT)}: nothing checks this file")
            failures += 1
    print(f"validate-deploy: {len(checked)} files, {failures} problems")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
