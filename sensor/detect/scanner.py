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

import csv
import ctypes
import operator
import re
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import hyperscan as hs

from sensor.detect import core as _core, preamble
from sensor.detect.distinct import EXACT_CAP, DistinctCounter
from sensor.detect.engine import CAT_BITS, Engine, PatInfo
from sensor.detect.keys import fingerprint, redact
from sensor.detect.scratch import CLOSE_LOCK, block_ends, scratch_for
from sensor.detect.policy import Policy, stronger
from sensor.detect.precision import (Evidence, HomeRecords, business_field, business_name, business_record,
                                     deceased, label_before, label_words, name_words, place_of,
                                     workplace_record)
from sensor.detect.structure.view import Shadow, sniff as sniff_structure

STRONG = CAT_BITS["strong"]
QUASI = CAT_BITS["quasi"]
CONTACT = CAT_BITS["contact"]
_FAR = -(1 << 60)
SAMPLES_PER_SIGNATURE = 3
DISTINCT_CAP = EXACT_CAP          # per counter; beyond it counts are HyperLogLog estimates (noted)
RECORD_IDS_CAP = 4096             # record identities a result hands on for exposure across responses
# A container (a line of plain text, or a max_record_bytes window of a longer one) holding at least this many distinct
# values of one strong signature beside quasi-identifiers is not one person's row: it is counted as
# that many people (an estimate, noted). A real row may carry two of a kind (own and spouse's SSN).
ESTIMATE_MIN_IDS = 3
_HTML_ROW_TAGS = (b"<tr", b"<TR", b"<li", b"<LI", b"<p>", b"<P>", b"<br", b"<BR", b"</div", b"</DIV")

_TH_ROW = re.compile(rb"<t[rR][\s>].*?(?=<t[rR][\s>]|</t[rR]|$)", re.S)
_CELL = re.compile(rb"<(t[hdHD])\b[^>]*>(.*?)(?=<t[hdHD]\b|</t[hdHD]|</t[rR]|$)", re.S)
_TAG = re.compile(rb"<[^>]*>")
_TH_OPEN = re.compile(rb"<[tT][hH][\s>]")
_END = operator.itemgetter(1)
_ESTIMATED = "records-estimated"   # salts the identity of an estimated record (one identifier)
_HS_CTX = object()   # a live, truthy context object for every Hyperscan call (see open_stream)
_TH_DB: hs.Database | None = None
_TH_LOCK = threading.Lock()


def _has_th(data: bytes) -> bool:
    """``b"<th" in data or b"<TH" in data`` in one Hyperscan pass. ``bytes.__contains__`` runs at
    ~1.5 GB/s on markup (its many ``<`` defeat the skip): two passes per chunk of an HTML body cost
    ~0.14 CPU-s per 100 MB of pages without a header cell, a quarter of the whole scan."""
    global _TH_DB
    db = _TH_DB
    if db is None:
        with _TH_LOCK:
            db = _TH_DB
            if db is None:
                db = hs.Database(mode=hs.HS_MODE_BLOCK)
                db.compile(expressions=[b"<th", b"<TH"], ids=[0, 1], flags=[hs.HS_FLAG_SINGLEMATCH] * 2)
                _TH_DB = db
    return bool(block_ends(db, data))


def open_stream(db: hs.Database, handler: object, context: object = None) -> hs.Stream:
    """Open a Hyperscan stream outside a ``with`` block.

    hyperscan 0.9.1's ``Stream.__enter__`` returns ``self`` without a new reference (the caller's
    reference is stolen), so calling it and dropping the result frees the stream under us. One
    explicit incref balances the stolen reference; the stream is then freed normally with us.
    The stream also borrows (does not own) its database, handler and context, and leaves the
    context uninitialised unless one is given: callers keep all three alive.
    """
    st = hs.Stream(database=db, match_event_handler=handler, context=context or _HS_CTX)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(st))
    st.__enter__()
    return st


MAX_HEADER_CELLS = 512          # a first line with more cells, or a longer cell, is prose, not a header
MAX_HEADER_CELL = 64


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
    edm_records: int = 0                   # records matching >= min_fields of one indexed row (all indexes)
    edm: dict[str, int] = field(default_factory=dict)           # index name -> EDM records
    edm_rows: dict[str, list[int]] = field(default_factory=dict)  # index name -> matched row ids (bounded)
    # Identities of the strong / person records (a hash of the record's value hashes, keyed by this
    # process's hash secret: never a value, meaningless outside the process, never written out).
    # At most RECORD_IDS_CAP each; ``ids_capped`` says some records were left out. Exposure across
    # responses (sensor.enforce.exposure) counts distinct people with them.
    strong_ids: frozenset[int] = frozenset()
    person_ids: frozenset[int] = frozenset()
    ids_capped: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "records": self.records, "strong_records": self.strong_records,
                "person_records": self.person_records, "findings": dict(sorted(self.findings.items())),
                "samples": {k: [s.__dict__ for s in v] for k, v in sorted(self.samples.items())},
                "bytes": self.bytes, "decoded_bytes": self.decoded_bytes,
                "seconds": round(self.seconds, 6), "notes": list(self.notes),
                "edm_records": self.edm_records, "edm": dict(sorted(self.edm.items()))}


