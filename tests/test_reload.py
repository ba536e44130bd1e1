"""Reload tells the truth: every key of the file reloads for real, or a change to a key that needs a
restart refuses the whole reload with a log line and a metric naming it. In memory: a Sensor on a
tmp dir, a rewritten config file, ``await sensor.reload()``."""
from __future__ import annotations

import asyncio
import copy
import logging
import time
from dataclasses import make_dataclass
from pathlib import Path

import orjson
import pytest
import yaml
from aiohttp import web

from sensor import config_reload, synth
from sensor.alerts.schema import AlertContext, build_alert
from sensor.config import Config, load_config, with_overrides
from sensor.metrics import RESTART_KEYS
from sensor.runtime import Sensor
from tests.conftest import KEY, scan_bytes
from tests.procs import free_port

PACK = """
signatures:
  - id: employee-badge
    name: Employee badge number
    severity: high
    category: strong
    kind: employee-id
    patterns:
      - expr: 'EMP-[0-9]{6}'
    examples: ['badge EMP-123456']
    negative_examples: ['EMP-12']
"""


def _base(tmp: Path) -> dict:
    (tmp / "pack.yaml").write_text(PACK)
    return {"default_signatures": False, "signatures": [str(tmp / "pack.yaml")],
            "proxy": {"listen": "127.0.0.1:18000", "upstream": "http://127.0.0.1:9", "mode": "enforce"},
            "alerts": {"sinks": [{"type": "jsonl", "path": "alerts.jsonl"}]}}


def _sensor(tmp: Path, conf: dict, **flags) -> Sensor:
    path = tmp / "sensor.yaml"
    path.write_text(yaml.safe_dump(conf))
    if "state_dir" not in conf:
        flags["state_dir"] = str(tmp / "state")
    return Sensor(with_overrides(load_config(path), **flags))


def _write(sensor: Sensor, conf: dict) -> None:
    assert sensor.config.path is not None
    sensor.config.path.write_text(yaml.safe_dump(conf))


def _count(sensor: Sensor, name: str, **labels: str) -> float:
    return sensor.metrics.registry.get_sample_value(name, labels) or 0.0


async def _close(sensor: Sensor) -> None:
    await sensor.dispatcher.stop()
    sensor.ledger.close()
    sensor.registry.close()
    sensor.spool.close()


async def test_reloadable_keys_are_applied(tmp_path):
    conf = _base(tmp_path)
    s = _sensor(tmp_path, conf)
    try:
        gen = s.detector.generation
        page = tmp_path / "page.html"
        page.write_bytes(b"<p>withdrawn (reloaded page)</p>")
        new = copy.deepcopy(conf)
        new["proxy"].update(mode="monitor", holdback_kib=8, on_error="closed", max_scans=3, block_page=str(page),
                            upstream_timeout=7.0, trust_forwarded=True,
                            routes=[{"match": "/exports/*", "mode": "enforce", "holdback_kib": 0}])
        new["icap"] = {"holdback_kib": 16, "preview": 1024}
        new["takedown"] = {"query": "keep", "fingerprint_kib": 32}
        new["ledger"] = {"client_retention_days": 7}
        new["alerts"]["source_ip"] = "drop"
        new["policy"] = {"trip": {"strong_records": 77}}
        new["admin"] = {"token": "rotated-admin-token-0123"}
        _write(s, new)
        assert await s.reload() is True
        p = s.config.proxy
        assert (p.mode, p.holdback, p.on_error, p.max_scans, p.upstream_timeout, p.trust_forwarded) == \
            ("monitor", 8 << 10, "closed", 3, 7.0, True)
        assert p.route("/exports/x.csv").mode == "enforce" and p.route("/exports/x.csv").holdback == 0
        assert p.route("/other").mode == "monitor"
        assert s.block_page() == b"<p>withdrawn (reloaded page)</p>"
        assert (s.config.icap.holdback, s.config.icap.preview) == (16 << 10, 1024)
        assert s.config.query.mode == "keep" and s.config.fingerprint_bytes == 32 << 10
        assert s.ledger.client_retention == 7 * 86400.0 and s.config.source_ip == "drop"
        assert s.token == "rotated-admin-token-0123"              # the admin API checks it per request
        assert s.detector.generation != gen and s.detector.policy.trip.strong_records == 77
        assert _count(s, "dlp_reloads_total", result="ok") == 1
        assert _count(s, "dlp_reloads_total", result="restart_required") == 0
    finally:
        await _close(s)


