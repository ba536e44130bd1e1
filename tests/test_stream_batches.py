"""The worker's batched scan loop on a real broker: a bad record does not cost its batch, commits are
contiguous, a paginated API mirrored to Kafka trips on its cumulative exposure, and a worker killed
mid-batch loses nothing (the uncommitted batch is read again).

Real parts throughout: the broker (noida-db; Tansu for the kill, see tests/kafka.py), ``dlp-sensor worker``
processes, records in the mirror format produced with aiokafka.
"""
from __future__ import annotations

import asyncio
import signal
import time

import pytest

from sensor import synth
from sensor.stream.records import decode, encode
from tests.kafka import (Broker, WorkerProc, committed_offsets, create_topics, end_offsets, exchange_records, findings, json_values,
                         kafka_conf, produce, read_topic, snapshot_topics, unique_prefix)
from tests.kafka import wait_for as _wait_for
from tests.people_api import PER_PAGE, page_body, people

HOST = "data.example.gov"
TRIP_PEOPLE = 40


def wait_for(pred, timeout: float = 30.0, every: float = 0.1, what: str = "condition"):
    """Batches take longer than single exchanges: a longer default wait."""
    return _wait_for(pred, timeout, every, what)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Broker.start(tmp_path_factory.mktemp("kafka"))
    yield b
    b.stop()


def test_a_bad_record_costs_only_itself_and_commits_stay_contiguous(tmp_path, broker):
    """Everything is on the topic before the worker starts, so it arrives in a few large batches. One
    exchange's meta record is malformed and a stray record sits between the others: both go to the
    dead-letter topic, every other exchange gets its finding, and the committed offset reaches the end of
    every partition (no hole left open behind the bad records, none skipped)."""
    prefix = unique_prefix()
    k = kafka_conf(broker.bootstrap, prefix)
    web, leak = synth.benign_web(24 << 10), synth.breach_csv(300)
    xs = [f"b{i:03d}" for i in range(40)]
    recs: list[tuple[bytes | None, bytes]] = []
    for i, x in enumerate(xs):
        recs += exchange_records(x, f"{HOST}/files/{x}.csv", leak if i % 10 == 0 else web, client=f"c{i}")
        if i == 17:
            recs.append((b"stray", b"not a record at all"))
    bad = "b023"                                                    # its meta lacks the resource
    recs = [(key, encode("meta", url={}, status=200, sensor="p", ts=1.0)
             if key == bad.encode() and decode(v).type == "meta" else v) for key, v in recs]
    create_topics(broker.bootstrap, prefix)
    produce(broker, prefix + "exchanges", recs)
    w = WorkerProc(tmp_path / "w", k, "w").start()
    try:
        good = set(xs) - {bad}
        fs = wait_for(lambda: (lambda f: f if {x["xid"] for x in f} >= good else None)(
            findings(broker.bootstrap, prefix)), what="a finding for every good exchange")
        assert {f["xid"] for f in fs} == good
        assert sorted(f["xid"] for f in fs if f["verdict"] == "trip") == [f"b{i:03d}" for i in range(0, 40, 10)]
        dead = [decode(m.value) for m in asyncio.run(read_topic(broker.bootstrap, prefix + "deadletter"))]
        errors = sorted(d["error"] for d in dead)
        assert len(errors) == 2 and "field 'resource'" in errors[0] and "no header line" in errors[1], errors
        ends = {p: o for p, o in end_offsets(broker.bootstrap, prefix + "exchanges").items() if o > 0}
        assert sum(ends.values()) == len(recs)
        wait_for(lambda: committed_offsets(broker.bootstrap, k["worker"]["group"] + ".scan",
                                           prefix + "exchanges") == ends, what="commits up to the end")
        assert w.metric("dlp_exchanges_total", tap="kafka", verdict="trip") == 4
        assert w.metric("dlp_worker_records_uncommitted") == 0
    finally:
        w.stop()


