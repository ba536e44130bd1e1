"""``dlp-sensor worker``: the faust-streaming app that scans mirrored exchanges for the whole fleet.

Two agents:

- ``scan`` reads ``exchanges`` (keyed by exchange id, so one worker sees a whole exchange in
  order) and keeps one stream scanner per open exchange. On a trip it publishes the takedown at
  once (every sidecar enforces it within the second); when the ``end`` record comes — or the
  exchange idles past ``kafka.worker.exchange_timeout`` — it publishes the finding (and the SOC
  alert when there is one).
- ``ledger`` reads ``findings`` (keyed by resource) into the ``exposure`` table, the fleet-wide
  exposure ledger: downloads, downloads before the takedown, unique clients (keyed hashes),
  records. The table lives in memory and is restored from its compacted changelog topic when a
  partition moves, so a killed worker loses none of it.

Delivery is at-least-once with nothing lost: the ``scan`` agent acks an exchange's records only
after its finding is on the broker, and hands faust those acks in offset order (``acks.py``: faust
itself would commit past a hole), so the committed offset never passes the oldest exchange still
open. A worker killed mid-exchange leaves those records uncommitted; the worker that takes
the partition over reads the exchange again from its ``meta`` record. What it publishes twice
carries the same exchange id (and alert dedup id), and the ledger counts each exchange id once.
Both agents also admit each partition's records only in unbroken offset order from the committed
offset (``acks.Contiguity``): faust can skip records after a rebalance, and they are read again.
Malformed records go to the ``deadletter`` topic with the reason; the agent keeps going.

Of the exchange session (:mod:`sensor.exchange.session`) the worker shares the scan and the
content fingerprint (:class:`~sensor.enforce.fingerprint.BodyPrint`, the print stored with the
takedown it publishes). The rest does not apply here: the bytes it reads are a copy of bytes that
already left (mirroring is monitor mode), so there is nothing to hold back, look ahead, refuse or
cut, and no admission to decide; it has no local registry (the sidecars enforce the fleet's
takedowns), so a trip is a record on the takedowns topic rather than ``Sensor.take_down``, and its
accounting is the finding and alert on Kafka rather than ``Sensor.finished`` (the exposure table is
the fleet's ledger).
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import faust
import orjson
from aiohttp import web

from sensor.alerts.schema import AlertContext, build_alert
from sensor.config import Config
from sensor.detect.keys import load_key
from sensor.enforce.fingerprint import BodyPrint
from sensor.metrics import Metrics
from sensor.metrics.server import metrics_app
from sensor.pipeline import BodyScan, Exchange
from sensor.runtime import build_detector
from sensor.stream.acks import REWINDS_BEFORE_SKIPPING, Contiguity, InOrderAcks
from sensor.stream.fleet import takedown_record
from sensor.stream.kafka import Offsets, client_kwargs
from sensor.stream.records import Record, RecordError, decode, encode, finding_record, require

log = logging.getLogger("dlp_sensor.worker")
RECENT_XIDS = 256           # exchange ids remembered per resource to collapse redeliveries
IDLE_BEFORE_STALL_CHECK = 1.0   # the agents have taken no record for this long: look for stalled partitions
STALL_AFTER = 3.0               # a partition with records to read that has not moved for this long is sought back


@dataclass
class Open:
    """One exchange being scanned: its scanner and the messages to ack once its finding is out."""
    meta: Record
    scan: BodyScan
    tp: object
    print: BodyPrint                    # the content fingerprint (stored with a takedown)
    messages: list = field(default_factory=list)
    next_seq: int = 0
    tripped_at: float | None = None
    takedown_sent: bool = False
    last_seen: float = field(default_factory=time.monotonic)
    notes: list[str] = field(default_factory=list)


def _credentials(k):
    if k.sasl_mechanism:
        return faust.SASLCredentials(username=k.sasl_username, password=k.sasl_password,
                                     mechanism=k.sasl_mechanism,
                                     ssl_context=client_kwargs(k).get("ssl_context"))
    if k.security_protocol == "SSL":
        return faust.SSLCredentials(client_kwargs(k)["ssl_context"])
    return None


class Worker:
    """The app and everything its agents share (detector, key, metrics, open exchanges)."""

    def __init__(self, config: Config):
        k = self.k = config.kafka
        assert k.bootstrap, "kafka.bootstrap (or $DLP_KAFKA_BOOTSTRAP) is required for a worker"
        self.config = config
        assert config.state_dir is not None
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.key = load_key(config.hmac_key, config.state_dir)
        self.detector = build_detector(config)
        self.metrics = Metrics()
        self.metrics.expect(taps=("kafka",), signatures=[sig.id for sig in self.detector.engine.signatures],
                            kafka=("worker",), topics=(k.topic("exchanges"), k.topic("findings")))
        self.ready = False
        self._started_at = time.monotonic()     # reset when the HTTP endpoints open
        self.me = f"worker:{config.sensor_id}"
        self.open: dict[str, Open] = {}
        self.acks = InOrderAcks(lambda msg: msg.ack(self.app.consumer))
        self.cursor = Contiguity(clock=time.monotonic)
        self.offsets = Offsets(k)
        self._last_record = time.monotonic()
        self.app = app = faust.App(
            k.group, broker=[f"kafka://{hp}" for hp in k.bootstrap.split(",")], broker_credentials=_credentials(k),
            store="memory://", key_serializer="raw", value_serializer="raw",
            topic_partitions=k.partitions, topic_replication_factor=1,
            consumer_auto_offset_reset="earliest", broker_session_timeout=6.0, broker_heartbeat_interval=1.0,
            broker_commit_interval=0.5, stream_wait_empty=False,   # open exchanges are not acked: do not wait
            web_enabled=False, web_bind="127.0.0.1", web_port=k.web_port, producer_acks=-1)
        self.t_exchanges = app.topic(k.topic("exchanges"), partitions=k.partitions)
        self.t_findings = app.topic(k.topic("findings"), partitions=k.partitions)
        self.t_alerts = app.topic(k.topic("alerts"), partitions=k.partitions)
        self.t_takedowns = app.topic(k.topic("takedowns"), partitions=1)
        self.t_dead = app.topic(k.topic("deadletter"), partitions=k.partitions)
        self.exposure = app.Table("exposure", default=dict, partitions=k.partitions, key_type=str)
        self.clients = app.Table("exposure-clients", default=int, partitions=k.partitions, key_type=str)
        app.agent(self.t_exchanges, name="scan")(self._scan_agent)
        app.agent(self.t_findings, name="ledger")(self._ledger_agent)
        app.timer(1.0)(self._expire)
        app.task(self._on_app_started)
        app.on_partitions_assigned.connect(self._assigned)

    # -- what both agents read ---------------------------------------------------------------
    async def _records(self, stream):
        """The agent's records, each partition's in unbroken offset order (``acks.Contiguity``), tracked for
        in-order acks. A record past a hole is dropped unacked and its partition sought back to the hole."""
        async for event in stream.noack().events():
            msg = event.message
            self._last_record = time.monotonic()
            back = self.cursor.admit(msg)
            for tp, first, last in self.cursor.skipped:
                log.warning("%s[%d]: offsets %d-%d never arrived after %d rewinds; skipping them (missing on "
                            "the broker)", tp.topic, tp.partition, first, last, REWINDS_BEFORE_SKIPPING)
                self.metrics.worker_skipped.labels(topic=tp.topic).inc(last - first + 1)
            self.cursor.skipped.clear()
            if back is None:
                self.acks.track(msg)
                yield msg
            elif back >= 0:
                await self._rewind(msg.tp, back, f"offset {msg.offset} arrived before {back}")

    async def _rewind(self, tp, offset: int, why: str) -> None:
        log.warning("%s[%d]: %s; seeking back to %d (the consumer skipped records)", tp.topic, tp.partition, why,
                    offset)
        self.metrics.worker_rewinds.labels(topic=tp.topic).inc()
        try:
            await self.app.consumer.seek(tp, offset)
        except Exception as e:                          # noqa: BLE001  (moved away meanwhile: its new owner reads it)
            log.warning("%s[%d]: seek to %d failed: %r", tp.topic, tp.partition, offset, e)

    async def _check_stalls(self) -> None:
        """While the agents are idle, seek back partitions that have records to read and deliver none."""
        if not self.ready or self.app.rebalancing or time.monotonic() - self._last_record < IDLE_BEFORE_STALL_CHECK:
            return
        tps = self.cursor.partitions()
        if not tps:
            return
        try:
            ends = await self.offsets.ends(tps)
        except Exception as e:                          # noqa: BLE001  (broker away: the health probe says so)
            log.debug("end offsets unavailable: %r", e)
            return
        for tp, offset in self.cursor.stalled(ends.get, after=STALL_AFTER):
            await self._rewind(tp, offset, f"records up to offset {ends[tp] - 1} but none delivered from {offset}")

    # -- the scan agent ------------------------------------------------------------------------
    async def _scan_agent(self, stream) -> None:
        async for msg in self._records(stream):
            try:
                await self._on_exchange_record(msg)
            except RecordError as e:
                await self._dead(msg, str(e))
                self.acks.done(msg)
            self._gauge_open()

    async def _on_exchange_record(self, msg) -> None:
        rec = decode(msg.value)
        xid = (msg.key or b"").decode("utf-8", "replace")
        if not xid:
            raise RecordError("exchange record without a key (the exchange id)")
        if rec.type == "meta":
            require(rec, resource=str, url=dict, status=int, sensor=str, ts=(int, float))
            earlier = self.open.pop(xid, None)
            if earlier is not None:                     # the exchange is being read again (redelivery)
                self.metrics.worker_duplicates.labels(kind="exchange").inc()
            ex = Exchange(url=rec["url"].get("original", ""), method=str(rec.get("method", "GET")),
                          status=rec["status"], content_type=str(rec.get("content_type") or ""),
                          content_encoding=str(rec.get("content_encoding") or ""), path=rec.get("path"))
            d = self.detector
            scan = BodyScan(d.engine, d.policy, key=self.key, exchange=ex, stop_on_trip=False)
            # the earlier messages are acked with this exchange (never before: offsets must not pass it)
            print_ = BodyPrint(self.key, None, self.config.fingerprint_bytes)     # record-only: no registry here
            self.open[xid] = Open(rec, scan, msg.tp, print_, (earlier.messages if earlier else []) + [msg])
            msg.value = None
            return
        st = self.open.get(xid)
        if st is None or st.tp != msg.tp:
            # its meta was never seen (expired earlier, or lost by the producer): nothing to add it to
            self.metrics.worker_duplicates.labels(kind="orphan").inc()
            if rec.type == "end":
                log.info("exchange %s ended on %s[%d]@%d but its meta record was never seen here",
                         xid, msg.topic, msg.partition, msg.offset)
            self.acks.done(msg)
            return
        st.messages.append(msg)
        st.last_seen = time.monotonic()
        require(rec, seq=int)
        seq = rec["seq"]
        if seq < st.next_seq and rec.type == "chunk":
            self.metrics.worker_duplicates.labels(kind="chunk").inc()
            msg.value = None
            return
        if seq > st.next_seq:
            st.notes.append(f"gap: {seq - st.next_seq} chunk(s) missing before seq {seq}")
        st.next_seq = seq + 1
        if rec.type == "chunk":
            self._feed(st, rec.payload)
            msg.value = None
            await self._maybe_take_down(xid, st)
        elif rec.type == "end":
            if rec.get("lost"):
                st.notes.append("lost: the sidecar's mirror queue overflowed; only part of the body was mirrored")
            await self._finish(xid, st, completed=bool(rec.get("completed")) and not rec.get("lost"))

    def _feed(self, st: Open, data: bytes) -> None:
        st.print.feed(data)
        if st.scan.write(data) == "trip" and st.tripped_at is None:
            st.tripped_at = time.time()

    async def _maybe_take_down(self, xid: str, st: Open, *, final: bool = False) -> None:
        """Publish the takedown once the trip is seen and the content fingerprint is known (or the body ended)."""
        if st.tripped_at is None or st.takedown_sent or (st.print.wants > 0 and not final):
            return
        resource = st.meta["resource"]
        fut = await self.t_takedowns.send(key=resource.encode(), value=takedown_record(
            action="add", resource=resource, actor=self.me, reason="trip: personal-data leak (fleet worker)",
            origin=self.me, ts=st.tripped_at, fingerprint=st.print.value(), xid=xid))
        await fut
        st.takedown_sent = True
        self.metrics.takedowns.labels(source="trip").inc()
        self.metrics.detection_to_takedown.observe(time.time() - st.tripped_at)

    async def _finish(self, xid: str, st: Open, *, completed: bool) -> None:
        """Publish the finding (and alert), wait for the broker to have them, then ack the exchange."""
        result = st.scan.finish()
        result.notes.extend(st.notes)
        if result.verdict == "trip" and st.tripped_at is None:
            st.tripped_at = time.time()
        await self._maybe_take_down(xid, st, final=True)
        meta = st.meta
        finding = finding_record(xid, meta["resource"], result, bytes_seen=result.bytes, client=meta.get("client"),
                                 completed=completed, partial=bool(meta.get("partial")), sensor=meta["sensor"],
                                 origin=self.me, served_at=meta["ts"], tripped_at=st.tripped_at, now=time.time())
        futs = [await self.t_findings.send(key=meta["resource"].encode(), value=finding)]
        if result.verdict in ("alert", "trip"):
            futs.append(await self.t_alerts.send(key=meta["resource"].encode(),
                                                 value=orjson.dumps(self._alert(xid, st, result))))
        await asyncio.gather(*futs)
        m = self.metrics
        m.exchanges.labels(tap="kafka", verdict=result.verdict).inc()
        m.bytes_scanned.labels(tap="kafka").inc(result.bytes)
        for sig, n in result.findings.items():
            m.findings.labels(signature=sig).inc(n)
        if result.verdict == "trip":
            m.trips.labels(mode=str(meta.get("mode", "monitor"))).inc()
        for msg in st.messages:
            self.acks.done(msg)
        self.open.pop(xid, None)

    def _alert(self, xid: str, st: Open, result) -> dict:
        meta = st.meta
        ctx = AlertContext(exchange_id=xid, sensor_id=meta["sensor"], resource=meta["resource"], url=meta["url"],
                           method=str(meta.get("method", "GET")), status=meta["status"], client_ip="",
                           mode=str(meta.get("mode", "monitor")),
                           action="takedown" if st.takedown_sent else "logged", partial=bool(meta.get("partial")),
                           bytes_sent=result.bytes, ruleset=self.detector.generation)
        alert = build_alert(ctx, result, key=self.key, source_ip=self.config.source_ip, now=time.time(),
                            client_hash=meta.get("client"))         # dlp.client.hash: never source.*
        alert["observer"]["hostname"] = self.me
        return alert

    async def _expire(self) -> None:
        """Finish exchanges whose end never came (sidecar killed, producer lost records)."""
        cutoff = time.monotonic() - self.k.exchange_timeout
        for xid, st in list(self.open.items()):
            if st.last_seen < cutoff and self.open.get(xid) is st:
                st.notes.append(f"abandoned: no end record within {self.k.exchange_timeout:.0f}s")
                self.metrics.worker_expired.inc()
                await self._finish(xid, st, completed=False)
        self._gauge_open()
        await self._check_stalls()
        await self._lag()

    def _gauge_open(self) -> None:
        self.metrics.worker_open.set(len(self.open))
        self.metrics.worker_held.set(self.acks.held())

    async def _assigned(self, *args, **kwargs) -> None:
        """After a rebalance: drop the open exchanges of partitions that moved away, unacked (the new
        owner reads them again from their meta record). Partitions that stayed keep theirs — faust does
        not always rewind a partition it keeps, and its records would otherwise come back as orphans."""
        assigned = args[1] if len(args) > 1 else kwargs.get("assigned", set())
        dropped = [xid for xid, st in self.open.items() if st.tp not in assigned]
        for xid in dropped:
            del self.open[xid]
        self.acks.forget(assigned)
        mine = [tp for tp in assigned if tp.topic in (self.k.topic("exchanges"), self.k.topic("findings"))]
        self.cursor.forget(mine)
        try:
            for tp, offset in (await self.offsets.starting(self.k.group, mine)).items():
                self.cursor.position(tp, offset)
        except Exception as e:                          # noqa: BLE001  (then the first record read positions it)
            log.warning("committed offsets unavailable after the rebalance: %r", e)
        log.info("rebalanced: %d exchange partitions here; kept %d open exchanges, dropped %d %s",
                 sum(1 for tp in mine if tp.topic == self.k.topic("exchanges")),
                 len(self.open), len(dropped), dropped[:8])

    async def _dead(self, msg, why: str) -> None:
        log.warning("dead-lettering %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, why)
        self.metrics.deadletters.labels(topic=msg.topic).inc()
        fut = await self.t_dead.send(key=msg.key, value=encode("dead", msg.value or b"", topic=msg.topic,
                                                                partition=msg.partition, offset=msg.offset,
                                                                error=why[:500]))
        await fut

    # -- the ledger agent ----------------------------------------------------------------------
    async def _ledger_agent(self, stream) -> None:
        async for msg in self._records(stream):
            try:
                rec = decode(msg.value)
                require(rec, xid=str, resource=str, verdict=str, records=int, served_at=(int, float))
            except RecordError as e:
                await self._dead(msg, str(e))
            else:
                self._account(rec)
            self.acks.done(msg)

    def _account(self, rec: Record) -> None:
        resource = rec["resource"]
        e = dict(self.exposure[resource])
        recent = e.get("recent", [])
        if rec["xid"] in recent:
            self.metrics.worker_duplicates.labels(kind="finding").inc()
            return
        e["recent"] = (recent + [rec["xid"]])[-RECENT_XIDS:]
        served = rec["served_at"]
        e["first_served"] = min(e.get("first_served", served), served)
        e["last_served"] = max(e.get("last_served", served), served)
        e["downloads"] = e.get("downloads", 0) + 1
        e["completed"] = e.get("completed", 0) + (1 if rec.get("completed") else 0)
        e["bytes"] = e.get("bytes", 0) + int(rec.get("bytes") or 0)
        e["records_max"] = max(e.get("records_max", 0), rec["records"])
        if rec["verdict"] == "trip":
            tripped = rec.get("tripped_at") or served
            e["tripped_at"] = min(e.get("tripped_at", tripped), tripped)
        if rec["verdict"] in ("alert", "trip"):
            e["flagged"] = e.get("flagged", 0) + 1
        if "tripped_at" not in e or served <= e["tripped_at"]:
            e["before_takedown"] = e.get("before_takedown", 0) + 1
        client = rec.get("client")
        if client:
            ck = f"{resource}\x1f{client}"
            if not self.clients[ck]:
                self.clients[ck] = 1
                e["clients"] = e.get("clients", 0) + 1
        self.exposure[resource] = e

    # -- metrics -------------------------------------------------------------------------------
    async def _lag(self) -> None:
        c = self.app.consumer
        lag: dict[str, int] = {t.get_topic_name(): 0 for t in (self.t_exchanges, self.t_findings)}
        owned = dict.fromkeys(lag, 0)
        try:
            for tp in c.assignment():
                if tp.topic not in lag:
                    continue                            # changelog partitions (standbys) are not ours to scan
                owned[tp.topic] += 1
                pos = await c.position(tp)
                hw = c.highwater(tp)
                if pos is not None and hw is not None:
                    lag[tp.topic] += max(0, hw - pos)
        except Exception:                               # noqa: BLE001  (a rebalance in progress)
            return
        for topic in lag:
            self.metrics.consumer_lag.labels(topic=topic).set(lag[topic])
            self.metrics.assigned_partitions.labels(topic=topic).set(owned[topic])

    async def start_http(self) -> None:
        """Serve /metrics, /healthz and /readyz from the first moment, before faust joins the group:
        a liveness probe must not fail (and restart the pod) while a rebalance or a changelog
        restore is still going on; /readyz says 503 until the worker can process."""
        if self.config.metrics:
            runner = web.AppRunner(metrics_app(self), access_log=None, handle_signals=False)
            await runner.setup()
            host, _, port = self.config.metrics.rpartition(":")
            await web.TCPSite(runner, host, int(port)).start()
        self._started_at = time.monotonic()
        asyncio.get_running_loop().create_task(self._startup_watch())

    async def _startup_watch(self) -> None:
        """Say so in the log while faust has not finished joining the group and restoring tables
        (a stall there is otherwise silent)."""
        while not self.ready:
            await asyncio.sleep(STARTUP_WARN_EVERY)
            if not self.ready:
                try:
                    assigned = len(self.app.consumer.assignment())
                except Exception:                       # noqa: BLE001  (the consumer is not up yet)
                    assigned = 0
                log.warning("worker %s not ready after %.0fs: faust has not finished joining the group and "
                            "restoring its tables (%d partitions assigned so far)", self.me,
                            time.monotonic() - self._started_at, assigned)

    async def _on_app_started(self) -> None:
        """faust runs app tasks once its table recovery has completed: from here on the worker processes."""
        from sensor.stream.kafka import Health
        self.ready = True
        log.info("worker %s ready in %.1fs: generation %s, %d signatures", self.me,
                 time.monotonic() - self._started_at, self.detector.generation,
                 len(self.detector.engine.signatures))
        health = Health(self.k, self.metrics.kafka_up, "worker")
        await health.run()


SHUTDOWN_GRACE = 10.0
STARTUP_WARN_EVERY = 15.0


class _FaustWorker(faust.Worker):
    """faust's shutdown waits for its producer to flush — forever when the broker is gone (measured:
    still running 30 s after SIGTERM). Nothing needs that flush: what was not committed is read again
    by the next owner of the partition. So a stop signal also arms a timer that ends the process."""

    def __init__(self, worker: Worker, **kwargs) -> None:
        self.dlp = worker
        super().__init__(worker.app, **kwargs)

    async def on_first_start(self) -> None:
        await self.dlp.start_http()
        await super().on_first_start()

    async def on_stop(self) -> None:
        await self.dlp.offsets.close()
        await super().on_stop()

    def _on_sigterm(self) -> None:
        _exit_later()
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        _exit_later()
        super()._on_sigint()


def _exit_later() -> None:
    def bye() -> None:
        log.warning("worker did not stop within %.0fs (broker unreachable?); exiting", SHUTDOWN_GRACE)
        logging.shutdown()
        os._exit(0)
    t = threading.Timer(SHUTDOWN_GRACE, bye)
    t.daemon = True
    t.start()


def run_worker(config: Config, loglevel: str = "info") -> None:
    """Run until SIGTERM/SIGINT (faust's Worker handles the signals and the loop)."""
    from sensor.stream.kafka import ensure_topics
    asyncio.run(ensure_topics(config.kafka, timeout=30))
    w = Worker(config)
    _FaustWorker(w, loglevel=loglevel, quiet=True).execute_from_commandline()
