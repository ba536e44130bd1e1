"""The alert schema and every sink, against real receivers on loopback."""
from __future__ import annotations

import asyncio
import json

import orjson
import pytest
from aiohttp import web

from sensor import synth
from sensor.alerts.dispatch import Dispatcher
from sensor.alerts.schema import AlertContext, build_alert, to_ocsf
from sensor.alerts.sinks import cef_line, make_sink
from sensor.alerts.spool import Spool
from sensor.config import ConfigError, parse_config
from sensor.metrics import Metrics
from tests.conftest import KEY, scan_bytes
from tests.procs import free_port

ROWS = synth.breach_rows(50)


@pytest.fixture(scope="module")
def result(engine):
    return scan_bytes(engine, synth.breach_csv(50), content_type="text/csv")


def _alert(result, source_ip="hashed", exchange="ex1"):
    ctx = AlertContext(exchange_id=exchange, sensor_id="s1", resource="site/exports/r.csv",
                       url={"scheme": "https", "domain": "site", "path": "/exports/r.csv",
                            "original": "https://site/exports/r.csv"}, method="GET", status=200,
                       client_ip="203.0.113.9", mode="enforce", action="cut_and_takedown", takedown_id=7)
    return build_alert(ctx, result, key=KEY, source_ip=source_ip, now=1_700_000_000.0)


def test_alert_is_ecs_shaped_and_carries_no_raw_value(result):
    a = _alert(result)
    assert a["event"]["kind"] == "alert" and a["event"]["action"] == "dlp-trip"
    assert a["@timestamp"] == "2023-11-14T22:13:20.000Z"
    assert a["rule"]["id"] == "dlp.trip" and a["dlp"]["verdict"] == "trip" and a["dlp"]["records"] >= 10
    assert a["dlp"]["findings"]["us-driver-licence"] >= 10 and a["dlp"]["takedown_id"] == 7
    assert "source" not in a and a["dlp"]["client"]["hash"].startswith("hmac-sha256:")   # ECS source.* is raw-only
    blob = orjson.dumps(a).decode()
    for row in ROWS:
        for value in row.split(",")[1:12:3] + [row.split(",")[11]]:          # names, DOB, address, licence
            if len(value) > 4:
                assert value not in blob
    assert "203.0.113.9" not in blob


def test_source_ip_modes_and_stable_dedup_id(result):
    assert _alert(result, "raw")["source"] == {"address": "203.0.113.9", "ip": "203.0.113.9"}
    assert "source" not in _alert(result, "drop")
    assert _alert(result)["dlp"]["dedup_id"] == _alert(result)["dlp"]["dedup_id"]
    assert _alert(result)["dlp"]["dedup_id"] != _alert(result, exchange="ex2")["dlp"]["dedup_id"]


def test_ocsf_mapping(result):
    o = to_ocsf(_alert(result))
    assert o["class_uid"] == 2006 and o["type_uid"] == 200601 and o["category_uid"] == 2
    assert o["severity_id"] == 5 and o["time"] == 1_700_000_000_000
    assert o["finding_info"]["uid"] == o["metadata"]["uid"] == _alert(result)["dlp"]["dedup_id"]
    assert o["action_id"] == 2 and o["resources"][0]["uid"] == "site/exports/r.csv"


def test_cef_line_escapes_and_frames(result):
    a = _alert(result)
    a["rule"]["name"] = "pipe|name"
    line = cef_line(a, "host1").decode()
    assert line.startswith("<162>1 2023-11-14T22:13:20.000Z host1 dlp-sensor - - - CEF:0|dlp-sensor|dlp-sensor|")
    assert "pipe\\|name" in line and "externalId=" + a["dlp"]["dedup_id"] in line and "cn1=" in line


async def _receiver(fail_first: int = 0):
    got: list[tuple[str, dict, dict]] = []
    state = {"fails": fail_first}

    async def handler(request: web.Request) -> web.Response:
        if state["fails"] > 0:
            state["fails"] -= 1
            return web.Response(status=503)
        got.append((request.path, dict(request.headers), orjson.loads(await request.read())))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}", got


