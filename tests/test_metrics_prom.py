"""Metrics as Prometheus sees them: every known series exists at 0 from start-up (so the first trip
is an increase, not a new series), the process collectors, no ``_created`` series, one prefix; a
real Prometheus scraping real sidecars fires DLPTakedownHappened on the first trip, including a
trip made before the sidecar's first scrape; every rule has a runbook section; every dashboard
query takes the namespace, job and pod variables; the chart's copies are the deploy files."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sensor.detect.pack import load_pack
from sensor.detect.policy import VERDICTS
from sensor.metrics import BY_TAP, KAFKA_KNOWN, KNOWN, SCANNED_VERDICTS, TAPS, Metrics
from sensor.sample_site import ROSTER
from tests.conftest import require_tool
from tests.procs import Sidecar, free_port, site_fixture, stop, wait_http
from tests.test_proxy import copy_to, curl

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"
CHART_FILES = ROOT / "deploy" / "helm" / "dlp-sensor" / "files"
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_BASE = "https://github.com/dlp-sensor/dlp-sensor/blob/main/docs/runbook.md#"
STANDARD_PREFIXES = ("process_", "python_")      # prometheus_client's process/platform/GC collectors

site = site_fixture(300)


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


# -- the exposition -----------------------------------------------------------------------------

def test_a_fresh_sidecar_exports_every_known_series_at_zero(site, tmp_path):
    sinks = [{"type": "jsonl", "path": "alerts.jsonl"},
             {"type": "webhook", "name": "soc-hook", "url": f"http://127.0.0.1:{free_port()}/hook"}]
    sc = Sidecar.create(tmp_path / "sc", site.url, {"alerts": {"sinks": sinks}}).start()
    try:
        text = urllib.request.urlopen(sc.metrics + "/metrics", timeout=5).read().decode()
    finally:
        sc.stop()
    s = _samples(text)
    for source in ("trip", "admin", "fleet"):
        assert _value(s, "dlp_takedowns_total", source=source) == 0, source
    for mode in ("monitor", "enforce"):
        assert _value(s, "dlp_trips_total", mode=mode) == 0
    for verdict in VERDICTS + ("mirrored", "unscanned"):
        assert _value(s, "dlp_exchanges_total", tap="proxy", verdict=verdict) == 0, verdict
    assert _value(s, "dlp_exchanges_total", tap="icap", verdict="trip") is None     # a tap this process does not run
    for reason in ("resource", "content"):
        assert _value(s, "dlp_refusals_total", reason=reason) == 0
    for sink in ("jsonl", "soc-hook"):
        for name in ("dlp_alerts_delivered_total", "dlp_alert_delivery_failures_total", "dlp_alerts_throttled_total"):
            assert _value(s, name, sink=sink) == 0, (name, sink)
    for sig in load_pack().signatures:
        assert _value(s, "dlp_findings_total", signature=sig.id) == 0, sig.id
    for reason in ("overload", "internal"):
        for action in ("open", "closed"):
            assert _value(s, "dlp_scan_failures_total", reason=reason, action=action) == 0
    assert _value(s, "dlp_bytes_scanned_total", tap="proxy") == 0
    assert _value(s, "dlp_build_info", version=__import__("sensor").__version__) == 1
    # process and platform collectors
    assert _value(s, "process_resident_memory_bytes") > 0 and _value(s, "process_open_fds") > 0
    assert _value(s, "process_cpu_seconds_total") > 0 and _value(s, "process_start_time_seconds") > 0
    assert any(name == "python_info" for name, _ in s)
    # no _created series; one prefix for the sensor's own families
    assert "_created" not in text
    families = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    assert {f for f in families if not f.startswith(("dlp_",) + STANDARD_PREFIXES)} == set()
    p = subprocess.run([require_tool("promtool"), "check", "metrics"], input=text.encode(), capture_output=True)
    assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()


def test_expect_primes_what_a_worker_runs():
    m = Metrics()
    m.expect(taps=("kafka",), signatures=("us-ssn",), kafka=("worker",), topics=("dlp.exchanges", "dlp.findings"))
    s = _samples(m.exposition().decode())
    for verdict in SCANNED_VERDICTS:
        assert _value(s, "dlp_exchanges_total", tap="kafka", verdict=verdict) == 0
    assert _value(s, "dlp_exchanges_total", tap="kafka", verdict="mirrored") is None      # only a sidecar mirrors
    for kind in KAFKA_KNOWN["worker"]["worker_duplicates"]["kind"]:
        assert _value(s, "dlp_worker_duplicates_total", kind=kind) == 0
    for topic in ("dlp.exchanges", "dlp.findings"):
        assert _value(s, "dlp_deadletters_total", topic=topic) == 0
        assert _value(s, "dlp_worker_rewinds_total", topic=topic) == 0
    assert _value(s, "dlp_findings_total", signature="us-ssn") == 0
    assert not [k for k in s if k[0] == "dlp_kafka_up"]       # a gauge at 0 would read "broker down"


def _declared() -> dict[str, dict[str, set[str]]]:
    """Metrics attribute -> label -> the values sensor/metrics declares."""
    out: dict[str, dict[str, set[str]]] = {}
    for table in (KNOWN, BY_TAP, *KAFKA_KNOWN.values()):
        for attr, labels in table.items():
            for label, values in labels.items():
                out.setdefault(attr, {}).setdefault(label, set()).update(values)
    for attr in ("exchanges", "bytes_scanned", "scan_seconds"):
        out.setdefault(attr, {})["tap"] = set(TAPS)
    out["kafka_errors"]["component"] = out.setdefault("kafka_up", {})["component"] = set(KAFKA_KNOWN)
    return out


def test_every_label_literal_in_the_code_is_declared():
    """A value the code passes to ``.labels()`` that sensor/metrics does not know would appear only
    at its first increment — the very gap the pre-initialisation closes."""
    declared, checked, missing = _declared(), 0, []
    for path in (ROOT / "sensor").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "labels"
                    and isinstance(node.func.value, ast.Attribute) and node.func.value.attr in declared):
                continue
            attr = node.func.value.attr
            for kw in node.keywords:
                if kw.arg in declared[attr] and isinstance(kw.value, ast.Constant):
                    checked += 1
                    if kw.value.value not in declared[attr][kw.arg]:
                        missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {attr}({kw.arg}={kw.value.value!r})")
    assert not missing, missing
    assert checked >= 30, checked                         # the scan found the code's metric calls
    assert set(SCANNED_VERDICTS) == set(VERDICTS)


# -- a real Prometheus --------------------------------------------------------------------------

def _get(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url, timeout=10).read())


def _poll(what: str, cond, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"{what}: not seen within {timeout:.0f} s")


def test_real_prometheus_fires_DLPTakedownHappened_on_the_first_trip(site, tmp_path):
    """Pod "a" is scraped (its series at 0) and then trips; pod "b" trips before Prometheus has
    ever scraped it, so its takedown series is absent and then 1 — a new pod serving a leak at once."""
    exe = require_tool("prometheus")
    a = Sidecar.create(tmp_path / "a", site.url).start()
    b = Sidecar.create(tmp_path / "b", site.url).start()
    prom = None
    try:
        assert curl(b.url + copy_to(site, ROSTER, "exports/prom-first-b.csv"))[1] == 451
        assert b.metric("dlp_takedowns_total", source="trip") == 1
        port = free_port()
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "250ms", "evaluation_interval": "250ms"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "dlp-sensor", "static_configs": [
                {"targets": [f"127.0.0.1:{a.metrics_port}"], "labels": {"namespace": "web", "pod": "a"}},
                {"targets": [f"127.0.0.1:{b.metrics_port}"], "labels": {"namespace": "web", "pod": "b"}}]}]}))
        prom = subprocess.Popen([exe, f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"))
        base = f"http://127.0.0.1:{port}/api/v1"
        wait_http(base.removesuffix("/api/v1") + "/-/ready", proc=prom, log=tmp_path / "prometheus.log")

        def query(expr: str) -> list[dict]:
            return _get(f"{base}/query?query={urllib.parse.quote(expr)}")["data"]["result"]

        def firing() -> dict[str, dict]:
            alerts = _get(f"{base}/alerts")["data"]["alerts"]
            return {x["labels"].get("pod"): x for x in alerts
                    if x["labels"]["alertname"] == "DLPTakedownHappened" and x["state"] == "firing"}

        # a has been scraped at 0 a few times before its trip: increase() has its baseline
        _poll("pod a's takedown series at 0 in three scrapes", lambda: query(
            'count_over_time(dlp_takedowns_total{pod="a", source="trip"}[1m]) >= 3'))
        assert float(query('max_over_time(dlp_takedowns_total{pod="a", source="trip"}[1m])')[0]["value"][1]) == 0
        assert "a" not in firing()
        assert curl(a.url + copy_to(site, ROSTER, "exports/prom-first-a.csv"))[1] == 451

        got = _poll("DLPTakedownHappened firing for pods a and b", lambda: (f := firing()) and {"a", "b"} <= set(f) and f)
        for pod in ("a", "b"):
            assert got[pod]["labels"]["severity"] == "critical" and got[pod]["labels"]["namespace"] == "web"
            assert got[pod]["annotations"]["runbook_url"] == RUNBOOK_BASE + "dlptakedownhappened"
        # b's series was never 0 in Prometheus: the alert fired from an absent series
        assert float(query('min_over_time(dlp_takedowns_total{pod="b", source="trip"}[10m])')[0]["value"][1]) == 1
    finally:
        if prom is not None:
            stop(prom)
        a.stop()
        b.stop()


# -- runbook, dashboard, chart copies -----------------------------------------------------------

def _github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a file's headings (lower case, punctuation dropped, spaces to '-')."""
    out = set()
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def test_every_rule_has_a_runbook_url_whose_anchor_is_in_docs_runbook():
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    anchors = _github_anchors(RUNBOOK.read_text())
    assert rules
    for r in rules:
        url = r["annotations"].get("runbook_url", "")
        assert url.startswith(RUNBOOK_BASE), (r["alert"], url)
        assert url.removeprefix(RUNBOOK_BASE) in anchors, (r["alert"], url, sorted(anchors))
        assert url.removeprefix(RUNBOOK_BASE) == r["alert"].lower()


def test_every_dashboard_query_takes_the_namespace_job_and_pod_variables():
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert {"namespace", "job", "pod"} <= set(variables)
    for name in ("namespace", "job", "pod"):
        assert "dlp_build_info" in variables[name]["definition"]
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]] + [a["expr"] for a in dash["annotations"]["list"]]
    assert len(exprs) > 20
    for expr in exprs:
        selectors = re.findall(r"\b[a-z_:]+\{([^}]*)\}", expr)
        assert selectors, expr
        for sel in selectors:
            for var in ("namespace", "job", "pod"):
                assert f'{var}=~"${var}"' in sel, (var, expr)


@pytest.mark.parametrize("deploy, chart", [("prometheus/rules.yaml", "rules.yaml"),
                                           ("prometheus/rules.test.yaml", "rules.test.yaml"),
                                           ("grafana/dashboard.json", "dashboard.json")])
def test_the_chart_carries_the_deploy_files(deploy, chart):
    assert (ROOT / "deploy" / deploy).read_bytes() == (CHART_FILES / chart).read_bytes()
