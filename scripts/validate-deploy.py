#!/usr/bin/env python3
"""Checks every file under deploy/ with a tool. Run through scripts/validate-deploy, which
installs promtool and this script's Python packages first.

Prints "ok <file> (<check>)" for each check a file passes, "FAIL <file>: <why>" for each problem
and "warn <file>: <note>" for what is worth knowing but not wrong; exits 1 on any FAIL, and on
any file under deploy/ that no check covered.
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import yaml
from dockerfile_parse import DockerfileParser

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
EXAMPLE_TOML = DEPLOY / "tiendo.example.toml"
HTTP_PORT = 9464

# The metrics tiendo exports, or is about to: a name used by the dashboard or the alert rules
# must be here or declared in src/telemetry.rs (which wins once it has it).
PLANNED_METRICS = {
    "tiendo_events_total", "tiendo_dead_letters_total", "tiendo_batch_messages",
    "tiendo_batch_duration_seconds", "tiendo_redis_flush_duration_seconds",
    "tiendo_redis_errors_total", "tiendo_kafka_errors_total", "tiendo_fenced_batches_total",
    "tiendo_rebalances_total", "tiendo_assigned_partitions", "tiendo_consumer_lag_messages",
    "tiendo_alert_evaluations_total", "tiendo_alert_transitions_total", "tiendo_alerts_firing",
    "tiendo_notifications_sent_total", "tiendo_notifications_failed_total",
    "tiendo_notifications_pending", "tiendo_notifications_silenced_total",
    "tiendo_province_progress_ratio", "tiendo_province_pace_7d_records_per_day",
    "tiendo_province_needed_pace_records_per_day", "tiendo_province_days_to_deadline",
    "tiendo_province_online_share_ratio",
}
HISTOGRAMS = {
    "tiendo_batch_messages", "tiendo_batch_duration_seconds",
    "tiendo_redis_flush_duration_seconds",
}
REQUIRED_ALERTS = {
    "TiendoDown", "TiendoConsumerLagGrowing", "TiendoDeadLettersRising", "TiendoRedisErrors",
    "TiendoNotificationsFailing", "TiendoNoPartitionsAssigned",
}
# Grafana's own variables, and what they become when a dashboard expr is checked by promtool.
GRAFANA_BUILTINS = {
    "__rate_interval": "5m", "__interval": "1m", "__interval_ms": "60000", "__range": "1h",
    "__range_s": "3600", "__range_ms": "3600000",
}
# Sample values of the dashboard's own variables for the promtool check.
VARIABLE_SAMPLES = {"dataset": "civil_status"}
# librdkafka property maps: any property name is a key.
PROPERTY_SECTIONS = {"kafka.properties", "kafka.consumer_properties", "kafka.producer_properties"}


# ---------------------------------------------------------------------------------------------
# Reporting


class Report:
    def __init__(self) -> None:
        self.checked: set[Path] = set()
        self.failures = 0
        self.warnings = 0
        self.warned: set[tuple[Path, str]] = set()

    def check(self, path: Path, how: str, fn, *args):
        """Runs fn(errors, *args) for path; prints ok or each failure. Returns fn's result."""
        errors: list[str] = []
        result = None
        try:
            result = fn(errors, *args)
        except Exception as e:  # a parse error is a failure of the file, not of this script
            errors.append(f"{type(e).__name__}: {e}")
        self.checked.add(path.resolve())
        if errors:
            for e in errors:
                print(f"FAIL {rel(path)}: {e}")
            self.failures += len(errors)
        else:
            print(f"ok {rel(path)} ({how})")
        return result

    def warn(self, path: Path, note: str) -> None:
        if (path, note) in self.warned:
            return
        self.warned.add((path, note))
        print(f"warn {rel(path)}: {note}")
        self.warnings += 1


R = Report()


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def run(cmd: list[str]) -> tuple[int, str]:
    p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return p.returncode, p.stdout


def indent(text: str) -> str:
    return "\n".join("    " + line for line in text.rstrip().splitlines())


class UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(path: Path):
    return yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)


def load_yaml_all(path: Path):
    return [d for d in yaml.load_all(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader) if d]


# ---------------------------------------------------------------------------------------------
# tiendo's configuration: keys known to deploy/tiendo.example.toml


def example_keys() -> dict[str, set[str]]:
    """Section -> keys named in the example, commented out or not."""
    keys: dict[str, set[str]] = {"": set()}
    section = ""
    for line in EXAMPLE_TOML.read_text(encoding="utf-8").splitlines():
        line = line.strip().lstrip("#").strip()
        m = re.match(r"^\[([A-Za-z0-9_.\-]+)\]$", line)
        if m:
            section = m.group(1)
            keys.setdefault(section, set())
            continue
        m = re.match(r'^"?([A-Za-z0-9_.\-]+)"?\s*=', line)
        if m:
            keys.setdefault(section, set()).add(m.group(1))
    return keys


EXAMPLE_KEYS: dict[str, set[str]] | None = None


def key_known(section: str, key: str) -> bool:
    global EXAMPLE_KEYS
    if EXAMPLE_KEYS is None:
        EXAMPLE_KEYS = example_keys()
    if section in PROPERTY_SECTIONS:
        return re.fullmatch(r"[a-z0-9._]+", key) is not None
    if section.startswith("alerts.receivers."):
        receiver_keys = set()
        for s, ks in EXAMPLE_KEYS.items():
            if s.startswith("alerts.receivers."):
                receiver_keys |= ks
        return key in receiver_keys
    return key in EXAMPLE_KEYS.get(section, set())


def toml_leaves(table: dict, prefix: str = ""):
    for k, v in table.items():
        if isinstance(v, dict):
            yield from toml_leaves(v, f"{prefix}.{k}" if prefix else k)
        else:
            yield prefix, k, v


def check_config_toml(errors: list[str], text: str, where: str) -> dict:
    """A tiendo config file: parses, and names only keys the example knows."""
    doc = tomllib.loads(text)
    for section, key, _ in toml_leaves(doc):
        if not section:
            errors.append(f"{where}: top-level key {key!r} outside any section")
        elif not key_known(section, key):
            errors.append(f"{where}: [{section}] {key} is not a key of {rel(EXAMPLE_TOML)}")
    for name, receiver in (doc.get("alerts", {}).get("receivers", {}) or {}).items():
        if receiver.get("kind") not in ("telegram", "slack", "webhook"):
            errors.append(f"{where}: receiver {name} needs kind telegram, slack or webhook")
    return doc


