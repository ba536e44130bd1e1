"""The mirror tap: a monitor-mode sidecar publishes each exchange to Kafka instead of scanning it here.

One exchange = a ``meta`` record, its body as ordered ``chunk`` records (≤ 512 KiB, seq 0, 1, 2…)
and an ``end`` record, all keyed by the exchange id so one worker sees them in order. The data
path never waits on Kafka: records go into a queue bounded in bytes (``kafka.mirror.queue_mib``)
that one task drains into the producer. When the queue has no room — the broker is slow or down —
the exchange overflows, is counted (``dlp_mirror_overflow_total{action}``), and per
``kafka.mirror.overflow`` is either scanned here (``local``, the default) or not at all (``drop``).
An exchange that overflows half-way is ended with ``lost: true`` so the worker does not report it
as whole, and (``local``) the rest of its body is scanned here.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from sensor.alerts.schema import AlertContext
from sensor.enforce.parts import SensorState
from sensor.exchange.identity import client_hash
from sensor.pipeline import Exchange
from sensor.stream.kafka import Health, client_kwargs, supervised
from sensor.stream.records import encode

log = logging.getLogger("dlp_sensor.mirror")
MAX_CHUNK = 512 << 10


class Mirror:
    def __init__(self, sensor: SensorState):
        self.sensor = sensor
        self.k = sensor.config.kafka
        self.topic = self.k.topic("exchanges")
        self.queue: deque[tuple[bytes, bytes, int]] = deque()
        self.queued = 0                 # body bytes queued or in flight (the bound)
        self.has_data = asyncio.Event()
        self.producer: AIOKafkaProducer | None = None
        self.health: Health | None = None
        self._tasks: list[asyncio.Task] = []
        self.connected = asyncio.Event()

    @property
    def up(self) -> bool:
        return self.producer is not None and self.health is not None and self.health.up

    async def start(self) -> None:
        self._tasks.append(supervised(self._run(), "mirror"))
        try:
            await asyncio.wait_for(self.connected.wait(), self.k.catchup_timeout)
        except asyncio.TimeoutError:
            log.error("mirror: no broker within %.0fs; exchanges overflow (%s) until it answers",
                      self.k.catchup_timeout, self.k.overflow)

    async def stop(self) -> None:
        if self.producer is not None and self.queue:
            try:                                        # give queued records a moment to leave
                await asyncio.wait_for(self._drained(), 5)
            except asyncio.TimeoutError:
                log.warning("mirror: %d records not published at shutdown", len(self.queue))
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.producer is not None:
            try:
                await asyncio.wait_for(self.producer.stop(), 5)
            except Exception:                           # noqa: BLE001  (shutting down anyway)
                pass

    async def _drained(self) -> None:
        while self.queue:
            await asyncio.sleep(0.01)

    # -- the tap's side (never awaits) ---------------------------------------------------------
    def open(self, ctx: AlertContext, exchange: Exchange) -> "MirroredExchange | None":
        """Start mirroring an exchange; None when it overflows (the caller follows ``overflow``)."""
        if not self.up or self.queued >= self.k.queue_bytes // 2:
            self.sensor.metrics.mirror_overflow.labels(action=self.k.overflow).inc()
            return None
        s = self.sensor
        self._put(ctx.exchange_id, encode(
            "meta", url=ctx.url, resource=ctx.resource, method=ctx.method, status=ctx.status,
            content_type=exchange.content_type, content_encoding=exchange.content_encoding,
            client=client_hash(s.key, ctx.client_ip) if ctx.client_ip else None, mode=ctx.mode,
            path=exchange.path, partial=ctx.partial, sensor=s.config.sensor_id, ts=time.time()), 0)
        s.metrics.mirror_exchanges.inc()
        return MirroredExchange(self, ctx.exchange_id)

    def _put(self, xid: str, value: bytes, nbytes: int) -> None:
        self.queue.append((xid.encode(), value, nbytes))
        self.queued += nbytes
        self.sensor.metrics.mirror_queue_bytes.set(self.queued)
        self.has_data.set()

    # -- the producer's side -------------------------------------------------------------------
    async def _run(self) -> None:
        m = self.sensor.metrics
        delay = 0.2
        while self.producer is None:
            p = AIOKafkaProducer(**client_kwargs(self.k), acks="all", enable_idempotence=True, linger_ms=2,
                                 request_timeout_ms=10000, max_request_size=2 << 20)
            try:
                await p.start()
                self.producer = p
            except (KafkaError, OSError) as e:
                await p.stop()
                m.kafka_up.labels(component="mirror").set(0)
                m.kafka_errors.labels(component="mirror", op="connect").inc()
                log.warning("mirror: broker not reachable yet (%s); overflowing until it is", type(e).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.health = Health(self.k, m.kafka_up, "mirror")
        self._tasks.append(supervised(self.health.run(), "mirror-health"))
        self.connected.set()
        while True:
            if not self.queue:
                self.has_data.clear()
                await self.has_data.wait()
                continue
            key, value, n = self.queue.popleft()
            try:
                fut = await self.producer.send(self.topic, value, key=key)
            except (KafkaError, asyncio.TimeoutError):
                self._done(None, n)
                continue
            fut.add_done_callback(lambda f, n=n: self._done(f, n))

    def _done(self, fut, n: int) -> None:
        m = self.sensor.metrics
        self.queued -= n
        m.mirror_queue_bytes.set(self.queued)
        if fut is None or fut.cancelled() or fut.exception() is not None:
            m.kafka_errors.labels(component="mirror", op="publish").inc()
        else:
            m.mirror_bytes.inc(n)


class MirroredExchange:
    def __init__(self, mirror: Mirror, xid: str):
        self.mirror = mirror
        self.xid = xid
        self.seq = 0
        self.lost = False

    def write(self, chunk: bytes) -> bool:
        """Queue a body chunk; False (and the exchange is ended as lost) when the queue is full."""
        mi = self.mirror
        if mi.queued + len(chunk) > mi.k.queue_bytes or not mi.up:
            mi.sensor.metrics.mirror_overflow.labels(action=mi.k.overflow).inc()
            self.lost = True
            self.end(completed=False, sent=-1)
            return False
        for i in range(0, len(chunk), MAX_CHUNK):
            part = chunk[i:i + MAX_CHUNK]
            mi._put(self.xid, encode("chunk", part, seq=self.seq), len(part))
            self.seq += 1
        return True

    def end(self, *, completed: bool, sent: int) -> None:
        if self.seq < 0:
            return                                      # already ended
        self.mirror._put(self.xid, encode("end", seq=self.seq, bytes=sent, completed=completed, lost=self.lost), 0)
        self.seq = -1
