"""One scanner per exchange: Hyperscan stream mode, validators, context, records, streaming verdict.

Why it is shaped like this (all measured in bench/engine.py):

- Hyperscan runs in stream mode, so a value split across two chunks is still one match; the
  callback only appends ``(id, end)`` — every Python instruction in it is paid per match.
- Matches are processed per chunk, against ``tail + chunk`` (the tail keeps the bytes a value or
  its hotword may need from the previous chunk).
- Start of match is ``end - width`` for fixed-width patterns, and a short end-anchored Python
  ``re`` search for variable-width ones: cheaper than Hyperscan SOM over the whole pack.
- Records (values of one person) are found lazily: the nearest line start / JSON element / HTML
  row before the value, computed with C-speed ``rfind`` only when there is a value to place.
"""
from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, field
from typing import Any

import hyperscan as hs

from sensor.detect.engine import CAT_BITS, Engine, PatInfo
from sensor.detect.keys import fingerprint, redact
from sensor.detect.policy import Policy

STRONG = CAT_BITS["strong"]
QUASI = CAT_BITS["quasi"]
CONTACT = CAT_BITS["contact"]
_FAR = -(1 << 60)
SAMPLES_PER_SIGNATURE = 3
DISTINCT_CAP = 1_000_000          # per signature; beyond it counts stop being exact (noted)
_HTML_ROW_TAGS = (b"<tr", b"<TR", b"<li", b"<LI", b"<p>", b"<P>", b"<br", b"<BR", b"</div", b"</DIV")
MODES = ("lines", "json", "html")
_HS_CTX = object()   # a live, truthy context object for every Hyperscan call (see open_stream)


def open_stream(db: hs.Database, handler: object) -> hs.Stream:
    """Open a Hyperscan stream outside a ``with`` block.

    hyperscan 0.9.1's ``Stream.__enter__`` returns ``self`` without a new reference (the caller's
    reference is stolen), so calling it and dropping the result frees the stream under us. One
    explicit incref balances the stolen reference; the stream is then freed normally with us.
    The stream also borrows (does not own) its database, handler and context, and leaves the
    context uninitialised unless one is given: callers keep all three alive.
    """
    st = hs.Stream(database=db, match_event_handler=handler, context=_HS_CTX)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(st))
    st.__enter__()
    return st


@dataclass
class Sample:
    redacted: str
    fingerprint: str


@dataclass
class ScanResult:
    verdict: str = "pass"
    records: int = 0
    strong_records: int = 0
    person_records: int = 0
    findings: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    bytes: int = 0
    decoded_bytes: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    trip_at_byte: int | None = None        # decoded bytes consumed when the verdict became trip

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "records": self.records, "strong_records": self.strong_records,
                "person_records": self.person_records, "findings": dict(sorted(self.findings.items())),
                "samples": {k: [s.__dict__ for s in v] for k, v in sorted(self.samples.items())},
                "bytes": self.bytes, "decoded_bytes": self.decoded_bytes,
                "seconds": round(self.seconds, 6), "notes": list(self.notes)}