def env_key_known(name: str) -> bool:
    """TIENDO_<SECTION>__<KEY> names a key of the example (TIENDO_CONFIG is the file itself)."""
    if name == "TIENDO_CONFIG":
        return True
    parts = [p.lower() for p in name[len("TIENDO_"):].split("__")]
    if len(parts) < 2:
        return False
    section, key = ".".join(parts[:-1]), parts[-1]
    if section in PROPERTY_SECTIONS:
        key = key.replace("_", ".")
    return key_known(section, key)


def check_env(errors: list[str], env: dict[str, str | None], config: dict | None, where: str):
    for name in env:
        if name.startswith("TIENDO_") and not env_key_known(name):
            errors.append(f"{where}: {name} is not TIENDO_<SECTION>__<KEY> of a known key")
        m = re.match(r"TIENDO_ALERTS__RECEIVERS__([A-Z0-9_]+)__", name)
        if m and config is not None:
            receiver = m.group(1).lower()
            if receiver not in (config.get("alerts", {}).get("receivers", {}) or {}):
                errors.append(f"{where}: {name} sets a secret of receiver {receiver!r}, "
                              "which the config file does not define (it needs a kind)")
        if name == "TIENDO_KAFKA__PROPERTIES__SASL_PASSWORD" and config is not None:
            props = config.get("kafka", {}).get("properties", {})
            if "sasl.username" not in props or "SASL" not in props.get("security.protocol", ""):
                errors.append(f"{where}: a SASL password without sasl.username and a SASL "
                              "security.protocol in [kafka.properties]")


# ---------------------------------------------------------------------------------------------
# Targets CSV


