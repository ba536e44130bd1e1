"""One incident per leak, with real processes: a sidecar (tests/procs.py) in front of the sample
site, a webhook and a PagerDuty sink pointed at an aiohttp receiver in the test, and real downloads.

The rule under test (sensor/alerts/incidents.py): the first alert of a resource opens its incident
and pages; repeats update it (count, last seen) and reach only every-alert sinks (the JSONL file);
a summary goes to every sink when the count (alerts + refusals) reaches 10, 100, 1000, …
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import time

import aiohttp
import orjson
import pytest
from aiohttp import web

from sensor.alerts.incidents import crossed
from sensor.sample_site import ROSTER
from tests.procs import BIN, Sidecar, free_port, site_fixture

site = site_fixture(100)


def test_summary_rule_is_each_power_of_ten_from_ten():
    assert [n for n in range(1, 20001) if crossed(n - 1, n)] == [10, 100, 1000, 10000]
    assert crossed(5, 250) == 100 and crossed(0, 9) is None and crossed(10, 99) is None


def test_first_trip_escalates_an_incident_a_lesser_alert_opened(tmp_path):
    """alert -> opened (every sink), alert -> repeat (SIEM only), trip -> escalated (every sink),
    trip -> repeat; refusals of a resource that never alerted here count into nothing."""
    from sensor.alerts.spool import Spool

    def alert(verdict: str, n: int) -> dict:
        return {"@timestamp": "2023-11-14T22:13:20.000Z", "event": {}, "rule": {},
                "dlp": {"verdict": verdict, "dedup_id": f"d{n}", "incident": {"id": "inc-1"}}}

    sp = Spool(tmp_path / "alerts.db")
    sinks = {"pager": 0.0, "siem": 0.0}
    states = []
    for n, verdict in enumerate(["alert", "alert", "trip", "trip"]):
        a = alert(verdict, n)
        sp.put(a, sinks, now=1000.0 + n, every={"siem"})
        states.append(a["dlp"]["incident"]["state"])
    assert states == ["opened", "repeat", "escalated", "repeat"]
    rows = sp.db.execute("SELECT d.sink, a.dedup_id FROM deliveries d JOIN alerts a USING (seq) ORDER BY seq").fetchall()
    assert sorted(r for r in rows if r[0] == "pager") == [("pager", "d0"), ("pager", "d2")]
    assert len([r for r in rows if r[0] == "siem"]) == 4
    assert sp.refusals({"never-alerted": 50}, sinks) == 0
    assert sp.db.execute("SELECT count(*) FROM incidents").fetchone()[0] == 1
    sp.close()


class Receiver:
    """Webhook and PagerDuty endpoint in one: records every POST body by path."""

    def __init__(self) -> None:
        self.got: dict[str, list[dict]] = {}
        self.runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.got.setdefault(request.path, []).append(orjson.loads(await request.read()))
        return web.json_response({"status": "success"}, status=202)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}"

    def of(self, path: str) -> list[dict]:
        return self.got.get(path, [])


async def _until(cond, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _sinks(base: str) -> list[dict]:
    return [{"type": "webhook", "url": base + "/hook"},
            {"type": "pagerduty", "routing_key": "R" * 32, "url": base + "/v2/enqueue", "throttle": 0},
            {"type": "jsonl", "path": "alerts.jsonl"}]


async def _download(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as r:
        await r.read()
        return r.status


async def test_100_downloads_in_monitor_mode_are_one_incident_and_one_page(site, tmp_path):
    rx = Receiver()
    base = await rx.start()
    sc = Sidecar.create(tmp_path / "sc", site.url, {"proxy": {"mode": "monitor"},
                                                    "alerts": {"sinks": _sinks(base)}})
    await asyncio.to_thread(sc.start)
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(100):
                assert await _download(s, sc.url + "/" + ROSTER) == 200     # monitor: every download served
        await _until(lambda: len(sc.alerts()) == 102 and len(rx.of("/hook")) == 3 and len(rx.of("/v2/enqueue")) == 3,
                     "100 alerts + 2 summaries in the JSONL file, 3 webhook and 3 PagerDuty events")
        hook = rx.of("/hook")
        pages = [a for a in hook if a["dlp"]["incident"]["state"] == "opened"]
        assert len(pages) == 1, "one page"
        assert [(a["dlp"]["incident"]["state"], a["dlp"]["incident"]["count"]) for a in hook] == [
            ("opened", 1), ("summary", 10), ("summary", 100)]
        incident = pages[0]["dlp"]["incident"]["id"]
        assert {a["dlp"]["incident"]["id"] for a in sc.alerts()} == {incident}, "one incident"
        assert hook[2]["event"]["action"] == "dlp-incident-summary" and hook[2]["dlp"]["incident"]["alerts"] == 100
        pd = rx.of("/v2/enqueue")
        assert {e["dedup_key"] for e in pd} == {incident} and {e["event_action"] for e in pd} == {"trigger"}
        assert sorted(a["dlp"]["incident"]["count"] for a in sc.alerts()
                      if a["dlp"]["incident"]["state"] != "summary") == list(range(1, 101))
        assert sc.metric("dlp_alerts_delivered_total", sink="webhook") == 3
        # the incident survives a restart: the 101st download updates it and pages nobody
        await asyncio.to_thread(sc.stop)
        await asyncio.to_thread(sc.start)
        async with aiohttp.ClientSession() as s:
            assert await _download(s, sc.url + "/" + ROSTER) == 200
        await _until(lambda: len(sc.alerts()) == 103, "the 101st alert in the JSONL file")
        last = sc.alerts()[-1]["dlp"]["incident"]
        assert (last["id"], last["state"], last["count"]) == (incident, "repeat", 101)
        assert len(rx.of("/hook")) == 3 and len(rx.of("/v2/enqueue")) == 3
        report = subprocess.run([str(BIN / "dlp-sensor"), "report", "--format", "json", "--state-dir", str(sc.state)],
                                capture_output=True, timeout=60, check=True)
        assert len(json.loads(report.stdout)["incidents"]) == 1
    finally:
        await asyncio.to_thread(sc.stop)
        await rx.runner.cleanup()


async def test_refusals_after_a_takedown_count_into_the_incident(site, tmp_path):
    rx = Receiver()
    base = await rx.start()
    sc = Sidecar.create(tmp_path / "sc", site.url, {"alerts": {"sinks": _sinks(base)}})
    await asyncio.to_thread(sc.start)
    try:
        async with aiohttp.ClientSession() as s:
            url = sc.url + "/" + ROSTER
            try:
                await _download(s, url)                  # the trip: a 451 or a cut download
            except aiohttp.ClientPayloadError:
                pass
            for _ in range(9):
                assert await _download(s, url) == 451    # taken down: refused
        await _until(lambda: len(rx.of("/hook")) == 2, "the page and the summary at 10")
        opened, summary = rx.of("/hook")
        assert opened["dlp"]["incident"]["state"] == "opened" and opened["dlp"]["action"] == "cut_and_takedown"
        inc = summary["dlp"]["incident"]
        assert (inc["state"], inc["count"], inc["alerts"], inc["refusals"], inc["threshold"]) == (
            "summary", 10, 1, 9, 10)
        assert inc["id"] == opened["dlp"]["incident"]["id"]
        assert {e["dedup_key"] for e in rx.of("/v2/enqueue")} == {inc["id"]} and len(rx.of("/v2/enqueue")) == 2
    finally:
        await asyncio.to_thread(sc.stop)
        await rx.runner.cleanup()