def test_a_paginated_api_mirrored_to_kafka_trips_in_the_worker_once_the_total_crosses(tmp_path, broker):
    """Twelve pages of five people each, one client, mirrored as separate exchanges: no page trips on its
    own; the worker counts distinct records over the window and trips once the total crosses 40 — one
    fleet takedown of the API resource and one alert naming the total, like a sidecar in process."""
    prefix = unique_prefix()
    k = kafka_conf(broker.bootstrap, prefix)
    resource = f"{HOST}/api/people"
    everyone = people(12 * PER_PAGE)
    pages = 12
    recs = []
    for page in range(pages):
        recs += exchange_records(f"p{page:03d}", resource, page_body(everyone, page), client="client-hash-1",
                                 content_type="application/json", query=f"page={page}&per_page={PER_PAGE}")
    w = WorkerProc(tmp_path / "w", k, "w", extra={
        "policy": {"trip": {"strong_records": TRIP_PEOPLE, "person_records": TRIP_PEOPLE}}}).start()
    try:
        produce(broker, prefix + "exchanges", recs)
        fs = wait_for(lambda: (lambda f: f if len({x["xid"] for x in f}) == pages else None)(
            findings(broker.bootstrap, prefix)), what="every page's finding")
        crossing = TRIP_PEOPLE // PER_PAGE
        assert sorted(f["verdict"] for f in fs) == ["alert"] * (pages - 1) + ["trip"]
        assert max(f["records"] for f in fs) >= TRIP_PEOPLE
        takedowns = [decode(m.value) for m in asyncio.run(read_topic(broker.bootstrap, prefix + "takedowns"))]
        assert len(takedowns) == 1 and takedowns[0]["resource"] == resource, takedowns
        assert "exposure" in takedowns[0]["reason"] and takedowns[0]["fingerprint"] is None
        alerts = wait_for(lambda: (lambda a: a if len(a) == pages else None)(
            json_values(broker.bootstrap, prefix + "alerts")), what="every page's alert")
        trips = [a for a in alerts if a["rule"]["id"] == "dlp.trip"]
        assert len(trips) == 1, [a["rule"]["id"] for a in alerts]
        t = trips[0]["dlp"]
        assert t["resource"] == resource and t["exposure"]["scope"] == "resource"
        assert t["exposure"]["responses"] == crossing and t["exposure"]["strong_records"] == TRIP_PEOPLE
        assert t["records"] == t["exposure"]["records"] >= TRIP_PEOPLE
        assert any(n.startswith("exposure: ") and f"from {crossing} responses" in n for n in t["notes"])
        assert w.metric("dlp_takedowns_total", source="trip") == 1
        snapshot_topics(broker.bootstrap, [prefix + t for t in ("findings", "alerts", "takedowns")],
                        tmp_path / "published.txt")
    finally:
        w.stop()


@pytest.fixture(scope="module")
def tansu(tmp_path_factory):
    """Tansu evicts a group member that died without leaving; noida-db does not (see tests/kafka.py)."""
    b = Broker.start(tmp_path_factory.mktemp("tansu"), kind="tansu")
    yield b
    b.stop()


def test_a_worker_killed_mid_batch_loses_nothing(tmp_path, tansu):
    """kill -9 once the first batch has settled and more records are still being scanned: the uncommitted
    batch is read again by the worker started in its place, every exchange gets its finding, and the
    commits reach the end."""
    prefix = unique_prefix()
    k = kafka_conf(tansu.bootstrap, prefix)
    group, topic = k["worker"]["group"] + ".scan", prefix + "exchanges"
    leak = synth.breach_csv(2500)                                   # dense: a slow scan per exchange
    xs = [f"k{i:03d}" for i in range(60)]
    recs = [r for x in xs for r in exchange_records(x, f"{HOST}/dump/{x}.csv", leak, client=x, chunk=64 << 10)]
    w1 = WorkerProc(tmp_path / "w1", k, "w1").start()
    w2 = None
    try:
        produce(tansu, topic, recs)
        wait_for(lambda: w1.metric("dlp_exchanges_total", tap="kafka", verdict="trip") > 0, every=0.01,
                 what="a first settled batch")
        w1.stop(signal.SIGKILL)
        committed_at_kill = sum(committed_offsets(tansu.bootstrap, group, topic).values())
        seen_at_kill = {f["xid"] for f in findings(tansu.bootstrap, prefix)}
        assert committed_at_kill < len(recs) and len(seen_at_kill) < len(xs), "killed after the last batch"
        w2 = WorkerProc(tmp_path / "w2", k, "w2").start()
        fs = wait_for(lambda: (lambda f: f if {x["xid"] for x in f} == set(xs) else None)(
            findings(tansu.bootstrap, prefix)), timeout=90, every=0.5, what="a finding for every exchange")
        assert all(f["verdict"] == "trip" and f["completed"] for f in fs)
        wait_for(lambda: sum(committed_offsets(tansu.bootstrap, group, topic).values()) == len(recs),
                 what="commits up to the end")
        print(f"\nkilled with {len(seen_at_kill)}/{len(xs)} findings out and {committed_at_kill}/{len(recs)} "
              f"records committed; {len(fs) - len(xs)} findings published twice")
    finally:
        for w in (w1, w2):
            if w is not None:
                w.stop()


