"""Deployment artefacts: the Prometheus rules (promtool), and every PromQL expression of the
dashboard and the rules run against a real Prometheus scraping a running sidecar. The Helm chart's
tests are in tests/test_chart.py."""
from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from sensor.sample_site import ROSTER, build_site
from tests.conftest import require_tool
from tests.procs import Sidecar, Upstream, free_port, stop, wait_http
from tests.test_proxy import curl

ROOT = Path(__file__).resolve().parents[1]


def test_promtool_checks_and_unit_tests_the_rules():
    promtool = require_tool("promtool")
    rules = ROOT / "deploy" / "prometheus"
    for args in (["check", "rules", "rules.yaml"], ["test", "rules", "rules.test.yaml"]):
        p = subprocess.run([promtool, *args], cwd=rules, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
    tested = set(re.findall(r"alertname: (\w+)", (rules / "rules.test.yaml").read_text()))
    assert tested == set(re.findall(r"alert: (\w+)", (rules / "rules.yaml").read_text()))


def _expressions() -> list[str]:
    dash = json.loads((ROOT / "deploy" / "grafana" / "dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [a["expr"] for a in dash["annotations"]["list"]]
    exprs += [re.fullmatch(r"label_values\((.+), \w+\)", v["definition"]).group(1)      # the variables' series
              for v in dash["templating"]["list"] if v["type"] == "query"]
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yaml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return [e.replace("$__rate_interval", "1m").replace("$namespace", ".*").replace("$job", ".*").replace("$pod", ".*")
            for e in exprs]


def _exported_names(metrics_text: str) -> set[str]:
    names = set()
    for m in re.finditer(r"^# TYPE (\S+) (\w+)", metrics_text, re.M):
        name, kind = m.groups()
        names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else \
            {f"{name}_info"} if kind == "info" else {name}
    return names


@pytest.fixture(scope="module")
def prometheus_on_sidecar(tmp_path_factory):
    """A sidecar with traffic behind it (pages, leaks, a dead alert sink, a corrupt gzip, a
    timeout), scraped every 250 ms by a real Prometheus on loopback."""
    exe = require_tool("prometheus")
    tmp = tmp_path_factory.mktemp("prom")
    up = Upstream.start(build_site(tmp / "site", people=500))
    sc = Sidecar.create(tmp / "sc", up.url, {"proxy": {"upstream_timeout": 0.5}, "alerts": {
        "retry_initial": 0.2, "retry_max": 1,
        "sinks": [{"type": "jsonl", "path": "alerts.jsonl"},
                  {"type": "webhook", "url": f"http://127.0.0.1:{free_port()}/down"}]}}).start()
    port = free_port()
    (tmp / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "250ms", "evaluation_interval": "250ms"},
        "scrape_configs": [{"job_name": "dlp-sensor", "static_configs": [{"targets": [f"127.0.0.1:{sc.metrics_port}"]}]}]}))
    prom = subprocess.Popen([exe, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=open(tmp / "prometheus.log", "wb"))
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", proc=prom)
        for path in ("/", "/stats-1.html", "/api/counties.json", "/slow?s=2"):
            curl(sc.url + path)
        (up.root / "bad.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
        curl(sc.url + "/bad.gz")
        for i in range(3):
            (up.root / f"leak-{i}.csv").write_bytes(f"# {i}\n".encode() + (up.root / ROSTER).read_bytes())
            curl(sc.url + f"/leak-{i}.csv")
            curl(sc.url + f"/leak-{i}.csv")
        api = f"http://127.0.0.1:{port}/api/v1/query?query="
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:                 # three scrapes after the traffic
            r = json.loads(urllib.request.urlopen(api + urllib.parse.quote("count_over_time(up[1m])")).read())
            if r["data"]["result"] and float(r["data"]["result"][0]["value"][1]) >= 3:
                break
            time.sleep(0.1)
        metrics = urllib.request.urlopen(sc.metrics + "/metrics").read().decode()
        yield api, metrics
    finally:
        stop(prom)
        sc.stop()
        up.stop()


@pytest.mark.parametrize("expr", _expressions())
def test_every_promql_expression_runs_on_real_prometheus_against_exported_metrics(prometheus_on_sidecar, expr):
    api, metrics = prometheus_on_sidecar
    exported = _exported_names(metrics) | {"up"}
    assert "dlp_build_info" in exported                 # the dashboard's namespace/job/pod variables read it
    names = set(re.findall(r"\b(dlp_[a-z_]+|process_[a-z_]+|up)\b(?=\s*(?:[{\[)]|$))", expr))
    assert names, expr
    assert names <= exported, f"not exported by the sensor: {names - exported}"
    r = json.loads(urllib.request.urlopen(api + urllib.parse.quote(expr), timeout=10).read())
    assert r["status"] == "success", r


def test_the_scrape_sees_the_traffic(prometheus_on_sidecar):
    api, _ = prometheus_on_sidecar

    def q(e: str) -> float:
        r = json.loads(urllib.request.urlopen(api + urllib.parse.quote(e)).read())["data"]["result"]
        return sum(float(x["value"][1]) for x in r)

    assert q("sum(dlp_trips_total)") == 3 and q("max(dlp_takedowns_active)") == 3
    assert q("sum(dlp_refusals_total)") == 3 and q('sum(dlp_upstream_errors_total{kind="timeout"})') == 1
    assert q("sum(dlp_decode_limits_total)") >= 1 and q("sum(dlp_alert_delivery_failures_total)") >= 1
    assert q("sum(dlp_bytes_scanned_total)") > 0 and q('up{job="dlp-sensor"}') == 1
