"""One body, start to verdict: Content-Encoding decoders -> container sniffer -> stream scanner.

Every tap (and the ``scan`` CLI) turns its protocol into an :class:`Exchange` plus body chunks
and drives a :class:`BodyScan`; nothing right of here knows where the bytes came from. Decoding
problems never escape: they become notes on the result and decoding of that body stops.

A decode *limit* (output size, ratio, depth, members) means the body could not be fully
inspected: :attr:`BodyScan.uninspected` says why, the taps apply the route's
``on_decode_limit`` (cut or refuse when closed), and a body that would otherwise pass is given the
verdict ``alert`` with an ``uninspected:`` note, so the SOC hears of it (not only a metric).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sensor.decode.containers import CompressedFile, Sniffer, Spool
from sensor.decode.encodings import chain, parse_content_encoding
from sensor.decode.limits import Budget, DecodeLimits, DecodeProblem, LimitExceeded
from sensor.decode.text import declared_charset
from sensor.detect.engine import Engine
from sensor.detect.policy import Policy
from sensor.detect.scanner import ExchangeScanner, ScanResult

SCAN_SLICE = 64 << 10     # text scanned between loop turns: ~13 ms of dense PII at ~5 MB/s


@dataclass
class Exchange:
    """What a tap knows about one response, whatever the protocol."""
    url: str = ""
    method: str = "GET"
    status: int = 200
    content_type: str = ""
    content_encoding: str = ""
    client: str = ""
    path: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _mode_for(content_type: str) -> str | None:
    ct = content_type.split(";")[0].strip().lower()
    if ct.endswith("json") or ct.endswith("+json"):
        return "json"
    if ct in ("text/html", "application/xhtml+xml"):
        return "html"
    if ct.startswith("text/"):
        return "lines"
    return None


class BodyScan:
    """Drive one body through decode and detect; read ``verdict`` after any :meth:`write`."""

    def __init__(self, engine: Engine, policy: Policy, *, key: bytes, exchange: Exchange | None = None,
                 limits: DecodeLimits | None = None, stop_on_trip: bool = False, scratch=None, edm=None):
        self.exchange = exchange or Exchange()
        self.policy = policy.for_path(self.exchange.path)
        self.scanner = ExchangeScanner(engine, self.policy, key=key, scratch=scratch, stop_on_trip=stop_on_trip,
                                       mode=_mode_for(self.exchange.content_type), edm=edm)
        self.notes: list[str] = []
        self.budget = Budget(limits or DecodeLimits())
        self.received = 0
        self.stopped = False        # decoding gave up (limit or corrupt input); see notes
        self.uninspected: str | None = None     # the decode limit that left part of the body unread
        scanner = self.scanner      # not self: body -> sniffer -> stop -> body would be a reference cycle
        stop = (lambda: scanner.verdict == "trip") if stop_on_trip else (lambda: False)
        self.sniffer = Sniffer(self.scanner, self.budget, 0, None, self.notes, stop,
                               charset=declared_charset(self.exchange.content_type))
        self._top = self.sniffer
        self._stages: list = []
        try:
            self._top, self._stages = chain(parse_content_encoding(self.exchange.content_encoding),
                                            self.sniffer, self.budget)
        except DecodeProblem as e:
            self._stop(e)

    @property
    def verdict(self) -> str:
        return self.scanner.verdict

    def _stop(self, e: DecodeProblem) -> None:
        self.stopped = True
        self.scanner.read_head()        # nothing more reaches it: else ``pending`` held the body whole
        self.notes.append(e.note)
        if isinstance(e, LimitExceeded) and self.uninspected is None:
            self.uninspected = e.note.split(" ")[0]       # e.g. decode-limit:ratio (no body bytes)

    def write(self, data: bytes) -> str:
        self.received += len(data)
        self.budget.received += len(data)
        if not self.stopped and data:
            try:
                self._top.write(data)
            except DecodeProblem as e:
                self._stop(e)
        return self.scanner.verdict

    def _container(self) -> tuple[Spool | None, list]:
        """The container this body ends in, if it is one that is read whole (zip, xlsx, docx, odf,
        PDF, Parquet, Arrow), as sent, under a Content-Encoding or inside gzip/zstd/xz/bzip2 files;
        and the decoders in front of it, outermost first."""
        decoders = list(reversed(self._stages))
        route = self.sniffer.route
        while isinstance(route, CompressedFile):
            decoders.append(route)
            route = route.sink.route
        return (route, decoders) if isinstance(route, Spool) else (None, [])

    @property
    def pending(self) -> int:
        """Bytes the scanner holds but has not scanned yet: a part's first lines, until it can tell
        what they are (sensor.detect.scanner, ``_pre``), or the first bytes of the body the sniffer
        holds until it can route them (``SNIFF_HEAD``, 64): a first read shorter than that reached
        no scanner, and left unscanned. Their verdict is still to come."""
        if self.sniffer.route is None and not self.stopped:
            return self.sniffer.held
        return self.scanner.pending

    @property
    def needs_prepare(self) -> bool:
        """Whether :meth:`prepare` has slow work to do off the event loop."""
        spool, _ = self._container()
        return spool is not None and not spool.extracted and not self.stopped

    def prepare(self) -> None:
        """The slow part of finishing that touches no Hyperscan state: safe in a worker thread
        while the event loop scans other exchanges. Call once the body is complete. The decoders
        in front of the container are drained into it first (its route is fixed: nothing they
        emit can reach the scanner); their problems are raised here, as :meth:`finish` would."""
        spool, decoders = self._container()
        if spool is None or spool.extracted or self.stopped:
            return
        for d in decoders:
            d.drain()
        spool.extract()

    async def finish_async(self) -> ScanResult:
        """:meth:`finish`, with :meth:`prepare` in a thread when it has work, and what it read
        scanned in slices with the event loop given back between them (taps call this)."""
        if self.needs_prepare:
            spool, _ = self._container()
            try:
                await asyncio.to_thread(self.prepare)
                while not self.stopped and not self.sniffer.stop() and spool.scan_some(SCAN_SLICE):
                    await asyncio.sleep(0)
            except DecodeProblem as e:
                self._stop(e)
        return self.finish()

    def finish_all(self) -> ScanResult:
        """:meth:`finish_async` in one blocking call, for a worker thread (sensor.exchange.workers):
        the container is extracted and what it read scanned there, then the scan is finished."""
        if self.needs_prepare:
            spool, _ = self._container()
            try:
                self.prepare()
                while not self.stopped and not self.sniffer.stop() and spool.scan_some(SCAN_SLICE):
                    pass
            except DecodeProblem as e:
                self._stop(e)
        return self.finish()

    def finish(self) -> ScanResult:
        if not self.stopped:
            try:
                self._top.close()
            except DecodeProblem as e:
                self._stop(e)
        if self.stopped:
            self.sniffer.salvage()     # base64 documents decoded before the stop are still scanned
        for st in self._stages:
            if getattr(st, "truncated", False):
                self.notes.append(f"truncated:{st.name} (stream ended early; scanned what arrived)")
        result = self.scanner.finish()
        result.bytes = self.received
        if self.sniffer.kind not in ("text", "unknown"):
            result.notes.insert(0, f"container:{self.sniffer.kind}")
        result.notes.extend(self.notes)
        if self.uninspected is not None:
            result.notes.append(f"uninspected:{self.uninspected} (the body was not fully inspected)")
            if result.verdict == "pass":
                result.verdict = "alert"            # the SOC hears of it, not only a metric
        return result
