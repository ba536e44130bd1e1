"""The act side of a trip, in process with real stores: what ``Sensor.take_down`` commits before the
tap answers, what ``Sensor.finished`` does after it (one alert per trip), and the aggregated alert
for exchanges that leave unscanned. The kill -9 end-to-end is in test_durability.py."""
from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import orjson
import pytest

from sensor import synth
from sensor.alerts.schema import AlertContext
from sensor.config import parse_config, with_overrides
from sensor.detect.policy import Policy
from sensor.enforce.ledger import Ledger
from sensor.enforce.registry import Registry
from sensor.runtime import COUNTS_UNKNOWN_NOTE, Detector, Sensor
from tests.conftest import scan_bytes


@pytest.fixture(scope="module")
def results(engine):
    """A small trip (the counts at the trip) and a larger one (the counts at the end)."""
    return (scan_bytes(engine, synth.breach_csv(20), content_type="text/csv"),
            scan_bytes(engine, synth.breach_csv(60), content_type="text/csv"))


def _sensor(tmp: Path, engine) -> Sensor:
    cfg = with_overrides(parse_config({"alerts": {"sinks": [{"type": "jsonl", "path": "alerts.jsonl"}]}}),
                         state_dir=str(tmp / "state"))
    return Sensor(cfg, Detector(engine, Policy(), "g1"))


def _ctx(xid: str, resource: str = "site/exports/a.csv", sent: int = 0) -> AlertContext:
    return AlertContext(exchange_id=xid, sensor_id="s1", resource=resource,
                        url={"scheme": "https", "domain": "site", "path": "/" + resource.split("/", 1)[1],
                             "original": "https://" + resource}, method="GET", status=200,
                        client_ip="203.0.113.9", mode="enforce", action="cut_and_takedown", bytes_sent=sent)


def _spooled(sensor: Sensor) -> list[dict]:
    """The alerts in the spool, read through a connection of its own (what a restart would read)."""
    db = sqlite3.connect(sensor.spool.path)
    try:
        return [orjson.loads(b) for (b,) in db.execute("SELECT body FROM alerts ORDER BY seq")]
    finally:
        db.close()


async def _settled(sensor: Sensor) -> None:
    """Every queued store is on disk (each store's thread runs its jobs in order)."""
    await sensor.spool.disk(lambda: None)
    await sensor.ledger.disk(lambda: None)


def test_take_down_commits_takedown_alert_and_incident_before_it_returns(tmp_path, engine, results):
    at_trip, at_end = results
    assert at_trip.verdict == at_end.verdict == "trip" and at_end.records > at_trip.records

    async def go() -> None:
        s = _sensor(tmp_path, engine)               # not started: no sink takes the alert away
        ctx = _ctx("x1", sent=4096)                 # a cut: bytes of the response had left
        td = await s.take_down(ctx, "fp1", time.perf_counter(), result=at_trip)
        # committed when take_down returns: read through fresh connections, as after a kill -9
        assert [t.resource for t in Registry(s.registry.path).list()] == ["site/exports/a.csv"]
        [a] = _spooled(s)
        assert (a["dlp"]["verdict"], a["dlp"]["takedown_id"], a["dlp"]["records"]) == ("trip", td.id, at_trip.records)
        assert a["dlp"]["incident"]["state"] == "opened"
        [r] = Ledger(s.ledger.path).incidents()
        assert r["tripped_at"] and r["taken_down_at"] and r["trips"] == 1
        assert (r["served_at_trip"], r["clients_at_trip"]) == (1, 1)          # the cut response counts
        # the end of the exchange: final counts in the same alert, no second one, no second trip
        s.finished(ctx, at_end, tap="proxy", completed=False)
        await _settled(s)
        [b] = _spooled(s)
        assert b["dlp"]["dedup_id"] == a["dlp"]["dedup_id"] and b["dlp"]["records"] == at_end.records
        assert b["@timestamp"] == a["@timestamp"] and b["dlp"]["incident"] == a["dlp"]["incident"]
        await s.ledger.flush_async()
        [r] = Ledger(s.ledger.path).incidents()
        assert (r["trips"], r["served"], r["served_at_trip"], r["clients"]) == (1, 1, 1, 1)
        [(_, evidence)] = Ledger(s.ledger.path).evidence("site/exports/a.csv")     # one row, final counts
        assert evidence["records"] == at_end.records and evidence["exchange_id"] == "x1"
        await s.stop()
    asyncio.run(go())


def test_without_a_result_the_alert_says_so_and_gets_the_counts_at_the_end(tmp_path, engine, results):
    async def go() -> None:
        s = _sensor(tmp_path, engine)
        ctx = _ctx("x2")                            # a 451: nothing had left
        await s.take_down(ctx, None, time.perf_counter())
        [a] = _spooled(s)
        assert a["dlp"]["verdict"] == "trip" and COUNTS_UNKNOWN_NOTE in a["dlp"]["notes"]
        assert Ledger(s.ledger.path).evidence("site/exports/a.csv")[0][1]["records"] == 0
        [r] = Ledger(s.ledger.path).incidents()
        assert (r["served_at_trip"], r["clients_at_trip"]) == (0, 0)
        s.finished(ctx, results[1], tap="icap", completed=False)
        await _settled(s)
        [b] = _spooled(s)
        assert b["dlp"]["records"] == results[1].records and COUNTS_UNKNOWN_NOTE not in b["dlp"]["notes"]
        await s.stop()
    asyncio.run(go())


