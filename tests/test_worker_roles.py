"""Worker roles (``kafka.worker.roles``, ``dlp-sensor worker --roles``): scan workers and a ledger worker.

On a real broker (noida-db, or $DLP_KAFKA_BOOTSTRAP) with real ``dlp-sensor worker`` processes: a
scan-only worker plus a ledger-only worker publish the same findings and takedowns, and build the same
exposure table, as one worker of both roles fed the same exchanges; the scan-only worker alone never
touches the exposure table (no changelog record, no offset of the ledger's group).
"""
from __future__ import annotations

import asyncio
import signal
import subprocess

import pytest

from sensor.config import ConfigError, parse_config
from sensor.sample_site import ROSTER
from sensor.stream.records import decode
from tests.kafka import (Broker, WorkerProc, changelog, committed_offsets, create_topics, exchange_records, findings,
                         kafka_conf, produce, read_topic, unique_prefix, wait_for)
from tests.procs import BIN, site_fixture

site = site_fixture(people=200)
HOST = "dashboard.example.gov"


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Broker.start(tmp_path_factory.mktemp("kafka"))
    yield b
    b.stop()


def with_roles(k: dict, *roles: str) -> dict:
    return {**k, "worker": {**k["worker"], "roles": list(roles)}}


def exchanges(site) -> list[tuple[bytes, bytes]]:
    """12 exchanges over 4 resources, 3 clients: a breach roster (trips) and benign pages."""
    roster = (site.root / ROSTER).read_bytes()
    benign = b"<html><body>" + b"Opening hours and directions to the office. " * 400 + b"</body></html>"
    out = []
    for i in range(12):
        resource = f"{HOST}/exports/roles-{i % 4}.csv"
        body = roster if i % 4 == 0 else benign
        out += exchange_records(f"x{i:02d}", resource, body, client=f"client-{i % 3}",
                                content_type="text/csv" if i % 4 == 0 else "text/html")
    return out


def summary(fs: list[dict]) -> dict:
    return {f["xid"]: (f["resource"], f["verdict"], f["records"], f.get("client"), f.get("completed")) for f in fs}


def table(bootstrap: str, prefix: str) -> dict:
    """The exposure table from its changelog, less what depends on when and in which order it was counted
    (the trip's time, the order of the recent exchange ids and of the clients)."""
    out = {}
    for resource, e in changelog(bootstrap, f"{prefix}workers-exposure-changelog").items():
        e = dict(e or {})
        e.pop("tripped_at", None)
        e["recent"] = sorted(e.get("recent", []))
        e["client_list"] = sorted(e.get("client_list", []))
        out[resource] = e
    return out


def takedowns(bootstrap: str, prefix: str) -> set[str]:
    return {decode(m.value)["resource"] for m in asyncio.run(read_topic(bootstrap, prefix + "takedowns"))}


