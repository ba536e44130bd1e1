"""Scale-out on a real Kafka-protocol broker: mirror tap, faust workers, fleet-wide takedowns.

Everything here is real: the broker (noida-db, or $DLP_KAFKA_BOOTSTRAP), ``dlp-sensor worker``
processes, sidecar processes, the sample site, curl-free urllib clients.
"""
from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request

import orjson
import pytest

from sensor.sample_site import ROSTER
from tests.kafka import HMAC_KEY, Broker, WorkerProc, findings, json_values, kafka_conf, unique_prefix
from tests.procs import Sidecar, site_fixture

site = site_fixture(people=400)


HOST = "dashboard.example.gov"      # behind a load balancer every replica sees the public Host


def get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Host": HOST}), timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_for(pred, timeout: float = 15.0, every: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Broker.start(tmp_path_factory.mktemp("kafka"))
    yield b
    b.stop()


def sidecar(tmp, site, kafka: dict, name: str, **proxy) -> Sidecar:
    """Monitor mode unless told otherwise: a 451 from it can then only come from a takedown."""
    conf = {"sensor_id": name, "hmac_key": HMAC_KEY, "kafka": kafka, "proxy": {"mode": "monitor", **proxy}}
    return Sidecar.create(tmp / name, site.url, conf)


def test_fleet_takedown_mirror_worker_and_late_sidecar(tmp_path, broker, site):
    """A leak through monitor sidecar A (mirrored, scanned by a worker) is refused by sidecar B; a local
    enforce trip on A reaches B too; a sidecar started afterwards refuses both before serving; lifts travel."""
    prefix = unique_prefix()
    k = kafka_conf(broker.bootstrap, prefix)
    workers = [WorkerProc(tmp_path / f"w{i}", k, f"w{i}").start(wait=False) for i in (1, 2)]
    a = sidecar(tmp_path, site, {**k, "mirror": {"enabled": True}}, "sidecar-a",
                routes=[{"match": "/stream/*", "mode": "enforce"}])
    b = sidecar(tmp_path, site, k, "sidecar-b")
    c = None
    try:
        a.start(), b.start()
        for w in workers:
            w.wait_ready()
        # 1. mirrored: A (monitor) serves the whole leak; a worker trips and publishes the takedown
        status, body = get(a.url + "/" + ROSTER)
        assert status == 200 and len(body) == (site.root / ROSTER).stat().st_size
        assert a.metric("dlp_mirror_exchanges_total") >= 1
        wait_for(lambda: get(b.url + "/" + ROSTER)[0] == 451, what="sidecar B to refuse the mirrored leak")
        wait_for(lambda: get(a.url + "/" + ROSTER)[0] == 451, what="sidecar A to apply the fleet takedown")
        assert b.metric("dlp_fleet_takedowns_applied_total", action="takedown") >= 1
        assert b.metric("dlp_fleet_takedown_lag_seconds_count") >= 1
        # 2. local: A's enforce route trips on its own; its outbox publishes; B refuses
        leak2 = "/stream/" + ROSTER + ".gz"
        assert get(a.url + leak2)[0] == 451
        wait_for(lambda: get(b.url + leak2)[0] == 451, what="sidecar B to refuse A's local takedown")
        assert a.metric("dlp_fleet_takedowns_published_total", action="add") >= 1
        # the worker's finding, alert and ledger for the mirrored exchange
        fs = wait_for(lambda: [f for f in findings(broker.bootstrap, prefix) if f["verdict"] == "trip"],
                      what="the trip finding")
        assert fs[0]["resource"] == f"{HOST}/{ROSTER}" and fs[0]["records"] >= 300 and fs[0]["completed"]
        alerts = wait_for(lambda: json_values(broker.bootstrap, prefix + "alerts"), what="the SOC alert")
        assert alerts[0]["dlp"]["verdict"] == "trip" and alerts[0]["dlp"]["action"] == "takedown"
        assert alerts[0]["dlp"]["exchange_id"] == fs[0]["xid"]
        # 3. a sidecar started after both takedowns enforces them from its very first request
        c = sidecar(tmp_path, site, k, "sidecar-c").start()
        assert get(c.url + "/" + ROSTER)[0] == 451
        assert get(c.url + leak2)[0] == 451
        assert get(c.url + "/contact.html")[0] == 200
        # 4. lifting on B (admin API) lifts everywhere
        auth = {"Authorization": f"Bearer {b.token}", "Content-Type": "application/json"}
        listing = orjson.loads(urllib.request.urlopen(urllib.request.Request(b.admin + "/takedowns", headers=auth),
                                                      timeout=5).read())
        tid = next(t["id"] for t in listing if t["resource"] == fs[0]["resource"])
        req = urllib.request.Request(f"{b.admin}/takedowns/{tid}/lift", method="POST", headers=auth,
                                     data=b'{"reason": "reviewed: test data", "actor": "soc"}')
        assert urllib.request.urlopen(req, timeout=5).status == 200
        wait_for(lambda: get(c.url + "/" + ROSTER)[0] == 200, what="the lift to reach sidecar C")
        assert c.metric("dlp_fleet_takedowns_applied_total", action="lift") >= 1
    finally:
        for p in [a, b, c, *workers]:
            if p is not None:
                p.stop()
