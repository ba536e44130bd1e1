"""Through a real sidecar process: records that add up across pages trip, and Host headers mint nothing.

- A paginated JSON API (5 synthetic people a page, tests/people_api.py) is read page by page: no
  page trips on its own; once the distinct people served cross the trip threshold the API is taken
  down (one takedown, one alert naming the total) and later pages get 451. On a monitor route the
  same gives the alert only.
- A tripped file asked for with 300 different Host headers: one takedown, every request 451.
"""
from __future__ import annotations

import subprocess
import sys
import time

import aiohttp
import pytest

from sensor.sample_site import ROSTER, build_site
from tests.procs import BIN, ROOT, Sidecar, Upstream, free_port, stop, wait_http

TRIP_PEOPLE = 40                # the test policy's trip threshold (strong and person records)
PER_PAGE = 5


@pytest.fixture(scope="module")
def people_api():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.people_api", "--port", str(port)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", proc=proc)
    yield url
    stop(proc)


@pytest.fixture(scope="module")
def sidecar(people_api, tmp_path_factory):
    sc = Sidecar.create(tmp_path_factory.mktemp("exposure"), people_api, {
        "policy": {"trip": {"strong_records": TRIP_PEOPLE, "person_records": TRIP_PEOPLE}},
        "takedown": {"query": "keep"},               # pagination is folded out all the same
        "site": {"hosts": ["data.example.gov"]},
        "proxy": {"routes": [{"match": "/monitor/*", "mode": "monitor"}]},
    }).start()
    yield sc
    sc.stop()


def _wait(cond, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if v := cond():
            return v
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


async def _pages(base: str, path: str, pages: int, host: str = "data.example.gov") -> list[int]:
    out = []
    async with aiohttp.ClientSession() as s:
        for page in range(pages):
            async with s.get(f"{base}{path}?page={page}&per_page={PER_PAGE}", headers={"Host": host}) as r:
                await r.read()
                out.append(r.status)
            if out[-1] == 200 and page + 1 >= TRIP_PEOPLE // PER_PAGE:
                # the trip is taken down as the page that crossed is accounted: wait for it to land
                await _until_taken_down(base, path, host)
    return out


async def _until_taken_down(base: str, path: str, host: str) -> None:
    deadline = time.monotonic() + 15
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            async with s.head(f"{base}{path}?page=0", headers={"Host": host}) as r:
                if r.status == 451:
                    return
            await _sleep()
    raise AssertionError("no takedown")


async def _sleep() -> None:
    import asyncio
    await asyncio.sleep(0.05)


async def test_paginated_api_trips_once_the_total_crosses_the_threshold(sidecar):
    before = sidecar.alerts()
    statuses = await _pages(sidecar.url, "/api/people", 20)
    crossing = TRIP_PEOPLE // PER_PAGE                     # pages 0..7 give 40 people
    assert statuses[:crossing] == [200] * crossing         # no page trips on its own
    assert statuses[crossing:] == [451] * (20 - crossing)  # once the total crossed: the API is down
    def delivered():
        new = [a for a in sidecar.alerts() if a not in before]
        ids = [a["rule"]["id"] for a in new]                # (dlp.incident: the incident's summary)
        return new if ids.count("dlp.trip") >= 1 and ids.count("dlp.alert") >= crossing - 1 else None
    new = _wait(delivered)
    trips = [a for a in new if a["rule"]["id"] == "dlp.trip"]
    assert len(trips) == 1, [a["rule"]["id"] for a in new]
    t = trips[0]["dlp"]
    assert t["resource"] == "data.example.gov/api/people" and t["takedown_id"] is not None
    assert t["exposure"]["scope"] == "resource" and t["exposure"]["responses"] == crossing
    assert t["exposure"]["strong_records"] == TRIP_PEOPLE and t["records"] == t["exposure"]["records"] >= TRIP_PEOPLE
    assert any(n.startswith("exposure: ") and f"from {crossing} responses" in n for n in t["notes"])
    # every page before the crossing one alerted on its own (5 people each), below the bar
    assert sum(a["rule"]["id"] == "dlp.alert" for a in new) == crossing - 1
    assert sidecar.metric("dlp_takedowns_total", source="trip") == 1


async def test_monitor_route_alerts_without_a_takedown(sidecar):
    before = sidecar.alerts()
    async with aiohttp.ClientSession() as s:
        statuses = []
        for page in range(12):
            async with s.get(f"{sidecar.url}/monitor/people?page={page + 100}") as r:
                await r.read()
                statuses.append(r.status)
    assert statuses == [200] * 12
    trips = _wait(lambda: [a for a in sidecar.alerts() if a not in before and a["rule"]["id"] == "dlp.trip"])
    assert len(trips) == 1
    t = trips[0]["dlp"]
    assert t["action"] == "logged" and t["takedown_id"] is None and t["exposure"]["strong_records"] == TRIP_PEOPLE


# -- Host headers mint nothing -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory):
    up = Upstream.start(build_site(tmp_path_factory.mktemp("site"), people=300))
    yield up
    up.stop()


async def test_three_hundred_host_headers_one_takedown_every_request_451(site, tmp_path):
    sc = Sidecar.create(tmp_path / "hosts", site.url).start()          # no site.hosts: every Host is one site
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{sc.url}/{ROSTER}", headers={"Host": "first.example"}) as r:
                await r.read()
                assert r.status == 451                                  # the leak trips and is taken down
            statuses = []
            for i in range(300):
                async with s.get(f"{sc.url}/{ROSTER}", headers={"Host": f"h{i}.example:{1000 + i}"}) as r:
                    await r.read()
                    statuses.append(r.status)
        assert statuses == [451] * 300
        out = subprocess.run([str(BIN / "dlp-sensor"), "takedowns", "list", "--config",
                              str(sc.config), "--state-dir", str(sc.state)], capture_output=True, text=True,
                             cwd=ROOT)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("#")]
        assert len(lines) == 1 and f"*/{ROSTER}" in lines[0], out.stdout + out.stderr
        assert sc.metric("dlp_takedowns_total", source="trip") == 1
        assert sc.metric("dlp_refusals_total", reason="resource") == 300
        _wait(lambda: sc.alerts())
        assert {a["dlp"]["incident"]["id"] for a in sc.alerts()} == {sc.alerts()[0]["dlp"]["incident"]["id"]}
    finally:
        sc.stop()
