"""Fleet-wide takedowns: every sidecar reads all of the compacted ``takedowns`` topic and publishes its own.

Reading: no consumer group — each sidecar assigns itself every partition and starts from the
beginning, so a sidecar that starts (or restarts) after a takedown replays the compacted topic
and enforces it *before its listeners open* (``catchup_timeout`` bounds the wait when the broker
is down; the local registry, which is durable, keeps serving meanwhile). Lifts travel the same way.

Publishing: the local registry's audit table is the outbox. Every local add or lift (a trip, the
admin API, the CLI) is published in audit order and the cursor moves only after the broker has
acknowledged it, so a change made while the broker was down — or just before ``kill -9`` — is
published when it can be. Changes applied *from* the fleet are audited with actor ``fleet:…``
and never published back.

A trip's takedown is also *announced* at once, from memory, while its local commit still waits on
the disk: fsync on a busy host stalls for seconds (measured here: 0.5-7 s), and the rest of the
fleet must not wait for it. The outbox then skips that audit row. If the process dies between the
announcement and its commit, the record is on the topic but not in the local registry: at start,
the replay applies such a record of its own (one with no local change of the resource since).
"""
from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from sensor.enforce.resource import rekey
from sensor.enforce.registry import FLEET_ACTOR, join_print, split_print
from sensor.enforce.parts import SensorState
from sensor.stream.kafka import Health, client_kwargs, ensure_topics, supervised
from sensor.stream.records import RecordError, decode, encode, require

log = logging.getLogger("dlp_sensor.fleet")
ANNOUNCED_FOR = 60.0    # an audit row this soon after its announcement is that announcement (not published again)


def takedown_record(*, action: str, resource: str, actor: str, reason: str, origin: str, ts: float,
                    fingerprint: str | None = None, xid: str | None = None,
                    fingerprint_len: int | None = None) -> bytes:
    """A takedown or lift for the compacted topic. The content print travels as ``fingerprint`` (the
    keyed hash) and ``fingerprint_len`` (the prefix length it covers; absent: a head print). A print
    given as ``"L:hex"`` (:func:`sensor.enforce.registry.join_print`) is split into the two."""
    if fingerprint and fingerprint_len is None:
        fingerprint, fingerprint_len = split_print(fingerprint)
    extra = {"fingerprint_len": fingerprint_len} if fingerprint_len else {}
    return encode("takedown" if action == "add" else "lift", resource=resource, fingerprint=fingerprint,
                  actor=actor, reason=reason, xid=xid, origin=origin, ts=ts, **extra)


def _print_of(rec) -> str | None:
    """A record's content print as the registry takes it. A malformed length drops the print (the
    resource is still taken down): guessing it could only make the print broader."""
    fp, n = rec.get("fingerprint"), rec.get("fingerprint_len")
    if not isinstance(fp, str) or not fp:
        return None
    if n is None:
        return fp
    return join_print(fp, n) if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


