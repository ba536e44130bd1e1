"""The Helm chart ships exact-data-match indexes (issue 20 point 4): from a Secret or any volume source,
mounted read-only into every sensor container (sidecar, ICAP, ext_proc, workers), listed in the
rendered config's ``indexes:`` by their mounted path, each with its own key from a Secret when given.

Rendered by the real Helm engine (helm_python, as tests/test_chart.py does), linted strictly and
validated against the Kubernetes schemas; the rendered config is then loaded by a real Sensor with the
index files placed where the pod would see them.
"""
from __future__ import annotations

import re

import pytest
import yaml
from click.testing import CliRunner

from tests.test_chart import CHART, by_kind, config_of, helm_python, lint, render, render_files, sensor_container, validate

OWN_KEY = "a1" * 32
EDM = {"indexes": [
    {"name": "permit-holders", "existingSecret": "roster-edm", "secretKey": "roster.edm",
     "keySecret": {"name": "roster-edm-key", "key": "hmac"}, "trip": 0, "alert": 2},
    {"name": "applicants", "volume": {"persistentVolumeClaim": {"claimName": "edm-indexes", "readOnly": True}},
     "file": "2026/applicants.edm", "minFields": 3},
    {"name": "staff", "volume": {"configMap": {"name": "staff-edm"}}, "file": "staff.edm"},
]}
ALL_TAPS = {"edm": EDM, "icap": {"enabled": True}, "extproc": {"enabled": True}, "workers": {"enabled": True},
            "kafka": {"bootstrap": "kafka:9092"}}


