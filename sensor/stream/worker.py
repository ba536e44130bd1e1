"""``dlp-sensor worker``: the faust-streaming app that scans mirrored exchanges for the whole fleet.

Two consumers, each a role (``kafka.worker.roles`` / ``--roles``; by default a worker runs both):

- the scan loop reads ``exchanges`` (keyed by exchange id, so one worker sees a whole exchange in
  order) in batches (``batches.py``: aiokafka ``getmany``, manual commits, its own group
  ``<group>.scan``) and keeps one stream scanner per open exchange. On a trip it publishes the takedown at
  once (every sidecar enforces it within the second); when the ``end`` record comes — or the
  exchange idles past ``kafka.worker.exchange_timeout`` — it publishes the finding (and the SOC
  alert when there is one).
- the faust agent ``ledger`` reads ``findings`` (keyed by resource) into the ``exposure`` table, the fleet-wide
  exposure ledger: downloads, downloads before the takedown, unique clients (keyed hashes),
  records. The table lives in memory and is restored from its compacted changelog topic when a
  partition moves, so a killed worker loses none of it.

Delivery is at-least-once with nothing lost: the scan loop publishes every finding of a batch,
waits once for the broker to have them all, then acks those exchanges' records in offset order
(``acks.py``) and commits the highest contiguous offset, so the committed offset never passes the
oldest exchange still open. A record of a batch that cannot be read goes to the dead-letter topic
alone; the rest of the batch is processed and committed. A worker killed mid-exchange leaves those records uncommitted; the worker that takes
the partition over reads the exchange again from its ``meta`` record. What it publishes twice
carries the same exchange id (and alert dedup id), and the ledger counts each exchange id once.
Both consumers also admit each partition's records only in unbroken offset order from the committed
offset (``acks.Contiguity``): faust can skip records after a rebalance, and they are read again.

Cumulative exposure is counted here as in the sidecars (:mod:`sensor.enforce.exposure`): distinct
records per resource and per client on a route over the sliding window, from each exchange's record
identities. A paginated API mirrored to the workers trips once its total crosses the route's trip
thresholds: a fleet takedown and one alert naming the total, as a single-response trip. The windows
are this worker's: an exchange goes to one worker, so with N workers each sees about 1/N of a
resource's pages (the sidecars' own count is not affected).
Malformed records go to the ``deadletter`` topic with the reason; the agent keeps going.

Roles, as faust deployments scale agents apart: a ``scan`` worker runs the scan loop only and starts
no faust app at all (no faust consumer, fetcher, table or changelog producer: its CPU goes to the
scan, as the in-process baseline's does); a ``ledger`` worker runs the ledger agent and the exposure
table only. The scan loop is its own consumer group already (``<group>.scan``), so N scan workers
and one ledger worker (or two, the table's partitions split) share the two groups as before. Readiness
per role: a scan worker is ready once its scan group has given it partitions, a ledger worker once
faust has joined and restored the table, a worker of both roles when both hold.

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
import dataclasses
import fnmatch
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
from sensor.enforce.exposure import Crossing, ExposureTracker
from sensor.exchange.routes import route_for
from sensor.metrics import Metrics
from sensor.metrics.server import metrics_app
from sensor.pipeline import BodyScan, Exchange
from sensor.runtime import build_detector
from sensor.stream.acks import REWINDS_BEFORE_SKIPPING, Contiguity, InOrderAcks
from sensor.stream.batches import BatchReader, scan_group
from sensor.stream.fleet import takedown_record
from sensor.stream.kafka import Offsets, client_kwargs
from sensor.stream.prints import Budget, LazyPrint
from sensor.stream.recovery import RecoveryWatch
from aiokafka.errors import KafkaError
from sensor.stream.records import Record, RecordError, decode, encode, finding_record, require

log = logging.getLogger("dlp_sensor.worker")
RECENT_XIDS = 256           # exchange ids remembered per resource to collapse redeliveries
# A resource's first clients (keyed hashes) are kept in its exposure entry, past that in the
# ``exposure-clients`` table. Each table write is a changelog record through faust's producer:
# ~0.3 ms of the worker's CPU apiece (bench/stream.py, ablation), two per finding when every client
# went to the table, 15% of the worker's CPU. Inline, a finding from a new client costs one write.
INLINE_CLIENTS = 32
IDLE_BEFORE_STALL_CHECK = 1.0   # the agents have taken no record for this long: look for stalled partitions
STALL_AFTER = 3.0               # a partition with records to read that has not moved for this long is sought back
SETTLE_BEFORE_REVOKE = 3.0      # a rebalance waits this long at most for the batch in flight to settle
BATCH_WAIT_MS = 200             # an idle scan loop still expires exchanges and commits this often


@dataclass
class Open:
    """One exchange being scanned: its scanner and the messages to ack once its finding is out."""
    meta: Record
    scan: BodyScan
    tp: object
    print: LazyPrint                    # the content fingerprint (stored with a takedown)
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
    """The roles this process runs and everything they share (detector, key, metrics, producer). ``app``
    (faust) exists only with the ledger role; ``reader`` (the scan group's consumer) only with the scan role."""

    def __init__(self, config: Config):
        k = self.k = config.kafka
        assert k.bootstrap, "kafka.bootstrap (or $DLP_KAFKA_BOOTSTRAP) is required for a worker"
        self.roles = tuple(k.roles)
        self.scans, self.ledgers = "scan" in self.roles, "ledger" in self.roles
        assert self.scans or self.ledgers, "kafka.worker.roles: at least one of scan, ledger"
        self.config = config
        assert config.state_dir is not None
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.key = load_key(config.hmac_key, config.state_dir)
        self.detector = build_detector(config)
        from sensor.edm.reload import IndexHolder         # EDM: the fleet's indexes, by path, reloaded on change
        self.indexes = IndexHolder(config.indexes, self.key, watch=True)
        self.metrics = Metrics()
        self.indexes.on_reload = lambda result: self.metrics.reloads.labels(result=result).inc()
        self.metrics.expect(taps=("kafka",), signatures=[sig.id for sig in self.detector.engine.signatures],
                            kafka=("worker",), topics=tuple(k.topic(t) for t, on in (("exchanges", self.scans),
                                                                                       ("findings", self.ledgers)) if on))
        self.ready = False
        self._started_at = time.monotonic()     # reset when the HTTP endpoints open
        self.me = f"worker:{config.sensor_id}"
        self.open: dict[str, Open] = {}
        self.acks = InOrderAcks(lambda msg: msg.ack(self.app.consumer))      # the ledger agent's (faust)
        self.cursor = Contiguity(clock=time.monotonic)
        self.reader = BatchReader(k, k.topic("exchanges"), scan_group(k), on_assigned=self._scan_assigned,
                                  on_revoked=self._scan_revoked, on_revoking=self._drain_settling) \
            if self.scans else None
        self.scan_acks = InOrderAcks(self.reader.done if self.reader else lambda msg: None)   # the scan loop's
        self.scan_cursor = Contiguity(clock=time.monotonic)
        self.exposure_windows = ExposureTracker(config.exposure)
        self.print_budget = Budget()                # body bytes held unhashed by the open exchanges' prints
        self._producer = None
        self._producer_up = asyncio.Event()
        self.offsets = Offsets(k)
        self._last_record = self._last_scan_record = self._last_expiry = time.monotonic()
        self._scanning: asyncio.Task | None = None
        self._settling: asyncio.Task | None = None      # the batch whose findings the broker has not confirmed yet
        self._background: list[asyncio.Task] = []
        self.app: faust.App | None = None
        if self.ledgers:
            self._ledger_app()

    def _ledger_app(self) -> None:
        """The faust app of the ledger role: the ``ledger`` agent on ``findings`` and the exposure tables."""
        k, config = self.k, self.config
        self.app = app = faust.App(
            k.group, broker=[f"kafka://{hp}" for hp in k.bootstrap.split(",")], broker_credentials=_credentials(k),
            store="memory://", key_serializer="raw", value_serializer="raw",
            topic_partitions=k.partitions, topic_replication_factor=1,
            consumer_auto_offset_reset="earliest", broker_session_timeout=6.0, broker_heartbeat_interval=1.0,
            broker_commit_interval=0.5, stream_wait_empty=False,   # open exchanges are not acked: do not wait
            web_enabled=False, web_bind="127.0.0.1", web_port=k.web_port, producer_acks=-1,
            datadir=str(config.state_dir / "faust"))   # faust's own files in the state dir, not the cwd
        self.t_findings = app.topic(k.topic("findings"), partitions=k.partitions)
        self.exposure = app.Table("exposure", default=dict, partitions=k.partitions, key_type=str)
        self.clients = app.Table("exposure-clients", default=int, partitions=k.partitions, key_type=str)
        app.agent(self.t_findings, name="ledger")(self._ledger_agent)
        app.timer(1.0)(self._expire)
        app.task(self._begin)
        app.on_partitions_assigned.connect(self._assigned)

    # -- what both agents read ---------------------------------------------------------------
    async def _records(self, stream):
        """The agent's records, each partition's in unbroken offset order (``acks.Contiguity``), tracked for
        in-order acks. A record past a hole is dropped unacked and its partition sought back to the hole."""
        async for event in stream.noack().events():
            msg = event.message
            self._last_record = time.monotonic()
            if await self._admit(msg, self.cursor, self.acks, self.app.consumer.seek):
                yield msg

    async def _admit(self, msg, cursor: Contiguity, acks: InOrderAcks, seek) -> bool:
        """Is ``msg`` next on its partition? Then it is tracked for in-order acks; if it lies past a hole it
        is dropped unacked and its partition sought back to the hole (``seek``: the consumer's)."""
        back = cursor.admit(msg)
        for tp, first, last in cursor.skipped:
            log.warning("%s[%d]: offsets %d-%d never arrived after %d rewinds; skipping them (missing on "
                        "the broker)", tp.topic, tp.partition, first, last, REWINDS_BEFORE_SKIPPING)
            self.metrics.worker_skipped.labels(topic=tp.topic).inc(last - first + 1)
        cursor.skipped.clear()
        if back is None:
            acks.track(msg)
            return True
        if back >= 0:
            await self._rewind(msg.tp, back, f"offset {msg.offset} arrived before {back}", seek)
        return False

    async def _rewind(self, tp, offset: int, why: str, seek) -> None:
        log.warning("%s[%d]: %s; seeking back to %d (the consumer skipped records)", tp.topic, tp.partition, why,
                    offset)
        self.metrics.worker_rewinds.labels(topic=tp.topic).inc()
        try:
            r = seek(tp, offset)
            if asyncio.iscoroutine(r):
                await r
        except Exception as e:                          # noqa: BLE001  (moved away meanwhile: its new owner reads it)
            log.warning("%s[%d]: seek to %d failed: %r", tp.topic, tp.partition, offset, e)

    async def _check_stalls(self) -> None:
        """While the agents are idle, seek back partitions that have records to read and deliver none."""
        if self.app is None or not self.ready or self.app.rebalancing \
                or time.monotonic() - self._last_record < IDLE_BEFORE_STALL_CHECK:
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
            await self._rewind(tp, offset, f"records up to offset {ends[tp] - 1} but none delivered from {offset}",
                               self.app.consumer.seek)

    # -- the scan loop -------------------------------------------------------------------------
    async def _scan_loop(self) -> None:
        """Batch after batch: admit, scan, publish the batch's findings, ack once the broker has them, commit.

        The broker's answer for batch N is awaited while batch N+1 is fetched and scanned (one batch in
        flight at most), not before: waiting cost the loop a produce round trip per batch (measured 0.8 s
        of a 400-exchange backlog's drain). The commit after batch N+1 then carries batch N's acks; an
        idle loop waits for the batch in flight, so what is done is committed within ``BATCH_WAIT_MS``."""
        reader = self.reader
        while True:
            msgs = await reader.batch(BATCH_WAIT_MS)
            now = time.monotonic()
            pending: list[tuple] = []
            if msgs:
                self._last_scan_record = now
            for msg in msgs:
                if not await self._admit(msg, self.scan_cursor, self.scan_acks, reader.seek):
                    continue
                try:
                    out = await self._on_exchange_record(msg)
                except RecordError as e:
                    await self._dead(msg, str(e))
                    self.scan_acks.done(msg)
                except Exception as e:                  # noqa: BLE001  (one exchange's failure is not the batch's)
                    await self._failed(msg, e)
                else:
                    if out is not None:
                        pending.append(out)
                if msg.scanned:             # after a scan (not after every record: a loop turn costs ~20 us),
                    await asyncio.sleep(0)  # let the fetcher ask for (and read) the next records meanwhile
            if now - self._last_expiry >= 1.0:
                self._last_expiry = now
                for xid in self._expired():
                    pending.append(await self._finish(xid, self.open[xid], completed=False))
            if self._settling is not None:
                await asyncio.shield(self._settling)    # the batch before: its acks are in before this commit
                                                        # (shielded: a stop cancels the loop, not the settling)
                self._settling = None
            if pending:
                self._settling = asyncio.create_task(self._settle(pending))
                if not msgs:                            # nothing else to do: settle now, commit now
                    await asyncio.shield(self._settling)
                    self._settling = None
            await reader.commit()
            self._gauge_open()
            if not msgs:
                await self._check_scan_stalls()

    async def _check_scan_stalls(self) -> None:
        if time.monotonic() - self._last_scan_record < IDLE_BEFORE_STALL_CHECK:
            return
        ends = {tp: self.reader.highwater(tp) for tp in self.reader.assignment()}
        for tp, offset in self.scan_cursor.stalled(ends.get, after=STALL_AFTER):
            await self._rewind(tp, offset, f"records up to offset {ends[tp] - 1} but none delivered from {offset}",
                               self.reader.seek)

    async def _failed(self, msg, e: Exception) -> None:
        """An exchange whose processing raised: its record goes to the dead-letter topic (the error's type
        only: a scanner's message could quote the body), the exchange is dropped and its records acked."""
        log.error("exchange record %s[%d]@%d failed: %s; dead-lettered, its exchange dropped", msg.topic,
                  msg.partition, msg.offset, type(e).__name__)
        await self._dead(msg, f"processing failed: {type(e).__name__}")
        xid = (msg.key or b"").decode("utf-8", "replace")
        st = self.open.get(xid)
        if st is not None and st.tp == msg.tp:
            del self.open[xid]
            st.print.close()
            for m in st.messages:
                self.scan_acks.done(m)
        self.scan_acks.done(msg)

    async def _on_exchange_record(self, msg) -> tuple | None:
        """Feed one record to its exchange; on its end, the exchange's publications to settle (see _settle)."""
        rec = decode(msg.value)
        xid = (msg.key or b"").decode("utf-8", "replace")
        if not xid:
            raise RecordError("exchange record without a key (the exchange id)")
        if rec.type == "meta":
            require(rec, resource=str, url=dict, status=int, sensor=str, ts=(int, float))
            earlier = self.open.pop(xid, None)
            if earlier is not None:                     # the exchange is being read again (redelivery)
                self.metrics.worker_duplicates.labels(kind="exchange").inc()
                earlier.print.close()
            ex = Exchange(url=rec["url"].get("original", ""), method=str(rec.get("method", "GET")),
                          status=rec["status"], content_type=str(rec.get("content_type") or ""),
                          content_encoding=str(rec.get("content_encoding") or ""), path=rec.get("path"))
            d = self.detector
            scan = BodyScan(d.engine, d.policy, key=self.key, exchange=ex, stop_on_trip=False, edm=self.indexes.current())
            # the earlier messages are acked with this exchange (never before: offsets must not pass it)
            print_ = LazyPrint(self.key, self.config.fingerprint_bytes, self.print_budget)   # hashed if it trips
            self.open[xid] = Open(rec, scan, msg.tp, print_, (earlier.messages if earlier else []) + [msg])
            msg.value = None
            return None
        st = self.open.get(xid)
        if st is None or st.tp != msg.tp:
            # its meta was never seen (expired earlier, or lost by the producer): nothing to add it to
            self.metrics.worker_duplicates.labels(kind="orphan").inc()
            if rec.type == "end":
                log.info("exchange %s ended on %s[%d]@%d but its meta record was never seen here",
                         xid, msg.topic, msg.partition, msg.offset)
            self.scan_acks.done(msg)
            return None
        st.messages.append(msg)
        st.last_seen = time.monotonic()
        require(rec, seq=int)
        seq = rec["seq"]
        if seq < st.next_seq and rec.type == "chunk":
            self.metrics.worker_duplicates.labels(kind="chunk").inc()
            msg.value = None
            return None
        if seq > st.next_seq:
            st.notes.append(f"gap: {seq - st.next_seq} chunk(s) missing before seq {seq}")
        st.next_seq = seq + 1
        if rec.type == "chunk":
            msg.scanned = True
            self._feed(st, rec.payload)
            msg.value = None
            await self._maybe_take_down(xid, st)
        elif rec.type == "end":
            if rec.get("lost"):
                st.notes.append("lost: the sidecar's mirror queue overflowed; only part of the body was mirrored")
            return await self._finish(xid, st, completed=bool(rec.get("completed")) and not rec.get("lost"))
        return None

    def _feed(self, st: Open, data: bytes) -> None:
        st.print.feed(data)
        if st.scan.write(data) == "trip" and st.tripped_at is None:
            st.tripped_at = time.time()

    async def _maybe_take_down(self, xid: str, st: Open, *, final: bool = False, reason: str | None = None) -> None:
        """Publish the takedown once the trip is seen and the content fingerprint is known (or the body ended).
        Awaited at once, not with the batch: every sidecar should refuse the resource within the second."""
        if st.tripped_at is None or st.takedown_sent:
            return
        resource = st.meta["resource"]
        fut = await self._send(self.k.topic("takedowns"), resource.encode(), takedown_record(
            action="add", resource=resource, actor=self.me, reason=reason or "trip: personal-data leak (fleet worker)",
            origin=self.me, ts=st.tripped_at, fingerprint=st.print.value() if reason is None else None, xid=xid))
        await fut
        st.takedown_sent = True
        st.print.close()                                # published: later bytes need no hashing
        self.metrics.takedowns.labels(source="trip").inc()
        self.metrics.detection_to_takedown.observe(time.time() - st.tripped_at)

    async def _send(self, topic: str, key: bytes | None, value: bytes) -> asyncio.Future:
        """Queue one record on the worker's producer; the future resolves once the broker has it."""
        await self._producer_up.wait()
        return await self._producer.send(topic, value, key=key)

    async def _connect(self) -> None:
        """Start the producer (every role publishes: findings, alerts, takedowns, dead letters) and, with the
        scan role, the batch reader; retrying while the broker is away."""
        from aiokafka import AIOKafkaProducer
        while True:
            try:
                if self._producer is None:
                    p = AIOKafkaProducer(**client_kwargs(self.k), acks="all", max_request_size=2 << 20)
                    await p.start()
                    self._producer = p
                    self._producer_up.set()
                if self.reader is not None:
                    await self.reader.adopt(self.k.group, self.offsets)
                    await self.reader.start()
                return
            except (KafkaError, OSError, asyncio.TimeoutError) as e:
                log.warning("%s not started (%s); retrying", "scan consumer" if self.reader else "producer",
                            type(e).__name__)
                await asyncio.sleep(1.0)

    async def _scan(self) -> None:
        """Start the producer and the batch reader, then run the loop. Anything the loop cannot handle ends
        the process: what was not committed is read again."""
        try:
            await self._connect()
            await self._scan_loop()
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.critical("the scan loop failed; exiting (uncommitted records are read again)", exc_info=True)
            logging.shutdown()
            os._exit(70)

    async def stop_scanning(self) -> None:
        """At shutdown: stop the loop, commit what is done, leave the scan group, flush the producer."""
        if self._scanning is not None:
            self._scanning.cancel()
            try:
                await self._scanning
            except (asyncio.CancelledError, Exception):   # noqa: BLE001
                pass
        for t in self._background:
            t.cancel()
        await self._drain_settling()                    # its acks in the final commit
        for stop in ([self.reader.stop()] if self.reader is not None and self.reader.started else []) + (
                [self._producer.stop()] if self._producer else []):
            try:
                await asyncio.wait_for(stop, 5.0)
            except (asyncio.TimeoutError, KafkaError, OSError) as e:
                log.warning("stopping the scan consumer: %s", type(e).__name__)

    async def _finish(self, xid: str, st: Open, *, completed: bool) -> tuple:
        """Queue the finding (and alert): the batch waits for the broker once (``_settle``), then acks."""
        result = st.scan.finish()
        result.notes.extend(st.notes)
        if result.verdict == "trip" and st.tripped_at is None:
            st.tripped_at = time.time()
        await self._maybe_take_down(xid, st, final=True)
        self.open.pop(xid, None)
        st.print.close()
        meta = st.meta
        alert_of, exposure = result, None
        if result.verdict != "trip" and (result.strong_ids or result.person_ids):
            crossed = self._count_exposure(meta, result)
            if crossed is not None:                     # the one alert is the exposure trip's
                alert_of, exposure = await self._exposure_trip(xid, st, result, crossed)
        finding = finding_record(xid, meta["resource"], alert_of, bytes_seen=result.bytes, client=meta.get("client"),
                                 completed=completed, partial=bool(meta.get("partial")), sensor=meta["sensor"],
                                 origin=self.me, served_at=meta["ts"], tripped_at=st.tripped_at, now=time.time())
        key = meta["resource"].encode()
        futs = [await self._send(self.k.topic("findings"), key, finding)]
        if alert_of.verdict in ("alert", "trip"):
            alert = self._alert(xid, st, alert_of, exposure)
            futs.append(await self._send(self.k.topic("alerts"), key, orjson.dumps(alert)))
        return futs, st, result

    def _count_exposure(self, meta: Record, result) -> Crossing | None:
        """Count the exchange's record identities into the windows (as ``Sensor._exposure`` does in a sidecar)."""
        tracker = self.exposure_windows
        resource = meta["resource"]
        path = str(meta.get("path") or meta["url"].get("path") or "/" + resource.split("/", 1)[-1]).split("?", 1)[0]
        policy = self.detector.policy
        route = next((r.match for r in policy.routes if fnmatch.fnmatchcase(path, r.match)), None) \
            or next((r.match for r in self.config.proxy.routes if fnmatch.fnmatchcase(path, r.match)), None) \
            or path.rsplit("/", 1)[0] + "/*"            # no route: the resource's directory
        trip = route_for(self.config, policy, path).policy.trip
        crossed = tracker.add(resource=resource, route=route, client=meta.get("client"), strong=result.strong_ids,
                              person=result.person_ids, capped=result.ids_capped, now=time.time(),
                              strong_trip=trip.strong_records, person_trip=trip.person_records)
        return crossed[0] if crossed else None          # the resource's own, when both crossed

    async def _exposure_trip(self, xid: str, st: Open, result, c: Crossing) -> tuple:
        """The exposure total crossed: publish the takedown now, and return the trip's summary and the
        alert's ``dlp.exposure``."""
        window = self.config.exposure.window_s
        summary = dataclasses.replace(result, verdict="trip", records=c.records, strong_records=c.strong_records,
                                      person_records=c.person_records, notes=[*result.notes, (
                                          f"exposure: {c.records} distinct records from {c.responses} responses "
                                          f"in {window:g} s ({c.scope} {c.key})")])
        exposure = {"scope": c.scope, "key": c.key, "records": c.records, "strong_records": c.strong_records,
                    "person_records": c.person_records, "responses": c.responses, "window_s": window,
                    "approximate": c.approximate}
        st.tripped_at = time.time()
        await self._maybe_take_down(xid, st, final=True, reason=f"trip: exposure of {c.records} distinct records "
                                                                f"from {c.responses} responses (fleet worker)")
        return summary, exposure

    async def _settle(self, pending: list[tuple]) -> None:
        """Wait for the broker to have every finding and alert of the batch, then ack those exchanges. A
        publication the producer gives up on stops the loop: the process exits and what was not committed
        is read again."""
        if not pending:
            return
        await asyncio.gather(*(f for futs, _, _ in pending for f in futs))
        m = self.metrics
        for _futs, st, result in pending:
            m.exchanges.labels(tap="kafka", verdict=result.verdict).inc()
            m.bytes_scanned.labels(tap="kafka").inc(result.bytes)
            for sig, n in result.findings.items():
                m.findings.labels(signature=sig).inc(n)
            if result.verdict == "trip" or st.takedown_sent:
                m.trips.labels(mode=str(st.meta.get("mode", "monitor"))).inc()
            for msg in st.messages:
                self.scan_acks.done(msg)

    def _alert(self, xid: str, st: Open, result, exposure: dict | None = None) -> dict:
        meta = st.meta
        ctx = AlertContext(exchange_id=xid, sensor_id=meta["sensor"], resource=meta["resource"], url=meta["url"],
                           method=str(meta.get("method", "GET")), status=meta["status"], client_ip="",
                           mode=str(meta.get("mode", "monitor")),
                           action="takedown" if st.takedown_sent else "logged", partial=bool(meta.get("partial")),
                           bytes_sent=result.bytes, ruleset=self.detector.generation)
        alert = build_alert(ctx, result, key=self.key, source_ip=self.config.source_ip, now=time.time(),
                            client_hash=meta.get("client"), exposure=exposure)   # dlp.client.hash: never source.*
        alert["observer"]["hostname"] = self.me
        return alert

    def _expired(self) -> list[str]:
        """Exchanges whose end never came (sidecar killed, producer lost records): the loop finishes them."""
        cutoff = time.monotonic() - self.k.exchange_timeout
        out = []
        for xid, st in self.open.items():
            if st.last_seen < cutoff:
                st.notes.append(f"abandoned: no end record within {self.k.exchange_timeout:.0f}s")
                self.metrics.worker_expired.inc()
                out.append(xid)
        return out

    async def _expire(self) -> None:
        self._gauge_open()
        await self._check_stalls()
        await self._lag()

    def _gauge_open(self) -> None:
        self.metrics.worker_open.set(len(self.open))
        self.metrics.worker_held.set(self.scan_acks.held() + self.acks.held())

    async def _scan_assigned(self, assigned: set) -> None:
        """After a rebalance of the scan group: drop the open exchanges of partitions that moved away, unacked
        (the new owner reads them again from their meta record), and position the contiguity guard."""
        dropped = [xid for xid, st in self.open.items() if st.tp not in assigned]
        for xid in dropped:
            self.open.pop(xid).print.close()
        self.scan_acks.forget(assigned)
        self.scan_cursor.forget(assigned)
        try:
            for tp, offset in (await self.offsets.starting(scan_group(self.k), list(assigned))).items():
                self.scan_cursor.position(tp, offset)
        except Exception as e:                          # noqa: BLE001  (then the first record read positions it)
            log.warning("committed offsets unavailable after the rebalance: %r", e)
        log.info("rebalanced: %d exchange partitions here; kept %d open exchanges, dropped %d %s",
                 len(assigned), len(self.open), len(dropped), dropped[:8])

    async def _drain_settling(self) -> None:
        """Before a rebalance commits and gives partitions up: let the batch in flight settle, so its acks are
        in that commit. Otherwise the next owner reads those exchanges again and publishes them twice
        (collapsed by the ledger, but the alerts go out twice). Bounded: a producer that does not answer
        leaves them to be read again, as before."""
        t = self._settling
        if t is None or t.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(t), SETTLE_BEFORE_REVOKE)
        except asyncio.TimeoutError:
            log.warning("the batch in flight did not settle within %.0fs of a rebalance; its exchanges will be "
                        "read again by their next owner", SETTLE_BEFORE_REVOKE)
        except Exception:                               # noqa: BLE001  (the scan loop sees it and exits)
            pass

    async def _scan_revoked(self, revoked: set) -> None:
        self.reader.forget(revoked)

    async def _assigned(self, *args, **kwargs) -> None:
        """After a rebalance of faust's group: position the ledger agent's contiguity guard."""
        assigned = args[1] if len(args) > 1 else kwargs.get("assigned", set())
        self.acks.forget(assigned)
        mine = [tp for tp in assigned if tp.topic == self.k.topic("findings")]
        self.cursor.forget(mine)
        try:
            for tp, offset in (await self.offsets.starting(self.k.group, mine)).items():
                self.cursor.position(tp, offset)
        except Exception as e:                          # noqa: BLE001  (then the first record read positions it)
            log.warning("committed offsets unavailable after the rebalance: %r", e)

    async def _dead(self, msg, why: str) -> None:
        log.warning("dead-lettering %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, why)
        self.metrics.deadletters.labels(topic=msg.topic).inc()
        fut = await self._send(self.k.topic("deadletter"), msg.key, encode("dead", msg.value or b"", topic=msg.topic,
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
            self._count_client(e, resource, client)
        self.exposure[resource] = e

    def _count_client(self, e: dict, resource: str, client: str) -> None:
        """Count ``client`` once per resource: in the entry's own list while it has room (an entry made
        before the list existed, with clients counted, uses the table only), then in the table."""
        inline = e.get("client_list")
        if inline is None and not e.get("clients"):
            inline = []
        if inline is not None:
            if client in inline:
                return
            if len(inline) < INLINE_CLIENTS:
                e["client_list"] = [*inline, client]
                e["clients"] = e.get("clients", 0) + 1
                return
        ck = f"{resource}\x1f{client}"
        if not self.clients[ck]:
            self.clients[ck] = 1
            e["clients"] = e.get("clients", 0) + 1

    # -- metrics -------------------------------------------------------------------------------
    async def _lag(self) -> None:
        """Partitions owned (always) and records behind (when every position is known within a moment:
        during a rebalance a position can wait for its reset, and this runs on faust's timer)."""
        topics = {}
        if self.reader is not None:
            topics[self.k.topic("exchanges")] = self.reader
        if self.app is not None:
            topics[self.k.topic("findings")] = self.app.consumer
        for topic, c in topics.items():
            try:
                tps = [tp for tp in c.assignment() if tp.topic == topic]   # (not changelog standbys)
            except Exception:                           # noqa: BLE001  (the consumer is not up yet)
                continue
            self.metrics.assigned_partitions.labels(topic=topic).set(len(tps))
            try:
                lag = 0
                for tp in tps:
                    pos = await asyncio.wait_for(c.position(tp), 0.5)
                    hw = c.highwater(tp)
                    if pos is not None and hw is not None:
                        lag += max(0, hw - pos)
            except Exception:                           # noqa: BLE001  (a rebalance in progress)
                continue
            self.metrics.consumer_lag.labels(topic=topic).set(lag)

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
        loop = asyncio.get_running_loop()
        self._background.append(loop.create_task(self._startup_watch()))
        if self.app is not None:
            self._background.append(loop.create_task(self._recovery_watch()))

    async def _recovery_watch(self) -> None:
        """Every second, from before faust joins: seek again a changelog partition the table recovery waits
        for in vain (``recovery.RecoveryWatch``), or the ledger stops counting after a handover."""
        watch = RecoveryWatch(self.app, on_reseek=lambda tp: self.metrics.worker_rewinds.labels(topic=tp.topic).inc())
        while True:
            await asyncio.sleep(1.0)
            try:
                await watch.check()
            except Exception as e:                      # noqa: BLE001  (the watch must not end the worker)
                log.warning("table recovery watch: %r", e)

    async def _startup_watch(self) -> None:
        """Say so in the log while faust has not finished joining the group and restoring tables
        (a stall there is otherwise silent)."""
        while not self.ready:
            await asyncio.sleep(STARTUP_WARN_EVERY)
            if not self.ready:
                if self.app is None:
                    log.warning("worker %s (roles %s) not ready after %.0fs: the scan group %s has not given it "
                                "partitions yet", self.me, ",".join(self.roles), time.monotonic() - self._started_at,
                                scan_group(self.k))
                    continue
                try:
                    assigned = len(self.app.consumer.assignment())
                except Exception:                       # noqa: BLE001  (the consumer is not up yet)
                    assigned = 0
                log.warning("worker %s not ready after %.0fs: faust has not finished joining the group and "
                            "restoring its tables (%d partitions assigned so far)", self.me,
                            time.monotonic() - self._started_at, assigned)

    async def _begin(self) -> None:
        """Start processing: with the ledger role faust runs this once its table recovery has completed;
        a scan-only worker runs it at once (no faust). Ready once the scan group has given the scan loop
        partitions (scan role), right away for a ledger-only worker (faust joined and restored already)."""
        from sensor.stream.kafka import Health, supervised
        if self.scans:
            self._scanning = supervised(self._scan(), "scan loop")
            while not self.reader.joined:               # ready once the scan group has given it partitions
                await asyncio.sleep(0.05)
        else:
            self._background.append(supervised(self._connect(), "producer"))   # dead letters of the ledger agent
        self.ready = True
        log.info("worker %s ready in %.1fs: roles %s, generation %s, %d signatures", self.me,
                 time.monotonic() - self._started_at, ",".join(self.roles), self.detector.generation,
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
        await self.dlp.stop_scanning()
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
    """Run until SIGTERM/SIGINT: with the ledger role faust's Worker handles the signals and the loop; a
    scan-only worker runs on a plain asyncio loop (``_run_scan_only``)."""
    from sensor.stream.kafka import ensure_topics
    asyncio.run(ensure_topics(config.kafka, timeout=30))
    w = Worker(config)
    if w.app is None:
        asyncio.run(_run_scan_only(w))
        return
    _FaustWorker(w, loglevel=loglevel, quiet=True).execute_from_commandline()


async def _run_scan_only(w: Worker) -> None:
    """A scan-only worker: no faust app (measured: faust's consumer, fetcher, events and changelog producer
    were ~11% of a both-roles worker's CPU, docs/benchmarks.md). The HTTP endpoints first, then the scan
    loop; every second the gauges (``_expire``, faust's timer in the other roles). SIGTERM/SIGINT: commit
    what is done, leave the scan group, flush the producer, as the faust worker's stop does."""
    import signal
    from sensor.stream.kafka import supervised
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await w.start_http()
    tasks = [supervised(w._begin(), "worker"), supervised(_every_second(w), "worker gauges")]
    await stop.wait()
    _exit_later()
    log.info("worker %s stopping", w.me)
    for t in tasks:
        t.cancel()
    await w.stop_scanning()
    await w.offsets.close()


async def _every_second(w: Worker) -> None:
    while True:
        await asyncio.sleep(1.0)
        try:
            await w._expire()
        except Exception as e:                          # noqa: BLE001  (a gauge must not end the worker)
            log.debug("worker gauges: %r", e)