class FleetLink:
    def __init__(self, sensor: SensorState):
        self.sensor = sensor
        self.k = sensor.config.kafka
        self.topic = self.k.topic("takedowns")
        self.me = sensor.config.sensor_id
        self.caught_up = asyncio.Event()
        self.wake = asyncio.Event()
        self.producer: AIOKafkaProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self._tasks: list[asyncio.Task] = []
        self._pending: set[asyncio.Future] = set()
        self._announced: dict[str, float] = {}     # resource -> when its trip's takedown was announced

    async def start(self) -> None:
        self._tasks.append(supervised(self._run(), "fleet"))
        try:
            await asyncio.wait_for(self.caught_up.wait(), self.k.catchup_timeout)
        except asyncio.TimeoutError:
            log.error("fleet takedown topic not read within %.0fs; serving on the local registry and "
                      "catching up in the background", self.k.catchup_timeout)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for c in (self.consumer, self.producer):
            if c is not None:
                try:
                    await asyncio.wait_for(c.stop(), 5)
                except Exception:                           # noqa: BLE001  (shutting down anyway)
                    pass

    # -- connect, catch up, then follow --------------------------------------------------------
    async def _run(self) -> None:
        m = self.sensor.metrics
        delay = 0.2
        while True:
            try:
                await ensure_topics(self.k, timeout=5)
                kw = client_kwargs(self.k)
                self.producer = AIOKafkaProducer(**kw, acks="all", enable_idempotence=True, linger_ms=0,
                                                 request_timeout_ms=5000)
                await self.producer.start()
                self.consumer = AIOKafkaConsumer(**kw, group_id=None, enable_auto_commit=False,
                                                 auto_offset_reset="earliest", fetch_max_wait_ms=50,
                                                 request_timeout_ms=5000)
                await self.consumer.start()
                break
            except (KafkaError, OSError, asyncio.TimeoutError) as e:
                m.kafka_up.labels(component="fleet").set(0)
                m.kafka_errors.labels(component="fleet", op="connect").inc()
                log.warning("fleet: broker not reachable yet (%s); retrying", type(e).__name__)
                for c in (self.consumer, self.producer):
                    if c is not None:
                        await c.stop()
                self.consumer = self.producer = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        parts = self.consumer.partitions_for_topic(self.topic) or {0}
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)
        end = await self.consumer.end_offsets(tps)
        health = Health(self.k, m.kafka_up, "fleet")
        self._tasks += [supervised(health.run(), "fleet-health"),
                        supervised(self._publish_loop(), "fleet-publish")]
        await self._follow(tps, end)

    async def _follow(self, tps: list[TopicPartition], end: dict) -> None:
        assert self.consumer is not None
        m = self.sensor.metrics
        replayed = 0
        while True:
            if not self.caught_up.is_set() and all([await self.consumer.position(tp) >= end[tp] for tp in tps]):
                self.caught_up.set()
                log.info("fleet: caught up with %s (%d records replayed, %d takedowns active)", self.topic,
                         replayed, self.sensor.registry.active)
            try:
                batch = await self.consumer.getmany(timeout_ms=200)
            except KafkaError as e:
                m.kafka_errors.labels(component="fleet", op="consume").inc()
                log.warning("fleet: consume failed (%s); retrying", type(e).__name__)
                await asyncio.sleep(0.5)
                continue
            for msgs in batch.values():
                for msg in msgs:
                    replayed += 1
                    self._apply(msg.value, live=self.caught_up.is_set())

    def _apply(self, value: bytes | None, *, live: bool) -> None:
        """Never waits on the local disk: a takedown is refused here at once and committed on the
        registry's disk thread (the compacted topic, replayed at start, is what survives a crash
        meanwhile); a lift takes effect when its commit lands. Commits keep the topic's order."""
        m = self.sensor.metrics
        try:
            rec = decode(value)
            require(rec, resource=str, actor=str, reason=str, origin=str, ts=(int, float))
        except RecordError as e:
            m.kafka_errors.labels(component="fleet", op="malformed").inc()
            log.error("fleet: ignoring a malformed takedown record: %s", e)
            return
        reg = self.sensor.registry
        resource = rekey(self.sensor.config, rec["resource"])   # as this sensor keys the site
        if rec["origin"] == self.me and (live or rec.type != "takedown" or reg.blocked(resource) is not None
                                         or reg.changed_since(resource, rec["ts"] - 1)):
            return              # our own change, in the registry (or superseded): all but an unsaved announcement
        actor = FLEET_ACTOR + rec["actor"]
        if rec.type == "takedown":
            if reg.blocked(resource) is None:
                reg.add_soon(resource, actor=actor, reason=rec["reason"], fingerprint=_print_of(rec),
                             exchange_id=rec.get("xid")).add_done_callback(self._committed)
                self.sensor.ledger.mark(resource, "taken_down")
                m.fleet_applied.labels(action="takedown").inc()
                m.takedowns.labels(source="fleet").inc()
                if live:
                    m.fleet_lag.observe(max(0.0, time.time() - rec["ts"]))
        elif rec.type == "lift":
            reg.lift_soon(resource, actor=actor, reason=rec["reason"]).add_done_callback(self._committed)

    def _committed(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        if (e := task.exception()) is not None:
            self.sensor.metrics.kafka_errors.labels(component="fleet", op="apply").inc()
            log.error("fleet: a takedown change could not be written to the local registry (%s: %s)",
                      type(e).__name__, e)
        elif (td := task.result()) is not None and td.lifted is not None:
            self.sensor.metrics.fleet_applied.labels(action="lift").inc()

    # -- a trip's takedown, before its local commit --------------------------------------------
    def announce(self, resource: str, *, actor: str, reason: str, fingerprint: str | None, xid: str | None) -> None:
        """Publish a trip's takedown now; the outbox publishes it instead if this fails."""
        if self.producer is None or not self.caught_up.is_set():
            return
        ts = time.time()
        value = takedown_record(action="add", resource=resource, actor=actor, reason=reason, origin=self.me, ts=ts,
                                fingerprint=fingerprint, xid=xid)

        async def send() -> None:
            try:
                assert self.producer is not None
                await self.producer.send_and_wait(self.topic, value, key=resource.encode())
            except (KafkaError, asyncio.TimeoutError):
                self.sensor.metrics.kafka_errors.labels(component="fleet", op="publish").inc()
                return
            self._announced[resource] = ts
            self.sensor.metrics.fleet_published.labels(action="add").inc()

        self._background(send())

    def _background(self, coro) -> None:
        if len(self._pending) < 1000:
            t = asyncio.ensure_future(coro)
            self._pending.add(t)
            t.add_done_callback(self._pending.discard)
        else:
            coro.close()

    # -- findings for the fleet ledger --------------------------------------------------------
    def publish_finding(self, resource: str, value: bytes) -> None:
        """Best effort (the local ledger is the durable one): a sidecar's own alert/trip verdict goes to
        the findings topic so the workers' exposure table covers enforce routes too."""
        if self.producer is None:
            self.sensor.metrics.kafka_errors.labels(component="fleet", op="finding").inc()
            return

        async def send() -> None:
            try:
                assert self.producer is not None
                await self.producer.send_and_wait(self.k.topic("findings"), value, key=resource.encode())
            except (KafkaError, asyncio.TimeoutError):
                self.sensor.metrics.kafka_errors.labels(component="fleet", op="finding").inc()

        self._background(send())

    # -- the outbox ----------------------------------------------------------------------------
    async def _publish_loop(self) -> None:
        """The cursor's commit is queued, not waited for: a stalled local disk must not hold the next
        takedown's publication. A crash before it lands publishes those records again (consumers
        apply a takedown once)."""
        m = self.sensor.metrics
        reg = self.sensor.registry
        sent = 0
        while True:
            self.wake.clear()
            pending = reg.unpublished(after=sent)
            for ch in pending:
                announced = self._announced.pop(ch["resource"], None) if ch["action"] == "add" else None
                if announced is not None and -1 <= ch["at"] - announced < ANNOUNCED_FOR:
                    sent = ch["audit_id"]                   # announced already, before its commit
                    reg.disk.submit(reg.published, sent).add_done_callback(self._cursor_saved)
                    continue
                value = takedown_record(action=ch["action"], resource=ch["resource"], actor=ch["actor"],
                                        reason=ch["reason"], origin=self.me, ts=ch["at"],
                                        fingerprint=ch["fingerprint"], xid=ch["exchange_id"],
                                        fingerprint_len=ch.get("fingerprint_len"))
                try:
                    assert self.producer is not None
                    await self.producer.send_and_wait(self.topic, value, key=ch["resource"].encode())
                except (KafkaError, asyncio.TimeoutError) as e:
                    m.kafka_errors.labels(component="fleet", op="publish").inc()
                    log.warning("fleet: publishing a takedown failed (%s); will retry", type(e).__name__)
                    await asyncio.sleep(0.5)
                    break
                sent = ch["audit_id"]
                reg.disk.submit(reg.published, sent).add_done_callback(self._cursor_saved)
                m.fleet_published.labels(action=ch["action"]).inc()
            if pending:
                continue                                    # more may be waiting (or retry the failed one)
            try:
                await asyncio.wait_for(self.wake.wait(), 0.5)   # local changes wake us; other processes' are polled
            except asyncio.TimeoutError:
                pass

    def _cursor_saved(self, fut: asyncio.Future) -> None:
        if not fut.cancelled() and (e := fut.exception()) is not None:
            log.warning("fleet: the publish cursor was not saved (%s); those takedowns may be published again",
                        type(e).__name__)
