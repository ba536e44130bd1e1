"""The exchange session: decide → act for one exchange, the same for every tap.

A tap creates one :class:`ExchangeSession` per exchange from the request's metadata, and then
only translates: it calls the session at each protocol event and turns the :class:`Step` it
answers into its protocol (an HTTP response, an ICAP answer, Envoy ext_proc messages).

Who calls what::

    tap                                   session
    ───────────────────────────────────   ─────────────────────────────────────────────────────
    request head arrives                  on_request()        → REFUSE 451 (resource taken down),
                                                                421 (a Host not the site's)
                                                                or FORWARD (ask the upstream)
    response head arrives                 on_response(...)    → FORWARD start (head may leave),
                                                                HOLD (head waits for the hold-back),
                                                                REFUSE 503 (admission)
    each body chunk                       await feed(chunk)   → FORWARD send / HOLD / REFUSE / CUT
    no chunk for a while (tap's clock)    tick()              → FORWARD the lookahead chunk
    end of the body                       await end()         → FORWARD the rest / REFUSE / CUT
    exchange over (always, in finally)    close(completed)    → accounting, exactly once

The session owns:

- **routing**: one route lookup (:mod:`sensor.exchange.routes`: mode, on_error, on_decode_limit,
  hold-back, thresholds), the resource key (:func:`~sensor.enforce.resource.resource_of`) and the
  client (:func:`~sensor.exchange.identity.client_address`);
- **registry checks**: a resource taken down is refused (451) before the upstream is asked (and a
  Host that is not the site's with 421, under ``site.unknown_host: refuse``); a body
  whose content fingerprint (:class:`~sensor.enforce.fingerprint.BodyPrint`) is taken down is
  refused (or cut, if bytes have left) on an enforce route;
- **hold-back** (enforce): the first ``holdback`` bytes are held until scanned, so a small leak
  never leaves (451 page, the head never left); past that each chunk is scanned before it is
  released and a trip is a CUT: the client sees a failed download (short of Content-Length, or no
  terminating chunk), never a complete-looking truncated file;
- **the end of a body is judged before its last bytes leave**: with a Content-Length the last
  read is known (the verdict is read then); without one the latest chunk is kept back
  (*lookahead*) until the next one arrives, or until the tap's patience runs out and it calls
  :meth:`~ExchangeSession.tick` (``LAST_CHUNK_PATIENCE``: a slow stream still flows), because a
  container (PDF, xlsx) is only judged at the end;
- **unframed bodies** (HTTP/1.0 client, no Content-Length, enforce): such a client cannot be told
  that a body was cut — the end of the connection is the end of the body, so a cut looks like a
  complete file. The body is held whole (memory, then a temporary file), scanned, and released at
  :meth:`~ExchangeSession.end` with its length (``Step.length``); past ``proxy.http10_buffer_mib``
  it is refused with 505 before the first byte (the client should speak HTTP/1.1);
- **monitor mode never holds a byte**: each chunk is released at once; its scan starts in the pool
  as it leaves (while the loop sends it and reads the next) and its verdict is read on the next
  call (or at the end), as if it were scanned then; a trip raises the alert and ledger entry but cuts nothing. With
  ``kafka.mirror`` on, a monitor exchange is published to the workers instead of scanned here; a
  full mirror queue (``overflow: local``) scans it here from that byte on;
- **the scan** (:meth:`Sensor.new_scan <sensor.runtime.Sensor.new_scan>`, with the detector the
  exchange started with), **off the event loop**: each write and the finish (a container's
  extraction included) run in the process's worker pool (:mod:`sensor.exchange.workers`,
  ``scan_workers``: one thread per core; 0 = on the loop), one job at a time per exchange and
  awaited, so the chunks of an exchange are scanned in order and every step above keeps its
  meaning; the loop moves other exchanges' bytes meanwhile. A handler cancelled while a job runs
  leaves it running: :meth:`close` accounts after it. A body of at most 16 KiB as sent is scanned
  on the loop (its trip to a thread costs more); **trip → takedown first**:
  ``await sensor.take_down(...)`` is durable before the REFUSE or CUT is answered (the print
  covers the bytes seen so far);
- **failures**: a decode limit follows ``on_decode_limit`` (closed: 503 before the first byte, CUT
  after; the exchange raises an alert either way); a scanner exception follows ``on_error``
  (closed: 503 / CUT; open: the rest passes unscanned);
- **ranges** (:mod:`sensor.exchange.ranges`, enforce): a range is served only of a version whose
  whole body was scanned clean (``Sensor.clean``, filled in :meth:`close`); otherwise the tap
  removes :attr:`upstream_drop` from its upstream request and the whole body is scanned and sent,
  and a ``206`` nobody can vouch for is refused 503 in :meth:`on_response`;
- **admission** (:mod:`sensor.exchange.admission`): the global and the per-client cap of scans in
  flight, 503 + ``Retry-After`` past them;
- **accounting**: :meth:`Sensor.finished <sensor.runtime.Sensor.finished>` exactly once per
  exchange, also when the client leaves or the tap's handler is cancelled; a container's final
  verdict read in a thread is shielded from that cancellation and accounted when it is in.

Chunks, not a byte string: ``Step.send`` holds the tap's own chunks (the objects it fed, in
order, none split or joined), so a tap that answers per message (ext_proc) maps each released
chunk back to one message.
"""
from __future__ import annotations