def _restart_cases(tmp: Path) -> list[tuple[str, object]]:
    cert, key = tmp / "c.pem", tmp / "k.pem"
    cert.write_text("x")
    key.write_text("x")

    def at(path: str, value):
        def change(c: dict) -> None:
            *parents, leaf = path.split(".")
            for k in parents:
                c = c.setdefault(k, {})
            c[leaf] = value
        return change
    return [("proxy.listen", at("proxy.listen", "127.0.0.1:18001")),
            ("proxy.upstream", at("proxy.upstream", "http://127.0.0.1:10")),
            ("proxy.tls", at("proxy.tls", {"cert": str(cert), "key": str(key)})),
            ("proxy.max_connections", at("proxy.max_connections", 10)),
            ("icap.listen", at("icap.listen", "127.0.0.1:11344")),
            ("extproc.listen", at("extproc.listen", "127.0.0.1:15051")),
            ("metrics", at("metrics", "127.0.0.1:19102")),
            ("admin.listen", at("admin.listen", "127.0.0.1:19103")),
            ("state_dir", at("state_dir", str(tmp / "elsewhere"))),
            ("hmac_key", at("hmac_key", "ab" * 32)),
            ("sensor_id", at("sensor_id", "renamed")),
            ("kafka.bootstrap", at("kafka.bootstrap", "127.0.0.1:9092")),
            ("kafka.topic_prefix", at("kafka.topic_prefix", "other.")),
            ("kafka.mirror.enabled", at("kafka.mirror", {"enabled": True}))]


@pytest.mark.parametrize("key", [k for k, _ in _restart_cases(Path("/tmp"))])
async def test_a_key_that_needs_a_restart_refuses_the_whole_reload(tmp_path, caplog, key):
    conf = _base(tmp_path)
    if key == "state_dir":                              # named by the file, not by --state-dir
        conf["state_dir"] = str(tmp_path / "state")
    s = _sensor(tmp_path, conf)
    try:
        running = s.config
        new = copy.deepcopy(conf)
        dict(_restart_cases(tmp_path))[key](new)
        new["proxy"]["mode"] = "monitor"                # a reloadable change in the same file: not applied
        _write(s, new)
        with caplog.at_level(logging.ERROR, logger="dlp_sensor"):
            assert await s.reload() is False
        assert s.config is running and s.config.proxy.mode == "enforce"
        assert _count(s, "dlp_reloads_total", result="restart_required") == 1
        assert _count(s, "dlp_reload_restart_required_total", key=key) == 1
        [line] = [r.getMessage() for r in caplog.records if "reload refused" in r.getMessage()]
        assert key in line and "restart" in line
        assert "ab" * 32 not in line                    # a changed secret is named, never shown
    finally:
        await _close(s)


async def test_flags_are_reapplied_and_win_over_the_file(tmp_path):
    conf = _base(tmp_path)
    s = _sensor(tmp_path, conf, listen="127.0.0.1:28000", mode="monitor")
    try:
        new = copy.deepcopy(conf)
        new["proxy"]["listen"] = "127.0.0.1:18009"      # overridden by --listen: nothing to restart
        new["proxy"]["holdback_kib"] = 4
        _write(s, new)
        assert await s.reload() is True
        assert (s.config.proxy.listen, s.config.proxy.mode, s.config.proxy.holdback) == \
            ("127.0.0.1:28000", "monitor", 4 << 10)
    finally:
        await _close(s)


async def test_an_invalid_file_is_refused_and_nothing_applies(tmp_path, caplog):
    conf = _base(tmp_path)
    s = _sensor(tmp_path, conf)
    try:
        running = s.config
        new = copy.deepcopy(conf)
        new["proxy"]["mode"] = "monitor"
        new["alerts"]["sinks"] = [{"type": "webhook"}]              # no url
        _write(s, new)
        with caplog.at_level(logging.ERROR, logger="dlp_sensor"):
            assert await s.reload() is False
        assert s.config is running and _count(s, "dlp_reloads_total", result="error") == 1
        assert any("alerts.sinks[0]" in r.getMessage() for r in caplog.records)
    finally:
        await _close(s)


def test_every_key_is_classified():
    """A new configuration field must be placed in RELOADS or RESTART (until then it needs a restart)."""
    leaves = config_reload.leaves(Config())
    unplaced = [k for k in leaves if k not in config_reload.RELOADS and k not in config_reload.RESTART]
    assert not unplaced, f"classify these keys in sensor/config_reload.py: {unplaced}"
    assert set(config_reload.RESTART.values()) <= set(RESTART_KEYS)
    Wider = make_dataclass("Wider", [("new_knob", int, 0)], bases=(Config,))
    assert config_reload.restart_keys(Wider(), Wider(new_knob=1)) == ["new_knob"]
    assert config_reload.metric_key("new_knob") == "other"