def _extract(p: PatInfo, buf: bytes, e: int) -> bytes | None:
    """The value of a match ending at ``e``, validated; None when it does not hold up."""
    if p.width > 0:
        v = buf[e - p.width:e]
    else:
        m = p.rx.search(buf, e - p.maxw if e > p.maxw else 0, e)
        if m is None or (p.require and not all(m.group(g).upper() in w for g, w in p.require)):
            return None
        v = m.group()
    return v if p.validator is None or p.validator(v) else None


def _json_record(buf: bytes, e: int, maxrec: int) -> int:
    """Start of the JSON object that is an array element around ``e`` (nested objects skipped)."""
    lo = e - maxrec if e > maxrec else 0
    pos = e
    while True:
        pos = buf.rfind(b"{", lo, pos)
        if pos < 0:
            return lo
        j = pos - 1
        while j >= lo and buf[j] in b" \t\r\n":
            j -= 1
        if j < lo or buf[j] in b"[,":
            return pos


class ExchangeScanner:
    """Feed decoded body bytes with :meth:`feed`; read :attr:`verdict` after any chunk.

    A body may be made of *parts* (members of a zip, for instance): :meth:`begin_part` starts a
    fresh Hyperscan stream and record/header state, while distinct values and records accumulate.
    """

    def __init__(self, engine: Engine, policy: Policy, *, key: bytes, scratch: hs.Scratch | None = None,
                 stop_on_trip: bool = False, mode: str | None = None, edm: Any = None):
        self.engine = engine
        self.policy = policy
        self.key = key
        self.scratch = scratch or engine.db.scratch
        self.stop_on_trip = stop_on_trip
        self._sigs = engine.signatures
        self._pats = engine.patterns
        self._nval = engine.n_values
        self._hot_base = engine.hot_base
        self._hot_sig = engine.hot_sig
        self._tail_len = max(4096, engine.max_width + 64)
        n = len(self._sigs)
        allow = policy.allow
        self._ignored = [s.id in allow for s in self._sigs]
        # 1 = a name, 2 = a full date of birth, 4 = a street address (a home, unless the data says
        # otherwise: sensor.detect.precision). A town (city/state/ZIP, ``locality``) is none of them.
        self._kindbits = [1 if s.kind == "name" else 2 if s.kind == "dob"
                          else 4 if s.kind == "address" and not s.locality else 0 for s in self._sigs]
        self._keep_placed = [b in (1, 4) for b in self._kindbits]   # raw names/streets wait for their record
        self._is_email = [s.kind == "email" for s in self._sigs]
        self._evidence = Evidence()
        self._homes = HomeRecords(self._evidence)
        self._rbuf = b""                   # the buffer (and its base) the record being finished lies in
        self._rbase = 0
        self._rec_end: int | None = None   # where the next record starts, while one is being finished
        self._want_sample = [True] * n
        # EDM (sensor.edm): an EdmSet. Records then keep the raw values of the kinds it indexes
        # until they are decided, and hand them to the matcher.
        self._edm = edm.matcher() if edm is not None else None
        self._edm_kind = [s.kind if edm is not None and s.kind in edm.kinds else None for s in self._sigs]
        self._keep_raw = self._want_sample if edm is None else [True] * n
        # the one selection point: the compiled core (sensor/detect/_hscore.pyx) when it is built and
        # supports the pack, else this module's Python loop (the reference, see tests/test_core_diff.py)
        self._core = _core.core_for(engine)
        # distinct values and records by keyed hash: exact up to DISTINCT_CAP each, then estimated
        # (with the core, the same counts kept in C tables the compiled loop adds to)
        Distinct = _core._hscore.Distinct if self._core is not None else DistinctCounter
        self._distinct = [Distinct(DISTINCT_CAP) for _ in range(n)]
        self._samples: list[list[Sample]] = [[] for _ in range(n)]
        self._strong_recs, self._person_recs, self._all_recs = (Distinct(DISTINCT_CAP) for _ in range(3))
        # records estimated where the structure gives no row (see _finish_record); the structure
        # view's scanner turns this off: its records are rows by construction
        self._estimate = True
        self._est_recs = DistinctCounter(DISTINCT_CAP)
        self._strong_values = 0
        self._contact_values = 0
        self._strong_ids: set[int] = set()      # record identities for exposure (bounded, see ScanResult)
        self._person_ids: set[int] = set()
        self._home_ids: set[int] = set()        # ... of name + home-address records (see _identities)
        self._ids_capped = False
        self.result = ScanResult()
        self.verdict = "pass"
        self._decided: tuple[int, int, int, int] | None = None   # the counts the verdict was last decided on
        self._hits: list[tuple[int, int]] = []
        append = self._hits.append

        def on_match(i: int, start: int, end: int, flags: int, ctx: object) -> None:
            append((i, end))

        gate_base = [0]

        def on_gated(i: int, start: int, end: int, flags: int, ctx: object) -> None:
            append((i, end + gate_base[0]))

        self._on_match = on_match        # the stream does not keep the callback alive: we do
        self._on_gated = on_gated
        self._gate_base = gate_base
        self._gate_ids = engine.gate_ids
        self._gate: hs.Stream | None = None
        self._stream: hs.Stream | None = None
        self._t0 = time.perf_counter()
        self._head_read = False                # the body's first bytes were read (see pending)
        self._preambles = True                 # look for lines before a table (the structure view's
                                               # parts do not: their first line is no header, by design)
        self._shadow: Shadow | None = None     # records from structure: see structure/view.py
        self._skind: str | None = None
        self.begin_part(mode)

    # -- parts ----------------------------------------------------------------------------
    def begin_part(self, mode: str | None = None, name: str | None = None) -> None:
        """Start a new independent byte stream (new file in an archive, new body)."""
        if self._stream is not None:
            self._close_stream()
        self._stream = self._core.part() if self._core is not None else open_stream(self.engine.db, self._on_match)
        self._gate = None
        self._stale = True            # the counts may have moved since the last verdict (see _advance)
        self._mode = mode             # None = sniff from the first bytes
        self._pre: bytes | None = b""  # first bytes of the part, until the sniff can be made
        self._pos = 0
        self._tail = b""
        self._line_start = -1         # abs offset of the newline before the current line
        self._rec_key = None
        self._rec: list[tuple[int, int, bool, int, int, int, bytes | None]] = []
        self._last_hot = [_FAR] * len(self._sigs)
        self._delim = b","
        self._tabular = False
        self._col_sigs: dict[int, set[int]] = {}
        self._th_cols: dict[int, set[int]] = {}
        self._header_sigs: set[int] = set()     # signatures some header column names
        self._head_words: list[frozenset[str]] = []   # CSV/TSV header cells' words, by column
        self._th_words: list[frozenset[str]] = []     # HTML header row <th> words, by column
        self._biz_table = False                         # a header names a business-name column

    def _sniff(self, data: bytes) -> None:
        head = data[:4096].lstrip()
        low = head[:512].lower()
        # the declared Content-Type is a hint, the bytes decide: a CSV roster served as text/html
        # (or as application/json) is read as the table it is, not as markup without a <tr>
        first_byte = head.removeprefix(b"\xef\xbb\xbf")[:1]
        if (self._mode == "html" and first_byte != b"<") or (self._mode == "json" and first_byte not in (b"{", b"[")):
            self._mode = None
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
        self._tabular = self._mode == "lines" and cands[self._delim] >= 1   # header columns: CSV/TSV only
        if self._tabular:
            try:
                cells = next(csv.reader([first.decode("utf-8", "replace")], delimiter=self._delim.decode()))
            except (csv.Error, StopIteration):
                cells = []
            if len(cells) <= MAX_HEADER_CELLS and all(len(c) <= MAX_HEADER_CELL for c in cells):
                self._head_words = [label_words(c.encode()) for c in cells]     # else prose, not a header
                self._biz_table = any(business_field(w) for w in self._head_words)
        self._skind = sniff_structure(head)
        if self._skind is not None:
            if self._shadow is None:
                self._shadow = Shadow(weakref.proxy(self))   # no scanner <-> shadow cycle: freed by refcount
            self._shadow.begin(self._skind)

    # -- feeding ----------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Bytes of the body's head fed but not read yet: its first lines, held for the sniff until
        16 lines or 4 KiB (0 once any byte was read: a later part's head is not the body's)."""
        return len(self._pre) if self._pre and not self._head_read else 0

    def feed(self, data: bytes) -> str:
        if not data or (self.stop_on_trip and self.verdict == "trip"):
            return self.verdict
        if type(data) is not bytes:
            data = bytes(data)      # a bytearray or view: values are hashed, and the core takes bytes
        if self._pre is not None:
            # hold the first bytes of a part until its first lines are whole (or 4 KiB), so that
            # the sniff (json/html/table, delimiter, a preamble) sees the same thing however the
            # body is cut
            self._pre += data
            if self._pre.count(b"\n") < preamble.HOLD_LINES and len(self._pre) < preamble.HOLD_BYTES:
                return self.verdict
            data, self._pre = self._pre, None
            data = self._start(data)
        if self._core is not None:
            self._scan_core(data)
        else:
            self._scan(data)
        return self.verdict

    def read_head(self) -> None:
        """Read the part's held first lines now: no more bytes will come to it (decoding stopped
        on a limit or corrupt input), and until they are read the session holds the body's head."""
        if self._pre:
            data, self._pre = self._pre, None
            self._scan(self._start(data, final=True))

    def _start(self, data: bytes, final: bool = False) -> bytes:
        """A part's first bytes are in: sniff them and answer what to scan. Lines before a table's
        header (a title, a banner, comments: :mod:`sensor.detect.preamble`) are scanned as a part of
        their own first, so that the table's part opens with its header, as the sniff and the
        header context expect."""
        self._head_read = True
        k = preamble.preamble_end(data, final=final) if self._preambles else 0
        if k:
            mode = self._mode
            self._sniff(data[:k])
            self._scan(data[:k])
            self.begin_part(mode)
            self._pre = None
            data = data[k:]
        self._sniff(data)
        return data

    def _scan(self, data: bytes) -> None:
        if self._core is not None:
            return self._scan_core(data)
        hits = self._hits
        hits.clear()
        self._stream.scan(data, scratch=scratch_for(self.engine.db), match_event_handler=self._on_match,
                          context=_HS_CTX)
        base = self._pos - len(self._tail)
        if self.engine.gated_db is not None and hits:
            n = len(hits)
            if self._gate is not None:
                self._gate.scan(data, scratch=scratch_for(self.engine.gated_db), match_event_handler=self._on_gated,
                                context=_HS_CTX)
            elif not self._gate_ids.isdisjoint([i for i, _ in hits]):
                self._open_gate(self._tail + data, base)
            if len(hits) > n:
                hits.sort(key=_END)          # two sorted runs: merged in linear time
        elif self._gate is not None:
            self._gate.scan(data, scratch=scratch_for(self.engine.gated_db), match_event_handler=self._on_gated,
                            context=_HS_CTX)
        self._advance(data, base, bool(hits), self._process, lambda: hits)

    def _advance(self, data: bytes, base: int, any_hit: bool, process, hits) -> None:
        """After a chunk's matches are in (either path): header row, offsets, the per-match work
        (``process(buf, base)``, or the compiled core's when ``process`` is None), line start, tail,
        structure view (``hits()``), verdict.

        A chunk without a match (most of benign text) changes no count, so the verdict is not
        recomputed for it unless something else moved the counts since the last one (a part ended:
        ``_stale``) or another view counts bytes too (structure view, EDM)."""
        n = len(data)
        if self._mode == "html" and _has_th(data):
            self._header_row(data)
        self._pos += n
        self.result.decoded_bytes += n
        if any_hit:
            buf = self._tail + data
            if process is None:
                _core._hscore.process(self, self._stream, buf, base, self._core.info)
            else:
                process(buf, base)
        nl = data.rfind(b"\n")
        if nl >= 0:
            self._line_start = self._pos - n + nl
        tl = self._tail_len
        self._tail = data[-tl:] if n >= tl else (self._tail + data)[-tl:]
        if self._skind is not None:
            self._shadow.feed(data, hits())
        elif not (any_hit or self._stale) and self._edm is None:
            return
        self._decide()

    def _open_gate(self, buf: bytes, base: int) -> None:
        """Start the gated database, from the start of the record that is still open (so a date
        that came before the strong identifier of its record still counts)."""
        start = (self._rec_key if self._rec else self._line_start) + 1
        start = max(start, base, 0)
        self._gate = open_stream(self.engine.gated_db, self._on_gated)
        self._gate_base[0] = start
        self._gate.scan(buf[start - base:], scratch=scratch_for(self.engine.gated_db),
                        match_event_handler=self._on_gated, context=_HS_CTX)

    def _close_stream(self) -> None:
        self.read_head()
        if self._core is not None:
            return self._close_core()
        self._hits.clear()
        try:
            # Never pass scratch= to close(): hyperscan 0.9.1 swaps the O! converter's arguments there
            # and corrupts memory. Without it close() uses the database's own scratch: one close at a time.
            with CLOSE_LOCK:
                self._stream.close(match_event_handler=self._on_match, context=_HS_CTX)
                if self._gate is not None:
                    self._gate.close(match_event_handler=self._on_gated, context=_HS_CTX)
                    self._hits.sort(key=_END)
        except hs.error:
            pass
        self._gate = None
        if self._hits:
            base = self._pos - len(self._tail)
            self._process(self._tail, base)
        self._finish_record()
        if self._skind is not None:
            self._shadow.close()
            self._skind = None
        self._stream = None

    # -- the compiled core: _scan and _close_stream step for step, hits in a C array ----------------------
    def _scan_core(self, data: bytes) -> None:
        ps = self._stream
        n = ps.scan(data)                       # GIL released while libhs scans
        base = self._pos - len(self._tail)
        if self._core.gated is not None and n:
            m = n
            if ps.gate_open:
                m = ps.scan_gate(data)
            elif ps.any_of(self._core.gate_ids):
                start = (self._rec_key if self._rec else self._line_start) + 1
                start = max(start, base, 0)
                ps.open_gate(start)
                m = ps.scan_gate(self._tail + data, start - base)
            if m > n:
                ps.sort()
            n = m
        elif ps.gate_open:
            n = ps.scan_gate(data)
        self._advance(data, base, bool(n), None, ps.hits_list)

    def _close_core(self) -> None:
        ps = self._stream
        gated = ps.gate_open
        try:
            n = ps.close()
            if gated:
                ps.sort()
        except _core._hscore.CoreError:
            n = ps.nhits                        # as the reference: what was reported before the error
        if n:
            _core._hscore.process(self, ps, self._tail, self._pos - len(self._tail), self._core.info)
        self._finish_record()
        if self._skind is not None:
            self._shadow.close()
            self._skind = None
        self._stream = None

    def finish(self) -> ScanResult:
        """Flush the last part and return the result (idempotent)."""
        if self._stream is not None:
            self._close_stream()
            self._decide(final=True)
        r = self.result
        r.verdict = self.verdict
        r.seconds = time.perf_counter() - self._t0
        x = self._shadow.extra() if self._shadow is not None else (0, 0, 0, 0, 0)
        recs, strong, person = self._tallies()
        r.records = recs + x[0]
        r.strong_records = strong + x[1]
        r.person_records = person + x[2]
        for homes in (self._homes, self._shadow.child._homes if self._shadow and self._shadow.child else None):
            note = homes.note() if homes is not None else None
            if note and note not in r.notes:
                r.notes.append(note)
        r.findings = {self._sigs[i].id: len(s) for i, s in enumerate(self._distinct) if s}
        r.samples = {self._sigs[i].id: s for i, s in enumerate(self._samples) if s}
        # the view (bytes or structure) that saw more records names them; the same content always
        # picks the same view, so a page fetched twice gives the same identities
        ids = self._identities()
        child = self._shadow.child if self._shadow is not None else None
        if child is not None:
            cids = child._identities()
            if len(cids[0]) + len(cids[1]) > len(ids[0]) + len(ids[1]):
                ids = cids
        r.strong_ids, r.person_ids = ids[0], ids[1]
        r.ids_capped = ids[2] or (r.strong_records > len(r.strong_ids) or r.person_records > len(r.person_ids))
        if self._edm is not None:
            r.edm_records, r.edm = self._edm.total, dict(self._edm.counts)
            r.edm_rows = {k: sorted(v) for k, v in self._edm.rows.items()}
        if len(self._est_recs) and not any(n.startswith("records-estimated:") for n in r.notes):
            r.notes.append(f"records-estimated: {len(self._est_recs)} distinct strong identifiers sharing "
                           f"their container with quasi-identifiers (no row structure; each counted as "
                           f"one person where a line of plain text held {ESTIMATE_MIN_IDS} or more of one kind)")
        approx = [self._sigs[i].id for i, s in enumerate(self._distinct) if s.approximate]
        recs = (self._all_recs.approximate or self._strong_recs.approximate or self._person_recs.approximate
                or self._homes.approximate)
        if (approx or recs) and not any(n.startswith("approximate:") for n in r.notes):
            what = (["records"] if recs else []) + approx
            r.notes.append(f"approximate: counts approximate above {DISTINCT_CAP} distinct "
                           f"({', '.join(what)}; HyperLogLog, about 0.4 % standard error)")
        return r

    # -- the hot loop -------------------------------------------------------------------------
    def _process(self, buf: bytes, base: int) -> None:
        """Turn this chunk's matches into record entries. Every line here runs once per match."""
        pats = self._pats
        nval = self._nval
        last_hot = self._last_hot
        header = self._header_sigs
        want = self._keep_raw
        window = self.policy.hotword_window
        maxrec = self.policy.max_record_bytes
        mode = self._mode
        lines = mode == "lines"
        rec = self._rec
        rec_key = self._rec_key
        self._rbuf = buf
        self._rbase = base
        keep = self._keep_placed
        line_start = self._line_start
        first_line = line_start < 0
        tabular = lines and self._tabular
        delim = self._delim
        col_sigs = self._col_sigs
        for i, end in self._hits:
            if i >= nval:
                si = self._hot_sig[i - self._hot_base]
                # a hotword in a header names a column; it is not a label for the next values
                if not ((first_line or mode == "html") and self._header_hotword(buf, base, end, si)):
                    last_hot[si] = end
                    if rec:
                        self._label_after(rec, buf, base, end, si, window)
                continue
            p = pats[i]
            si, w, maxw, rx, vfn, req, nctx, rmask, cat, in_field, in_word = p
            e = end - base
            ctx = not nctx or end - maxw - last_hot[si] <= window
            lazy = not ctx and si not in header
            if lazy and not rmask:
                continue                     # needs a hotword or a column, and has neither
            if not lazy:
                if w > 0:
                    s = e - w
                    v = buf[s:e]
                else:
                    lo = e - maxw if e > maxw else 0
                    if in_field and tabular:
                        lo = buf.rfind(delim, lo, e) + 1 or lo   # the value starts after its field's delimiter
                    if in_word:                                  # ... or after the last blank
                        lo = max(lo, buf.rfind(b" ", lo, e) + 1, buf.rfind(b"\n", lo, e) + 1,
                                 buf.rfind(b"\t", lo, e) + 1)
                    m = rx.search(buf, lo, e)
                    if m is None:
                        continue
                    if req and not all(m.group(g).upper() in words for g, words in req):
                        continue
                    s = m.start()
                    v = m.group()
                if vfn is not None and not vfn(v):
                    continue
                if cat == CONTACT and ctx:
                    self._count_contact(si, v)   # contact values never make a record: no placement
                    continue
            # which record (person) does the value belong to? (values hold no newline, so the
            # end offset places them as well as the start would)
            if lines:
                r = buf.rfind(b"\n", 0, e)
                rk = r + base if r >= 0 else line_start
            elif mode == "json":
                rk = _json_record(buf, e, maxrec) + base
            else:
                lo = e - maxrec if e > maxrec else 0
                r = max([buf.rfind(t, lo, e) for t in _HTML_ROW_TAGS])
                rk = r + base if r >= 0 else lo + base
            if end - rk > maxrec:
                rk += (end - rk) // maxrec * maxrec
            if rk != rec_key:
                if rec:
                    self._rec = rec
                    self._rec_key = rec_key
                    self._rec_end = rk
                    self._finish_record()
                    self._rec_end = None
                    rec = self._rec
                rec_key = rk
            if lazy:
                # only the record can make it count: decide (and pay for extraction) later
                rec.append((si, cat, False, rmask, None, end, (p, buf, e)))
                continue
            if not ctx:
                # header column context (CSV/TSV: delimiters before the value on its row, outside quotes)
                if lines and col_sigs:
                    r = rk - base + 1
                    if r >= 0:
                        col = buf.count(delim, r, s) if buf.find(b'"', r, s) < 0 else self._column_of(buf, r, s)
                        ctx = si in col_sigs.get(col, ())
                elif mode == "html":
                    ctx = self._th_context(buf, base, s, rk, si)
                if not ctx and not rmask:
                    continue
            start = s + base
            # the raw value stays only until its record is decided, and only while samples are wanted
            entry = (si, cat, ctx, rmask, hash(v), start, v if want[si] or keep[si] else None)
            if rec and rec[-1][0] == si and rec[-1][5] == start:
                rec[-1] = entry              # a longer match from the same start: keep the longest
            else:
                rec.append(entry)
        self._rec = rec
        self._rec_key = rec_key

    def _count_contact(self, si: int, v: bytes) -> None:
        """Phones and emails count as distinct values only; they never make a person record."""
        if self._ignored[si]:
            return
        if self._distinct[si].add(hash(v)):
            self._contact_values += 1
            if self._is_email[si]:
                self._evidence.email(v)
        if self._want_sample[si]:
            self._sample(si, v)

    @staticmethod
    def _label_after(rec: list, buf: bytes, base: int, end: int, si: int, window: int) -> None:
        """A hotword just *after* a value of its signature, on the same line, labels it too."""
        hot = end - base
        for k in range(len(rec) - 1, -1, -1):
            t = rec[k]
            if t[0] != si or t[2]:
                continue
            at = t[6][2] + base if t[4] is None else t[5]         # a lazy entry's end, else the value's start
            if end - at > window + 32:
                break
            lo = at - base
            if lo >= 0 and buf.find(b"\n", lo, hot) < 0:
                rec[k] = t[:2] + (True,) + t[3:]

    def _sample(self, si: int, v: bytes) -> None:
        samples = self._samples[si]
        fp = fingerprint(self.key, v)
        if all(x.fingerprint != fp for x in samples):
            samples.append(Sample(redact(v), fp))
            if len(samples) >= SAMPLES_PER_SIGNATURE:
                self._want_sample[si] = False

    # -- context --------------------------------------------------------------------------------
    def _header_hotword(self, buf: bytes, base: int, end: int, si: int) -> bool:
        """A hotword in a CSV/TSV header line or an HTML <th> names a column for later rows."""
        e = end - base - 1
        if self._mode == "html":
            lo = max(0, e - 4096)
            if buf.rfind(b"<th", lo, e) <= buf.rfind(b"</th", lo, e):
                return False
            row = max(buf.rfind(b"<tr", lo, e), buf.rfind(b"<TR", lo, e))
            col = buf.count(b"<th", row, e) + buf.count(b"<TH", row, e) - 1
            self._th_cols.setdefault(col, set()).add(si)
            self._header_sigs.add(si)
            return True
        if not self._tabular or self._line_start >= 0 or buf.rfind(b"\n", 0, e) >= 0 or base > 0:
            return False                               # not the first line of a table
        col = self._column_of(buf, 0, e)
        self._col_sigs.setdefault(col, set()).add(si)
        self._header_sigs.add(si)
        return True

    def _column_of(self, buf: bytes, row_start: int, pos: int) -> int:
        prefix = buf[row_start:pos]
        d = self._delim
        if b'"' not in prefix:
            return prefix.count(d)
        return sum(seg.count(d) for seg in prefix.split(b'"')[0::2])   # delimiters outside quotes

    def _th_context(self, buf: bytes, base: int, s: int, rk: int, si: int) -> bool:
        """HTML: is the value in a <td> whose <th> named this signature? (CSV columns: see _process)"""
        r = rk - base
        if not self._th_cols or r < 0:
            return False
        col = buf.count(b"<td", r, s) + buf.count(b"<TD", r, s) - 1
        return si in self._th_cols.get(col, ())

    # -- records and verdict -----------------------------------------------------------------------
    def _finish_record(self) -> None:
        """Decide which values of the record count, then count them and the record."""
        if self._core is not None:
            return _core._hscore.finish_record(self)     # the same steps, compiled
        rec = self._rec
        if not rec:
            return
        self._rec = []
        uncond = 0
        for t in rec:
            if t[2]:
                uncond |= t[1]
        header = self._header_sigs
        want = self._want_sample
        ignored = self._ignored
        distinct = self._distinct
        kinds = self._kindbits
        cats = 0
        kind = 0
        hashes = []
        edm_kind = self._edm_kind
        edm_vals: list[tuple[str, bytes]] | None = [] if self._edm is not None else None
        placed: list[tuple[int, int, int, bytes | None]] = []    # names and streets: (bit, start, hash, raw)
        # estimate only in plain text: a part the structure view reads (JSON, XML, HTML, SQL, fixed
        # width) has rows, and a JSON object or an HTML block is one already
        per_id: dict[int, set[int]] | None = {} if self._estimate and self._skind is None \
            and self._mode == "lines" else None
        for si, cat, ctx, rmask, h, start, raw in rec:
            # record context stands in for a hotword, unless a header names this signature's
            # column (then the header is authoritative: an issue date beside a DOB column is not a DOB)
            if not ctx and not (rmask & uncond and si not in header):
                continue
            if ignored[si]:
                continue
            if not ctx and self._org_field(start):
                continue                      # record context cannot make an organisation's number a person's
            if h is None:                     # deferred: extract and validate now
                raw = _extract(*raw)
                if raw is None:
                    continue
                h = hash(raw)
            if edm_vals is not None and edm_kind[si] is not None and raw is not None:
                edm_vals += (edm_kind[si], raw)   # flat: kind, raw, kind, raw (no tuple kept)
            if distinct[si].add(h):
                if cat == STRONG:
                    self._strong_values += 1
                elif cat == CONTACT:
                    self._contact_values += 1
            if raw is not None and want[si]:
                self._sample(si, raw)
            cats |= cat
            if cat == STRONG and per_id is not None:
                per_id.setdefault(si, set()).add(h)
            k = kinds[si]
            kind |= k
            if k & 5:
                placed.append((k, start, h, raw))
            hashes.append(h)
        if edm_vals and self._edm.record(edm_vals):
            self._decide()
        if not hashes:
            return
        is_strong = cats & STRONG and cats & QUASI
        is_person = kind & 3 == 3             # a name and a full date of birth
        if is_person and not is_strong and deceased(self._record_text()):
            return                            # an obituary: the date of birth is published on purpose
        home = self._home_of(placed) if kind & 5 == 5 and not is_person else None   # a name and a street
        if is_strong and per_id and (ids := max(per_id.values(), key=len)) and len(ids) >= ESTIMATE_MIN_IDS:
            # no row: each distinct identifier of the most frequent strong kind is one person
            for h in ids:
                fp = hash((_ESTIMATED, h))
                self._est_recs.add(fp)
                self._strong_recs.add(fp)
                self._all_recs.add(fp)
                self._keep_id(self._strong_ids, fp)
            return
        if is_strong or is_person or home is not None:
            fp = hash(tuple(sorted(hashes)))
            if is_strong:
                self._strong_recs.add(fp)
                self._all_recs.add(fp)
                self._keep_id(self._strong_ids, fp)
            if is_person:
                self._person_recs.add(fp)
                self._all_recs.add(fp)
                self._keep_id(self._person_ids, fp)
            elif home is not None:
                if is_strong:
                    self._person_recs.add(fp)          # private through its identifier already
                    self._keep_id(self._person_ids, fp)
                else:
                    self._homes.add(fp, home[0], home[1])
                    self._keep_id(self._home_ids, fp)

    def _identities(self) -> tuple[frozenset[int], frozenset[int], bool]:
        """Strong and person record identities, and whether some were left out. Name + home-address
        records are person records only while the evidence counts them all as homes: when it
        discounts some (workplaces), none of them is named, and the count says how many there are."""
        person = self._person_ids
        if self._home_ids and self._homes.note() is None:
            person = person | self._home_ids
        return frozenset(self._strong_ids), frozenset(person), self._ids_capped

    def _keep_id(self, ids: set[int], fp: int) -> None:
        if len(ids) < RECORD_IDS_CAP:
            ids.add(fp)
        elif fp not in ids:
            self._ids_capped = True

    # -- precision: is a name + street record a person at home? (sensor.detect.precision) ------------
    def _home_of(self, placed: list[tuple[int, int, int, bytes | None]]) -> tuple[int, bool] | None:
        """The home address of a record that has a name and a street and nothing else private:
        ``(address hash, labelled as a home)``, or None when the data says the names are businesses
        or the streets are workplaces. Runs only for such records, never on the hot path."""
        buf, base = self._rbuf, self._rbase
        row = (self._rec_key if self._rec_key is not None else base) - base
        if self._mode == "lines":
            row += 1
        row = max(row, 0)
        delim = self._delim if self._tabular else None
        names = None
        person = False
        for bit, start, _, raw in placed:
            if bit != 1:
                continue
            s = start - base
            if s < 0 or raw is None or start - base + len(raw) > len(buf):
                person = True                  # its text is gone: nothing says it is a business
                break
            if self._place(buf, row, s) == 1:
                continue                       # a name in the organisation's field
            if names is None:
                names = name_words(self.engine)
            if not business_name(buf, s, s + len(raw), delim, names):
                person = True
                break
        if not person:
            return None
        text = self._record_text()
        if deceased(text):
            return None                        # an obituary
        # a business's record or a disclosure of people's jobs: only an address labelled home counts
        public = self._biz_table or business_record(text) or workplace_record(text)
        for bit, start, h, _ in placed:
            if bit != 4:
                continue
            s = start - base
            place = self._place(buf, row, s) if s >= 0 else 0
            if place == 2 or (place == 0 and not public):
                return h, place == 2
        return None

    def _record_text(self) -> bytes:
        """The bytes of the record being finished, as far as the buffer still holds them."""
        buf, base = self._rbuf, self._rbase
        row = max((self._rec_key if self._rec_key is not None else base) - base, 0)
        end = min(len(buf), row + self.policy.max_record_bytes)
        if self._rec_end is not None:
            end = min(end, self._rec_end - base)
        if self._mode == "lines":
            nl = buf.find(b"\n", row + 1, end)
            end = nl if nl >= 0 else end
        return buf[row:end] if row < end else b""

    def _org_field(self, start: int) -> bool:
        """Is the value at ``start`` in a field labelled as an organisation's or a business's
        (``entity number: C4100000``)? Asked only of values that count through their record."""
        s = start - self._rbase
        if s < 0:
            return False
        words = label_words(label_before(self._rbuf, 0, s))
        return place_of(words) == 1 or business_field(words | {"name"})

    def _place(self, buf: bytes, row: int, s: int) -> int:
        """What the field of the value at ``buf[s]`` is named as: 0 nothing, 1 the organisation's,
        2 the person's home (the CSV header or HTML ``<th>`` of its column, else the label before it)."""
        words = None
        if self._head_words and self._mode == "lines" and row <= s:
            col = self._column_of(buf, row, s)
            if col < len(self._head_words):
                words = self._head_words[col]
        elif self._th_words and self._mode == "html" and row <= s:
            col = buf.count(b"<td", row, s) + buf.count(b"<TD", row, s) - 1
            if 0 <= col < len(self._th_words):
                words = self._th_words[col]
        place = place_of(words) if words else 0
        return place or place_of(label_words(label_before(buf, row, s)))

    def _header_row(self, data: bytes) -> None:
        """An HTML header row (every cell a ``<th>``) names the columns of the rows after it."""
        m = _TH_OPEN.search(data)              # a header cell (not <thead>)
        if m is None:
            return
        at = m.start()
        lo = max(data.rfind(b"<tr", 0, at), data.rfind(b"<TR", 0, at))
        m = _TH_ROW.match(data, lo) if lo >= 0 else None
        if m is None:
            return
        cells = _CELL.findall(m.group())
        if len(cells) >= 2 and all(t.lower() == b"th" for t, _ in cells):
            self._th_words = [label_words(_TAG.sub(b" ", text)) for _, text in cells]
            self._biz_table = any(business_field(w) for w in self._th_words)

    def _tallies(self) -> tuple[int, int, int]:
        """Records, strong records, person records (homes counted as the evidence allows)."""
        h = len(self._homes)
        return len(self._all_recs) + h, len(self._strong_recs), len(self._person_recs) + h

    def _decide(self, final: bool = False) -> None:
        """Raise the verdict after a chunk. A trip is final when it is reached; an alert is settled
        at the end (``final``): evidence seen later (one email domain, shared addresses) may show
        that records counted early were workplaces, not homes."""
        self._stale = False
        if self.verdict == "trip":
            return
        _, strong, person = self._tallies()
        if self._shadow is None:
            counts = (strong, person, self._strong_values, self._contact_values)
        else:
            x = self._shadow.extra()
            counts = (strong + x[1], person + x[2], self._strong_values + x[3], self._contact_values + x[4])
        # the same counts give the same verdict, and it was applied then: most benign chunks have
        # matches that make no record, so the policy is not asked again (the EDM's verdict moves on its own)
        if counts == self._decided and not final and self._edm is None:
            return
        self._decided = counts
        v = self.policy.decide(*counts)
        if self._edm is not None:
            v = stronger(self._edm.verdict(), v)      # EDM thresholds first: an EDM trip always trips
        if v != self.verdict and (v == "trip" or self.verdict == "pass" or final):
            self.verdict = v
            if v == "trip":
                self.result.trip_at_byte = self.result.decoded_bytes