import asyncio
import logging
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from sensor.alerts.schema import AlertContext
from sensor.detect.scanner import ScanResult
from sensor.enforce.fingerprint import BodyPrint
from sensor.enforce.resource import host_allowed, public_url, resource_of
from sensor.exchange.identity import client_address
from sensor.exchange import ranges, workers
from sensor.exchange.routes import Route, route_for
from sensor.pipeline import BodyScan, Exchange

if TYPE_CHECKING:
    from sensor.runtime import Sensor

log = logging.getLogger("dlp_sensor.session")

FORWARD = "forward"     # send ``Step.send`` now (after the head, when ``Step.start``)
HOLD = "hold"           # nothing may leave yet
REFUSE = "refuse"       # answer ``status``/``body``/``headers`` instead of the response: nothing has left
CUT = "cut"             # bytes have left: end the response as a failure (abort), never a proper end
ACTIONS = (FORWARD, HOLD, REFUSE, CUT)

UNFRAMED_MEMORY = 1 << 20     # an HTTP/1.0 client's unframed body: held in memory up to this, then on disk
UNFRAMED_PIECE = 64 << 10     # and released in pieces this size
# The head waits while the scanner holds the body's first lines unread (at most 4 KiB of them), but
# not past this much held: a decoder that yields nothing for what it is sent (empty deflate blocks,
# a stream that idles after its first line) would have the body held whole in memory.
PENDING_HOLD = 256 << 10

T = TypeVar("T")
NO_STORE = ("Cache-Control", "no-store")
RETRY = ("Retry-After", "1")


@dataclass(frozen=True)
class Step:
    """What the tap does now. ``send`` is a tuple of the tap's chunks, except for an HTTP/1.0
    unframed body, which streams from its spool (``length`` is then its Content-Length).

    REFUSE and CUT carry the refusal (``status``, ``body``, ``headers``): a tap that has not really
    sent anything yet (ICAP still in its preview, ext_proc's immediate response) may answer it
    even for a CUT. ``reason`` is one word for logs and the request-duration metric's outcome.
    FAIL_CLOSED is not an action of its own: a route that fails closed answers REFUSE 503 before
    the first byte and CUT after (``reason``: ``uninspected``, ``scanner_error`` or ``overload``).
    """
    action: str
    send: Iterable[bytes] = ()
    start: bool = False
    status: int = 0
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    reason: str = ""
    length: int | None = None

    @property
    def stops(self) -> bool:
        return self.action in (REFUSE, CUT)


_HOLD = Step(HOLD)


class _Unframed:
    """A whole body kept for an HTTP/1.0 client (memory, then a temporary file), bounded."""

    def __init__(self, limit: int):
        self.limit = limit
        self.size = 0
        self.file = tempfile.SpooledTemporaryFile(max_size=UNFRAMED_MEMORY)

    def add(self, chunk: bytes) -> bool:
        """Keep ``chunk``; False when the body has grown past the limit."""
        self.size += len(chunk)
        if self.size > self.limit:
            return False
        self.file.write(chunk)
        return True

    def pieces(self, size: int = UNFRAMED_PIECE) -> Iterator[bytes]:
        self.file.seek(0)
        while piece := self.file.read(size):
            yield piece

    def close(self) -> None:
        self.file.close()


def _rest_of(scan: BodyScan, chunk: bytes | None) -> tuple[ScanResult | None, Exception | None]:
    """In the pool: the last chunk of a closed exchange, if one was left unscanned, then its result
    (ExchangeSession._finish_off). A failure of the chunk comes back for the loop to handle as
    _write_here would (no result then); one of the result raises."""
    if chunk is not None:
        try:
            workers.in_pieces(scan.write, chunk)
        except Exception as e:  # noqa: BLE001 - the route's on_error decides, on the loop
            return None, e
    return scan.finish(), None


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    """Lower-case keys; the first of repeated headers wins (as ``CIMultiDict.get``)."""
    out: dict[str, str] = {}
    for k, v in headers.items():
        out.setdefault(k.lower(), v)
    return out


class _NoPrint:
    """A monitor route's print: nothing to look up, nothing to record."""

    @staticmethod
    def feed(chunk: bytes) -> None:
        return None

    @staticmethod
    def finish() -> None:
        return None