async def _receiver():
    got: list[dict] = []

    async def handler(request: web.Request) -> web.Response:
        got.append(orjson.loads(await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/hook", got


def _alert(result, exchange: str, resource: str) -> dict:
    ctx = AlertContext(exchange_id=exchange, sensor_id="s1", resource=resource,
                       url={"scheme": "https", "domain": "site", "path": "/r.csv", "original": "https://site/r.csv"},
                       method="GET", status=200, client_ip="203.0.113.9", mode="enforce", action="cut_and_takedown")
    return build_alert(ctx, result, key=KEY, now=time.time())


async def _until(cond, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_a_changed_sink_receives_the_next_alert_and_the_spooled_ones(tmp_path, engine):
    """The webhook's URL changes (same sink name): an alert spooled while the old URL failed and the
    next alert both reach the new receiver; an added jsonl sink gets the next alert."""
    result = scan_bytes(engine, synth.breach_csv(50), content_type="text/csv")
    dead = f"http://127.0.0.1:{free_port()}/hook"
    runner, live, got = await _receiver()
    conf = _base(tmp_path)
    conf["alerts"] = {"retry_initial": 0.05, "retry_max": 0.2,
                      "sinks": [{"type": "webhook", "name": "soc", "url": dead, "every_alert": True}]}
    s = _sensor(tmp_path, conf)
    try:
        await s.dispatcher.start()
        await s.dispatcher.submit(_alert(result, "ex1", "site/a.csv"))
        await _until(lambda: _count(s, "dlp_alert_delivery_failures_total", sink="soc") >= 1, "no failed attempt")
        new = copy.deepcopy(conf)
        new["alerts"]["sinks"] = [{"type": "webhook", "name": "soc", "url": live, "every_alert": True},
                                  {"type": "jsonl", "name": "file", "path": "alerts.jsonl"}]
        _write(s, new)
        assert await s.reload() is True
        await s.dispatcher.submit(_alert(result, "ex2", "site/b.csv"))
        await _until(lambda: {a["dlp"]["exchange_id"] for a in got} >= {"ex1", "ex2"},
                     "the new webhook URL did not get the spooled and the next alert")
        jsonl = tmp_path / "state" / "alerts.jsonl"
        await _until(lambda: jsonl.exists() and b"ex2" in jsonl.read_bytes(), "the added sink got nothing")
        assert b"ex1" not in jsonl.read_bytes()             # it was stored before the sink existed
    finally:
        await _close(s)
        await runner.cleanup()


def test_a_running_sidecar_refuses_a_restart_key_on_sighup_and_keeps_serving(tmp_path):
    """The real process: the series exist at 0 from start-up, SIGHUP with a changed Kafka topic prefix
    is refused and counted under its key, the proxy keeps serving, and a later good reload applies."""
    import signal
    import urllib.request

    from sensor.sample_site import build_site
    from tests.procs import Sidecar, Upstream
    up = Upstream.start(build_site(tmp_path / "www", people=10))
    sc = Sidecar.create(tmp_path / "sc", up.url, {}).start()
    try:
        assert sc.metric("dlp_reload_restart_required_total", key="kafka.topic_prefix") == 0
        raw = yaml.safe_load(sc.config.read_text())
        raw["kafka"] = {"topic_prefix": "other."}
        raw["proxy"]["holdback_kib"] = 8
        sc.config.write_text(yaml.safe_dump(raw))
        sc.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while sc.metric("dlp_reload_restart_required_total", key="kafka.topic_prefix") < 1:
            assert time.monotonic() < deadline, sc.log()[-2000:]
            time.sleep(0.1)
        assert sc.metric("dlp_reloads_total", result="restart_required") >= 1
        assert "kafka.topic_prefix changed, which needs a restart" in sc.log()
        with urllib.request.urlopen(sc.url + "/contact.html", timeout=10) as r:
            assert r.status == 200
        del raw["kafka"]
        sc.config.write_text(yaml.safe_dump(raw))
        sc.proc.send_signal(signal.SIGHUP)
        while sc.metric("dlp_reloads_total", result="ok") < 1:
            assert time.monotonic() < deadline + 20, sc.log()[-2000:]
            time.sleep(0.1)
    finally:
        sc.stop()
        up.stop()