def province_codes() -> dict[str, set[str]]:
    codes = {"34": set(), "63": set()}
    with open(ROOT / "data" / "provinces.csv", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            codes["63"].add(row["old_code"])
            codes["34"].add(row["new_code"])
    return codes


def datasets_of(config: dict | None) -> list[str]:
    example = tomllib.loads(EXAMPLE_TOML.read_text(encoding="utf-8"))
    default = example["validation"]["datasets"]
    if config is None:
        return default
    return config.get("validation", {}).get("datasets", default)


def check_targets_csv(errors: list[str], text: str, where: str, datasets: list[str]):
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    reader = csv.reader(io.StringIO("\n".join(lines)))
    rows = [[c.strip() for c in r] for r in reader if r]
    if not rows or rows[0][:4] != ["province", "dataset", "target", "deadline"]:
        errors.append(f"{where}: header must be province,dataset,target,deadline[,scheme]")
        return
    codes = province_codes()
    seen = set()
    for n, row in enumerate(rows[1:], start=2):
        if len(row) not in (4, 5):
            errors.append(f"{where}: row {n}: {len(row)} columns")
            continue
        province, dataset, target, deadline = row[:4]
        scheme = (row[4] if len(row) == 5 else "") or "34"
        if scheme not in codes:
            errors.append(f"{where}: row {n}: scheme {scheme!r} is not 34 or 63")
        elif province not in codes[scheme]:
            errors.append(f"{where}: row {n}: province {province!r} is not in the {scheme} table")
        if dataset not in datasets:
            errors.append(f"{where}: row {n}: dataset {dataset!r} is not one of {datasets}")
        if not target.isdigit() or int(target) <= 0:
            errors.append(f"{where}: row {n}: target {target!r} is not a positive integer")
        try:
            datetime.date.fromisoformat(deadline)
        except ValueError:
            errors.append(f"{where}: row {n}: deadline {deadline!r} is not YYYY-MM-DD")
        if (province, dataset, scheme) in seen:
            errors.append(f"{where}: row {n}: a second target for {province} {dataset}")
        seen.add((province, dataset, scheme))


# ---------------------------------------------------------------------------------------------
# PromQL: metric names, and syntax through promtool


def declared_metrics() -> set[str]:
    text = (ROOT / "src" / "telemetry.rs").read_text(encoding="utf-8")
    return set(re.findall(r'"(tiendo_[a-z0-9_]+)"', text))


DECLARED: set[str] | None = None


def check_metric_names(errors: list[str], exprs: list[str], path: Path, where: str):
    global DECLARED
    if DECLARED is None:
        DECLARED = declared_metrics()
    for expr in exprs:
        for name in sorted(set(re.findall(r"\btiendo_[a-z0-9_]+", expr))):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if base != name and base not in HISTOGRAMS:
                errors.append(f"{where}: {name}: {base} is not a histogram")
                continue
            if base in DECLARED:
                continue
            if base in PLANNED_METRICS:
                R.warn(path, f"{base} is not declared in src/telemetry.rs yet")
            else:
                errors.append(f"{where}: unknown metric {base} (neither in src/telemetry.rs "
                              "nor in the planned list)")
        for fn, name in re.findall(r"\b(rate|irate|increase)\((tiendo_[a-z0-9_]+)", expr):
            if not (name.endswith("_total") or name.endswith("_bucket")):
                errors.append(f"{where}: {fn}() of {name}, which is not a counter")


def promtool_exprs(errors: list[str], named: list[tuple[str, str]], where: str):
    """Checks the syntax of PromQL expressions by `promtool check rules` on recording rules."""
    rules = {"groups": [{"name": "dashboard",
                         "rules": [{"record": n, "expr": e} for n, e in named]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump(rules, f, sort_keys=False)
        tmp = f.name
    try:
        code, out = run(["promtool", "check", "rules", tmp])
    finally:
        os.unlink(tmp)
    if code != 0:
        errors.append(f"{where}: promtool check rules on its exprs failed:\n{indent(out)}")


# ---------------------------------------------------------------------------------------------
# Compose


class Compose:
    def __init__(self, path: Path, doc: dict):
        self.path = path
        self.dir = path.parent
        self.doc = doc
        self.services: dict = doc.get("services") or {}
        # service -> [(container path, host path)] of bind mounts
        self.binds: dict[str, list[tuple[str, Path]]] = {}

    def host_path(self, service: str, container_path: str) -> Path | None:
        best = None
        for target, host in self.binds.get(service, []):
            t = target.rstrip("/")
            if container_path == t or container_path.startswith(t + "/"):
                if best is None or len(t) > len(best[0]):
                    best = (t, host)
        if best is None:
            return None
        rest = container_path[len(best[0]):].lstrip("/")
        return best[1] / rest if rest else best[1]

    def container_ports(self, service: str) -> set[int]:
        svc = self.services.get(service, {})
        ports = set()
        for p in svc.get("ports", []) or []:
            if isinstance(p, dict):
                ports.add(int(p["target"]))
            else:
                ports.add(int(str(p).split("/")[0].split(":")[-1]))
        for p in svc.get("expose", []) or []:
            ports.add(int(str(p).split("/")[0]))
        return ports


def env_dict(svc: dict) -> dict[str, str | None]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return {e.split("=", 1)[0]: (e.split("=", 1)[1] if "=" in e else None) for e in env}
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def check_compose(errors: list[str], path: Path, schema_path: Path) -> Compose:
    doc = load_yaml(path)
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    validator = jsonschema.Draft201909Validator(schema)
    for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        at = "/".join(map(str, e.absolute_path)) or "(top)"
        errors.append(f"schema: {at}: {e.message}")
    c = Compose(path, doc)
    named_volumes = set((doc.get("volumes") or {}).keys())
    host_ports: dict[int, str] = {}
    for name, svc in c.services.items():
        where = f"service {name}"
        if "image" not in svc and "build" not in svc:
            errors.append(f"{where}: neither image nor build")
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, spec in deps.items():
            if dep not in c.services:
                errors.append(f"{where}: depends_on {dep!r}, which is not a service")
                continue
            cond = spec.get("condition")
            if cond == "service_healthy" and "healthcheck" not in c.services[dep]:
                errors.append(f"{where}: waits for {dep} to be healthy, but {dep} has no healthcheck")
            if cond == "service_completed_successfully" and c.services[dep].get("restart", "no") != "no":
                errors.append(f"{where}: waits for {dep} to complete, but {dep} restarts")
        build = svc.get("build")
        if build is not None:
            context = c.dir / (build if isinstance(build, str) else build.get("context", "."))
            if not context.is_dir():
                errors.append(f"{where}: build context {rel(context)} is not a directory")
            elif isinstance(build, dict) and "dockerfile" in build:
                if not (context / build["dockerfile"]).is_file():
                    errors.append(f"{where}: dockerfile {build['dockerfile']} not found in {rel(context)}")
        for v in svc.get("volumes", []) or []:
            if isinstance(v, dict):
                source, target, kind = v.get("source"), v.get("target"), v.get("type")
            else:
                parts = v.split(":")
                source, target = (parts[0], parts[1]) if len(parts) > 1 else (None, parts[0])
                kind = "bind" if source and source[0] in "./~" else "volume"
            if kind == "bind":
                host = (c.dir / source).resolve()
                if not host.exists():
                    errors.append(f"{where}: mounts {source}, which does not exist")
                elif ROOT not in host.parents and host != ROOT:
                    errors.append(f"{where}: mounts {source}, outside the repository")
                c.binds.setdefault(name, []).append((target, host))
            elif kind == "volume" and source and source not in named_volumes:
                errors.append(f"{where}: volume {source!r} is not declared under volumes:")
        for f in ([svc["env_file"]] if isinstance(svc.get("env_file"), str) else svc.get("env_file") or []):
            if not (c.dir / f).is_file():
                errors.append(f"{where}: env_file {f} does not exist")
        for p in svc.get("ports", []) or []:
            parts = str(p).split("/")[0].split(":")
            if len(parts) >= 2:
                hp = int(parts[-2])
                if hp in host_ports:
                    errors.append(f"{where}: host port {hp} is also published by {host_ports[hp]}")
                host_ports[hp] = name
        if svc.get("restart", "no") != "no" and "healthcheck" not in svc:
            errors.append(f"{where}: a long-running service without a healthcheck")
        hc = svc.get("healthcheck")
        if hc and (hc.get("disable") or not hc.get("test")):
            errors.append(f"{where}: healthcheck without a test")

    # tiendo itself
    t = c.services.get("tiendo")
    if t is None:
        errors.append("no tiendo service")
        return c
    if HTTP_PORT not in c.container_ports("tiendo"):
        errors.append(f"tiendo: port {HTTP_PORT} not published")
    test = " ".join(t.get("healthcheck", {}).get("test") or [])
    if "/healthz" not in test or str(HTTP_PORT) not in test:
        errors.append(f"tiendo: the healthcheck does not ask /healthz on {HTTP_PORT}")
    command = t.get("command")
    command = shlex.split(command) if isinstance(command, str) else (command or [])
    if command[:1] != ["run"]:
        errors.append(f"tiendo: command is {command}, not run")
    env = env_dict(t)
    for var in ("TIENDO_KAFKA__BROKERS", "TIENDO_REDIS__URL", "TIENDO_TARGETS__FILE", "TIENDO_CONFIG"):
        if not env.get(var):
            errors.append(f"tiendo: {var} is not set")
    brokers = env.get("TIENDO_KAFKA__BROKERS") or ""
    kafka_env = env_dict(c.services.get("kafka", {}))
    advertised = kafka_env.get("KAFKA_ADVERTISED_LISTENERS") or ""
    for b in filter(None, brokers.split(",")):
        if b not in re.findall(r"://([^,]+)", advertised):
            errors.append(f"tiendo: broker {b} is not one of Kafka's advertised listeners ({advertised})")
    redis_url = urlparse(env.get("TIENDO_REDIS__URL") or "")
    if redis_url.hostname not in c.services:
        errors.append(f"tiendo: Redis host {redis_url.hostname!r} is not a service")
    config = None
    if env.get("TIENDO_CONFIG"):
        host = c.host_path("tiendo", env["TIENDO_CONFIG"])
        if host is None or not host.is_file():
            errors.append(f"tiendo: TIENDO_CONFIG {env['TIENDO_CONFIG']} is not a mounted file")
        else:
            config = tomllib.loads(host.read_text(encoding="utf-8"))
    if env.get("TIENDO_TARGETS__FILE"):
        host = c.host_path("tiendo", env["TIENDO_TARGETS__FILE"])
        if host is None or not host.is_file():
            errors.append(f"tiendo: TIENDO_TARGETS__FILE {env['TIENDO_TARGETS__FILE']} is not a mounted file")
        else:
            check_targets_csv(errors, host.read_text(encoding="utf-8"), f"tiendo's targets ({rel(host)})",
                              datasets_of(config))
    check_env(errors, env, config, "tiendo")

    # Redis keeps its data with AOF.
    r = c.services.get("redis", {})
    rcmd = r.get("command")
    rcmd = " ".join(rcmd) if isinstance(rcmd, list) else str(rcmd or "")
    if not re.search(r"--appendonly\s+yes", rcmd):
        errors.append("redis: not started with --appendonly yes")

    # Kafka in KRaft mode.
    if "kafka" in c.services:
        roles = set((kafka_env.get("KAFKA_PROCESS_ROLES") or "").split(","))
        if not {"broker", "controller"} <= roles:
            errors.append("kafka: KAFKA_PROCESS_ROLES must be broker,controller (KRaft, one node)")
        cluster_id = kafka_env.get("CLUSTER_ID") or ""
        try:
            raw = base64.urlsafe_b64decode(cluster_id + "=" * (-len(cluster_id) % 4))
            if len(cluster_id) != 22 or len(raw) != 16:
                raise ValueError
        except ValueError:
            errors.append(f"kafka: CLUSTER_ID {cluster_id!r} is not 16 bytes in base64url (22 characters)")
        voters = kafka_env.get("KAFKA_CONTROLLER_QUORUM_VOTERS") or ""
        if not voters.startswith(f"{kafka_env.get('KAFKA_NODE_ID')}@"):
            errors.append("kafka: KAFKA_CONTROLLER_QUORUM_VOTERS does not name KAFKA_NODE_ID")
        protocol_map = dict(p.split(":") for p in (kafka_env.get("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP") or "").split(",") if ":" in p)
        for listener in re.findall(r"([A-Z_]+)://", kafka_env.get("KAFKA_LISTENERS") or ""):
            if listener not in protocol_map:
                errors.append(f"kafka: listener {listener} missing from KAFKA_LISTENER_SECURITY_PROTOCOL_MAP")
    return c


# ---------------------------------------------------------------------------------------------
# Prometheus


def check_prometheus_config(errors: list[str], path: Path, compose: Compose | None):
    code, out = run(["promtool", "check", "config", str(path)])
    if code != 0:
        errors.append(f"promtool check config:\n{indent(out)}")
    doc = load_yaml(path)
    for rf in doc.get("rule_files", []) or []:
        if not (path.parent / rf).is_file():
            errors.append(f"rule file {rf} does not resolve relative to {rel(path)}")
    jobs = {j["job_name"]: j for j in doc.get("scrape_configs", [])}
    if "tiendo" not in jobs:
        errors.append("no scrape job tiendo")
    elif jobs["tiendo"].get("metrics_path", "/metrics") != "/metrics":
        errors.append("job tiendo does not scrape /metrics")
    if compose is None:
        return
    svc = compose.services.get("prometheus")
    if svc is None:
        errors.append("compose has no prometheus service")
        return
    flags = dict(a.split("=", 1) for a in svc.get("command", []) if a.startswith("--") and "=" in a)
    container_config = flags.get("--config.file", "/etc/prometheus/prometheus.yml")
    host = compose.host_path("prometheus", container_config)
    if host is None or host.resolve() != path.resolve():
        errors.append(f"compose mounts {host and rel(host)} at {container_config}, not this file")
    for rf in doc.get("rule_files", []) or []:
        container_rf = os.path.normpath(os.path.join(os.path.dirname(container_config), rf))
        host_rf = compose.host_path("prometheus", container_rf)
        if host_rf is None or host_rf.resolve() != (path.parent / rf).resolve():
            errors.append(f"in compose, rule file {rf} ({container_rf}) is not mounted from {rel(path.parent / rf)}")
    for job in doc.get("scrape_configs", []):
        for sc in job.get("static_configs", []):
            for target in sc.get("targets", []):
                hostname, port = target.rsplit(":", 1)
                if hostname == "localhost" and job["job_name"] == "prometheus":
                    hostname = "prometheus"
                if hostname not in compose.services:
                    errors.append(f"job {job['job_name']}: target {target} is not a compose service")
                elif int(port) not in compose.container_ports(hostname):
                    errors.append(f"job {job['job_name']}: {hostname} does not expose port {port}")


def check_alert_rules(errors: list[str], path: Path):
    code, out = run(["promtool", "check", "rules", str(path)])
    if code != 0:
        errors.append(f"promtool check rules:\n{indent(out)}")
    doc = load_yaml(path)
    names = set()
    exprs = []
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            names.add(rule["alert"])
            exprs.append(rule["expr"])
            if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                errors.append(f"{rule['alert']}: severity label must be critical, warning or info")
            for a in ("summary", "description"):
                if not rule.get("annotations", {}).get(a):
                    errors.append(f"{rule['alert']}: no {a} annotation")
    for missing in sorted(REQUIRED_ALERTS - names):
        errors.append(f"alert {missing} is missing")
    check_metric_names(errors, exprs, path, "rules")
    return names


def check_alert_tests(errors: list[str], path: Path, rules_path: Path, alert_names: set[str]):
    code, out = run(["promtool", "test", "rules", str(path)])
    if code != 0:
        errors.append(f"promtool test rules:\n{indent(out)}")
    doc = load_yaml(path)
    files = [(path.parent / f).resolve() for f in doc.get("rule_files", [])]
    if rules_path.resolve() not in files:
        errors.append(f"does not load {rel(rules_path)}")
    fired, quiet = set(), set()
    for test in doc.get("tests", []):
        for case in test.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    for name in sorted(alert_names - fired):
        errors.append(f"no test makes {name} fire")
    for name in sorted(alert_names - quiet):
        errors.append(f"no test checks that {name} stays quiet")


# ---------------------------------------------------------------------------------------------
# Grafana


def flat_panels(panels):
    for p in panels:
        yield p
        yield from flat_panels(p.get("panels", []))


def grafana_vars(expr: str) -> list[str]:
    return re.findall(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", expr)


def substitute(expr: str, defined: set[str], errors: list[str], where: str) -> str:
    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        if name in defined:
            return VARIABLE_SAMPLES.get(name, "civil_status")
        errors.append(f"{where}: ${name} is not a dashboard variable")
        return "x"
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", repl, expr)


def variable_expr(query: str) -> str | None:
    """The PromQL inside a Prometheus variable query, if any."""
    m = re.fullmatch(r"\s*label_values\((.+),\s*\w+\s*\)\s*", query, re.S)
    if m:
        return m.group(1)
    m = re.fullmatch(r"\s*query_result\((.+)\)\s*", query, re.S)
    if m:
        return m.group(1)
    return None


def check_dashboard(errors: list[str], path: Path, datasource_uids: set[str]):
    d = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 36:
        errors.append(f"schemaVersion {d.get('schemaVersion')!r}: expected 36 or later")
    for k in ("uid", "title"):
        if not d.get(k):
            errors.append(f"no {k}")
    panels = list(flat_panels(d.get("panels", [])))
    ids = [p.get("id") for p in panels]
    for i in sorted({i for i in ids if ids.count(i) > 1}, key=str):
        errors.append(f"panel id {i} is used more than once")
    if any(not isinstance(i, int) for i in ids):
        errors.append("a panel without an integer id")
    variables = d.get("templating", {}).get("list", [])
    defined = {v["name"] for v in variables}
    named: list[tuple[str, str]] = []
    exprs: list[str] = []
    for v in variables:
        if v.get("type") != "query":
            continue
        if (v.get("datasource") or {}).get("uid") not in datasource_uids:
            errors.append(f"variable {v['name']}: datasource is not one of {sorted(datasource_uids)}")
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        inner = variable_expr(q or "")
        if inner is None:
            errors.append(f"variable {v['name']}: query {q!r} is not label_values() or query_result()")
            continue
        exprs.append(inner)
        named.append((f"dashboard:var_{v['name']}",
                      substitute(inner, defined - {v["name"]}, errors, f"variable {v['name']}")))
    occupied: dict[tuple[int, int], int] = {}
    for p in panels:
        where = f"panel {p.get('id')} {p.get('title')!r}"
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in "hwxy") or g["x"] + g["w"] > 24:
            errors.append(f"{where}: gridPos {g} is not within 24 columns")
        elif p.get("type") != "row" or not p.get("collapsed"):
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    if (x, y) in occupied:
                        errors.append(f"{where}: overlaps panel {occupied[(x, y)]}")
                        break
                    occupied[(x, y)] = p.get("id")
                else:
                    continue
                break
        if p.get("type") == "row":
            continue
        if (p.get("datasource") or {}).get("uid") not in datasource_uids:
            errors.append(f"{where}: datasource uid is {(p.get('datasource') or {}).get('uid')!r}, "
                          f"not one of {sorted(datasource_uids)}")
        targets = p.get("targets") or []
        if not targets:
            errors.append(f"{where}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs):
            errors.append(f"{where}: refIds {refs} repeat")
        for t in targets:
            if "datasource" in t and (t["datasource"] or {}).get("uid") not in datasource_uids:
                errors.append(f"{where}: target {t.get('refId')} has another datasource")
            expr = t.get("expr")
            if not expr or not expr.strip():
                errors.append(f"{where}: target {t.get('refId')} has no expr")
                continue
            exprs.append(expr)
            named.append((f"dashboard:panel_{p.get('id')}_{t.get('refId')}",
                          substitute(expr, defined, errors, where)))
    check_metric_names(errors, exprs, path, "dashboard")
    if named:
        promtool_exprs(errors, named, "dashboard")
    return len(panels), len(named)


def check_datasources(errors: list[str], path: Path, compose: Compose | None) -> set[str]:
    doc = load_yaml(path)
    if doc.get("apiVersion") != 1:
        errors.append("apiVersion must be 1")
    uids = set()
    for ds in doc.get("datasources", []):
        uids.add(ds.get("uid"))
        if ds.get("type") == "prometheus" and compose is not None:
            u = urlparse(ds.get("url", ""))
            if u.hostname not in compose.services:
                errors.append(f"datasource {ds.get('name')}: {u.hostname} is not a compose service")
            elif u.port not in compose.container_ports(u.hostname):
                errors.append(f"datasource {ds.get('name')}: {u.hostname} does not expose {u.port}")
    if "prometheus" not in uids:
        errors.append("no datasource with uid prometheus")
    return uids


def check_dashboard_provider(errors: list[str], path: Path, compose: Compose | None) -> list[Path]:
    doc = load_yaml(path)
    if doc.get("apiVersion") != 1:
        errors.append("apiVersion must be 1")
    dirs = []
    for prov in doc.get("providers", []):
        container = (prov.get("options") or {}).get("path")
        if prov.get("type") != "file" or not container:
            errors.append(f"provider {prov.get('name')}: not a file provider with options.path")
            continue
        if compose is None:
            continue
        host = compose.host_path("grafana", container)
        if host is None or not host.is_dir():
            errors.append(f"provider {prov.get('name')}: {container} is not mounted from a directory of the repository")
        elif not list(host.glob("*.json")):
            errors.append(f"provider {prov.get('name')}: {rel(host)} has no dashboard")
        else:
            dirs.append(host)
    return dirs


def check_grafana_mounts(errors: list[str], compose: Compose, provisioning: list[Path]):
    for f in provisioning:
        kind = f.parent.name  # datasources, dashboards
        host = compose.host_path("grafana", f"/etc/grafana/provisioning/{kind}/{f.name}")
        if host is None or host.resolve() != f.resolve():
            errors.append(f"{rel(f)} is not mounted at /etc/grafana/provisioning/{kind}/")
    home = env_dict(compose.services.get("grafana", {})).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        host = compose.host_path("grafana", home)
        if host is None or not host.is_file():
            errors.append(f"grafana: home dashboard {home} is not a mounted file")


# ---------------------------------------------------------------------------------------------
# Kubernetes


def check_kubernetes_validate(errors: list[str], path: Path, tool: str, version: str):
    code, out = run([tool, "--strict", "-k", version, str(path)])
    lines = out.strip().splitlines()
    if code != 0 or any(not line.startswith("INFO") for line in lines) or not lines:
        errors.append(f"kubernetes-validate --strict -k {version}:\n{indent(out or '(no output)')}")
    return load_yaml_all(path)


def resolve_port(container: dict, port) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def check_k8s_references(errors: list[str], docs: dict[Path, list[dict]]):
    objs = {}
    for path, ds in docs.items():
        for d in ds:
            objs[(d["kind"], d["metadata"]["name"])] = (path, d)
    deployments = [d for (k, _), (_, d) in objs.items() if k == "Deployment"]
    if len(deployments) != 1:
        errors.append(f"{len(deployments)} Deployments, expected 1")
        return
    dep = deployments[0]
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"].get("labels", {})
    selector = dep["spec"]["selector"].get("matchLabels", {})
    if not selector or any(labels.get(k) != v for k, v in selector.items()):
        errors.append("Deployment: selector does not match the pod template's labels")
    if not isinstance(spec.get("replicas"), int) or spec["replicas"] < 1:
        errors.append(f"Deployment: replicas {spec.get('replicas')!r}, expected a count")
    if pod.get("terminationGracePeriodSeconds", 30) < 60:
        errors.append("Deployment: terminationGracePeriodSeconds below 60")
    containers = {c["name"]: c for c in pod["containers"]}
    c = containers.get("tiendo")
    if c is None:
        errors.append("Deployment: no container tiendo")
        return
    ann = dep["spec"]["template"]["metadata"].get("annotations", {})
    if ann.get("prometheus.io/scrape") != "true" or ann.get("prometheus.io/port") != str(HTTP_PORT) \
            or ann.get("prometheus.io/path", "/metrics") != "/metrics":
        errors.append(f"Deployment: prometheus.io annotations must scrape /metrics on {HTTP_PORT}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = (c.get(probe) or {}).get("httpGet") or {}
        if get.get("path") != path or resolve_port(c, get.get("port")) != HTTP_PORT:
            errors.append(f"Deployment: {probe} must GET {path} on port {HTTP_PORT}, not {get}")
    res = c.get("resources") or {}
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in (res.get(kind) or {}):
                errors.append(f"Deployment: no resources.{kind}.{r}")
    # Volumes from ConfigMaps and Secrets that exist, with the keys they name.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"].rstrip("/"): volumes.get(m["name"]) for m in c.get("volumeMounts", [])}
    for m in c.get("volumeMounts", []):
        if m["name"] not in volumes:
            errors.append(f"Deployment: volumeMount {m['name']} has no volume")
    config_text = None
    for v in volumes.values():
        for kind, ref in (("ConfigMap", v.get("configMap")), ("Secret", v.get("secret"))):
            if ref is None:
                continue
            name = ref.get("name") or ref.get("secretName")
            if (kind, name) not in objs:
                errors.append(f"Deployment: volume {v['name']} names {kind} {name}, which is not defined")
                continue
            data = objs[(kind, name)][1].get("data", {}) | objs[(kind, name)][1].get("stringData", {})
            for item in ref.get("items", []):
                if item["key"] not in data:
                    errors.append(f"Deployment: volume {v['name']}: {kind} {name} has no key {item['key']}")
    env = {e["name"]: e for e in c.get("env", [])}

    def mounted_key(container_path: str):
        """(ConfigMap data, key) a container path reads, if it is a ConfigMap volume's file."""
        directory, file = os.path.split(container_path)
        v = mounts.get(directory)
        if not v or not v.get("configMap"):
            return None
        cm = objs.get(("ConfigMap", v["configMap"]["name"]))
        if cm is None:
            return None
        items = v["configMap"].get("items")
        key = next((i["key"] for i in items if i["path"] == file), None) if items else file
        return cm[1].get("data", {}), key

    cfg_path = (env.get("TIENDO_CONFIG") or {}).get("value")
    found = mounted_key(cfg_path) if cfg_path else None
    if not found or found[1] not in found[0]:
        errors.append(f"Deployment: TIENDO_CONFIG {cfg_path} is not a file of a ConfigMap volume")
    else:
        config_text = found[0][found[1]]
    config = tomllib.loads(config_text) if config_text else None
    targets_file = (config or {}).get("targets", {}).get("file")
    if "TIENDO_TARGETS__FILE" in env:
        targets_file = env["TIENDO_TARGETS__FILE"].get("value")
    if targets_file:
        found = mounted_key(targets_file)
        if not found or found[1] not in found[0]:
            errors.append(f"Deployment: targets file {targets_file} is not a file of a ConfigMap volume")
    for name, e in env.items():
        src = e.get("valueFrom") or {}
        if "secretKeyRef" in src:
            ref = src["secretKeyRef"]
            sec = objs.get(("Secret", ref["name"]))
            if sec is None:
                errors.append(f"Deployment: {name} reads Secret {ref['name']}, which is not defined")
            elif ref["key"] not in (sec[1].get("data", {}) | sec[1].get("stringData", {})):
                errors.append(f"Deployment: {name} reads key {ref['key']}, not in Secret {ref['name']}")
        if "configMapKeyRef" in src:
            ref = src["configMapKeyRef"]
            cm = objs.get(("ConfigMap", ref["name"]))
            if cm is None or ref["key"] not in cm[1].get("data", {}):
                errors.append(f"Deployment: {name} reads ConfigMap {ref['name']} key {ref['key']}, not defined")
    for name in ("TIENDO_REDIS__URL", "TIENDO_KAFKA__PROPERTIES__SASL_PASSWORD",
                 "TIENDO_ALERTS__RECEIVERS__TASKFORCE__TOKEN"):
        if "secretKeyRef" not in (env.get(name, {}).get("valueFrom") or {}):
            errors.append(f"Deployment: {name} must come from a Secret (secretKeyRef)")
    gid = (env.get("TIENDO_KAFKA__GROUP_INSTANCE_ID", {}).get("valueFrom") or {}).get("fieldRef", {})
    if gid.get("fieldPath") != "metadata.name":
        errors.append("Deployment: TIENDO_KAFKA__GROUP_INSTANCE_ID must be the pod name (fieldRef metadata.name)")
    if (env.get("TIENDO_LOG__FORMAT") or {}).get("value") != "json":
        errors.append("Deployment: TIENDO_LOG__FORMAT must be json")
    check_env(errors, {n: None for n in env}, config, "Deployment")
    # Service and PodDisruptionBudget select the pods.
    for (kind, name), (_, d) in objs.items():
        sel = None
        if kind == "Service":
            sel = d["spec"].get("selector", {})
            ports = d["spec"].get("ports", [])
            p = next((p for p in ports if p.get("port") == HTTP_PORT), None)
            if p is None or p.get("name") != "http-metrics" \
                    or resolve_port(c, p.get("targetPort", p["port"])) != HTTP_PORT:
                errors.append(f"Service {name}: needs port {HTTP_PORT} named http-metrics to the container's {HTTP_PORT}")
        elif kind == "PodDisruptionBudget":
            sel = d["spec"].get("selector", {}).get("matchLabels", {})
            if d["spec"].get("maxUnavailable") != 1:
                errors.append(f"PodDisruptionBudget {name}: maxUnavailable must be 1")
        if sel is not None and (not sel or any(labels.get(k) != v for k, v in sel.items())):
            errors.append(f"{kind} {name}: selector {sel} does not select the Deployment's pods")


def check_configmap_files(errors: list[str], docs: list[dict]):
    for d in docs:
        if d.get("kind") != "ConfigMap":
            continue
        data = d.get("data", {})
        config = None
        for key, text in data.items():
            if key.endswith(".toml"):
                config = check_config_toml(errors, text, f"ConfigMap {d['metadata']['name']} {key}")
        for key, text in data.items():
            if key.endswith(".csv"):
                check_targets_csv(errors, text, f"ConfigMap {d['metadata']['name']} {key}", datasets_of(config))


def check_kustomization(errors: list[str], path: Path, manifests: list[Path]):
    doc = load_yaml(path)
    if doc.get("kind") != "Kustomization" or not str(doc.get("apiVersion", "")).startswith("kustomize.config.k8s.io/"):
        errors.append("not a kustomize.config.k8s.io Kustomization")
    allowed = {"apiVersion", "kind", "namespace", "resources", "images", "labels", "commonLabels",
               "commonAnnotations", "configMapGenerator", "secretGenerator", "patches",
               "namePrefix", "nameSuffix", "replicas", "generatorOptions"}
    for k in doc:
        if k not in allowed:
            errors.append(f"unknown field {k}")
    resources = doc.get("resources", [])
    for r in resources:
        if not (path.parent / r).is_file():
            errors.append(f"resource {r} does not exist")
    for m in manifests:
        if m.name.startswith("secret") and m.name in resources:
            errors.append(f"{m.name} holds placeholder secrets: do not list it")
        elif not m.name.startswith("secret") and m.name not in resources:
            errors.append(f"{m.name} is not listed in resources")


def check_markdown_refs(errors: list[str], path: Path):
    text = path.read_text(encoding="utf-8")
    if text.count("```") % 2:
        errors.append("unbalanced ``` fences")
    # A path with a slash (from the repository root or this file), or a manifest beside it.
    refs = re.findall(r"`([A-Za-z0-9_.-]+/[A-Za-z0-9_./-]+|[A-Za-z0-9_.-]+\.(?:ya?ml|md))`", text)
    for ref in sorted(set(refs)):
        candidates = [path.parent / ref, ROOT / ref]
        if not any(c.exists() for c in candidates):
            errors.append(f"refers to {ref}, which does not exist")


# ---------------------------------------------------------------------------------------------
# Dockerfile


def dockerignore_excluded(patterns: list[tuple[bool, re.Pattern]], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    excluded = False
    for negate, rx in patterns:
        if any(rx.fullmatch("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def parse_dockerignore(text: str) -> list[tuple[bool, re.Pattern]]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**", i):
                rx += ".*"
                i += 2
            elif pat[i] == "*":
                rx += "[^/]*"
                i += 1
            elif pat[i] == "?":
                rx += "[^/]"
                i += 1
            else:
                rx += re.escape(pat[i])
                i += 1
        out.append((negate, re.compile(rx)))
    return out


def check_dockerfile(errors: list[str], path: Path, context: Path, ignore_path: Path):
    parser = DockerfileParser(path=str(path))
    structure = parser.structure
    known = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
             "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "COMMENT"}
    stages: list[list[dict]] = []
    for ins in structure:
        if ins["instruction"] not in known:
            errors.append(f"line {ins['startline'] + 1}: unknown instruction {ins['instruction']}")
        if ins["instruction"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    if len(stages) < 2:
        errors.append("not a multi-stage build")
        return
    base = lambda st: st[0]["value"].split()[0]  # noqa: E731
    if base(stages[0]) != "rust:1-bookworm":
        errors.append(f"builder is {base(stages[0])}, not rust:1-bookworm")
    if base(stages[-1]) != "debian:bookworm-slim":
        errors.append(f"runtime is {base(stages[-1])}, not debian:bookworm-slim")
    runs = " ".join(i["value"] for i in stages[0] if i["instruction"] == "RUN")
    if "cargo build --release --locked" not in runs:
        errors.append("the builder does not run cargo build --release --locked")
    if "--mount=" in runs and not path.read_text().startswith("# syntax=docker/dockerfile:1"):
        errors.append("RUN --mount needs the # syntax=docker/dockerfile:1 line first")
    final = stages[-1]
    if "ca-certificates" not in " ".join(i["value"] for i in final if i["instruction"] == "RUN"):
        errors.append("the runtime image does not install ca-certificates")
    users = [i["value"].strip() for i in final if i["instruction"] == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        errors.append(f"the runtime image runs as {users[-1] if users else 'root'}: needs a non-root USER")
    entry = [i["value"] for i in final if i["instruction"] == "ENTRYPOINT"]
    try:
        argv = json.loads(entry[-1]) if entry else []
    except json.JSONDecodeError:
        argv = []
        errors.append("ENTRYPOINT is not in exec (JSON) form")
    if not argv or os.path.basename(argv[0]) != "tiendo":
        errors.append(f"ENTRYPOINT {argv} does not run tiendo")
    copies = [i["value"].split() for i in final if i["instruction"] == "COPY"]
    if not any(c[-1] in ("/usr/local/bin/tiendo", "/usr/local/bin/", "/usr/bin/tiendo") for c in copies):
        errors.append("tiendo is not copied onto the PATH (/usr/local/bin/tiendo)")
    exposed = {p.split("/")[0] for i in final if i["instruction"] == "EXPOSE" for p in i["value"].split()}
    if str(HTTP_PORT) not in exposed:
        errors.append(f"EXPOSE {HTTP_PORT} is missing")
    # What the build copies from the context exists, and the ignore file lets it through.
    ignore = parse_dockerignore(ignore_path.read_text(encoding="utf-8")) if ignore_path.exists() else []
    if not ignore_path.exists():
        errors.append(f"{rel(ignore_path)} is missing: the context would carry target/")
    for must in ("target", ".git"):
        if not dockerignore_excluded(ignore, must):
            errors.append(f"{rel(ignore_path)} does not exclude {must}/")
    copied: list[str] = []
    for st in stages:
        for ins in st:
            if ins["instruction"] not in ("COPY", "ADD"):
                continue
            words = [w for w in ins["value"].split() if not w.startswith("--")]
            if any(w.startswith("--from") for w in ins["value"].split()):
                continue
            for src in words[:-1]:
                src = os.path.normpath(src)
                if not (context / src).exists():
                    errors.append(f"COPY {src}: not in the build context")
                elif dockerignore_excluded(ignore, src):
                    errors.append(f"COPY {src}: excluded by {rel(ignore_path)}")
                copied.append(src)

    def is_copied(p: str) -> bool:
        return any(p == c or p.startswith(c + "/") for c in copied)

    needed = ["Cargo.toml", "Cargo.lock", "build.rs", "proto", "src"]
    cargo = tomllib.loads((context / "Cargo.toml").read_text(encoding="utf-8"))
    for kind, folder in (("bench", "benches"), ("bin", "src/bin"), ("example", "examples")):
        for t in cargo.get(kind, []):
            needed.append(t.get("path", f"{folder}/{t['name']}.rs"))
    for rs in (context / "src").rglob("*.rs"):
        for inc in re.findall(r'include_(?:str|bytes)!\(\s*"([^"]+)"\s*\)', rs.read_text(encoding="utf-8")):
            needed.append(os.path.relpath(os.path.normpath(rs.parent / inc), context))
    for n in needed:
        if not is_copied(n):
            errors.append(f"the build needs {n}, which is not copied into the builder")
        elif dockerignore_excluded(ignore, n):
            errors.append(f"the build needs {n}, which {rel(ignore_path)} excludes")


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--compose-schema", type=Path, required=True)
    ap.add_argument("--kubernetes-validate", required=True)
    ap.add_argument("--kubernetes-version", default="1.30.0")
    args = ap.parse_args()
    k8s_short = ".".join(args.kubernetes_version.split(".")[:2])

    # Configuration and targets.
    R.check(EXAMPLE_TOML, "TOML parses", lambda e: tomllib.loads(EXAMPLE_TOML.read_text(encoding="utf-8")))
    R.check(DEPLOY / "targets.example.csv", "targets CSV: provinces, datasets, targets, deadlines",
            lambda e: check_targets_csv(e, (DEPLOY / "targets.example.csv").read_text(encoding="utf-8"),
                                        "targets", datasets_of(None)))
    for toml_path in sorted(DEPLOY.rglob("*.toml")):
        if toml_path != EXAMPLE_TOML:
            R.check(toml_path, "TOML parses; keys known to deploy/tiendo.example.toml",
                    lambda e, p=toml_path: check_config_toml(e, p.read_text(encoding="utf-8"), "config"))

    # Compose.
    compose_path = DEPLOY / "compose.yaml"
    compose = R.check(compose_path, "compose schema of docker-compose 1.29.2; mounts, depends_on, ports, healthchecks, env",
                      check_compose, compose_path, args.compose_schema)

    # Dockerfile.
    context = ROOT
    if compose is not None:
        build = compose.services.get("tiendo", {}).get("build") or {}
        context = (compose.dir / (build if isinstance(build, str) else build.get("context", "."))).resolve()
    dockerfile = DEPLOY / "Dockerfile"
    ignore = DEPLOY / "Dockerfile.dockerignore"
    R.check(dockerfile, "dockerfile-parse: stages, non-root USER, ENTRYPOINT tiendo, EXPOSE 9464, COPY sources",
            check_dockerfile, dockerfile, context, ignore)
    R.check(ignore, "dockerignore rules against the Dockerfile's COPY sources", lambda e: None)

    # Prometheus.
    prom = DEPLOY / "prometheus"
    R.check(prom / "prometheus.yml", "promtool check config; rule_files and scrape targets against compose",
            check_prometheus_config, prom / "prometheus.yml", compose)
    names = R.check(prom / "tiendo-alerts.yml", "promtool check rules; severities, annotations, metric names",
                    check_alert_rules, prom / "tiendo-alerts.yml") or set()
    R.check(prom / "tiendo-alerts.test.yml", "promtool test rules; every alert fires and stays quiet",
            check_alert_tests, prom / "tiendo-alerts.test.yml", prom / "tiendo-alerts.yml", names)

    # Grafana.
    graf = DEPLOY / "grafana"
    ds_files = sorted((graf / "provisioning" / "datasources").glob("*.y*ml"))
    uids: set[str] = set()
    for f in ds_files:
        uids |= R.check(f, "datasource provisioning: parses, uid prometheus, URL a compose service",
                        check_datasources, f, compose) or set()
    dash_dirs: list[Path] = []
    provider_files = sorted((graf / "provisioning" / "dashboards").glob("*.y*ml"))
    for f in provider_files:
        dash_dirs += R.check(f, "dashboard provisioning: parses, path mounted from the repository",
                             check_dashboard_provider, f, compose) or []
    if compose is not None:
        R.check(compose_path, "Grafana provisioning mounted", check_grafana_mounts, compose,
                ds_files + provider_files)
    dashboards = sorted((graf / "dashboards").glob("*.json"))
    for d in dashboards:
        if compose is not None and d.parent.resolve() not in [p.resolve() for p in dash_dirs]:
            R.check(d, "provisioned", lambda e: e.append("no dashboard provider loads this directory"))
        R.check(d, "dashboard JSON: ids, datasource, exprs through promtool, metric names",
                check_dashboard, d, uids or {"prometheus"})

    # Kubernetes.
    k8s = DEPLOY / "k8s"
    manifests = sorted(p for p in k8s.glob("*.y*ml") if p.name != "kustomization.yaml")
    docs: dict[Path, list[dict]] = {}
    for m in manifests:
        docs[m] = R.check(m, f"kubernetes-validate --strict {k8s_short}", check_kubernetes_validate, m,
                          args.kubernetes_validate, args.kubernetes_version) or []
    R.check(k8s / "deployment.yaml", "ConfigMap/Secret references, probes, resources, env, selectors",
            check_k8s_references, docs)
    R.check(k8s / "configmap.yaml", "tiendo.toml keys and targets.csv rows",
            check_configmap_files, docs.get(k8s / "configmap.yaml", []))
    if (k8s / "kustomization.yaml").exists():
        R.check(k8s / "kustomization.yaml", "resources exist and list every manifest but the example Secret",
                check_kustomization, k8s / "kustomization.yaml", manifests)
    for md in sorted(DEPLOY.rglob("*.md")):
        R.check(md, "Markdown fences balanced; the files it names exist", check_markdown_refs, md)

    # Nothing under deploy/ goes unchecked.
    for f in sorted(DEPLOY.rglob("*")):
        if f.is_file() and f.resolve() not in R.checked:
            print(f"FAIL {rel(f)}: no check covers this file (add one to scripts/validate-deploy.py)")
            R.failures += 1

    print(f"validate-deploy: {len(R.checked)} files, {R.failures} problems, {R.warnings} warnings")
    return 1 if R.failures else 0


if __name__ == "__main__":
    sys.exit(main())