def test_indexes_are_mounted_read_only_in_every_sensor_pod_and_listed_by_path():
    docs = render(ALL_TAPS)
    validate(docs)
    cfg = config_of(docs)
    assert cfg["indexes"] == [
        {"name": "permit-holders", "path": "/etc/dlp-sensor-edm/permit-holders/roster.edm", "trip": 0, "alert": 2,
         "key_env": "DLP_EDM_0_KEY"},
        {"name": "applicants", "path": "/etc/dlp-sensor-edm/applicants/2026/applicants.edm", "min_fields": 3},
        {"name": "staff", "path": "/etc/dlp-sensor-edm/staff/staff.edm"},
    ]
    from sensor.config import validate_file
    validate_file(cfg, "rendered", resolve=False)                   # the sensor's own check of the file
    deployments = by_kind(docs, "Deployment")
    assert {d["metadata"]["name"] for d in deployments} == {f"rel-dlp-sensor{s}" for s in ("", "-icap", "-extproc",
                                                                                           "-workers")}
    for dep in deployments:                                         # the fleet: one path everywhere
        pod = dep["spec"]["template"]["spec"]
        vols = {v["name"]: v for v in pod["volumes"]}
        assert vols["dlp-edm-0"]["secret"] == {"secretName": "roster-edm",
                                               "items": [{"key": "roster.edm", "path": "roster.edm"}]}
        assert vols["dlp-edm-1"]["persistentVolumeClaim"] == {"claimName": "edm-indexes", "readOnly": True}
        assert vols["dlp-edm-2"]["configMap"] == {"name": "staff-edm"}
        c = sensor_container(pod)
        mounts = {m["name"]: m for m in c["volumeMounts"] if m["name"].startswith("dlp-edm-")}
        assert {n: (m["mountPath"], m.get("readOnly")) for n, m in mounts.items()} == {
            "dlp-edm-0": ("/etc/dlp-sensor-edm/permit-holders", True),
            "dlp-edm-1": ("/etc/dlp-sensor-edm/applicants", True),
            "dlp-edm-2": ("/etc/dlp-sensor-edm/staff", True)}
        env = {e["name"]: e for e in c["env"]}
        assert env["DLP_EDM_0_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "roster-edm-key", "key": "hmac"}}
        assert "DLP_EDM_1_KEY" not in env and "DLP_EDM_2_KEY" not in env


def test_without_indexes_nothing_is_added():
    docs = render({"workers": {"enabled": True}, "kafka": {"bootstrap": "kafka:9092"}})
    assert "indexes" not in config_of(docs)
    for dep in by_kind(docs, "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        assert not [v for v in pod["volumes"] if v["name"].startswith("dlp-edm")]
        assert not [e for e in sensor_container(pod)["env"] if e["name"].startswith("DLP_EDM")]


def test_a_changed_index_key_secret_restarts_pods_and_a_changed_index_does_not():
    """The key is read from the environment at start (a new key Secret name: new pod template); the index
    file itself reloads live (the same pod template whatever the Secret holds)."""
    def checksum(vals):
        dep = [d for d in by_kind(render(vals), "Deployment") if d["metadata"]["name"] == "rel-dlp-sensor"][0]
        return dep["spec"]["template"]["metadata"]["annotations"]["checksum/credentials"]
    base = checksum({"edm": EDM})
    other = yaml.safe_load(yaml.safe_dump(EDM))
    other["indexes"][0]["keySecret"]["name"] = "roster-edm-key-2"
    assert checksum({"edm": other}) != base
    assert checksum({"edm": EDM}) == base


INVALID = [
    ({"edm": {"indexes": [{"name": "x", "existingSecret": "s", "volume": {"configMap": {"name": "c"}},
                           "file": "f"}]}}, "/edm/indexes/0"),
    ({"edm": {"indexes": [{"name": "x", "volume": {"configMap": {"name": "c"}}}]}}, "/edm/indexes/0"),
    ({"edm": {"indexes": [{"name": "x"}]}}, "/edm/indexes/0"),
    ({"edm": {"indexes": [{"name": "Bad_Name", "existingSecret": "s"}]}}, "/edm/indexes/0/name"),
    ({"edm": {"indexes": [{"name": "x", "existingSecret": "s", "colour": 1}]}}, "/edm/indexes/0"),
    ({"edm": {"indexes": [{"name": "x", "existingSecret": "s", "keySecret": {"name": "k"}}]}},
     "/edm/indexes/0/keySecret"),
    ({"edm": {"indexes": [{"name": "x", "existingSecret": "s", "trip": -1}]}}, "/edm/indexes/0/trip"),
    ({"edm": {"indexes": [{"name": "x", "volume": {"name": "v", "emptyDir": {}}, "file": "f"}]}},
     "/edm/indexes/0"),
    ({"edm": {"indexes": [{"name": "x", "volume": {"configMap": {"name": "c"}}, "file": "/abs"}]}},
     "/edm/indexes/0/file"),
    ({"edm": {"index": []}}, "/edm"),
]


@pytest.mark.parametrize("vals,where", INVALID, ids=[str(i) for i in range(len(INVALID))])
def test_invalid_edm_values_are_rejected_by_the_schema(vals, where):
    report = lint(CHART, vals)
    assert any(where in e for e in report["errors"] + [m["error"] for m in report["messages"]]), report
    with pytest.raises(helm_python.HelmError, match=re.escape(where)):
        render_files(vals)


def test_two_indexes_of_one_name_are_refused():
    vals = {"edm": {"indexes": [{"name": "x", "existingSecret": "a"}, {"name": "x", "existingSecret": "b"}]}}
    with pytest.raises(helm_python.HelmError, match=r'edm.indexes\[1\].name "x" is used twice'):
        render_files(vals)


def test_the_rendered_config_loads_the_indexes_with_their_keys(tmp_path, monkeypatch):
    """What the pod does at start, here: the rendered sensor.yaml, the index files where the pod mounts
    them (moved under tmp_path), DLP_EDM_0_KEY as the Secret gives it; a real Sensor loads all three,
    the first with its own key, the others with the sensor's hmacKey."""
    from sensor import synth
    from sensor.cli.main import main as cli
    from sensor.config import load_config, with_overrides
    from sensor.runtime import Sensor
    sensor_key = "c3" * 32
    (tmp_path / "roster.csv").write_bytes(synth.breach_csv(200, seed=5))
    keyf = tmp_path / "own.key"
    keyf.write_text(OWN_KEY)
    cfg = config_of(render({"edm": EDM, "sensor": {"hmacKey": sensor_key}}))
    root = tmp_path / "pod"
    for e in cfg["indexes"]:
        path = root / e["path"].lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        args = ["--key-file", str(keyf)] if "key_env" in e else []
        if not args:
            monkeypatch.setenv("DLP_SENSOR_HMAC_KEY", sensor_key)   # as the chart's env gives it
        r = CliRunner().invoke(cli, ["index", "build", "--columns", "name=first_name+last_name,dob=date_of_birth",
                                     "--out", str(path), "--state-dir", str(tmp_path / "builder"), *args,
                                     str(tmp_path / "roster.csv")])
        assert r.exit_code == 0, r.output
        e["path"] = str(path)
    monkeypatch.setenv("DLP_SENSOR_HMAC_KEY", sensor_key)
    monkeypatch.setenv("DLP_EDM_0_KEY", OWN_KEY)
    cfg.update(state_dir=str(tmp_path / "state"), metrics=None, admin=None)
    (tmp_path / "sensor.yaml").write_text(yaml.safe_dump(cfg))
    s = Sensor(with_overrides(load_config(tmp_path / "sensor.yaml")))
    try:
        got = {i.name: (i.key.hex(), i.min_fields, i.trip, i.alert) for i in s.edm.indexes}
        assert got == {"permit-holders": (OWN_KEY, 2, 0, 2), "applicants": (sensor_key, 3, 3, 1),
                       "staff": (sensor_key, 2, 3, 1)}
        assert OWN_KEY not in (tmp_path / "sensor.yaml").read_text()
    finally:
        s.edm.close()
