"""Durable before acknowledged: takedowns and undelivered alerts survive ``kill -9``."""
from __future__ import annotations

import http.client
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import orjson

from sensor.sample_site import ROSTER
from tests.procs import Sidecar, Upstream, free_port, site_fixture, wait_http
from tests.test_proxy import curl


site = site_fixture(800)


def _leak(site: Upstream, name: str) -> str:
    (site.root / name).write_bytes(f"# {name}\n".encode() + (site.root / ROSTER).read_bytes())
    return "/" + name


def _get(conn: http.client.HTTPConnection, path: str) -> int:
    """One GET on a kept-alive connection; the status once the whole answer (451 page or cut) is in."""
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        return r.status
    except (http.client.IncompleteRead, ConnectionError, http.client.RemoteDisconnected):
        conn.close()
        return -1                                   # cut: the client saw the response die


def _admin(sc: Sidecar, path: str):
    req = urllib.request.Request(sc.admin + path, headers={"Authorization": f"Bearer {sc.token}"})
    return orjson.loads(urllib.request.urlopen(req, timeout=30).read())


def test_kill_9_right_after_20_trips_keeps_20_takedowns_alerts_and_incidents(site, tmp_path):
    """The takedown, its alert (spooled) and its ledger incident are committed before the 451 or the
    cut: a kill -9 right after the 20th answer, and a restart on the same state dir finds all three."""
    sc = Sidecar.create(tmp_path, site.url).start()
    paths = [_leak(site, f"exports/k9-{i}.csv") for i in range(20)]

    def trip(path: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", sc.port, timeout=30)
        try:
            return _get(conn, path)
        finally:
            conn.close()
    with ThreadPoolExecutor(4) as pool:             # in quick succession, 4 in flight (under per-client caps)
        statuses = list(pool.map(trip, paths))
    sc.stop(signal.SIGKILL)                         # at once after the 20th answer, no shutdown
    assert all(s in (451, -1) for s in statuses), statuses     # tripped: the answer is the acknowledgement
    sc.start()                                      # same state dir; the spool delivers what the kill left
    try:
        tds = _admin(sc, "/takedowns")
        resources = {t["resource"] for t in tds}
        assert len(tds) == 20 and all(any(r.endswith(p) for r in resources) for p in paths)
        incidents = {i["resource"]: i for i in _admin(sc, "/report")["incidents"]}
        assert set(incidents) == resources
        assert all(i["tripped_at"] and i["taken_down_at"] and i["trips"] == 1 for i in incidents.values())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sc.metric("dlp_alert_spool_depth"):
            time.sleep(0.1)
        assert sc.metric("dlp_alert_spool_depth") == 0
        alerts = {a["dlp"]["dedup_id"]: a for a in sc.alerts()}     # at-least-once: dedup id drops repeats
        assert sorted(a["dlp"]["resource"] for a in alerts.values()) == sorted(resources), "one alert per trip"
        assert all(a["dlp"]["verdict"] == "trip" and a["dlp"]["takedown_id"] for a in alerts.values())
        conn = http.client.HTTPConnection("127.0.0.1", sc.port, timeout=30)
        assert all(_get(conn, p) == 451 for p in paths)                # refused after the restart
        conn.close()
    finally:
        sc.stop()


RECEIVER = r'''
import sys, orjson
from aiohttp import web
async def hook(request):
    body = await request.read()
    with open(sys.argv[2], "ab") as fh:
        fh.write(body + b"\n")
    return web.Response(text="ok")
app = web.Application(); app.add_routes([web.post("/hook", hook)])
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
'''


def _poll(what, deadline_s: float, why: str) -> None:
    """Wait until ``what()`` holds (a condition on the sidecar's metrics), at most ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while not what():
        assert time.monotonic() < deadline, why
        time.sleep(0.1)


def test_webhook_down_across_a_kill_9_then_up_every_alert_arrives(site, tmp_path):
    """Alerts are spooled while the receiver is down, survive a kill -9, and all arrive once it is up.

    The receiver stays down until the restarted sidecar has failed at least once per alert (six
    failed deliveries: the three it inherited from the killed process's spool are being retried,
    with their attempt counts, alongside the three new ones), not for a fixed time."""
    port = free_port()
    got = tmp_path / "received.jsonl"
    sc = Sidecar.create(tmp_path / "sc", site.url, {"alerts": {
        "retry_initial": 0.2, "retry_max": 1,
        "sinks": [{"type": "webhook", "url": f"http://127.0.0.1:{port}/hook"},
                  {"type": "jsonl", "path": "alerts.jsonl"}]}}).start()
    paths = [_leak(site, f"exports/hook-{i}.csv") for i in range(6)]
    for p in paths[:3]:
        assert curl(sc.url + p)[1] == 451
    _poll(lambda: sc.metric("dlp_alert_spool_depth") >= 3, 20, "the three alerts never reached the spool")
    sc.stop(signal.SIGKILL)                         # undelivered alerts must survive this
    sc.start()
    for p in paths[3:]:
        assert curl(sc.url + p)[1] == 451
    assert sc.metric("dlp_alert_spool_depth") >= 3
    _poll(lambda: sc.metric("dlp_alert_delivery_failures_total", sink="webhook") >= 6, 60,
          "the restarted sidecar did not retry the spooled alerts")
    assert sc.metric("dlp_alert_delivery_failures_total", sink="webhook") > 0
    recv = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port), str(got)])
    try:
        wait_http(f"http://127.0.0.1:{port}/hook", proc=recv)          # up (GET answers 405)
        deadline = time.monotonic() + 30
        import orjson
        while time.monotonic() < deadline:
            bodies = [orjson.loads(l) for l in got.read_bytes().splitlines()] if got.exists() else []
            if {b["url"]["path"] for b in bodies} >= set(paths):
                break
            time.sleep(0.2)
        expected = {a["dlp"]["dedup_id"]: a["url"]["path"] for a in sc.alerts()}
        assert sorted(expected.values()) == sorted(paths)           # one alert per trip, nothing lost
        seen = {}
        for b in bodies:
            seen.setdefault(b["dlp"]["dedup_id"], set()).add(b["url"]["path"])
        assert set(seen) == set(expected), "every alert arrived"
        assert all(len(v) == 1 for v in seen.values()), "a duplicate carries the same dedup id"
        deadline = time.monotonic() + 10
        while sc.metric("dlp_alert_spool_depth") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sc.metric("dlp_alert_spool_depth") == 0
    finally:
        recv.terminate()
        recv.wait(10)
        sc.stop()