def test_a_new_scan_group_starts_where_fausts_group_left_the_exchanges(tmp_path, broker):
    """Workers before the batch reader consumed ``exchanges`` in faust's group. A worker upgraded in its place
    goes on from those offsets (replaying the topic's hour would re-publish takedowns lifted since)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    prefix = unique_prefix()
    k = kafka_conf(broker.bootstrap, prefix)
    topic = prefix + "exchanges"
    create_topics(broker.bootstrap, prefix)
    body = synth.breach_csv(50)
    old, new = [f"o{i:02d}" for i in range(10)], [f"n{i:02d}" for i in range(6)]
    produce(broker, topic, [r for x in old for r in exchange_records(x, f"{HOST}/e/{x}.csv", body, client=x)])
    ends = end_offsets(broker.bootstrap, topic)

    async def commit_as_faust() -> None:
        c = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=k["worker"]["group"],
                             enable_auto_commit=False)
        await c.start()
        try:
            tps = [TopicPartition(topic, p) for p in ends]
            c.assign(tps)
            await c.commit({tp: ends[tp.partition] for tp in tps if ends[tp.partition] > 0})
        finally:
            await c.stop()

    asyncio.run(commit_as_faust())
    produce(broker, topic, [r for x in new for r in exchange_records(x, f"{HOST}/e/{x}.csv", body, client=x)])
    w = WorkerProc(tmp_path / "w", k, "w").start()
    try:
        wait_for(lambda: sum(committed_offsets(broker.bootstrap, k["worker"]["group"] + ".scan", topic).values())
                 == sum(end_offsets(broker.bootstrap, topic).values()), what="the scan group to reach the end")
        assert sorted({f["xid"] for f in findings(broker.bootstrap, prefix)}) == new
    finally:
        w.stop()


def test_no_record_reaches_the_loop_before_its_assignment_is_positioned(broker):
    """aiokafka fetches for a new assignment while the reader's assigned hook (the worker positions its
    contiguity guard there, asking the broker for committed offsets) is still running. Records handed out
    then were processed before the guard knew where the partition starts, and read again after it (a bad
    record dead-lettered twice under load). The hook is held here until the records are surely fetched:
    the batch waits for it, then hands out each record once."""
    from sensor.config import KafkaConfig
    from sensor.stream.batches import BatchReader

    prefix = unique_prefix()
    create_topics(broker.bootstrap, prefix)
    topic = prefix + "exchanges"
    produce(broker, topic, [(f"k{i}".encode(), encode("meta", url={}, resource=f"r{i}")) for i in range(16)])

    async def run() -> None:
        entered, release, order = asyncio.Event(), asyncio.Event(), []

        async def on_assigned(tps: set) -> None:
            entered.set()
            await release.wait()
            order.append("positioned")

        async def on_revoked(tps: set) -> None:
            pass

        r = BatchReader(KafkaConfig(bootstrap=broker.bootstrap, topic_prefix=prefix), topic, prefix + "g",
                        on_assigned=on_assigned, on_revoked=on_revoked)
        await r.start()
        try:
            async def read_all() -> list:
                got: list = []
                while len(got) < 16:
                    batch = await r.batch(100)
                    order.extend("record" for _ in batch)
                    got += batch
                return got

            reading = asyncio.create_task(read_all())
            await asyncio.wait_for(entered.wait(), 30)
            # the hook is held; meanwhile the consumer fetches the 16 records (well within 3 s here)
            done, _ = await asyncio.wait({reading}, timeout=3.0)
            assert not done and "record" not in order, "records were handed out before the assignment was positioned"
            release.set()
            got = await asyncio.wait_for(reading, 30)
            assert order[0] == "positioned"
            assert sorted((m.partition, m.offset) for m in got) == sorted({(m.partition, m.offset) for m in got})
        finally:
            release.set()                               # (a held hook would hold the consumer's stop too)
            await r.consumer.stop()

    asyncio.run(run())