def _delivered(sensor: Sensor, n: int = 1) -> list[dict]:
    sink = sensor.config.state_dir / "alerts.jsonl"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(lines := sink.read_bytes().splitlines() if sink.exists() else []) < n:
        time.sleep(0.05)
    return [orjson.loads(x) for x in lines]


def test_the_sinks_get_the_final_counts_when_the_exchange_ends_in_time(tmp_path, engine, results):
    async def go() -> None:
        s = _sensor(tmp_path, engine)
        await s.dispatcher.start()
        ctx = _ctx("x4")
        await s.take_down(ctx, "fp4", time.perf_counter())          # held for the end of the exchange...
        s.finished(ctx, results[1], tap="extproc", completed=False)  # ...which comes at once
        [a] = await asyncio.to_thread(_delivered, s)
        assert a["dlp"]["records"] == results[1].records and a["dlp"]["takedown_id"]
        await s.stop()
        assert len(_delivered(s)) == 1
    asyncio.run(go())


def test_an_alert_delivered_before_the_end_is_not_sent_again(tmp_path, engine, results):
    async def go() -> None:
        s = _sensor(tmp_path, engine)
        await s.dispatcher.start()
        ctx = _ctx("x3")
        await s.take_down(ctx, "fp3", time.perf_counter(), result=results[0])
        assert len(await asyncio.to_thread(_delivered, s)) == 1             # the hold ran out: delivered
        assert s.finished(ctx, results[1], tap="proxy", completed=False)["dlp"]["verdict"] == "trip"
        await s.stop()
        lines = _delivered(s)
        assert len(lines) == 1 and lines[0]["dlp"]["records"] == results[0].records   # one alert per trip
    asyncio.run(go())


def test_520_unscanned_exchanges_are_one_incident_and_two_alerts(tmp_path, engine):
    async def go() -> None:
        s = _sensor(tmp_path, engine)
        s.unscanned.window = 0.3
        raised = [s.finished(_ctx(f"o{i}", f"site/files/{i}.bin"), None, tap="proxy", completed=True,
                             unscanned="overload") for i in range(520)]
        assert raised[0] is not None and raised[1:] == [None] * 519      # the first at once
        deadline = time.monotonic() + 20                                  # the window's count when it closes
        while time.monotonic() < deadline and len(_spooled(s)) < 2:
            await asyncio.sleep(0.05)
        await _settled(s)
        alerts = _spooled(s)
        assert [a["dlp"]["unscanned"]["exchanges"] for a in alerts] == [1, 519]
        assert len({a["dlp"]["incident"]["id"] for a in alerts}) == 1
        assert [a["dlp"]["incident"]["state"] for a in alerts] == ["opened", "repeat"]
        a = alerts[0]
        assert a["rule"]["id"] == "dlp.unscanned" and a["event"]["type"] == ["info"]
        assert a["dlp"]["notes"][0].startswith("unscanned: overload") and a["dlp"]["action"] == "forwarded_unscanned"
        assert s.finished(_ctx("m1"), None, tap="proxy", completed=True, mirrored=True) is None
        await s.stop()
    asyncio.run(go())


def test_a_decode_limit_that_let_bytes_out_is_an_alert_with_the_note(tmp_path, engine):
    async def go() -> None:
        s = _sensor(tmp_path, engine)
        clean = scan_bytes(engine, b"nothing personal here\n" * 10)
        assert clean.verdict == "pass"
        a = s.finished(_ctx("d1", "site/a.zip"), clean, tap="proxy", completed=True, unscanned="decode-limit")
        assert a is not None and a["dlp"]["verdict"] == "alert" and "unscanned: decode-limit" in a["dlp"]["notes"]
        await s.stop()
    asyncio.run(go())


@pytest.mark.parametrize("proxy, route, on_route, on_default", [
    ({"mode": "enforce"}, {}, "closed", "closed"),                # the new default: enforce fails closed
    ({"mode": "monitor"}, {}, "open", "open"),
    ({"mode": "enforce"}, {"mode": "monitor"}, "open", "closed"),  # per route, by the route's mode
    ({"mode": "monitor"}, {"mode": "enforce"}, "closed", "open"),
    ({"mode": "enforce", "on_error": "open"}, {}, "open", "open"),  # an explicit open is honoured
    ({"mode": "enforce"}, {"on_error": "open"}, "open", "closed"),
    ({"mode": "monitor", "on_error": "closed"}, {}, "closed", "closed"),
])
def test_enforce_routes_fail_closed_unless_told_open(proxy, route, on_route, on_default):
    c = parse_config({"proxy": {**proxy, "routes": [{"match": "/r/*", **route}]}})
    assert (c.proxy.route("/r/x").on_error, c.proxy.route("/x").on_error) == (on_route, on_default)