async def test_every_sink_delivers_to_a_real_receiver(result, tmp_path):
    runner, base, got = await _receiver()
    udp_got: list[bytes] = []
    tcp_got: list[bytes] = []

    class Udp(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            udp_got.append(data)

    loop = asyncio.get_running_loop()
    udp_port, tcp_port = free_port(), free_port()
    udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", udp_port))

    async def on_tcp(reader, writer):
        tcp_got.append(await reader.read())
        writer.close()

    tcp = await asyncio.start_server(on_tcp, "127.0.0.1", tcp_port)
    sinks = [make_sink(s, f"sinks[{i}]") for i, s in enumerate([
        {"type": "webhook", "url": base + "/hook", "headers": {"X-Team": "soc"}},
        {"type": "webhook", "name": "ocsf-hook", "url": base + "/ocsf", "format": "ocsf"},
        {"type": "slack", "url": base + "/slack"},
        {"type": "pagerduty", "routing_key": "R" * 32, "url": base + "/v2/enqueue"},
        {"type": "splunk_hec", "url": base, "token": "tok-123", "index": "dlp"},
        {"type": "syslog", "name": "syslog-udp", "port": udp_port},
        {"type": "syslog", "name": "syslog-tcp", "port": tcp_port, "protocol": "tcp"},
        {"type": "jsonl", "path": str(tmp_path / "a.jsonl")}])]
    m = Metrics()
    d = Dispatcher(Spool(tmp_path / "spool.db"), sinks, metrics=m)
    await d.start()
    alert = _alert(result)
    d.submit(alert)
    for _ in range(100):
        if len(got) == 5 and udp_got and tcp_got and d.spool.depth() == 0:
            break
        await asyncio.sleep(0.05)
    await d.stop()
    await runner.cleanup()
    udp.close()
    tcp.close()
    by = {p: (h, b) for p, h, b in got}
    did = alert["dlp"]["dedup_id"]
    assert by["/hook"][1]["dlp"]["dedup_id"] == did and by["/hook"][0]["X-Team"] == "soc"
    assert by["/hook"][0]["Idempotency-Key"] == did
    assert by["/ocsf"][1]["class_uid"] == 2006
    assert "records" in by["/slack"][1]["text"] and did in by["/slack"][1]["text"]
    pd = by["/v2/enqueue"][1]
    assert pd["dedup_key"] == alert["dlp"]["incident"]["id"] != did      # one PagerDuty incident per resource
    assert pd["event_action"] == "trigger" and pd["payload"]["severity"] == "critical"
    assert "(opened): 1 requests (1 trips, 0 refused)" in by["/slack"][1]["text"]
    hec_h, hec = by["/services/collector/event"]
    assert hec_h["Authorization"] == "Splunk tok-123" and hec["index"] == "dlp" and hec["event"]["dlp"]["dedup_id"] == did
    assert b"CEF:0|dlp-sensor" in udp_got[0]
    size, _, line = tcp_got[0].partition(b" ")
    assert int(size) == len(line) and b"CEF:0|dlp-sensor" in line        # RFC 6587 octet counting
    assert json.loads((tmp_path / "a.jsonl").read_text())["dlp"]["dedup_id"] == did
    assert d.spool.depth() == 0 and m.alerts_delivered.labels(sink="webhook")._value.get() == 1


async def test_failed_deliveries_are_retried_and_counted(result, tmp_path):
    runner, base, got = await _receiver(fail_first=2)
    m = Metrics()
    d = Dispatcher(Spool(tmp_path / "spool.db"), [make_sink({"type": "webhook", "url": base + "/h"}, "s")],
                   retry_initial=0.05, retry_max=0.2, metrics=m)
    await d.start()
    d.submit(_alert(result))
    for _ in range(100):
        if got:
            break
        await asyncio.sleep(0.05)
    await d.stop()
    await runner.cleanup()
    assert len(got) == 1 and m.alert_delivery_failures.labels(sink="webhook")._value.get() == 2


def _incident_alert(result, exchange: str, resource: str = "site/exports/r.csv") -> dict:
    ctx = AlertContext(exchange_id=exchange, sensor_id="s1", resource=resource, url={"original": "https://" + resource},
                       method="GET", status=200, client_ip="", mode="monitor", action="logged")
    return build_alert(ctx, result, key=KEY, now=1_700_000_000.0)


def _due(spool: Spool, sink: str) -> list[tuple[str, float]]:
    return [(orjson.loads(b)["dlp"]["exchange_id"], at) for b, at in spool.db.execute(
        "SELECT a.body, d.next_at FROM deliveries d JOIN alerts a USING (seq) WHERE d.sink = ? ORDER BY d.seq",
        (sink,))]


def test_incident_rule_and_throttle_fold_what_the_pager_hears(result, tmp_path):
    """The incident rule first (a repeat reaches only every-alert sinks; summaries at 10 and 100 reach
    all), then the throttle (leading edge at once; during the window only the newest alert waits, due
    at the window's end); everything is in the spool file (a kill -9 loses nothing)."""
    sp = Spool(tmp_path / "spool.db")
    t0 = 1_000_000.0
    sinks = {"siem": 0.0, "pager": 60.0}
    alerts = [_incident_alert(result, f"x{i}") for i in range(101)]
    for i, a in enumerate(alerts[:100]):
        sp.put(a, sinks, now=t0 + i * 0.1, every={"siem"})
    assert [a["dlp"]["incident"]["count"] for a in alerts[:3]] == [1, 2, 3]
    assert [a["dlp"]["incident"]["state"] for a in alerts[:3]] == ["opened", "repeat", "repeat"]
    assert alerts[0]["dlp"]["incident"]["id"] == alerts[99]["dlp"]["incident"]["id"]
    assert len(_due(sp, "siem")) == 102                                    # every alert + two summaries
    assert _due(sp, "pager") == [("x0", t0), ("x99", t0 + 60)]              # summary@100 replaced summary@10
    assert sp.take_throttled() == {"pager": 1} and sp.take_throttled() == {}
    other = _incident_alert(result, "y0", resource="site/other.csv")
    sp.put(other, sinks, now=t0 + 11, every={"siem"})
    assert other["dlp"]["incident"]["count"] == 1 and _due(sp, "pager")[-1] == ("y0", t0 + 11)
    sp.close()
    again = Spool(tmp_path / "spool.db")                                   # reopened, as after a restart
    assert ("x99", t0 + 60) in _due(again, "pager")
    again.put(alerts[100], sinks, now=t0 + 30, every={"siem"})
    assert alerts[100]["dlp"]["incident"]["count"] == 101 and alerts[100]["dlp"]["incident"]["state"] == "repeat"
    for seq, _, a in again.lease("pager", now=t0 + 61):                   # the window closes: the summary goes
        again.delivered(seq, "pager")
    inc = alerts[0]["dlp"]["incident"]["id"]
    assert again.refusals({inc: 899}, sinks, now=t0 + 300) == 1             # quiet past the window: at once
    assert [(orjson.loads(b)["dlp"]["incident"]["threshold"], at) for b, at in again.db.execute(
        "SELECT a.body, d.next_at FROM deliveries d JOIN alerts a USING (seq) WHERE d.sink = 'pager'")] == [
        (1000, t0 + 300)]


async def test_a_throttled_sink_gets_the_first_alert_at_once_and_the_last_at_window_end(result, tmp_path):
    runner, base, got = await _receiver()
    m = Metrics()
    d = Dispatcher(Spool(tmp_path / "spool.db"), [
        make_sink({"type": "slack", "url": base + "/slack", "throttle": 1.0}, "s0"),
        make_sink({"type": "webhook", "url": base + "/hook"}, "s1")], metrics=m)
    await d.start()
    for i in range(100):
        d.submit(_incident_alert(result, f"x{i}"))
    for _ in range(100):
        if sum(p == "/slack" for p, _, _ in got) == 2 and d.spool.depth() == 0:
            break
        await asyncio.sleep(0.05)
    await d.stop()
    await runner.cleanup()
    slack = [b["text"] for p, _, b in got if p == "/slack"]
    assert len(slack) == 2 and "(opened): 1 requests" in slack[0] and "(summary): 100 requests" in slack[1]
    hooks = [b["dlp"]["incident"] for p, _, b in got if p == "/hook"]
    assert [(i["state"], i["count"]) for i in hooks] == [("opened", 1), ("summary", 10), ("summary", 100)]
    assert m.alerts_throttled.labels(sink="slack")._value.get() == 1


@pytest.mark.parametrize("raw, key", [
    ({"proxy": {"mode": "block"}}, "config.proxy.mode"),
    ({"proxy": {"upstream": "ftp://x"}}, "config.proxy.upstream"),
    ({"proxy": {"routes": [{"match": "/a", "holdback_kib": -1}]}}, "config.proxy.routes[0].holdback_kib"),
    ({"proxy": {"tls": {"cert": "/nonexistent.pem", "key": "/nonexistent.key"}}}, "config.proxy.tls.cert"),
    ({"alerts": {"sinks": [{"type": "webhook"}]}}, "config.alerts.sinks[0].url"),
    ({"alerts": {"sinks": [{"type": "fax"}]}}, "config.alerts.sinks[0].type"),
    ({"alerts": {"sinks": [{"type": "stdout", "throttle": "5m"}]}}, "config.alerts.sinks[0].throttle"),
    ({"alerts": {"sinks": [{"type": "stdout"}, {"type": "stdout"}]}}, "config.alerts.sinks[1].name"),
    ({"alerts": {"source_ip": "maybe"}}, "config.alerts.source_ip"),
    ({"takedown": {"query": 3}}, "config.takedown.query"),
    ({"ledger": {"client_retention_days": 0}}, "config.ledger.client_retention_days"),
    ({"metrics": "nohost"}, "config.metrics"),
    ({"admin": {"token": "short"}}, "config.admin.token"),
    ({"colour": "blue"}, "config.colour: unknown key"),
    ({"kafka": {"bootstrap": "kafka-0"}}, "config.kafka.bootstrap"),
    ({"kafka": {"security_protocol": "SASL_SSL"}}, "config.kafka.sasl_mechanism"),
    ({"kafka": {"mirror": {"overflow": "buffer"}}}, "config.kafka.mirror.overflow"),
    ({"kafka": {"topic_prefix": "dlp/"}}, "config.kafka.topic_prefix"),
    ({"kafka": {"worker": {"partitions": 0}}}, "config.kafka.worker.partitions"),
])
def test_config_errors_name_the_key(raw, key):
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert key in str(e.value)


def test_readme_config_example_parses():
    """The configuration page's example stays true (files it names are dropped: they are examples)."""
    import re
    from pathlib import Path

    import yaml
    text = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    block = re.search(r"## The configuration file\n\n```yaml\n(.*?)```", text, re.S).group(1)
    raw = yaml.safe_load(block)
    del raw["proxy"]["tls"], raw["proxy"]["block_page"], raw["kafka"]["ssl_cafile"]
    c = parse_config(raw)
    assert c.kafka.bootstrap == "kafka-0:9092,kafka-1:9092" and c.kafka.topic("takedowns") == "dlp.takedowns"
    assert c.proxy.route("/exports/a.csv").on_error == "closed" and c.proxy.route("/x").mode == "enforce"
    assert [s["type"] for s in c.sinks] == ["stdout", "jsonl", "webhook", "slack", "pagerduty", "splunk_hec", "syslog"]


def test_kafka_bootstrap_from_the_environment(monkeypatch):
    from sensor.config import Config, with_overrides
    monkeypatch.setenv("DLP_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    monkeypatch.setenv("DLP_KAFKA_SASL_PASSWORD", "s3cret")
    c = with_overrides(Config(), state_dir="/tmp/x")
    assert c.kafka.bootstrap == "127.0.0.1:9092" and c.kafka.sasl_password == "s3cret"
    assert with_overrides(Config(), state_dir="/tmp/x", kafka="10.0.0.1:9093").kafka.bootstrap == "10.0.0.1:9093"
    monkeypatch.setenv("DLP_KAFKA_BOOTSTRAP", "nope")
    with pytest.raises(ConfigError, match=r"\$DLP_KAFKA_BOOTSTRAP"):
        with_overrides(Config(), state_dir="/tmp/x")