class ExchangeScanner:
    """Feed decoded body bytes with :meth:`feed`; read :attr:`verdict` after any chunk.

    A body may be made of *parts* (members of a zip, for instance): :meth:`begin_part` starts a
    fresh Hyperscan stream and record/header state, while distinct values and records accumulate.
    """

    def __init__(self, engine: Engine, policy: Policy, *, key: bytes, scratch: hs.Scratch | None = None,
                 stop_on_trip: bool = False):
        self.engine = engine
        self.policy = policy
        self.key = key
        self.scratch = scratch or engine.db.scratch
        self.stop_on_trip = stop_on_trip
        self._sigs = engine.signatures
        self._pats = engine.patterns
        self._nval = engine.n_values
        self._hot_base = engine.hot_base
        self._delim_base = engine.delim_base
        self._hot_sig = engine.hot_sig
        self._tail_len = max(4096, engine.max_width + 64)
        n = len(self._sigs)
        allow = policy.allow
        self._ignored = [s.id in allow for s in self._sigs]
        self._kind_name = [s.kind == "name" for s in self._sigs]
        self._kind_place = [s.kind in ("dob", "address") for s in self._sigs]
        self._distinct: list[set[int]] = [set() for _ in range(n)]
        self._samples: list[list[Sample]] = [[] for _ in range(n)]
        self._strong_recs: set[int] = set()
        self._person_recs: set[int] = set()
        self._all_recs: set[int] = set()
        self._strong_values = 0
        self._contact_values = 0
        self.result = ScanResult()
        self.verdict = "pass"
        self._hits: list[tuple[int, int]] = []
        append = self._hits.append

        def on_match(i: int, start: int, end: int, flags: int, ctx: object) -> None:
            append((i, end))

        self._on_match = on_match        # the stream does not keep the callback alive: we do
        self._stream: hs.Stream | None = None
        self._t0 = time.perf_counter()
        self._capped = False
        self.begin_part()

    # -- parts ----------------------------------------------------------------------------
    def begin_part(self, mode: str | None = None, name: str | None = None) -> None:
        """Start a new independent byte stream (new file in an archive, new body)."""
        if self._stream is not None:
            self._close_stream()
        self._stream = open_stream(self.engine.db, self._on_match)
        self._mode = mode             # None = sniff from the first bytes
        self._pos = 0
        self._tail = b""
        self._line_start = -1         # abs offset of the newline before the current line
        self._json_rec = -1
        self._rec_key = None
        self._rec: list[tuple[PatInfo, int, bool, int, bytes | None]] = []
        self._last_hot = [_FAR] * len(self._sigs)
        self._delim = b","
        self._col_sigs: dict[int, set[int]] = {}
        self._th_cols: dict[int, set[int]] = {}

    def _sniff(self, data: bytes) -> None:
        head = data[:4096].lstrip()
        low = head[:512].lower()
        if head[:1] in (b"{", b"[") and self._mode is None:
            self._mode = "json"
        elif self._mode is None and (low.startswith(b"<!doctype html") or b"<html" in low
                                     or b"<table" in low or low.startswith(b"<?xml")):
            self._mode = "html"
        elif self._mode is None:
            self._mode = "lines"
        first = head.split(b"\n", 1)[0]
        cands = {d: first.count(d) for d in (b",", b"\t", b";", b"|")}
        self._delim = max(cands, key=lambda d: cands[d]) if max(cands.values()) else b","

    # -- feeding ----------------------------------------------------------------------------
    def feed(self, data: bytes) -> str:
        if not data or (self.stop_on_trip and self.verdict == "trip"):
            return self.verdict
        if self._mode is None or self._pos == 0:
            self._sniff(data)
        self._hits.clear()
        self._stream.scan(data, scratch=self.scratch, match_event_handler=self._on_match, context=_HS_CTX)
        base = self._pos - len(self._tail)
        buf = self._tail + data if self._hits else b""
        self._pos += len(data)
        self.result.decoded_bytes += len(data)
        if self._hits:
            self._process(buf, base)
        nl = data.rfind(b"\n")
        if nl >= 0:
            self._line_start = self._pos - len(data) + nl
        if len(data) >= self._tail_len:
            self._tail = data[-self._tail_len:]
        else:
            self._tail = (self._tail + data)[-self._tail_len:]
        self._decide()
        return self.verdict

    def _close_stream(self) -> None:
        self._hits.clear()
        try:
            # Never pass scratch= to close(): hyperscan 0.9.1 swaps the O! converter's arguments there
            # and corrupts memory. Without it close() uses the database's own scratch.
            self._stream.close(match_event_handler=self._on_match, context=_HS_CTX)
        except hs.error:
            pass
        if self._hits:
            base = self._pos - len(self._tail)
            self._process(self._tail, base)
        self._finish_record()
        self._stream = None

    def finish(self) -> ScanResult:
        """Flush the last part and return the result (idempotent)."""
        if self._stream is not None:
            self._close_stream()
            self._decide()
        r = self.result
        r.verdict = self.verdict
        r.seconds = time.perf_counter() - self._t0
        r.records = len(self._all_recs)
        r.strong_records = len(self._strong_recs)
        r.person_records = len(self._person_recs)
        r.findings = {self._sigs[i].id: len(s) for i, s in enumerate(self._distinct) if s}
        r.samples = {self._sigs[i].id: s for i, s in enumerate(self._samples) if s}
        if self._capped:
            r.notes.append(f"distinct counting capped at {DISTINCT_CAP} values per signature")
        return r

    # -- the hot loop -------------------------------------------------------------------------
    def _process(self, buf: bytes, base: int) -> None:
        pats = self._pats
        nval = self._nval
        last_hot = self._last_hot
        window = self.policy.hotword_window
        maxrec = self.policy.max_record_bytes
        mode = self._mode
        rec = self._rec
        line_start = self._line_start
        first_line = line_start < 0
        for i, end in self._hits:
            if i >= nval:
                if i >= self._delim_base:
                    self._json_rec = end
                else:
                    si = self._hot_sig[i - self._hot_base]
                    last_hot[si] = end
                    if first_line or mode == "html":
                        self._header_hotword(buf, base, end, si)
                continue
            p = pats[i]
            e = end - base
            if p.width:
                s = e - p.width
                v = buf[s:e]
            else:
                m = p.rx.search(buf, e - p.maxw if e > p.maxw else 0, e)
                if m is None:
                    continue
                s = m.start()
                v = m.group()
            if p.validator is not None and not p.validator(v):
                continue
            start = s + base
            # which record does the value belong to?
            if mode == "lines":
                r = buf.rfind(b"\n", 0, s)
                rk = r + base if r >= 0 else line_start
            elif mode == "json":
                rk = self._json_rec
            else:
                lo = s - maxrec if s > maxrec else 0
                rk = max(buf.rfind(t, lo, s) for t in _HTML_ROW_TAGS)
                rk = rk + base if rk >= 0 else lo + base
            if start - rk > maxrec:
                rk += (start - rk) // maxrec * maxrec
            if rk != self._rec_key:
                if rec:
                    self._finish_record()
                    rec = self._rec
                self._rec_key = rk
            ctx = False
            if p.needs_ctx:
                ctx = start - last_hot[p.sig] <= window or self._column_context(buf, base, s, rk, p.sig)
            # the raw value stays only until its record is decided, and only while samples are wanted
            keep = v if len(self._samples[p.sig]) < SAMPLES_PER_SIGNATURE else None
            if rec and rec[-1][0].sig == p.sig and rec[-1][3] == start:
                rec[-1] = (p, hash(v), ctx, start, keep)   # longer match, same start: keep the longest
            else:
                rec.append((p, hash(v), ctx, start, keep))

    def _sample(self, si: int, v: bytes) -> None:
        fp = fingerprint(self.key, v)
        if all(x.fingerprint != fp for x in self._samples[si]):
            self._samples[si].append(Sample(redact(v), fp))

    # -- context --------------------------------------------------------------------------------
    def _header_hotword(self, buf: bytes, base: int, end: int, si: int) -> None:
        """A hotword in a CSV/TSV header line or an HTML <th> names a column for later rows."""
        e = end - base - 1
        if self._mode == "html":
            lo = max(0, e - 4096)
            if buf.rfind(b"<th", lo, e) <= buf.rfind(b"</th", lo, e):
                return
            row = max(buf.rfind(b"<tr", lo, e), buf.rfind(b"<TR", lo, e))
            col = buf.count(b"<th", row, e) + buf.count(b"<TH", row, e) - 1
            self._th_cols.setdefault(col, set()).add(si)
            return
        if self._line_start >= 0 or buf.rfind(b"\n", 0, e) >= 0 or base > 0:
            return                                     # not the first line of this part
        col = self._column_of(buf, 0, e)
        self._col_sigs.setdefault(col, set()).add(si)

    def _column_of(self, buf: bytes, row_start: int, pos: int) -> int:
        prefix = buf[row_start:pos]
        d = self._delim
        if b'"' not in prefix:
            return prefix.count(d)
        return sum(seg.count(d) for seg in prefix.split(b'"')[0::2])   # delimiters outside quotes

    def _column_context(self, buf: bytes, base: int, s: int, rk: int, si: int) -> bool:
        if self._mode == "html":
            if not self._th_cols:
                return False
            r = rk - base
            if r < 0:
                return False
            col = buf.count(b"<td", r, s) + buf.count(b"<TD", r, s) - 1
            return si in self._th_cols.get(col, ())
        if not self._col_sigs:
            return False
        r = rk - base + 1
        if r < 0:
            return False
        return si in self._col_sigs.get(self._column_of(buf, r, s), ())

    # -- records and verdict -----------------------------------------------------------------------
    def _finish_record(self) -> None:
        rec = self._rec
        if not rec:
            return
        self._rec = []
        uncond = 0
        for p, h, ctx, _, _ in rec:
            if not p.needs_ctx or ctx:
                uncond |= p.cat
        cats = 0
        name = place = False
        hashes = []
        ignored = self._ignored
        for p, h, ctx, _, raw in rec:
            if p.needs_ctx and not ctx and not (p.rec_mask & uncond):
                continue
            si = p.sig
            if ignored[si]:
                continue
            if raw is not None and len(self._samples[si]) < SAMPLES_PER_SIGNATURE:
                self._sample(si, raw)
            d = self._distinct[si]
            if h not in d:
                if len(d) < DISTINCT_CAP:
                    d.add(h)
                else:
                    self._capped = True
                if p.cat == STRONG:
                    self._strong_values += 1
                elif p.cat == CONTACT:
                    self._contact_values += 1
            cats |= p.cat
            name = name or self._kind_name[si]
            place = place or self._kind_place[si]
            hashes.append(h)
        if not hashes:
            return
        is_strong = cats & STRONG and cats & QUASI
        is_person = name and place
        if is_strong or is_person:
            fp = hash(tuple(sorted(hashes)))
            if is_strong:
                self._strong_recs.add(fp)
            if is_person:
                self._person_recs.add(fp)
            self._all_recs.add(fp)

    def _decide(self) -> None:
        if self.verdict == "trip":
            return
        v = self.policy.decide(len(self._strong_recs), len(self._person_recs),
                               self._strong_values, self._contact_values)
        if v != self.verdict and (v == "trip" or self.verdict == "pass"):
            self.verdict = v
            if v == "trip":
                self.result.trip_at_byte = self.result.decoded_bytes
