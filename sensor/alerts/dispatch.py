"""Deliver spooled alerts to every sink, retrying with capped exponential backoff and jitter.

A receiver's ``Retry-After`` (on 429/503) sets the next attempt instead of the backoff; an
answer that will never change (HTTP 4xx other than 408/429) moves the alert to the dead-letter
file (``dead_letter: true``, the default) instead of retrying it forever. HTTP sinks share one
aiohttp session that honours the proxy environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``).

When the spool cannot be written (a full or failing disk), an alert is not lost: it goes to every
sink from memory, with the same retries, so sinks that need no disk (stdout, webhooks, syslog…)
still hear of it at once and a file sink gets it when the disk takes it again. Held in memory it
does not survive a restart, and each sink holds at most :data:`MEMORY_LIMIT` of them (the oldest is
dropped, counted and logged). The fault is logged once when it starts and once when it ends.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections import deque
from dataclasses import dataclass

import aiohttp

from sensor.alerts.sinks import DeliveryError, Sink
from sensor.alerts.spool import Spool
from sensor.enforce.registry import DISK_ERRORS

log = logging.getLogger("dlp_sensor.alerts")
MEMORY_LIMIT = 1000             # alerts held per sink while the spool cannot be written


@dataclass
class _Held:
    """An alert the spool could not take, waiting for one sink."""
    alert: dict
    attempts: int = 0
    next_at: float = 0.0


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
        self._storing: set[asyncio.Future] = set()
        self._session: aiohttp.ClientSession | None = None
        self._refused: dict[str, int] = {}
        self._refusing: asyncio.Future | None = None
        self._held: dict[str, deque[_Held]] = {s.name: deque() for s in sinks}
        self._held_sent: dict[tuple[str, str], float] = {}     # (sink, incident) -> last sent from memory
        self.spool_fault: str | None = None     # why the spool cannot be written, while it cannot

    def submit(self, alert: dict, *, hold: float = 0.0) -> "asyncio.Future[int]":
        """Queue the alert for the spool (fsynced rows for every sink) on the spool's disk thread and
        return at once: the caller never waits on the disk. The senders wake once it is durable;
        they lease through the same thread, so they cannot miss it."""
        fut = self.spool.disk.submit(self._store, alert, hold)
        self._storing.add(fut)
        fut.add_done_callback(functools.partial(self._stored, alert))
        return fut

    def amend(self, alert: dict) -> None:
        """Final counts for an alert :meth:`submit` stored at the trip (same dedup id): written into it
        for the sinks that have not had it yet, on the spool's disk thread, after the store it amends;
        the deliveries held for it are due at once.
        Never a second alert; held in memory (the spool could not be written), it is amended there."""
        for q in self._held.values():
            for h in q:
                if h.alert["dlp"]["dedup_id"] == alert["dlp"]["dedup_id"]:
                    h.alert = {**alert, "dlp": {**alert["dlp"], "incident": h.alert["dlp"].get("incident")}}
        try:
            fut = self.spool.disk.submit(self.spool.amend, alert)
        except RuntimeError:                        # shutting down: the trip-time counts stand
            return
        self._storing.add(fut)

        def done(f: asyncio.Future) -> None:
            self._storing.discard(f)
            if not f.cancelled() and (e := f.exception()) is not None:
                log.warning("alert %s: final counts not written (%s: %s); the counts at the trip stand",
                            alert["dlp"]["dedup_id"], type(e).__name__, e)
            for ev in self._wake.values():      # its held deliveries are due now
                ev.set()
        fut.add_done_callback(done)

    def refused(self, incident: str) -> None:
        """A request for a taken-down resource was refused: count it into its incident. Refusals are
        coalesced on the loop (one disk job carries all that came while the previous one ran), so a
        client hammering a taken-down URL costs the disk thread one transaction per batch."""
        self._refused[incident] = self._refused.get(incident, 0) + 1
        if self._refusing is None:
            self._flush_refusals()

    def _flush_refusals(self) -> None:
        counts, self._refused = self._refused, {}
        try:
            fut = self._refusing = self.spool.disk.submit(self._store_refusals, counts)
        except RuntimeError:                        # shutting down (disk thread closed): a 451 must still go out
            log.warning("%d refusals not counted into their incidents: the alert spool is closed",
                        sum(counts.values()))
            return
        self._storing.add(fut)
        fut.add_done_callback(self._refusals_stored)

    def _refusals_stored(self, fut: asyncio.Future) -> None:
        self._refusing = None
        self._stored(None, fut)
        if self._refused:
            self._flush_refusals()

    def _windows(self) -> dict[str, float]:
        return {s.name: s.throttle for s in self.sinks}

    def _store(self, alert: dict, hold: float = 0.0) -> tuple[int, dict[str, int], int]:
        seq = self.spool.put(alert, self._windows(), every={s.name for s in self.sinks if s.every_alert}, hold=hold)
        return seq, self.spool.take_throttled(), self.spool.depth()

    def _store_refusals(self, counts: dict[str, int]) -> tuple[int, dict[str, int], int]:
        n = self.spool.refusals(counts, self._windows())
        return n, self.spool.take_throttled(), self.spool.depth()

    def _stored(self, alert: dict | None, fut: asyncio.Future) -> None:
        """An alert (or, with ``alert`` None, a batch of refusal counts) reached the spool, or not."""
        self._storing.discard(fut)
        if fut.cancelled():
            return
        if (e := fut.exception()) is not None:
            if self.metrics:
                self.metrics.alert_delivery_failures.labels(sink="spool").inc()
            if not isinstance(e, DISK_ERRORS):
                log.error("an alert could not be written to the spool (%s: %s); it is lost", type(e).__name__, e)
                return
            self._spool_failed(e)
            if alert is not None:               # refusal counts are not alerts: they are only counted
                self._hold(alert)
            return
        self._spool_ok()
        _, throttled, depth = fut.result()
        for ev in self._wake.values():
            ev.set()
        if self.metrics:
            for sink, n in throttled.items():
                self.metrics.alerts_throttled.labels(sink=sink).inc(n)
            self.metrics.alert_spool_depth.set(depth)

    # -- the spool cannot be written: alerts go to the sinks from memory --------------------------------
    def _spool_failed(self, e: BaseException) -> None:
        if self.spool_fault is None:
            self.spool_fault = f"{type(e).__name__}: {e}"
            log.error("alert spool %s cannot be written (%s): alerts go to every sink from memory until it "
                      "can (they do not survive a restart)", self.spool.path, self.spool_fault)

    def _spool_ok(self) -> None:
        if self.spool_fault is not None:
            self.spool_fault = None
            log.warning("alert spool %s can be written again", self.spool.path)

    def _hold(self, alert: dict) -> None:
        now = time.time()
        incident = (alert.get("dlp", {}).get("incident") or {}).get("id")
        for s in self.sinks:
            if s.throttle > 0 and incident:             # a pager hears of an incident once per window
                last = self._held_sent.get((s.name, incident))
                if last is not None and now - last < s.throttle:
                    if self.metrics:
                        self.metrics.alerts_throttled.labels(sink=s.name).inc()
                    continue
                self._held_sent[(s.name, incident)] = now
            q = self._held[s.name]
            if len(q) >= MEMORY_LIMIT:
                q.popleft()
                if self.metrics:
                    self.metrics.alert_delivery_failures.labels(sink=s.name).inc()
                log.error("alert for %s dropped: %d alerts already held in memory for it while the spool "
                          "cannot be written", s.name, MEMORY_LIMIT)
            q.append(_Held(alert, next_at=now))
            self._wake[s.name].set()

    async def _deliver_held(self, sink: Sink) -> float | None:
        """Deliver the sink's held alerts in order; when the next one is due if one failed."""
        q = self._held[sink.name]
        while q:
            h = q[0]
            if h.next_at > time.time():
                return h.next_at
            try:
                await sink.deliver(h.alert)
            except (DeliveryError, OSError, KeyError, ValueError) as e:
                permanent = isinstance(e, DeliveryError) and e.permanent
                if permanent and sink.dead_letter:      # no disk for the dead-letter file either
                    q.popleft()
                    log.error("alert %s refused for good by %s (%s) while the spool cannot be written: dropped",
                              h.alert["dlp"]["dedup_id"], sink.name, e)
                    continue
                asked = e.retry_after if isinstance(e, DeliveryError) else None
                h.next_at = time.time() + (asked if asked is not None else self._backoff(h.attempts))
                h.attempts += 1
                if self.metrics:
                    self.metrics.alert_delivery_failures.labels(sink=sink.name).inc()
                log.warning("alert delivery to %s failed (attempt %d, from memory): %s; will retry",
                            sink.name, h.attempts, e)
                return h.next_at
            q.popleft()
            if self.metrics:
                self.metrics.alerts_delivered.labels(sink=sink.name).inc()
        return None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(trust_env=True)       # HTTPS_PROXY / NO_PROXY
        await self.spool.disk(self.spool.release_leases)
        for s in self.sinks:
            s.session = self._session
            self._tasks.append(asyncio.create_task(self._run(s), name=f"alert-sink-{s.name}"))
        await self._gauge()

    async def replace_sinks(self, sinks: list[Sink], *, retry_initial: float, retry_max: float,
                            grace: float = 10.0) -> None:
        """A reload's sinks take over delivery. Spooled deliveries are rows per sink *name*: a sink
        kept by name (its URL, path or throttle changed) delivers what is queued for it, a new name
        gets the alerts stored from now on, and a removed name's queued alerts stay in the spool
        (logged) and go out if it comes back. Each old sender finishes the delivery it is in (up to
        ``grace`` seconds; a batch cut short is leased again after the lease, not lost)."""
        old, self._tasks = self._tasks, []
        self.sinks = sinks
        self.retry_initial, self.retry_max = retry_initial, retry_max
        for ev in self._wake.values():                  # old senders see they are retired and leave
            ev.set()
        if old:
            _, pending = await asyncio.wait(old, timeout=grace)
            for t in pending:
                t.cancel()
            await asyncio.gather(*old, return_exceptions=True)
        names = {s.name for s in sinks}
        for name, q in list(self._held.items()):
            if name not in names and q:
                log.error("%d alert(s) held in memory for %s (the spool could not be written) are dropped: the "
                          "reload removed that sink", len(q), name)
        self._held = {s.name: self._held.get(s.name, deque()) for s in sinks}
        self._wake = {s.name: asyncio.Event() for s in sinks}
        gone = await self.spool.disk(self._orphaned, names)
        for name, n in gone.items():
            log.warning("%d alert(s) spooled for sink %s stay in the spool: the reload removed that sink (they "
                        "are delivered if a sink of that name comes back)", n, name)
        if self._session is not None:
            for s in sinks:
                s.session = self._session
                self._tasks.append(asyncio.create_task(self._run(s), name=f"alert-sink-{s.name}"))

    def _serving(self, sink: Sink) -> bool:
        """False once a reload replaced the sink list without this very sink (its sender retires)."""
        return any(s is sink for s in self.sinks)

    def _orphaned(self, names: set[str]) -> dict[str, int]:
        rows = self.spool.db.execute("SELECT sink, count(*) FROM deliveries GROUP BY sink").fetchall()
        return {sink: n for sink, n in rows if sink not in names}

    async def stop(self) -> None:
        """Alerts already submitted are on disk before this returns (the next start sends them)."""
        while self._storing:                        # refusal batches may chain one more
            await asyncio.gather(*list(self._storing), return_exceptions=True)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for name, q in self._held.items():
            if q:
                log.error("%d alert(s) held in memory for %s (the spool could not be written) are lost with this "
                          "stop", len(q), name)
        if self._session:
            await self._session.close()

    async def _gauge(self) -> None:
        if self.metrics:
            self.metrics.alert_spool_depth.set(await self.spool.disk(self.spool.depth))

    async def _spooled(self, sink: Sink) -> tuple[list, float | None]:
        """Deliver one leased batch from the spool; (the batch, when the next delivery is due if none)."""
        io = self.spool.disk
        batch = await io(self.spool.lease, sink.name)
        pause: float | None = None              # the receiver said Retry-After: the rest of the batch waits too
        for i, (seq, attempts, alert) in enumerate(batch):
            if pause is not None:
                await io(self.spool.defer, [s for s, _, _ in batch[i:]], sink.name, pause)
                break
            try:
                await sink.deliver(alert)
            except DeliveryError as e:
                if self.metrics:
                    self.metrics.alert_delivery_failures.labels(sink=sink.name).inc()
                if e.permanent and sink.dead_letter:
                    await io(self.spool.dead_letter, seq, sink.name, alert, str(e))
                    if self.metrics:
                        self.metrics.alerts_dead_lettered.labels(sink=sink.name).inc()
                    log.error("alert %s refused for good by %s (%s); moved to %s", alert["dlp"]["dedup_id"],
                              sink.name, e, self.spool.dead_letter_path)
                    continue
                wait = e.retry_after if e.retry_after is not None else self._backoff(attempts)
                await io(self.spool.failed, seq, sink.name, str(e), time.time() + wait)
                if e.retry_after is not None:
                    pause = time.time() + wait
                log.warning("alert delivery to %s failed (attempt %d): %s; will retry in %.1fs",
                            sink.name, attempts + 1, e, wait)
            except (OSError, KeyError, ValueError) as e:
                await io(self.spool.failed, seq, sink.name, str(e), time.time() + self._backoff(attempts))
                if self.metrics:
                    self.metrics.alert_delivery_failures.labels(sink=sink.name).inc()
                log.warning("alert delivery to %s failed (attempt %d): %s; will retry",
                            sink.name, attempts + 1, e)
            else:
                await io(self.spool.delivered, seq, sink.name)
                if self.metrics:
                    self.metrics.alerts_delivered.labels(sink=sink.name).inc()
        await self._gauge()
        if pause is not None:                   # nothing goes to this receiver before it said
            await asyncio.sleep(max(0.0, pause - time.time()))
        return batch, None if batch else await io(self.spool.next_due, sink.name)

    def _backoff(self, attempts: int) -> float:
        return min(self.retry_max, self.retry_initial * (2 ** attempts)) * random.uniform(0.5, 1.0)

    async def _run(self, sink: Sink) -> None:
        wake = self._wake[sink.name]
        while self._serving(sink):
            held_due = await self._deliver_held(sink)
            try:
                batch, due = await self._spooled(sink)
            except DISK_ERRORS as e:            # leases and receipts are writes too: held alerts go on
                self._spool_failed(e)
                batch, due = [], time.time() + 1.0
            if batch:
                continue
            if held_due is not None:
                due = held_due if due is None else min(due, held_due)
            timeout = 5.0 if due is None else max(0.01, min(5.0, due - time.time()))
            wake.clear()
            if not self._serving(sink):
                return
            try:                                # not wait_for: on 3.11 it swallows a stop()'s cancel
                async with asyncio.timeout(timeout):        # that comes with a wake-up
                    await wake.wait()
            except TimeoutError:
                pass
