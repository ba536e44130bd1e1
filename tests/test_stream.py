"""Scale-out on a real Kafka-protocol broker: mirror tap, faust workers, fleet-wide takedowns.

Everything here is real: the broker (noida-db, or $DLP_KAFKA_BOOTSTRAP), ``dlp-sensor worker``
processes, sidecar processes, the sample site, curl-free urllib clients.
"""
from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from sensor.sample_site import ROSTER
from sensor.stream.records import decode
from tests.kafka import (HMAC_KEY, Broker, WorkerProc, findings, json_values, kafka_conf, read_topic,
                         snapshot_topics, start_workers, unique_prefix, wait_for)
from tests.procs import BIN, Sidecar, disk_stalled, site_fixture

site = site_fixture(people=400)


HOST = "dashboard.example.gov"      # behind a load balancer every replica sees the public Host


def get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Host": HOST}), timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()



@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Broker.start(tmp_path_factory.mktemp("kafka"))
    yield b
    b.stop()


def one_per_partition(pattern: str, partitions: int = 8) -> list[str]:
    """Resources (``pattern`` with a number) whose findings land on every partition, one each."""
    from tests.kafka import partition_of
    found: dict[int, str] = {}
    i = 0
    while len(found) < partitions:
        r = pattern.format(i)
        found.setdefault(partition_of(r, partitions), r)
        i += 1
    return list(found.values())


def sidecar(tmp, site, kafka: dict, name: str, **proxy) -> Sidecar:
    """Monitor mode unless told otherwise: a 451 from it can then only come from a takedown."""
    conf = {"sensor_id": name, "hmac_key": HMAC_KEY, "kafka": kafka, "proxy": {"mode": "monitor", **proxy},
            "site": {"hosts": [HOST]}}             # resource keys name the public site
    return Sidecar.create(tmp / name, site.url, conf)


def test_fleet_takedown_mirror_worker_and_late_sidecar(tmp_path, broker, site):
    """A leak through monitor sidecar A (mirrored, scanned by a worker) is refused by sidecar B; a local
    enforce trip on A reaches B too; a sidecar started afterwards refuses both before serving; lifts travel."""
    prefix = unique_prefix()
    k = kafka_conf(broker.bootstrap, prefix)
    workers = start_workers(tmp_path, k, ["w1", "w2"])
    a = sidecar(tmp_path, site, {**k, "mirror": {"enabled": True}}, "sidecar-a",
                routes=[{"match": "/stream/*", "mode": "enforce"}])
    b = sidecar(tmp_path, site, k, "sidecar-b")
    c = None
    try:
        a.start(), b.start()
        # 1. mirrored: A (monitor) serves the whole leak; a worker trips and publishes the takedown
        status, body = get(a.url + "/" + ROSTER)
        assert status == 200 and len(body) == (site.root / ROSTER).stat().st_size
        assert a.metric("dlp_mirror_exchanges_total") >= 1
        wait_for(lambda: get(b.url + "/" + ROSTER)[0] == 451, what="sidecar B to refuse the mirrored leak")
        wait_for(lambda: get(a.url + "/" + ROSTER)[0] == 451, what="sidecar A to apply the fleet takedown")
        assert b.metric("dlp_fleet_takedowns_applied_total", action="takedown") >= 1
        assert b.metric("dlp_fleet_takedown_lag_seconds_count") >= 1
        # 2. local: A's enforce route trips on its own and announces the takedown to the fleet before its
        #    own commit. B refuses at once, even while neither registry can be written (stalled disks):
        #    A's 451 waits for A's disk, B commits the takedown afterwards.
        leak2 = "/stream/" + ROSTER + ".gz"
        with ThreadPoolExecutor(1) as pool:
            with disk_stalled(a.state / "takedowns.db", b.state / "takedowns.db"):
                trip = pool.submit(get, a.url + leak2, timeout=30)
                wait_for(lambda: get(b.url + leak2)[0] == 451, timeout=8,
                         what="sidecar B to refuse A's local takedown while both registries are locked")
                assert not trip.done()                          # A's own answer still waits for its disk
                assert b.metric("dlp_takedowns_active") == 1   # the mirrored one; leak2's is not on disk yet
            assert trip.result(timeout=20)[0] == 451
        wait_for(lambda: b.metric("dlp_takedowns_active") == 2, what="B to commit the fleet takedown")
        assert a.metric("dlp_fleet_takedowns_published_total", action="add") >= 1
        # the worker's finding, alert and ledger for the mirrored exchange
        fs = wait_for(lambda: [f for f in findings(broker.bootstrap, prefix)
                               if f["verdict"] == "trip" and f["origin"].startswith("worker:")],
                      what="the worker's trip finding")
        assert fs[0]["resource"] == f"{HOST}/{ROSTER}" and fs[0]["records"] >= 300 and fs[0]["completed"]
        alerts = wait_for(lambda: json_values(broker.bootstrap, prefix + "alerts"), what="the SOC alert")
        assert alerts[0]["dlp"]["verdict"] == "trip" and alerts[0]["dlp"]["action"] == "takedown"
        assert alerts[0]["dlp"]["exchange_id"] == fs[0]["xid"]
        # 3. a sidecar started after both takedowns enforces them from its very first request
        c = sidecar(tmp_path, site, k, "sidecar-c").start()
        assert get(c.url + "/" + ROSTER)[0] == 451
        assert get(c.url + leak2)[0] == 451
        assert get(c.url + "/contact.html")[0] == 200
        # A's outbox did not publish leak2's takedown again once its commit landed (it was announced)
        published = [decode(m.value) for m in asyncio.run(read_topic(broker.bootstrap, prefix + "takedowns"))]
        assert [r["origin"] for r in published if r["resource"].endswith(leak2)] == ["sidecar-a"]
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
        # the fleet report: the workers' exposure table, both incidents (mirrored, and A's own enforce trip)
        out = subprocess.run([str(BIN / "dlp-sensor"), "report", "--fleet", "--format", "json", "--config",
                              str(a.config)], capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr.decode()[-2000:]
        rep = {i["resource"]: i for i in orjson.loads(out.stdout)["incidents"]}
        assert rep[f"{HOST}/{ROSTER}"]["served"] >= 1 and rep[f"{HOST}/{ROSTER}"]["tripped_at"]
        assert rep[f"{HOST}{leak2}"]["max_records_in_one_response"] >= 1
        snapshot_topics(broker.bootstrap, [prefix + t for t in ("findings", "alerts", "takedowns")] +
                        [f"{prefix}workers-exposure-changelog", f"{prefix}workers-exposure-clients-changelog"],
                        tmp_path / "kafka-topics.bin")
    finally:
        for p in [a, b, c, *workers]:
            if p is not None:
                p.stop()


@pytest.fixture(scope="module")
def tansu(tmp_path_factory):
    """Tansu evicts a consumer-group member that died without leaving; noida-db does not (see tests/kafka.py)."""
    b = Broker.start(tmp_path_factory.mktemp("tansu"), kind="tansu")
    yield b
    b.stop()


def test_a_trip_announced_before_its_commit_is_learned_back_after_kill_9(tmp_path, broker, site):
    """A trip's takedown reaches the fleet before this host's disk has it. A sidecar killed in between
    takes it back from the topic at restart (a record of its own that its registry never saw)."""
    prefix = unique_prefix()
    a = sidecar(tmp_path, site, kafka_conf(broker.bootstrap, prefix), "sidecar-a",
                routes=[{"match": "/stream/*", "mode": "enforce"}])
    leak = "/stream/" + ROSTER
    announced = lambda: [r for r in (decode(m.value) for m in asyncio.run(read_topic(broker.bootstrap,  # noqa: E731
                                                                                     prefix + "takedowns")))
                         if r["resource"].endswith(leak)]
    try:
        a.start()
        with ThreadPoolExecutor(1) as pool:
            with disk_stalled(a.state / "takedowns.db"):
                trip = pool.submit(get, a.url + leak, timeout=30)
                wait_for(announced, timeout=8, what="the takedown on the fleet topic before A's commit")
                a.stop(signal.SIGKILL)
            with pytest.raises(OSError):                        # the trip never answered: A died first
                trip.result(timeout=20)
        a.start()
        assert a.metric("dlp_takedowns_active") == 1
        assert a.metric("dlp_fleet_takedowns_applied_total", action="takedown") == 1
        assert len(announced()) == 1
    finally:
        a.stop()


def test_worker_killed_mid_exchange_loses_nothing(tmp_path, tansu, site):
    """kill -9 a worker with exchanges open: the other takes its partitions over, every exchange gets its
    finding (duplicates share the exchange id), and the exposure table comes back from its changelog.

    As on a busy site, downloads interleave: behind each open exchange's meta record a short exchange on the
    same partition starts and finishes. Its acks must not let the committed offset pass the open one's meta
    (faust alone would: see sensor/stream/acks.py), or the next owner never reads that exchange again."""
    from sensor.detect.engine import Engine                  # the expected counts come from the same scanner
    from sensor.detect.pack import load_pack
    from tests.conftest import scan_bytes
    from tests.kafka import changelog, exchange_records, partition_of, produce

    prefix = unique_prefix()
    k = kafka_conf(tansu.bootstrap, prefix, worker={"exchange_timeout": 120})
    topic = prefix + "exchanges"
    body = (site.root / ROSTER).read_bytes()
    resources = one_per_partition(f"{HOST}/exports/roster-{{}}.csv")   # whoever dies owned some of the ledger
    n = iter(range(10_000))
    ex = lambda r: (f"x{next(n):04d}-{r[-6:-4]}", r)                          # noqa: E731

    def beside(xid: str, r: str) -> tuple[str, str]:
        """A new exchange of ``r`` whose records share ``xid``'s partition."""
        while True:
            x, _ = ex(r)
            if partition_of(x, 8) == partition_of(xid, 8):
                return x, r

    w1 = WorkerProc(tmp_path / "w1", k, "w1").start()
    w2 = None
    try:
        phase1 = [ex(r) for r in resources for _ in range(2)]
        produce(tansu, topic, [rec for x, r in phase1 for rec in exchange_records(x, r, body, client=x)])
        wait_for(lambda: len({f["xid"] for f in findings(tansu.bootstrap, prefix)}) == len(phase1), 30,
                 what="phase-1 findings")
        w2 = WorkerProc(tmp_path / "w2", k, "w2").start()
        wait_for(lambda: all(w.metric("dlp_kafka_assigned_partitions", topic=topic) > 0 for w in (w1, w2)), 30,
                 what="both workers to own partitions")
        opened = [ex(r) for r in resources]
        shorts = [beside(x, r) for x, r in opened]
        recs = {x: exchange_records(x, r, body, client=x) for x, r in opened}
        produce(tansu, topic, [rec for (x, _), (s, r) in zip(opened, shorts)
                               for rec in recs[x][:1] + exchange_records(s, r, body, client=s)])
        wait_for(lambda: {s for s, _ in shorts} <= {f["xid"] for f in findings(tansu.bootstrap, prefix)}, 30,
                 what="the short exchanges' findings")
        wait_for(lambda: sum(w.metric("dlp_worker_exchanges_open") for w in (w1, w2)) == len(opened), 30,
                 what="the long exchanges to be open")
        time.sleep(2 * 0.5)             # two commit intervals: whatever the shorts' acks allow is committed now
        victim, survivor = sorted((w1, w2), key=lambda w: -w.metric("dlp_worker_exchanges_open"))
        assert victim.metric("dlp_worker_exchanges_open") > 0
        # the shorts' records wait behind the open metas, so more are held than the metas alone
        assert victim.metric("dlp_worker_records_uncommitted") > victim.metric("dlp_worker_exchanges_open")
        victim.stop(signal.SIGKILL)
        tail = [ex(r) for r in resources]
        produce(tansu, topic, [rec for x, _ in opened for rec in recs[x][1:]] +
                [rec for x, r in tail for rec in exchange_records(x, r, body, client=x)])
        every = phase1 + opened + shorts + tail
        want = {x for x, _ in every}
        try:
            got = wait_for(lambda: (lambda fs: fs if {f["xid"] for f in fs} == want else None)(
                findings(tansu.bootstrap, prefix)), 120, every=0.5, what="a finding for every exchange")
        except AssertionError:
            have = {f["xid"] for f in findings(tansu.bootstrap, prefix)}
            logs = {w.name: [ln for ln in (w.tmp / "stderr.log").read_text(errors="replace").splitlines()
                             if ln.startswith("[")][-30:] for w in (survivor, victim)}
            raise AssertionError(f"no finding for {sorted(want - have)}; opened were {[x for x, _ in opened]}; "
                                 f"victim {victim.name}; survivor owns "
                                 f"{survivor.metric('dlp_kafka_assigned_partitions', topic=topic)} partitions, "
                                 f"{survivor.metric('dlp_worker_exchanges_open')} open, "
                                 f"{survivor.metric('dlp_worker_duplicates_total', kind='orphan')} orphan records; "
                                 "logs:\n" + "\n".join(f"{name}: {ln}" for name, lines in logs.items() for ln in lines)
                                 ) from None
        expected = scan_bytes(Engine(load_pack()), body, content_type="text/csv")
        for f in got:
            assert f["records"] == expected.records and f["verdict"] == "trip" and f["completed"], f["xid"]
        print(f"\n{len(got)} findings for {len(every)} exchanges ({len(got) - len(every)} redelivered duplicates)")
        # The exposure table came back from its changelog: each resource was downloaded 5 times, and after the
        # kill the survivor saw at most 3 of them (the long one, its short neighbour read again, the last), so
        # >= 4 needs the ones from before. Not == 5: Tansu answers ListOffsets(latest) one batch short, and
        # faust's changelog recovery trusts it, so the last update of a moved partition is sometimes missed.
        # The exact count after a handover is asserted on noida-db below.
        per = len(every) // len(resources)
        table = f"{prefix}workers-exposure-changelog"
        try:
            ledger = wait_for(lambda: (lambda c: c if all((c.get(r) or {}).get("downloads", 0) >= per - 1
                                                          for r in resources)
                                       else None)(changelog(tansu.bootstrap, table)),
                              30, every=0.5, what="the exposure table to be restored")
        except AssertionError:
            c = changelog(tansu.bootstrap, table)
            raise AssertionError("downloads per resource: " + str({r: (c.get(r) or {}).get("downloads")
                                                                   for r in resources})) from None
        for r in resources:
            assert ledger[r]["clients"] == ledger[r]["downloads"] and ledger[r]["records_max"] == expected.records
    finally:
        for w in (w1, w2):
            if w is not None:
                w.stop()


def test_malformed_records_go_to_the_dead_letter_topic(tmp_path, broker, site):
    from sensor.stream.records import encode
    from tests.kafka import exchange_records, produce

    prefix = unique_prefix()
    k = kafka_conf(broker.bootstrap, prefix)
    w = WorkerProc(tmp_path / "w", k, "w").start()
    try:
        bad = [(b"x1", b"not a record at all"), (b"x2", b'{"v": 99, "type": "meta"}\n'),
               (b"x3", encode("meta", url={}, resource=7)), (None, encode("chunk", b"123-45-6789", seq=0))]
        good = exchange_records("x-good", f"{HOST}/exports/after.csv", (site.root / ROSTER).read_bytes(), client="c")
        produce(broker, prefix + "exchanges", bad + good)
        fs = wait_for(lambda: findings(broker.bootstrap, prefix), 20, what="the good exchange's finding")
        assert [f["xid"] for f in fs] == ["x-good"] and fs[0]["verdict"] == "trip"
        dead = [decode(m.value) for m in asyncio.run(read_topic(broker.bootstrap, prefix + "deadletter"))]
        assert len(dead) == 4 and all(d["topic"] == prefix + "exchanges" for d in dead)
        errors = " | ".join(d["error"] for d in dead)
        assert "no header line" in errors and "unsupported record version 99" in errors
        assert "field 'resource'" in errors and "without a key" in errors
        assert b"not a record at all" in {d.payload for d in dead}      # the original bytes, for replay
        assert "123-45-6789" not in errors and w.metric("dlp_deadletters_total", topic=prefix + "exchanges") == 4
    finally:
        w.stop()


def test_broker_restart_during_traffic(tmp_path, site):
    """Stop the broker under traffic: sidecars keep serving (the mirror falls back to local scanning) and
    /metrics shows the outage; start it again: sidecars and the worker reconnect by themselves."""
    br = Broker.start(tmp_path / "kafka", local=True)        # one it may stop, even with $DLP_KAFKA_BOOTSTRAP
    prefix = unique_prefix()
    k = kafka_conf(br.bootstrap, prefix)
    w = WorkerProc(tmp_path / "w", k, "w").start(wait=False)
    a = sidecar(tmp_path, site, {**k, "mirror": {"enabled": True}}, "sidecar-a")
    b = sidecar(tmp_path, site, k, "sidecar-b")
    try:
        a.start(), b.start(), w.wait_ready()
        br.stop()
        wait_for(lambda: a.metric("dlp_kafka_up", component="mirror") == 0 and
                 a.metric("dlp_kafka_up", component="fleet") == 0 and
                 w.metric("dlp_kafka_up", component="worker") == 0, 30, what="the outage to show in /metrics")
        assert get(a.url + "/contact.html")[0] == 200 and get(b.url + "/contact.html")[0] == 200
        status, body = get(a.url + "/" + ROSTER)                  # a leak during the outage: scanned locally
        assert status == 200 and len(body) == (site.root / ROSTER).stat().st_size
        assert a.metric("dlp_mirror_overflow_total", action="local") >= 1
        assert a.metric("dlp_exchanges_total", tap="proxy", verdict="trip") >= 1
        br.resume()
        wait_for(lambda: a.metric("dlp_kafka_up", component="mirror") == 1 and
                 a.metric("dlp_kafka_up", component="fleet") == 1 and
                 w.metric("dlp_kafka_up", component="worker") == 1, 30, what="everyone to reconnect")
        leak = "/stream/" + ROSTER
        assert get(a.url + leak)[0] == 200
        wait_for(lambda: get(b.url + leak)[0] == 451, 30, what="a leak after the restart to be taken down fleet-wide")
        # a worker told to stop while the broker is gone still stops (faust alone would wait for it forever)
        br.stop()
        w.proc.send_signal(signal.SIGTERM)
        w.proc.wait(20)                                 # raises if it is still running
    finally:
        for p in (a, b, w):
            p.stop()
        br.stop()


def test_mirror_overflow_falls_back_to_local_scanning(tmp_path, broker, site):
    """A mirror queue with no room for the body: the exchange is ended as lost (the worker says so) and
    the sidecar scans it itself; with overflow: drop it is counted and not scanned at all."""
    prefix = unique_prefix()
    k = kafka_conf(broker.bootstrap, prefix)
    w = WorkerProc(tmp_path / "w", k, "w").start(wait=False)
    tiny = {"enabled": True, "queue_mib": 0.01}                     # ~10 KB: the first body chunk overflows
    a = sidecar(tmp_path, site, {**k, "mirror": {**tiny, "overflow": "local"}}, "sidecar-local")
    d = sidecar(tmp_path, site, {**k, "mirror": {**tiny, "overflow": "drop"}}, "sidecar-drop")
    try:
        a.start(), d.start(), w.wait_ready()
        for sc in (a, d):
            status, body = get(sc.url + "/" + ROSTER)
            assert status == 200 and len(body) == (site.root / ROSTER).stat().st_size
        assert a.metric("dlp_mirror_overflow_total", action="local") == 1
        # scanned in the sidecar (its final scan runs in the scan pool after the last byte left: wait for it)
        wait_for(lambda: a.metric("dlp_exchanges_total", tap="proxy", verdict="trip") == 1,
                 what="the sidecar's own scan of the overflowed exchange")
        assert d.metric("dlp_mirror_overflow_total", action="drop") == 1
        assert d.metric("dlp_exchanges_total", tap="proxy", verdict="mirrored") == 0
        assert d.metric("dlp_exchanges_total", tap="proxy", verdict="trip") == 0       # dropped: not scanned
        fs = wait_for(lambda: (lambda f: f if len(f) >= 2 else None)(
            [f for f in findings(broker.bootstrap, prefix) if f["origin"] == "worker:w"]), 20,
            what="the worker's findings for the two lost exchanges")
        assert all(not f["completed"] and f["bytes"] == 0 for f in fs)
    finally:
        for p in (a, d, w):
            p.stop()


def test_exposure_table_moves_with_its_partitions(tmp_path, broker, site):
    """A worker hands its partitions over (SIGTERM: it leaves the group): the other restores the exposure
    table from the changelog and goes on counting — exactly (noida-db answers offsets correctly)."""
    from tests.kafka import changelog, exchange_records, produce

    prefix = unique_prefix()
    k = kafka_conf(broker.bootstrap, prefix)
    topic = prefix + "exchanges"
    body = (site.root / ROSTER).read_bytes()
    resources = one_per_partition(f"{HOST}/exports/table-{{}}.csv")
    n = iter(range(1000))

    def send(per_resource: int) -> None:
        produce(broker, topic, [rec for r in resources for _ in range(per_resource)
                                for x in [f"t{next(n):04d}"] for rec in exchange_records(x, r, body, client=x)])

    def counts() -> dict:
        c = changelog(broker.bootstrap, f"{prefix}workers-exposure-changelog")
        return {r: (c.get(r) or {}).get("downloads") for r in resources}

    w1 = WorkerProc(tmp_path / "w1", k, "w1").start()
    w2 = None
    try:
        send(2)
        wait_for(lambda: set(counts().values()) == {2}, 30, every=0.5, what="2 downloads per resource")
        w2 = WorkerProc(tmp_path / "w2", k, "w2").start()
        wait_for(lambda: all(w.metric("dlp_kafka_assigned_partitions", topic=topic) > 0 for w in (w1, w2)), 30,
                 what="both workers to own partitions")
        w1.stop()                                       # graceful: it leaves, w2 takes everything
        wait_for(lambda: w2.metric("dlp_kafka_assigned_partitions", topic=topic) == 8, 30,
                 what="w2 to own every partition")
        send(2)
        try:
            wait_for(lambda: set(counts().values()) == {4}, 30, every=0.5, what="4 downloads per resource")
        except AssertionError:
            raise AssertionError(f"downloads per resource: {counts()}") from None
    finally:
        for w in (w1, w2):
            if w is not None:
                w.stop()


def test_the_offsets_clients_leave_the_broker_at_close(broker):
    """The worker's own admin client and consumer (``Offsets``) are closed when it stops; asking again
    afterwards opens new ones, and a second close does nothing."""
    from aiokafka import TopicPartition

    from sensor.config import KafkaConfig
    from sensor.stream.kafka import Offsets

    async def run() -> None:
        o = Offsets(KafkaConfig(bootstrap=broker.bootstrap))
        tp = TopicPartition("dlp.offsets-probe", 0)
        assert await o.starting("offsets-probe-group", [tp]) in ({tp: 0}, {})
        admin, consumer = o._admin, o._consumer
        assert admin is not None and consumer is not None and not admin._closed and not consumer._closed
        await o.close()
        assert admin._closed and consumer._closed
        await o.close()
        await o.starting("offsets-probe-group", [tp])
        assert o._consumer is not None and o._consumer is not consumer
        await o.close()

    asyncio.run(run())