def test_scan_and_ledger_workers_match_one_worker_of_both_roles(tmp_path, broker, site):
    records = exchanges(site)
    want_xids = {f"x{i:02d}" for i in range(12)}

    # one worker of both roles (today's deployment)
    a = unique_prefix()
    ka = kafka_conf(broker.bootstrap, a)
    w = WorkerProc(tmp_path / "both", ka, "both").start()
    try:
        produce(broker, a + "exchanges", records)
        wait_for(lambda: {f["xid"] for f in findings(broker.bootstrap, a)} >= want_xids, 40, every=0.3,
                 what="the both-roles worker's findings")
        wait_for(lambda: sum(e.get("downloads", 0) for e in table(broker.bootstrap, a).values()) == 12, 30,
                 every=0.5, what="12 downloads in the both-roles worker's exposure table")
    finally:
        w.stop()

    # the same exchanges, a scan-only worker first and alone
    b = unique_prefix()
    kb = kafka_conf(broker.bootstrap, b)
    create_topics(broker.bootstrap, b)
    scan = WorkerProc(tmp_path / "scan", with_roles(kb, "scan"), "scan").start()   # ready: its scan group joined
    ledger = None
    try:
        produce(broker, b + "exchanges", records)
        wait_for(lambda: {f["xid"] for f in findings(broker.bootstrap, b)} >= want_xids, 40, every=0.3,
                 what="the scan-only worker's findings")
        wait_for(lambda: takedowns(broker.bootstrap, b) == takedowns(broker.bootstrap, a), 20,
                 what="the scan-only worker's takedowns")
        # it never touched the exposure table: no changelog record, no offset of the ledger's (faust's) group
        assert changelog(broker.bootstrap, f"{b}workers-exposure-changelog") == {}
        assert committed_offsets(broker.bootstrap, kb["worker"]["group"], b + "findings") == {}
        assert scan.metric("dlp_kafka_assigned_partitions", topic=b + "exchanges") == 8
        assert scan.metric("dlp_kafka_assigned_partitions", topic=b + "findings") == 0

        # the ledger worker, started later, counts every finding (ready once faust joined and restored)
        ledger = WorkerProc(tmp_path / "ledger", with_roles(kb, "ledger"), "ledger").start()
        wait_for(lambda: sum(e.get("downloads", 0) for e in table(broker.bootstrap, b).values()) == 12, 30,
                 every=0.5, what="12 downloads in the ledger worker's exposure table")
        assert ledger.metric("dlp_kafka_assigned_partitions", topic=b + "exchanges") == 0
        assert ledger.metric("dlp_exchanges_total", tap="kafka", verdict="trip") == 0   # it scanned nothing
    finally:
        for p in (scan, ledger):
            if p is not None:
                p.stop()

    assert summary(findings(broker.bootstrap, b)) == summary(findings(broker.bootstrap, a))
    assert table(broker.bootstrap, b) == table(broker.bootstrap, a)
    t = table(broker.bootstrap, b)
    assert t[f"{HOST}/exports/roles-0.csv"]["flagged"] == 3 and "tripped_at" not in t[f"{HOST}/exports/roles-1.csv"]


@pytest.mark.parametrize("roles, why", [([], "must name at least one role"), (["scan", "bogus"], "unknown role 'bogus'"),
                                        (["ledger", "ledger"], "names a role twice")])
def test_a_bad_roles_value_names_the_key(roles, why):
    with pytest.raises(ConfigError) as e:
        parse_config({"kafka": {"worker": {"roles": roles}}})
    assert "kafka.worker.roles" in str(e.value) and why in str(e.value)


def test_roles_default_to_both_and_the_flag_overrides_the_file():
    from sensor.config import with_overrides
    c = parse_config({"kafka": {"bootstrap": "127.0.0.1:9092"}})
    assert c.kafka.roles == ("scan", "ledger")
    assert with_overrides(parse_config({"kafka": {"worker": {"roles": ["scan"]}}}), roles="ledger").kafka.roles \
        == ("ledger",)


