"""The configuration file's schema: bad files refused by the real CLI (exit 2, the key named, no
traceback), secrets from files and the environment (never echoed), the JSON Schema export checked
against the chart's rendered configs, and the generated reference kept current."""
from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path

import aiohttp
import jsonschema
import pytest
import yaml

from sensor.alerts.sinks import make_sink
from sensor.config import Config, ConfigError, json_schema, parse_config
from sensor.sample_site import build_site
from tests.procs import BIN, ROOT, Sidecar, Upstream, free_port
from tests.test_alerts import result  # noqa: F401  (fixture: a scan that trips)

SECRET = "f00dfeedf00dfeedf00dfeedf00dfeed"          # a well-formed key; must never be echoed
PD_KEY = "R0ut1ngKeyThatMustNotLeak0000000"
NUMERIC = 987654321987                        # a secret YAML reads as a number


def cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    import os
    return subprocess.run([str(BIN / "dlp-sensor"), *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd or ROOT, env={**os.environ, **(env or {})})


def write(tmp_path: Path, raw: dict | str, name: str = "bad.yaml") -> Path:
    f = tmp_path / name
    f.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return f


# -- every bad-config case of issue 17, through the real commands ------------------------------

BAD = {
    "sink-port": ({"alerts": {"sinks": [{"type": "syslog", "host": "siem", "port": "five-one-four"}]}},
                  "alerts.sinks[0].port", "five-one-four"),
    # a webhook URL may carry a token: it is a secret, so the error says what is wrong without quoting it
    "sink-url": ({"alerts": {"sinks": [{"type": "webhook", "url": "not a url"}]}}, "alerts.sinks[0].url",
                 "must be an http:// or https:// URL"),
    "typo-top": ({"colour": "blue"}, "colour", "unknown key"),
    "typo-proxy": ({"proxy": {"lisen": "127.0.0.1:8000"}}, "proxy.lisen", "did you mean 'listen'"),
    "typo-route": ({"proxy": {"routes": [{"match": "/x/*", "mdoe": "monitor"}]}}, "proxy.routes[0].mdoe",
                   "did you mean 'mode'"),
    "typo-sink": ({"alerts": {"sinks": [{"type": "pagerduty", "routing_key": PD_KEY, "severty": "high"}]}},
                  "alerts.sinks[0].severty", "unknown key"),
    "typo-syslog": ({"alerts": {"sinks": [{"type": "syslog", "protcol": "tcp"}]}}, "alerts.sinks[0].protcol",
                    "did you mean 'protocol'"),
    "typo-kafka-worker": ({"kafka": {"worker": {"partitons": 4}}}, "kafka.worker.partitons", "unknown key"),
    "hmac-not-hex": ("hmac_key: nothex!\n", "hmac_key", "must be hex"),
    "max-scans": ({"proxy": {"max_scans": "many"}}, "proxy.max_scans", "must be a whole number >= 1 (got 'many')"),
    "sink-type": ({"alerts": {"sinks": [{"type": "fax"}]}}, "alerts.sinks[0].type", "unknown sink 'fax'"),
    "secret-file": ({"alerts": {"sinks": [{"type": "pagerduty", "routing_key_file": "/nonexistent/pd"}]}},
                    "alerts.sinks[0].routing_key_file", "cannot read '/nonexistent/pd'"),
    "secret-env": ({"alerts": {"sinks": [{"type": "splunk_hec", "url": "https://splunk:8088",
                                          "token_env": "DLP_TEST_UNSET_TOKEN"}]}},
                   "alerts.sinks[0].token_env", "DLP_TEST_UNSET_TOKEN is not set"),
    "secret-missing": ({"alerts": {"sinks": [{"type": "pagerduty"}]}}, "alerts.sinks[0].routing_key",
                       "routing_key_file"),
}


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("command", ["proxy", "config check"])
def test_bad_config_exits_2_naming_the_key(tmp_path, case, command):
    raw, key, why = BAD[case]
    f = write(tmp_path, raw)
    args = ["config", "check", str(f)] if command == "config check" else \
        ["proxy", "--config", str(f), "--state-dir", str(tmp_path / "state"), "--metrics", "off", "--admin", "off",
         "--listen", f"127.0.0.1:{free_port()}"]
    p = cli(*args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert f"{f}.{key}:" in p.stderr and why in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and PD_KEY not in p.stderr


@pytest.mark.parametrize("command", [["icap"], ["extproc"], ["run"], ["worker", "--kafka", "127.0.0.1:9"],
                                     ["takedowns", "list"], ["report"]])
def test_every_command_that_loads_the_config_exits_2(tmp_path, command):
    f = write(tmp_path, "hmac_key: nothex!\nproxy: {}\n")
    p = cli(*command, "--config", str(f), "--state-dir", str(tmp_path / "state"))
    assert p.returncode == 2 and f"{f}.hmac_key: must be hex" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_bad_hmac_key_in_the_environment_exits_2(tmp_path):
    p = cli("takedowns", "list", "--state-dir", str(tmp_path), env={"DLP_SENSOR_HMAC_KEY": "nothex!"})
    assert p.returncode == 2 and "$DLP_SENSOR_HMAC_KEY: must be hex" in p.stderr and "Traceback" not in p.stderr


def test_a_good_file_checks_ok_and_errors_are_all_listed(tmp_path):
    good = write(tmp_path, {"proxy": {"upstream": "http://127.0.0.1:8080", "routes": [{"match": "/e/*"}]},
                            "alerts": {"sinks": [{"type": "stdout"}]}}, "good.yaml")
    p = cli("config", "check", str(good))
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr
    two = write(tmp_path, {"proxy": {"mode": "block", "max_scans": -1}})
    p = cli("config", "check", str(two))
    assert p.returncode == 2 and ".proxy.mode: must be one of monitor, enforce" in p.stderr
    assert ".proxy.max_scans: must be a whole number >= 1 (got -1)" in p.stderr


def test_check_loads_the_policy_too(tmp_path):
    f = write(tmp_path, {"policy": {"trip": {"strong_records": "lots"}}})  # the policy's own checks
    p = cli("config", "check", str(f))
    assert p.returncode == 2 and "strong_records" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_offline_check_skips_secrets_and_files(tmp_path):
    f = write(tmp_path, {"hmac_key_file": "/run/secrets/hmac", "proxy": {"block_page": "/etc/dlp/451.html"},
                         "alerts": {"sinks": [{"type": "pagerduty", "routing_key_env": "PD_ROUTING_KEY"}]}})
    assert cli("config", "check", "--offline", str(f)).returncode == 0
    p = cli("config", "check", str(f))
    assert p.returncode == 2 and ".proxy.block_page: no such file '/etc/dlp/451.html'" in p.stderr
    assert ".alerts.sinks[0].routing_key_env: environment variable PD_ROUTING_KEY is not set" in p.stderr
    assert ".hmac_key_file: cannot read '/run/secrets/hmac'" in p.stderr            # every problem in one run
    bad = write(tmp_path, {"alerts": {"sinks": [{"type": "pagerduty"}]}}, "bad2.yaml")
    assert cli("config", "check", "--offline", str(bad)).returncode == 2       # the shape is still checked


# -- secrets -------------------------------------------------------------------------------------

def test_secrets_from_files_and_the_environment(tmp_path, monkeypatch):
    (tmp_path / "hmac").write_text(SECRET + "\n")
    (tmp_path / "hec").write_text("hec-token-1\n\n")           # only one trailing newline is stripped
    (tmp_path / "auth").write_text("Bearer abc")
    monkeypatch.setenv("PD_KEY", PD_KEY)
    monkeypatch.setenv("ADMIN_TOKEN", "t" * 20)
    monkeypatch.setenv("SASL_PW", "pw-from-env")
    monkeypatch.setenv("SLACK_URL", "https://hooks.example.org/services/T/B/X")
    c = parse_config({
        "hmac_key_file": str(tmp_path / "hmac"),
        "admin": {"token_env": "ADMIN_TOKEN"},
        "kafka": {"sasl_password_env": "SASL_PW", "security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"},
        "alerts": {"sinks": [
            {"type": "pagerduty", "routing_key_env": "PD_KEY"},
            {"type": "splunk_hec", "url": "https://splunk:8088", "token_file": str(tmp_path / "hec")},
            {"type": "webhook", "url": "https://soc/hook", "headers": {"X-Team": "soc"},
             "authorization_file": str(tmp_path / "auth")},
            {"type": "slack", "url_env": "SLACK_URL"}]}})
    assert c.hmac_key == SECRET and c.admin_token == "t" * 20 and c.kafka.sasl_password == "pw-from-env"
    pd, hec, hook, slack = c.sinks
    assert pd["routing_key"] == PD_KEY and "routing_key_env" not in pd
    assert hec["token"] == "hec-token-1\n"
    assert hook["headers"] == {"X-Team": "soc", "Authorization": "Bearer abc"} and "authorization" not in hook
    assert slack["url"] == "https://hooks.example.org/services/T/B/X"
    assert [make_sink(s, f"sinks[{i}]").name for i, s in enumerate(c.sinks)] == \
        ["pagerduty", "splunk_hec", "webhook", "slack"]


async def test_secrets_from_files_and_env_reach_the_receivers(tmp_path, monkeypatch, result):
    """The validated sink values are what make_sink gets: each credential read from a file or the
    environment arrives where the real service expects it."""
    from tests.test_alerts import _alert, _receiver
    runner, base, got = await _receiver()
    (tmp_path / "hec").write_text("hec-token-from-file\n")
    monkeypatch.setenv("HOOK_AUTH", "Bearer hook-secret")
    monkeypatch.setenv("PD_KEY", PD_KEY)
    monkeypatch.setenv("SLACK_URL", base + "/slack")
    c = parse_config({"alerts": {"sinks": [
        {"type": "webhook", "url": base + "/hook", "authorization_env": "HOOK_AUTH"},
        {"type": "pagerduty", "routing_key_env": "PD_KEY", "url": base + "/v2/enqueue"},
        {"type": "splunk_hec", "url": base, "token_file": str(tmp_path / "hec")},
        {"type": "slack", "url_env": "SLACK_URL"}]}})
    alert = _alert(result)
    try:
        for i, raw in enumerate(c.sinks):
            sink = make_sink(raw, f"alerts.sinks[{i}]")
            sink.session = aiohttp.ClientSession()
            try:
                await sink.deliver(alert)
            finally:
                await sink.session.close()
    finally:
        await runner.cleanup()
    by = {path: (headers, body) for path, headers, body in got}
    assert by["/hook"][0]["Authorization"] == "Bearer hook-secret"
    assert by["/v2/enqueue"][1]["routing_key"] == PD_KEY
    assert by["/services/collector/event"][0]["Authorization"] == "Splunk hec-token-from-file"
    assert "records" in by["/slack"][1]["text"]


@pytest.mark.parametrize("raw, key", [
    ({"hmac_key": SECRET, "hmac_key_env": "DLP_TEST_KEY"}, "config.hmac_key_env: give one of hmac_key, hmac_key_env"),
    ({"hmac_key_file": "HMACFILE"}, "config.hmac_key_file: the value it gives must be hex"),
    ({"hmac_key": SECRET[:8]}, "config.hmac_key: must be at least 16 bytes"),
    ({"admin": {"token": SECRET[:10]}}, "config.admin.token: must be a string of at least 16 characters"),
    ({"alerts": {"sinks": [{"type": "slack", "url": "hooks-" + SECRET}]}}, "config.alerts.sinks[0].url: must be an"),
    ({"alerts": {"sinks": [{"type": "splunk_hec", "url": "http://s:1", "token": NUMERIC}]}},
     "config.alerts.sinks[0].token: must be a string"),
    ({"alerts": {"sinks": [{"type": "webhook", "url": "http://s:1", "headers": {"Authorization": NUMERIC}}]}},
     "config.alerts.sinks[0].headers"),
])
def test_errors_never_print_a_secret(tmp_path, monkeypatch, raw, key):
    monkeypatch.setenv("DLP_TEST_KEY", SECRET)
    (tmp_path / "hmac").write_text("not hex " + SECRET + "\n")
    raw = json.loads(json.dumps(raw).replace("HMACFILE", str(tmp_path / "hmac")))
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert key in str(e.value)
    for part in (SECRET, SECRET[:8], SECRET[:10], str(NUMERIC)):
        assert part not in str(e.value)


def test_secret_error_through_the_cli_does_not_print_it(tmp_path):
    (tmp_path / "hmac").write_text("zz" + SECRET)
    p = cli("config", "check", str(write(tmp_path, {"hmac_key_file": str(tmp_path / "hmac")})))
    assert p.returncode == 2 and ".hmac_key_file: the value it gives must be hex" in p.stderr
    assert SECRET not in p.stderr + p.stdout
    p = cli("proxy", "--config", str(write(tmp_path, {"admin": {"token": SECRET[:10]}})), "--state-dir", str(tmp_path))
    assert p.returncode == 2 and ".admin.token: must be a string of at least 16 characters" in p.stderr
    assert SECRET[:10] not in p.stderr + p.stdout


def test_secrets_reach_a_running_sidecar(tmp_path):
    """hmac_key_env and admin.token_file used by a real sidecar: no generated key or token, the
    admin API accepts the file's token and refuses another."""
    (tmp_path / "token").write_text("admin-token-from-file-0123\n")
    up = Upstream.start(build_site(tmp_path / "www", people=10))
    sc = Sidecar.create(tmp_path / "sc", up.url, {"hmac_key_env": "DLP_TEST_HMAC",
                                                  "admin": {"token_file": str(tmp_path / "token")}})
    import os
    os.environ["DLP_TEST_HMAC"] = SECRET
    try:
        sc.start()
        req = urllib.request.Request(sc.admin + "/takedowns",
                                     headers={"Authorization": "Bearer admin-token-from-file-0123"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
        bad = urllib.request.Request(sc.admin + "/takedowns", headers={"Authorization": "Bearer " + "x" * 26})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(bad, timeout=10)
        assert e.value.code == 401
        assert not (sc.state / "hmac.key").exists() and not (sc.state / "admin.token").exists()
        assert SECRET not in sc.log()
    finally:
        del os.environ["DLP_TEST_HMAC"]
        sc.stop()
        up.stop()


# -- schema export -----------------------------------------------------------------------------

def test_schema_export_is_json_schema_and_validates_the_chart_configs():
    from tests.test_chart import VALUES, by_kind, example, render
    p = cli("config", "schema")
    assert p.returncode == 0
    schema = json.loads(p.stdout)
    assert schema == json.loads(json.dumps(json_schema()))
    jsonschema.Draft202012Validator.check_schema(schema)
    v = jsonschema.Draft202012Validator(schema)
    for values_file in VALUES:
        [cm] = [c for c in by_kind(render(example(values_file)), "ConfigMap") if c["metadata"]["name"].endswith("-config")]
        raw = yaml.safe_load(cm["data"]["sensor.yaml"])
        assert not [e.message for e in v.iter_errors(raw)], values_file
        parse_config(raw, f"chart {values_file}", resolve=False)
    for bad in ({"colour": 1}, {"proxy": {"lisen": "x:1"}}, {"alerts": {"sinks": [{"type": "syslog", "port": "514"}]}},
                {"alerts": {"sinks": [{"type": "pagerduty"}]}}, {"hmac_key": SECRET, "hmac_key_file": "/k"},
                {"alerts": {"sinks": [{"type": "webhook", "url": "https://x", "tls": True}]}}):
        assert list(v.iter_errors(bad)), bad


def test_schema_accepts_what_the_parser_accepts():
    """The documented example configs (sink options included) pass both."""
    raw = {"sensor_id": "web-1", "metrics": False, "admin": None, "proxy": {"routes": [{"match": "/a"}]},
           "takedown": {"query": ["page"]}, "kafka": {"mirror": {"enabled": True}, "worker": {"partitions": 4}},
           "alerts": {"sinks": [{"type": "syslog", "protocol": "tcp", "tls": True, "port": 6514, "throttle": 0},
                                {"type": "webhook", "url": "https://soc/h", "dead_letter": False},
                                {"type": "pagerduty", "routing_key_env": "PD", "name": "pd", "throttle": 60}]}}
    jsonschema.validate(raw, json_schema())
    c = parse_config(raw, resolve=False)
    assert c.metrics is None and c.admin is None and c.query.params == frozenset({"page"})
    assert c.sinks[0]["tls"] is True and c.sinks[1]["dead_letter"] is False and c.sinks[2]["throttle"] == 60


def test_defaults_of_the_schema_and_the_dataclasses_agree():
    parsed, default = asdict(parse_config({})), asdict(Config())
    assert parsed.pop("sinks") == [{"type": "stdout", "format": "ecs"}] and default.pop("sinks") == [{"type": "stdout"}]
    assert parsed == default


def test_config_reference_is_current():
    """docs/config-reference.md is `dlp-sensor config reference` (regenerate it after a schema change)."""
    from sensor.config_reference import render
    doc = (ROOT / "docs" / "config-reference.md").read_text()
    assert doc == render(), "stale: run `dlp-sensor config reference > docs/config-reference.md`"
    for key in ("`holdback_kib`", "`routing_key`", "`token_file`", "`ca_file`", "`dead_letter`", "`tls`"):
        assert key in doc


def test_a_bad_reload_names_the_key_and_the_old_config_keeps_serving(tmp_path):
    up = Upstream.start(build_site(tmp_path / "www", people=10))
    sc = Sidecar.create(tmp_path / "sc", up.url, {}).start()
    try:
        raw = yaml.safe_load(sc.config.read_text())
        raw["alerts"]["sinks"][0]["severty"] = "high"
        sc.config.write_text(yaml.safe_dump(raw))
        deadline = time.monotonic() + 20
        while "reload refused" not in sc.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f"{sc.config}.alerts.sinks[0].severty: unknown key" in sc.log()
        with urllib.request.urlopen(sc.url + "/contact.html", timeout=10) as r:
            assert r.status == 200
        assert sc.metric("dlp_reloads_total", result="error") >= 1
    finally:
        sc.stop()
        up.stop()