_NO_PRINT = _NoPrint()


class ExchangeSession:
    """One exchange, request to accounting. Create it when the request head arrives; call
    :meth:`close` in a ``finally``. Not thread-safe: one exchange, one event loop."""

    def __init__(self, sensor: "Sensor", *, tap: str, method: str, scheme: str, host: str, target: str,
                 peer: str, headers: Mapping[str, str], http10: bool = False):
        """``target``: the request target (path and query, or an absolute URL); ``peer``: the
        connection's remote address (ICAP: the address the proxy reports; ext_proc: the one Envoy
        reports); ``headers``: the request's, as the tap has them (a multi-dict's repeated lines count); ``http10``: the client
        speaks HTTP/1.0 (its unframed bodies are held whole)."""
        self.sensor = sensor
        self.tap = tap
        self.detector = sensor.detector                 # the exchange keeps the detector it started with
        config = sensor.config
        parts = urlsplit(target)
        self.path = parts.path or "/"
        self.route: Route = route_for(config, self.detector.policy, self.path)
        self.enforce = self.route.enforce
        self.resource = resource_of(config, host, target)
        self.client = client_address(config, peer, headers)     # a multi-dict's repeated lines count
        self.url = target if parts.netloc else f"{scheme}://{host}{target}"
        self.host, self.target = host, target
        self.method = method
        self.ctx = AlertContext(exchange_id=uuid.uuid4().hex, sensor_id=config.sensor_id, resource=self.resource,
                                url=public_url(scheme, host, target), method=method, status=0,
                                client_ip=self.client, mode=self.route.mode,
                                action="cut_and_takedown" if self.enforce else "logged")
        self.http10 = http10
        # ranges (sensor.exchange.ranges): on an enforce route a range is served only of a body
        # scanned whole and clean; else the whole body is asked for, scanned and sent (200)
        self.range_key = parts.path + (f"?{parts.query}" if parts.query else "")
        self.range_plan = ranges.plan(sensor.clean, enforce=self.enforce, resource=self.resource,
                                      target=self.range_key, headers=headers)
        self.validator: str | None = None               # the response's (a clean 200 fills sensor.clean)
        # the body
        self.exchange: Exchange | None = None
        self.scan: BodyScan | None = None
        # monitor refuses nothing by content and takes nothing down: no print (its keyed hash of
        # every byte was ~7 % of a monitoring sidecar's CPU on a 100 MB download, bench/proxy.py)
        self.print = BodyPrint(sensor.key, sensor.registry, config.fingerprint_bytes) if self.enforce else _NO_PRINT
        self.mirrored = None                            # sensor.stream.mirror.MirroredExchange
        self.holdback = self.route.holdback
        self.content_length: int | None = None
        self.lookahead = False
        self.unframed: _Unframed | None = None
        self.held: list[bytes] = []                     # the hold-back, then (lookahead) the latest chunk
        self.held_n = 0
        self.unscanned: bytes | None = None             # monitor: released, scanned on the next call
        self.judge_only = False                         # the tap's client keeps its own copy (ICAP 204)
        self.received = 0
        # state
        self.started = False                            # the response head has left (or may leave)
        self.stopped: Step | None = None                # the REFUSE/CUT answered, if any
        self.accounted = False                          # refused at the request or admission: not an exchange
        self.closed = False
        self.unscanned_why: str | None = None   # overload / scanner-error: bytes left unscanned (open routes)
        self.result: ScanResult | None = None
        self.finishing: asyncio.Future | None = None    # a container's final verdict, read in a thread
        self.tripped_at: float | None = None
        self.scan_s = 0.0
        self._admitted = False
        # scan work runs in the process's worker pool (None: on the loop), one job at a time
        self.pool = workers.pool(config.scan_workers, config.scan_nice, config.scan_sched)
        self._busy: asyncio.Future | None = None        # the job in flight, if any (see close)
        self._ahead: asyncio.Future | None = None       # monitor: the released chunk's scan, not yet read
        self.closing: asyncio.Future | None = None      # the final verdict of a closed exchange (_finish_off)

    # -- request and response heads -----------------------------------------------------------
    def on_request(self) -> Step:
        """Before the upstream is asked: a Host that is not the site's (``site.unknown_host:
        refuse``) is refused with 421, a resource taken down with 451."""
        if not host_allowed(self.sensor.config, self.host, self.target):
            self.sensor.metrics.refusals.labels(reason="host").inc()    # no resource of the site: no ledger row
            return self._stop(421, "misdirected")
        if self.sensor.registry.blocked(self.resource) is not None:
            self.sensor.clean.forget(self.resource)      # taken down here or by the fleet/admin
            self.sensor.refused(self.resource, "resource")     # a refusal, not an exchange: no accounting
            return self._stop(451, "refused")
        return Step(FORWARD)

    @property
    def upstream_drop(self) -> frozenset[str]:
        """Request headers (lower case) the tap removes before asking the upstream: ``range`` and
        ``if-range`` when the whole body must be scanned first (no clean verdict for it yet)."""
        return frozenset(ranges.RANGE_HEADERS) if self.range_plan == ranges.WHOLE else frozenset()

    def ask_whole(self, status: int, headers: Mapping[str, str]) -> bool:
        """The upstream answered a range that was asked (a clean verdict was known) with a 206 of
        another version (or without a validator): forget the verdict and ask for the whole body.
        True when the tap should ask again without ``upstream_drop`` headers (a tap that cannot
        ask again just calls :meth:`on_response`, which refuses that 206)."""
        if self.range_plan != ranges.RANGED or status != 206:
            return False
        if ranges.range_allowed(self.sensor.clean, resource=self.resource, target=self.range_key, headers=headers):
            return False
        self.sensor.clean.forget(self.resource, self.range_key)
        self.range_plan = ranges.WHOLE
        return True

    def on_response(self, status: int, headers: Mapping[str, str], *, content_length: int | None = None,
                    has_body: bool = True, holdback_cap: int | None = None) -> Step:
        """The response head. ``content_length``: the body's length when the tap knows it ends
        there (then the last read is judged before it leaves; without it the lookahead applies);
        ``holdback_cap``: the most the tap's protocol lets it hold (ICAP's echo)."""
        s = self.sensor
        h = _lower(headers)
        ctx = self.ctx
        ctx.status = status
        ctx.partial = status == 206                     # only the range that was sent is scanned
        if ctx.partial:
            s.metrics.partial.inc()
        self.exchange = Exchange(url=self.url, method=self.method, status=status,
                                 content_type=h.get("content-type", ""),
                                 content_encoding=h.get("content-encoding", ""), client=self.client, path=self.path)
        if holdback_cap is not None:
            self.holdback = min(self.holdback, holdback_cap)
        if not has_body:
            self.started = True
            return Step(FORWARD, start=True)
        self.validator = ranges.validator_of(status, headers)
        if status == 206 and self.enforce and not ranges.range_allowed(
                s.clean, resource=self.resource, target=self.range_key, headers=headers):
            # part of a body never scanned whole (or of another version): a scan of the part cannot
            # judge the whole, so it does not leave (nothing of it is sent)
            s.metrics.failures.labels(reason="unverified_range", action="closed").inc()
            log.warning("exchange %s refused: a 206 of a body not scanned whole and clean", ctx.exchange_id)
            ctx.action = "refused_unverified_range"
            self.unscanned_why = "unverified-range"
            return self._stop(503, "unverified_range")
        refusal = s.admission.refusal(self.client, s.config.proxy.max_scans, s.config.proxy.max_scans_per_client)
        if refusal == "client":
            s.metrics.failures.labels(reason="client_overload", action="closed").inc()
            log.warning("exchange %s refused: this client has %d scans in flight", ctx.exchange_id,
                        s.config.proxy.max_scans_per_client)
            self.accounted = True
            return self._stop(503, "overload")
        if refusal == "global":
            s.metrics.failures.labels(reason="overload", action=self.route.on_error).inc()
            if self.route.on_error == "closed":
                self.accounted = True
                s.unscanned.add(ctx, "overload-refused")    # saturation is the SOC's to hear, not only a metric
                return self._stop(503, "overload")
            self.unscanned_why = "overload"             # the body leaves unscanned: the SOC hears of it
        elif not self.enforce and s.mirror is not None:
            self.mirrored = s.mirror.open(ctx, self.exchange)     # the workers scan it
            if self.mirrored is None and s.mirror.k.overflow == "local":
                self._start_scan()
        else:
            self._start_scan()
        self.content_length = content_length
        if self.enforce:
            self.lookahead = content_length is None
            if content_length is None and self.http10:
                self.unframed = _Unframed(s.config.proxy.http10_buffer)
                self.lookahead = False
                return _HOLD
            if self.holdback > 0:
                return _HOLD                            # the head waits for the hold-back's scan
        self.started = True
        return Step(FORWARD, start=True)

    def _start_scan(self) -> None:
        assert self.exchange is not None
        self.scan = self.sensor.new_scan(self.exchange, stop_on_trip=self.enforce, detector=self.detector,
                                         policy=self.route.policy)   # monitor: count every record that left
        self.sensor.admission.enter(self.client)
        self.sensor.metrics.active_exchanges.inc()
        self._admitted = True

    def _drop_scan(self) -> None:
        if self._admitted:
            self._admitted = False
            self.sensor.admission.leave(self.client)
            self.sensor.metrics.active_exchanges.dec()

    def keep_nothing(self) -> None:
        """The tap's client keeps its own copy of the body (ICAP ``204``): judge it, hold nothing,
        release nothing; :meth:`end` answers FORWARD (the copy may go) or a refusal."""
        self.judge_only = True
        self.held.clear()
        self.held_n = 0

    # -- the body -----------------------------------------------------------------------------
    async def feed(self, chunk: bytes, *, last: bool = False) -> Step:
        """One body chunk, in order. Answers what may leave now. ``last``: the tap knows that the
        body ends with this chunk (ext_proc's ``end_of_stream``): nothing is released before
        :meth:`end`, which the tap calls next, has judged the whole body."""
        if self.stopped is not None:
            return self.stopped
        self.received += len(chunk)
        if (stop := await self._scan_unscanned()) is not None:
            return stop
        if self.print.feed(chunk) is not None and self.enforce:
            return self._content_taken_down()
        if not self.enforce:
            return self._monitor(chunk)
        if self.scan is not None:
            verdict = await self._write(chunk)
            if (self.scan is not None and verdict != "trip" and self.content_length is not None
                    and self.received >= self.content_length):
                # the last bytes of a Content-Length body: decide before they leave, or the client
                # would hold a complete file when the final record trips
                verdict = (await self._final()).verdict
            if (stop := await self._judge(verdict)) is not None:
                return stop
        return self._release(chunk, last)

    def _monitor(self, chunk: bytes) -> Step:
        """Monitor: the chunk leaves now and is scanned on the next call (scanning holds nothing)."""
        if self.mirrored is not None and not self.mirrored.write(chunk):
            self.mirrored = None                        # the queue is full: overflow mid-body
            if self.sensor.mirror.k.overflow == "local":
                self._start_scan()
                assert self.scan is not None
                self.scan.notes.append(f"mirror-overflow: scanned here from byte {self.received - len(chunk)}")
        if self.scan is not None:
            if self.pool is not None and not self._small():
                # its scan starts now, in the pool, while the loop sends it and reads the next one;
                # the verdict is read on the next call, as an unscanned chunk's would be
                self._ahead = self._submit(workers.in_pieces, self.scan.write, chunk)
            else:
                self.unscanned = chunk
        self.ctx.bytes_sent += len(chunk)
        if self.judge_only:
            return _HOLD
        return Step(FORWARD, send=(chunk,))

    async def _scan_unscanned(self) -> Step | None:
        """Monitor: scan the chunk released last time (a trip there cuts nothing; a failure may),
        or read the verdict of its scan started when it was released (``_ahead``)."""
        if self._ahead is not None:
            try:
                verdict, seconds = await asyncio.shield(self._ahead)
                self.scan_s += seconds
            except Exception:
                verdict = self._scan_failed("internal")
            self._ahead = None
            return await self._judge(verdict)
        if self.unscanned is None:
            return None
        chunk, self.unscanned = self.unscanned, None
        if self.scan is None:
            return None
        return await self._judge(await self._write(chunk))

    async def _off(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` — scan work — in the worker pool, the loop free meanwhile (on the loop when
        there is no pool). One job at a time: the caller awaits it, and a handler cancelled meanwhile
        leaves the job running (shielded); :meth:`close` then waits for it before touching the scan."""
        if self.pool is None or self._small():
            t = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.scan_s += time.perf_counter() - t
        job = self._submit(fn, *args)
        value, seconds = await asyncio.shield(job)
        self.scan_s += seconds
        return value

    def _submit(self, fn: Callable[..., T], *args: object) -> "asyncio.Future[tuple[T, float]]":
        """Start ``fn(*args)`` in the pool (the exchange's one job in flight: ``_busy``)."""
        assert self.pool is not None
        job = workers.submit(self.pool, fn, *args)
        self._busy = job
        return job

    def _small(self) -> bool:
        """Scan work smaller than its trip to a thread: a body of at most ``workers.INLINE_BYTES``
        so far, scanned as sent (no Content-Encoding to inflate, no container to extract)."""
        return (self.received <= workers.INLINE_BYTES and self.scan is not None and self.exchange is not None
                and not self.exchange.content_encoding and not self.scan.needs_prepare)

    async def _write(self, chunk: bytes) -> str:
        assert self.scan is not None
        try:
            return await self._off(workers.in_pieces, self.scan.write, chunk)
        except Exception:
            return self._scan_failed("internal")

    def _write_here(self, chunk: bytes) -> str:
        """:meth:`_write` on the calling thread (close() never awaits)."""
        assert self.scan is not None
        t = time.perf_counter()
        try:
            return self.scan.write(chunk)
        except Exception:
            return self._scan_failed("internal")
        finally:
            self.scan_s += time.perf_counter() - t

    def _scan_failed(self, reason: str) -> str:
        """The scanner raised: the route's on_error decides (closed: refuse/cut; open: the rest passes)."""
        on_error = self.route.on_error
        self.sensor.metrics.failures.labels(reason=reason, action=on_error).inc()
        log.exception("scanner failed on exchange %s; route says fail-%s", self.ctx.exchange_id, on_error)
        self.scan = None
        self._drop_scan()
        if on_error != "closed":
            self.unscanned_why = "scanner-error"        # the rest of the body leaves unscanned
        return "fail-closed" if on_error == "closed" else "pass"

    async def _judge(self, verdict: str) -> Step | None:
        """The step a verdict forces, or None when the body may go on."""
        if verdict == "trip":
            if self.tripped_at is None:
                self.tripped_at = time.perf_counter()
                if self.enforce:
                    return await self._trip()
            return None
        if verdict == "fail-closed":
            return self._stop(503, "scanner_error")
        if (self.route.on_decode_limit == "closed" and self.scan is not None
                and self.scan.uninspected is not None):
            return self._uninspected()
        return None

    def _release(self, chunk: bytes, last: bool) -> Step:
        """Enforce, the chunk judged clean: hold it, or release what may go now."""
        if self.judge_only:
            return _HOLD
        if self.unframed is not None:
            if not self.unframed.add(chunk):
                log.warning("exchange %s refused: an unframed body for an HTTP/1.0 client grew past %d bytes",
                            self.ctx.exchange_id, self.unframed.limit)
                return self._stop(505, "http10_too_large")
            return _HOLD
        self.held.append(chunk)
        self.held_n += len(chunk)
        if last or (not self.started and self.held_n < self.holdback) or self._head_unread():
            return _HOLD            # the head waits for the hold-back, and until the scanner has read it
        return self._let_go(keep=1 if self.lookahead else 0)

    def _let_go(self, keep: int = 0, *, final: bool = False) -> Step:
        """Release the held chunks but the last ``keep`` (the head first, if it has not left)."""
        cut = len(self.held) - keep
        send, self.held = tuple(self.held[:cut]), self.held[cut:]
        self.held_n = sum(map(len, self.held))
        start = not self.started
        self.started = True
        if not send and not start and not final:
            return _HOLD
        return self._sent(Step(FORWARD, send=send, start=start))

    def _sent(self, step: Step) -> Step:
        self.ctx.bytes_sent += sum(len(c) for c in step.send)
        return step

    def tick(self, *, holdback_too: bool = False) -> Step:
        """The tap's patience ran out waiting for the next chunk: release the lookahead chunk (a
        slow stream still flows). ``holdback_too``: the protocol cannot wait longer for the head
        either (ext_proc's message timeout), so the hold-back goes as well, and the first lines the
        scanner has not read yet: else they wait for it too (with ``holdback_kib: 0`` a roster sent
        a row at a time left 15 rows before any was read)."""
        if self.stopped is not None:
            return self.stopped
        if self.judge_only or self.unframed is not None or (not self.started and not holdback_too):
            return _HOLD
        if not holdback_too and self._head_unread():
            return _HOLD
        return self._let_go()

    def _head_unread(self) -> bool:
        """The scanner holds the body's first lines unread (at most 4 KiB), and waiting for them
        holds less than PENDING_HOLD."""
        return self.scan is not None and bool(self.scan.pending) and self.held_n < PENDING_HOLD

    @property
    def holding(self) -> bool:
        """Something waits for the tap: the head (enforce hold-back) or a lookahead chunk."""
        return self.stopped is None and not self.judge_only and (not self.started or bool(self.held))

    @property
    def slow_end(self) -> bool:
        """Whether the final verdict will be read from a container in a thread (may take seconds)."""
        return (self.scan is not None and self.result is None and self.stopped is None
                and self.tripped_at is None and self.scan.needs_prepare)

    async def end(self) -> Step:
        """The body is complete: the final verdict, then the last bytes (or the refusal/cut)."""
        if self.stopped is not None:
            return self.stopped
        if (stop := await self._scan_unscanned()) is not None:
            return stop
        if self.scan is not None and self.result is None:
            if (stop := await self._judge((await self._final()).verdict)) is not None:
                return stop
        if self.enforce and self.print.finish() is not None:      # a body shorter than the print
            return self._content_taken_down()
        if self.judge_only:
            self.ctx.bytes_sent = self.received         # the client sends its own copy
            return Step(FORWARD, start=not self.started)
        if self.unframed is not None:
            started, self.started = self.started, True
            self.ctx.bytes_sent += self.unframed.size   # the HTTP/1.0 client can tell a cut from the end
            return Step(FORWARD, send=self.unframed.pieces(), start=not started, length=self.unframed.size)
        return self._let_go(final=True)

    async def _final(self) -> ScanResult:
        """The final verdict. Read in the worker pool (a container is extracted there too), or, with
        no pool, a container's in a thread (``finish_async``): either way as a task the tap's handler
        awaits shielded: a client that leaves right after its last byte cancels the handler, and the
        verdict must still be read and counted (:meth:`close`)."""
        assert self.scan is not None
        if self.pool is not None:
            self.finishing = asyncio.ensure_future(self._off(self.scan.finish_all))
            self.result = await asyncio.shield(self.finishing)
            return self.result
        t = time.perf_counter()
        try:
            if self.scan.needs_prepare:
                self.finishing = asyncio.ensure_future(self.scan.finish_async())
                self.result = await asyncio.shield(self.finishing)
            else:
                self.result = await self.scan.finish_async()
        finally:
            self.scan_s += time.perf_counter() - t
        return self.result

    # -- stopping -----------------------------------------------------------------------------
    async def _trip(self) -> Step:
        """An enforced trip: take down — durably, with the print of the bytes seen — then refuse or cut."""
        assert self.tripped_at is not None
        if self.result is None and self.scan is not None:
            self.result = await self._off(self.scan.finish)     # the scan stops at a trip: its counts go with the takedown
        await self.sensor.take_down(self.ctx, self.print.value(), self.tripped_at, result=self.result)
        return self._stop(451, "tripped")

    def _content_taken_down(self) -> Step:
        self.sensor.refused(self.resource, "content")
        return self._stop(451, "refused")

    def _uninspected(self) -> Step:
        """The route fails closed on a body it could not fully inspect: 503 if nothing has left,
        else the cut. The alert (verdict ``alert``, note ``uninspected:``) comes with the accounting."""
        assert self.scan is not None
        self.sensor.metrics.failures.labels(reason="decode_limit", action="closed").inc()
        log.warning("exchange %s not fully inspected (%s): %s, route fails closed", self.ctx.exchange_id,
                    self.scan.uninspected, "cut" if self.started else "refused")
        self.ctx.action = "cut_uninspected" if self.started else "refused_uninspected"
        return self._stop(503, "uninspected")

    def _stop(self, status: int, reason: str) -> Step:
        """REFUSE (nothing has left) or CUT, with the refusal a tap may still answer."""
        body, headers = self._page(status, reason)
        self.stopped = Step(CUT if self.started else REFUSE, status=status, body=body, headers=headers, reason=reason)
        self.held, self.held_n = [], 0
        return self.stopped

    def _page(self, status: int, reason: str) -> tuple[bytes, tuple[tuple[str, str], ...]]:
        if status == 451:
            return self.sensor.block_page(), (("Content-Type", "text/html"), NO_STORE)
        text = {"uninspected": "response could not be fully inspected", "scanner_error": "scanner unavailable",
                "overload": "scanner overloaded", "http10_too_large": "this response needs HTTP/1.1",
                "misdirected": "this server does not serve that host",
                "unverified_range": "this range cannot be served before the whole body is scanned"}.get(reason, HTTPStatus(status).phrase)
        retry = (RETRY,) if reason in ("scanner_error", "overload", "unverified_range") else ()
        return (text + "\n").encode(), (("Content-Type", "text/plain; charset=utf-8"), NO_STORE, *retry)

    # -- accounting ---------------------------------------------------------------------------
    def close(self, completed: bool) -> None:
        """The exchange is over (call it in a ``finally``): accounting, exactly once. ``completed``:
        the response ended properly (not cut, not abandoned)."""
        if self.closed:
            return
        self.closed = True
        if (not completed and not self.enforce and self.stopped is None and self.content_length is not None
                and self.ctx.bytes_sent >= self.content_length):
            # monitor: every byte of a Content-Length body had left before the final scan (in the pool)
            # was in; a client that closes then, as it may, has the whole file: a completed download
            completed = True
        if self._busy is not None and not self._busy.done() and self.finishing is None:
            # the handler was cancelled while a chunk was being scanned: the scan is the job's
            # until it returns; the accounting follows it
            self._busy.add_done_callback(lambda _: self._close(completed, deferred=True))
            return
        self._close(completed)

    def _close(self, completed: bool, deferred: bool = False) -> None:
        """``deferred``: called when the job that was in flight at :meth:`close` returned; the
        accounting is already late then, and the rest of the scan goes to the pool (_finish_off)."""
        if self.unframed is not None:
            self.unframed.close()
        late = False                                    # accounting deferred to the end of ``finishing``
        try:
            if self.mirrored is not None:
                self.mirrored.end(completed=completed, sent=self.ctx.bytes_sent)
            if self._ahead is not None and self._ahead.done():
                self._reap_ahead()                      # the client left before its verdict was read
            if self.scan is not None:
                if self.result is None and self.finishing is not None:
                    # the client left (the handler is cancelled) while the verdict was being read,
                    # typically right after the last byte: the verdict still counts, when it is in;
                    # the exchange holds its scan slot (and stays active) until then
                    self.finishing.add_done_callback(lambda f, sc=self.scan, done=completed: self._late(f, sc, done))
                    late = True
                elif deferred and self.result is None and self._finish_off(completed):
                    late = True                         # the rest is scanned in the pool (_finish_off)
                else:
                    self._drop_scan()
                if not late and self.result is None:
                    if self.unscanned is not None:      # monitor: the last chunk left; it counts
                        chunk, self.unscanned = self.unscanned, None
                        self._write_here(chunk)
                    if self.scan is not None:
                        t = time.perf_counter()
                        self.result = self.scan.finish()    # no pool: inline (close() never awaits)
                        self.scan_s += time.perf_counter() - t
            if not late and not self.accounted and self.exchange is not None:   # no response: no exchange
                self.accounted = True
                self.sensor.finished(self.ctx, self.result, tap=self.tap, completed=completed,
                                     scan_seconds=self.scan_s, mirrored=self.mirrored is not None,
                                     unscanned=self._unscanned(self.result))
                self._remember_clean(completed)
        except Exception:                               # accounting must never break the data path
            log.exception("accounting for exchange %s failed", self.ctx.exchange_id)

    def _reap_ahead(self) -> None:
        """The outcome of a released chunk's scan nobody awaited (the exchange closed first): its
        time counts, and a failure is handled as :meth:`_write` would (the route's on_error)."""
        assert self._ahead is not None
        job, self._ahead = self._ahead, None
        if job.cancelled():
            return
        if (error := job.exception()) is not None:
            try:
                raise error
            except Exception:
                self._scan_failed("internal")
            return
        self.scan_s += job.result()[1]

    def _finish_off(self, completed: bool) -> bool:
        """The scan of an exchange closed while a job was in flight and before its final verdict
        (typically a monitored download whose client left with the last bytes while the scan lagged
        behind): its last chunk and :meth:`BodyScan.finish` as one job in the pool, accounted when it
        returns (``_late``); False with no pool or no running loop (then :meth:`_close` does it
        inline, as it does for an exchange closed with no job in flight: accounted at once).

        Why not inline: on the loop, a dense chunk and the result (closing the streams, the last
        records, a dozen HyperLogLog estimates) kept every other client waiting ~10 ms per dense
        download (py-spy on the sidecar: the loop's largest block during the leak)."""
        if self.pool is None or self.scan is None:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        chunk, self.unscanned = self.unscanned, None     # monitor: the last chunk left; it counts
        scan = self.scan
        job = self._submit(_rest_of, scan, chunk)
        self.closing = loop.create_future()

        def done(f: asyncio.Future) -> None:
            assert self.closing is not None
            if f.cancelled():
                self.closing.cancel()
            elif f.exception() is not None:
                self.closing.set_exception(f.exception())
            else:
                (result, failed), seconds = f.result()
                self.scan_s += seconds
                if failed is not None:                  # the last chunk raised, as _write_here handles it
                    try:
                        raise failed
                    except Exception:
                        self._scan_failed("internal")
                self.closing.set_result(result)
            self._late(self.closing, scan, completed)
        job.add_done_callback(done)
        return True

    def _unscanned(self, result: ScanResult | None) -> str | None:
        """Why bytes of this exchange left without being scanned, if they did (an alert says so)."""
        if self.unscanned_why is not None:
            return self.unscanned_why
        if result is not None and self.route.on_decode_limit != "closed" and any(
                n.startswith("uninspected:") for n in result.notes):
            return "decode-limit"
        return None

    def _remember_clean(self, completed: bool) -> None:
        """A full representation scanned whole and clean on an enforce route: its later ranges may
        be served as ranges (sensor.exchange.ranges)."""
        r = self.result
        if (self.enforce and completed and self.validator is not None and self.ctx.status == 200
                and self.method == "GET" and r is not None and r.verdict == "pass" and self.stopped is None
                and self.tripped_at is None and (self.content_length is None or self.received >= self.content_length)):
            self.sensor.clean.remember(self.resource, self.range_key, self.validator)

    def _late(self, fut: asyncio.Future, scan: BodyScan, completed: bool) -> None:
        try:
            result = fut.result() if not fut.cancelled() and fut.exception() is None else scan.finish()
            if not self.accounted:
                self.accounted = True
                self.result = result
                self.sensor.finished(self.ctx, result, tap=self.tap, completed=completed, scan_seconds=self.scan_s,
                                     unscanned=self._unscanned(result))
                self._remember_clean(completed)
        except Exception:                               # accounting must never break the data path
            log.exception("accounting for exchange %s failed", self.ctx.exchange_id)
        finally:
            self._drop_scan()                           # active until accounted (see _close)