def test_a_bad_roles_flag_is_refused_before_the_worker_starts(tmp_path):
    p = subprocess.run([str(BIN / "dlp-sensor"), "worker", "--kafka", "127.0.0.1:9", "--roles", "scan,audit",
                        "--state-dir", str(tmp_path / "state"), "--metrics", "off"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--roles: unknown role 'audit'" in p.stderr, p.stderr


@pytest.fixture(scope="module")
def tansu(tmp_path_factory):
    """Tansu evicts a consumer-group member that died without leaving; noida-db does not (see tests/kafka.py)."""
    b = Broker.start(tmp_path_factory.mktemp("tansu"), kind="tansu")
    yield b
    b.stop()


def test_a_scan_worker_killed_mid_exchange_loses_nothing(tmp_path, tansu, site):
    """Two scan-only workers (no faust in either), exchanges open on every partition: ``kill -9`` the one
    with more of them; the survivor takes its partitions over and reads each open exchange again from its
    ``meta`` record (the scan group's committed offset never passed it), so every exchange gets its finding."""
    from tests.kafka import partition_of

    prefix = unique_prefix()
    k = with_roles(kafka_conf(tansu.bootstrap, prefix, worker={"exchange_timeout": 120}), "scan")
    topic = prefix + "exchanges"
    body = (site.root / ROSTER).read_bytes()
    xids: dict[int, str] = {}
    i = 0
    while len(xids) < 8:                                # one exchange on each partition
        xids.setdefault(partition_of(f"k{i:03d}", 8), f"k{i:03d}")
        i += 1
    recs = {x: exchange_records(x, f"{HOST}/exports/kill-{x}.csv", body, client=x) for x in xids.values()}
    w1 = WorkerProc(tmp_path / "w1", k, "w1").start()
    w2 = None
    try:
        w2 = WorkerProc(tmp_path / "w2", k, "w2").start()
        wait_for(lambda: all(w.metric("dlp_kafka_assigned_partitions", topic=topic) > 0 for w in (w1, w2)) and
                 sum(w.metric("dlp_kafka_assigned_partitions", topic=topic) for w in (w1, w2)) == 8, 30,
                 what="both scan workers to own partitions")
        produce(tansu, topic, [r[0] for r in recs.values()])            # the meta records: 8 exchanges open
        wait_for(lambda: sum(w.metric("dlp_worker_exchanges_open") for w in (w1, w2)) == 8, 30,
                 what="8 open exchanges")
        victim = max((w1, w2), key=lambda w: w.metric("dlp_worker_exchanges_open"))
        victim.stop(signal.SIGKILL)
        produce(tansu, topic, [rec for r in recs.values() for rec in r[1:]])
        got = wait_for(lambda: (lambda fs: fs if {f["xid"] for f in fs} >= set(recs) else None)(
            findings(tansu.bootstrap, prefix)), 60, every=0.5, what="a finding for every exchange")
        assert {f["xid"] for f in got if f["verdict"] == "trip" and f["completed"]} == set(recs)
    finally:
        for w in (w1, w2):
            if w is not None:
                w.stop()


def test_the_chart_runs_scan_workers_and_a_ledger_worker_apart():
    """``workers.ledger.separate``: the workers Deployment runs ``--roles=scan``, a ``-ledger`` Deployment of
    one replica runs ``--roles=ledger`` (with its metrics Service and no PDB at one replica); off, as before."""
    from tests.test_chart import by_kind, example, named, render, sensor_container, validate

    def args(docs: list[dict]) -> dict[str, list[str]]:
        return {d["metadata"]["name"]: sensor_container(d["spec"]["template"]["spec"])["args"]
                for d in by_kind(docs, "Deployment") if "-workers" in d["metadata"]["name"]
                or "-ledger" in d["metadata"]["name"]}

    vals = example("workers-kafka.yaml")
    assert args(render(vals)) == {"rel-dlp-sensor-workers": ["worker", "--config", "/etc/dlp-sensor/sensor.yaml"]}
    vals["workers"]["ledger"] = {"separate": True}
    docs = render(vals)
    validate(docs)
    assert args(docs) == {"rel-dlp-sensor-workers": ["worker", "--config", "/etc/dlp-sensor/sensor.yaml", "--roles=scan"],
                          "rel-dlp-sensor-ledger": ["worker", "--config", "/etc/dlp-sensor/sensor.yaml",
                                                    "--roles=ledger"]}
    deps = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    assert deps["rel-dlp-sensor-workers"]["spec"]["replicas"] == 4 and deps["rel-dlp-sensor-ledger"]["spec"]["replicas"] == 1
    assert [p["name"] for p in named(docs, "Service", "rel-dlp-sensor-ledger")["spec"]["ports"]] == ["metrics"]
    assert "rel-dlp-sensor-ledger" not in {p["metadata"]["name"] for p in by_kind(docs, "PodDisruptionBudget")}
