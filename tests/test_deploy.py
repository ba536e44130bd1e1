"""Deployment artefacts, validated offline: the Helm chart (Helm's library: strict lint + render,
kubernetes-validate --strict), the Prometheus rules (promtool), and every PromQL expression of the
dashboard and the rules run against a real Prometheus scraping a running sidecar."""
from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import helm_python
import kubernetes_validate
import pytest
import yaml

from sensor.config import parse_config
from sensor.detect.engine import Engine
from sensor.detect.pack import load_pack
from sensor.detect.selftest import run_examples
from sensor.sample_site import ROSTER, build_site
from tests.conftest import require_tool
from tests.procs import Sidecar, Upstream, free_port, stop, wait_http
from tests.test_proxy import curl

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "dlp-sensor"
KUBE = "1.31.0"
VALUES = [None] + sorted(p.name for p in (CHART / "examples").glob("*.yaml"))


def render(values_file: str | None) -> list[dict]:
    vals = yaml.safe_load((CHART / "examples" / values_file).read_text()) if values_file else None
    report = helm_python.lint(str(CHART), vals, strict=True, kube_version=f"v{KUBE}")
    assert not report["errors"], report
    assert not [m for m in report["messages"] if m["severity"] >= 2], report["messages"]
    chart = helm_python.Chart.load(str(CHART))
    out = chart.render(vals, name="rel", namespace="web")
    return [d for text in out.values() for d in yaml.safe_load_all(text) if d]


@pytest.mark.parametrize("values_file", VALUES)
def test_chart_lints_renders_and_validates(values_file):
    docs = render(values_file)
    assert {"ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget"} <= {d["kind"] for d in docs}
    for d in docs:
        if d["apiVersion"].startswith("monitoring.coreos.com/"):
            continue                       # CRDs: no schema in kubernetes-validate; checked below
        kubernetes_validate.validate(d, KUBE, strict=True)


def _by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def test_sidecar_pattern_security_and_probes():
    docs = render("sidecar.yaml")
    [dep] = _by_kind(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    app, sensor = pod["containers"]
    assert sensor["name"] == "dlp-sensor" and sensor["args"][:1] == ["proxy"]
    sc = sensor["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sensor["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sensor["readinessProbe"]["httpGet"]["path"] == "/readyz"
    [svc] = [s for s in _by_kind(docs, "Service") if s["metadata"]["name"] == "rel-dlp-sensor"]
    http = next(p for p in svc["spec"]["ports"] if p["name"] == "http")
    assert http["targetPort"] == "http" and {"name": "http", "containerPort": 8000, "protocol": "TCP"} in sensor["ports"]
    [np] = _by_kind(docs, "NetworkPolicy")
    open_ports = {p["port"] for rule in np["spec"]["ingress"] for p in rule["ports"]}
    assert 9103 not in open_ports and {8000, 9102} <= open_ports       # the admin port stays private
    [sm] = _by_kind(docs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    [pr] = _by_kind(docs, "PrometheusRule")
    assert pr["spec"] == yaml.safe_load((CHART / "files" / "rules.yaml").read_text())
    [dash] = [c for c in _by_kind(docs, "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dash["data"]["dlp-sensor.json"])["uid"] == "dlp-sensor"


def test_kafka_scale_out_values():
    """kafka.bootstrap reaches every container (fleet takedowns); workers run `worker` and get a metrics Service."""
    docs = render("workers-kafka.yaml")
    deps = {d["metadata"]["name"]: d for d in _by_kind(docs, "Deployment")}
    for dep in deps.values():
        c = next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "dlp-sensor")
        env = {e["name"]: e for e in c["env"]}
        assert env["DLP_KAFKA_BOOTSTRAP"]["value"] == "kafka-0.kafka:9092,kafka-1.kafka:9092"
        assert env["DLP_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "dlp-kafka-sasl",
                                                                             "key": "password"}
    worker = next(c for c in deps["rel-dlp-sensor-workers"]["spec"]["template"]["spec"]["containers"])
    assert worker["args"][0] == "worker" and deps["rel-dlp-sensor-workers"]["spec"]["replicas"] == 4
    [svc] = [s for s in _by_kind(docs, "Service") if s["metadata"]["name"] == "rel-dlp-sensor-workers"]
    assert [p["name"] for p in svc["spec"]["ports"]] == ["metrics"]
    [cm] = [c for c in _by_kind(docs, "ConfigMap") if c["metadata"]["name"].endswith("-config")]
    cfg = parse_config(yaml.safe_load(cm["data"]["sensor.yaml"]), "chart sensor.yaml")
    assert cfg.kafka.mirror and cfg.kafka.sasl_mechanism == "SCRAM-SHA-512" and cfg.kafka.topic("takedowns") == \
        "dlp.takedowns"
    vals = yaml.safe_load((CHART / "examples" / "workers-kafka.yaml").read_text())
    vals["kafka"]["bootstrap"] = ""
    with pytest.raises(Exception, match="workers.enabled needs kafka.bootstrap"):
        helm_python.Chart.load(str(CHART)).render(vals, name="rel", namespace="web")


def test_rendered_sensor_config_is_valid(tmp_path):
    docs = render("sidecar.yaml")
    [cm] = [c for c in _by_kind(docs, "ConfigMap") if c["metadata"]["name"].endswith("-config")]
    cfg = parse_config(yaml.safe_load(cm["data"]["sensor.yaml"]), "chart sensor.yaml")
    assert cfg.proxy.upstream == "http://127.0.0.1:8080" and cfg.proxy.listen == "0.0.0.0:8000"
    assert cfg.proxy.route("/exports/x.csv").on_error == "closed" and cfg.admin == "127.0.0.1:9103"
    assert [s["type"] for s in cfg.sinks] == ["stdout", "webhook", "pagerduty"]
    packs = []
    for path in cfg.signatures:
        f = tmp_path / Path(path).name
        f.write_text(cm["data"][Path(path).name])
        packs.append(f)
    engine = Engine(load_pack(packs, include_default=False))
    n, failures = run_examples(engine)
    assert [s.id for s in engine.signatures] == ["employee-badge"] and n == 2 and not failures


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
    timeout), scraped every second by a real Prometheus on loopback."""
    exe = require_tool("prometheus")
    tmp = tmp_path_factory.mktemp("prom")
    up = Upstream.start(build_site(tmp / "site", people=500))
    sc = Sidecar.create(tmp / "sc", up.url, {"proxy": {"upstream_timeout": 0.5}, "alerts": {
        "retry_initial": 0.2, "retry_max": 1,
        "sinks": [{"type": "jsonl", "path": "alerts.jsonl"},
                  {"type": "webhook", "url": f"http://127.0.0.1:{free_port()}/down"}]}}).start()
    port = free_port()
    (tmp / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
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
            time.sleep(0.5)
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
