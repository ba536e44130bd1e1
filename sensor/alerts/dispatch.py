"""Deliver spooled alerts to every sink, retrying with capped exponential backoff and jitter."""
from __future__ import annotations

import asyncio
import logging
import random
import time

import aiohttp

from sensor.alerts.sinks import DeliveryError, Sink
from sensor.alerts.spool import Spool

log = logging.getLogger("dlp_sensor.alerts")


class Dispatcher:
    def __init__(self, spool: Spool, sinks: list[Sink], *, retry_initial: float = 0.5, retry_max: float = 10.0,
                 metrics=None):
        self.spool = spool
        self.sinks = sinks
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.metrics = metrics
        self._wake = {s.name: asyncio.Event() for s in sinks}
        self._tasks: list[asyncio.Task] = []
        self._session: aiohttp.ClientSession | None = None

    def submit(self, alert: dict) -> int:
        """Durable first (fsynced spool rows for every sink), then wake the senders."""
        seq = self.spool.put(alert, {s.name: s.throttle for s in self.sinks})
        for ev in self._wake.values():
            ev.set()
        if self.metrics:
            for sink, n in self.spool.take_throttled().items():
                self.metrics.alerts_throttled.labels(sink=sink).inc(n)
        self._gauge()
        return seq

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self.spool.release_leases()
        for s in self.sinks:
            s.session = self._session
            self._tasks.append(asyncio.create_task(self._run(s), name=f"alert-sink-{s.name}"))
        self._gauge()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session:
            await self._session.close()

    def _gauge(self) -> None:
        if self.metrics:
            self.metrics.alert_spool_depth.set(self.spool.depth())

    def _backoff(self, attempts: int) -> float:
        return min(self.retry_max, self.retry_initial * (2 ** attempts)) * random.uniform(0.5, 1.0)

    async def _run(self, sink: Sink) -> None:
        wake = self._wake[sink.name]
        while True:
            batch = self.spool.lease(sink.name)
            for seq, attempts, alert in batch:
                try:
                    await sink.deliver(alert)
                except (DeliveryError, OSError, KeyError, ValueError) as e:
                    self.spool.failed(seq, sink.name, str(e), time.time() + self._backoff(attempts))
                    if self.metrics:
                        self.metrics.alert_delivery_failures.labels(sink=sink.name).inc()
                    log.warning("alert delivery to %s failed (attempt %d): %s; will retry",
                                sink.name, attempts + 1, e)
                else:
                    self.spool.delivered(seq, sink.name)
                    if self.metrics:
                        self.metrics.alerts_delivered.labels(sink=sink.name).inc()
            self._gauge()
            if batch:
                continue
            due = self.spool.next_due(sink.name)
            timeout = 5.0 if due is None else max(0.01, min(5.0, due - time.time()))
            wake.clear()
            try:
                await asyncio.wait_for(wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass
