"""The structure view of a part: records rebuilt from the document's structure, counted beside
the byte view's, without double counting.

The scanner reads every part as bytes and groups values by line / JSON object / HTML row (the
*byte view*). For a part that is JSON, JSON Lines, XML or a SQL dump, a reader rebuilds the
records from the structure and writes each as one ``label: value; ...`` line to a second scanner
(the *shadow*, same engine and policy, sharing the distinct-value sets so no value counts twice).
For each such part the larger of the two views' record counts is taken: both are lower bounds of
the people in it, and the byte view may still see what the structure does not (text inside a
value, a malformed document). The readers only start once the part has shown a Hyperscan hit
that could belong to a person (a strong or quasi-identifier, or the hotword of one): a part
without one cannot hold a person, and benign traffic pays nothing but a buffer.
"""
from __future__ import annotations

import re
import weakref
from typing import TYPE_CHECKING, Iterator, Protocol

import orjson

from sensor.detect.engine import CAT_BITS
from sensor.detect.precision import HomeRecords
from sensor.detect.structure.json_records import WHOLE_LIMIT, parse, records_of
from sensor.detect.structure.fixed_records import FixedReader, sniff_fixed
from sensor.detect.structure.json_stream import JsonSplitter
from sensor.detect.structure.labels import Labels
from sensor.detect.structure.records import LineReader, LineWriter

if TYPE_CHECKING:
    from sensor.detect.engine import Engine
    from sensor.detect.scanner import ExchangeScanner

SHADOW_HEAD = b"records from structure\n"      # first line of every shadow part: not a header
_SQL = re.compile(rb"(?i)\b(?:insert\s+into|create\s+table|copy\s+[\w.\"]+\s*(?:\([^)]*\))?\s*from\s+stdin)\b")
_XML_START = re.compile(rb"^(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*|<!DOCTYPE[^\[>]*(?:\[.*?\])?\s*>\s*)*<([A-Za-z_][\w.:-]*)", re.S)
_HTML_ROOTS = {b"html", b"HTML", b"body", b"div", b"table", b"head", b"span", b"p", b"a", b"ul", b"svg"}


class Reader(Protocol):
    def feed(self, data: bytes) -> Iterator[bytes]: ...
    def close(self) -> Iterator[bytes]: ...


def sniff(head: bytes) -> str | None:
    """The structured kind of a part from its first bytes: json, ndjson, xml, html, sql, fixed
    (fixed-width text with a header line), or None."""
    h = head.lstrip()
    if h[:1] in (b"{", b"["):
        first, _, rest = h.partition(b"\n")
        if rest.lstrip()[:1] == b"{" and first.rstrip()[-1:] in (b"}", b"]"):
            try:
                orjson.loads(first)
                return "ndjson"
            except orjson.JSONDecodeError:
                pass
        return "json"
    if h[:1] == b"<":
        m = _XML_START.match(h[:4096])
        low = h[:1024].lower()
        if m and m.group(1) not in _HTML_ROOTS and b"<html" not in low:
            return "xml"
        if low.startswith(b"<!doctype html") or b"<html" in low or (m and m.group(1) in _HTML_ROOTS):
            return "html"
        return None
    h4 = h[:4096]
    low4 = h4.lower()    # a cheap test first: the regex alone costs ~50 us per part on plain text
    if (b"insert" in low4 or b"create" in low4 or b"copy" in low4) and _SQL.search(h4):
        return "sql"
    if sniff_fixed(head.lstrip(b"\r\n")):
        return "fixed"
    return None


_NOT_JSON = object()


def _without_call_end(data: bytes) -> object:
    """The document of a JSONP body (``cb({...});``: the callback is split off before it, see
    sensor/detect/preamble.py), read without the call's end; _NOT_JSON if that is not it either."""
    trimmed = data.rstrip(b" \t\r\n;)")
    if trimmed == data.rstrip():
        return _NOT_JSON
    try:
        return parse(trimmed)
    except orjson.JSONDecodeError:
        return _NOT_JSON


class JsonReader:
    """A JSON document: parsed whole with orjson at the end of the part up to WHOLE_LIMIT, cut
    into records as it streams beyond (:class:`JsonSplitter`)."""

    def __init__(self, writer: LineWriter, notes: list[str]):
        self.w = writer
        self.buf: list[bytes] = []
        self.size = 0
        self.notes = notes
        self.out: list[bytes] = []
        self.stream: JsonSplitter | None = None

    def _emit(self, fields) -> None:
        line = self.w.line(fields)
        if line:
            self.out.append(line)

    def feed(self, data: bytes) -> Iterator[bytes]:
        self.size += len(data)
        if self.stream is not None:
            self.stream.feed(data)
        elif self.size > WHOLE_LIMIT:
            # too large to parse whole: cut into records as it streams (see json_stream.py)
            self.stream = JsonSplitter(self._emit)
            self.notes.append(f"structure: JSON document over {WHOLE_LIMIT >> 20} MiB, read as a stream")
            self.buf.append(data)
            data, self.buf = b"".join(self.buf), []
            self.stream.feed(data)
        else:
            self.buf.append(data)
        out, self.out = self.out, []
        return iter(out)

    def close(self) -> Iterator[bytes]:
        if self.stream is not None:
            self.stream.close()
            out, self.out = self.out, []
            return iter(out)
        if not self.buf:
            return iter(())
        data = b"".join(self.buf)
        self.buf = []
        out = self.out
        emit = self._emit
        try:
            doc = parse(data)
        except orjson.JSONDecodeError:
            doc = _without_call_end(data)
        if doc is _NOT_JSON:
            for ln in data.splitlines():               # concatenated / line-delimited after all
                try:
                    records_of(orjson.loads(ln), emit)
                except orjson.JSONDecodeError:
                    continue
            return iter(out)
        records_of(doc, emit)
        return iter(out)


class NdjsonReader(LineReader):
    """JSON Lines: every line a document; streamed line by line."""

    def _lines(self, lines: list[bytes]) -> Iterator[bytes]:
        out: list[bytes] = []

        def emit(fields):
            line = self.w.line(fields)
            if line:
                out.append(line)
        for ln in lines:
            if ln.strip():
                try:
                    records_of(orjson.loads(ln), emit)
                except orjson.JSONDecodeError:
                    continue
        return iter(out)


def _reader(kind: str, writer: LineWriter, notes: list[str]) -> Reader:
    if kind == "json":
        return JsonReader(writer, notes)
    if kind == "ndjson":
        return NdjsonReader(writer, notes)
    if kind == "fixed":
        return FixedReader(writer, notes)
    if kind == "html":
        from sensor.detect.structure.html_records import HtmlReader
        return HtmlReader(writer, notes)
    if kind == "xml":
        from sensor.detect.structure.xml_records import XmlReader
        return XmlReader(writer, notes)
    from sensor.detect.structure.sql_records import SqlReader
    return SqlReader(writer, notes)


_TABLES: "weakref.WeakKeyDictionary[Engine, tuple[frozenset[int], Labels]]" = weakref.WeakKeyDictionary()


def _tables(engine: "Engine") -> tuple[frozenset[int], Labels]:
    """Per engine, computed once: the Hyperscan ids that open the structure view, and the labels.

    A part opens at a strong or quasi value or hotword other than a name's: names are everywhere
    in prose (and ``name`` in every form), and a person needs more than a name, which opens it."""
    t = _TABLES.get(engine)
    if t is None:
        opens = CAT_BITS["strong"] | CAT_BITS["quasi"]
        sigs = engine.signatures
        ids = ([i for i, p in enumerate(engine.patterns) if p.cat & opens and sigs[p.sig].kind != "name"]
               + [engine.hot_base + k for k, si in enumerate(engine.hot_sig)
                  if CAT_BITS[sigs[si].category] & opens and sigs[si].kind != "name"])
        t = _TABLES[engine] = (frozenset(ids), Labels.from_signatures(sigs))
    return t


def _opening(engine: "Engine") -> frozenset[int]:
    return _tables(engine)[0]


def _labels(engine: "Engine") -> Labels:
    return _tables(engine)[1]


class _Stopped:
    """Stands for a reader that failed: reads nothing more, keeps the records it had made."""

    def feed(self, data: bytes) -> Iterator[bytes]:
        return iter(())

    def close(self) -> Iterator[bytes]:
        return iter(())


class Shadow:
    """One per exchange scanner: the shadow scanner and the records it adds over the byte view."""

    def __init__(self, parent: "ExchangeScanner"):
        self.parent = parent
        self.child: "ExchangeScanner | None" = None  # made at the first part that opens
        self.writer: LineWriter | None = None
        self.opening = _opening(parent.engine)
        self.closed = [0, 0, 0]                       # records, strong, person added by closed parts
        self.reader: Reader | None = None
        self.pending: list[bytes] | None = None       # the part's bytes until its first hit
        self.pending_size = 0
        self.base = (0, 0, 0, 0, 0, 0)

    def _open_child(self) -> None:
        from sensor.detect.scanner import ExchangeScanner
        p = self.parent
        child = ExchangeScanner(p.engine, p.policy, key=p.key, scratch=p.scratch, mode="lines")
        child._estimate = False                       # a structure record is a row: never estimated
        child._preambles = False                      # SHADOW_HEAD stays the first line: no record is a header
        child._distinct = p._distinct                 # one set of distinct values for both views
        child._samples = p._samples
        child._want_sample = p._want_sample
        child._evidence = p._evidence                 # one response: one set of evidence (precision.py)
        child._homes = HomeRecords(p._evidence)
        self.child = child
        self.writer = LineWriter(_labels(p.engine))

    # -- counts ----------------------------------------------------------------------------------
    def _counts(self) -> tuple[int, int, int, int, int, int]:
        p, c = self.parent, self.child
        if c is None:
            return p._tallies() + (0, 0, 0)
        return p._tallies() + c._tallies()

    def extra(self) -> tuple[int, int, int, int, int]:
        """Records, strong records, person records, strong values, contact values to add."""
        rec, strong, person = self.closed
        if self.reader is not None or self.pending is not None:
            now = self._counts()
            b = self.base
            rec += max(0, (now[3] - b[3]) - (now[0] - b[0]))
            strong += max(0, (now[4] - b[4]) - (now[1] - b[1]))
            person += max(0, (now[5] - b[5]) - (now[2] - b[2]))
        c = self.child
        return (rec, strong, person) + ((c._strong_values, c._contact_values) if c is not None else (0, 0))

    # -- parts -----------------------------------------------------------------------------------
    def begin(self, kind: str) -> None:
        self.kind = kind
        self.base = self._counts()
        self.pending = []
        self.pending_size = 0
        self.reader = None

    def _failed(self, e: Exception) -> None:
        """A reader bug must not stop the scan: the part keeps its byte view, and the note says so
        (the exception's type only: its text could quote the document)."""
        self.parent.result.notes.append(f"structure: {self.kind} reader stopped ({type(e).__name__});"
                                        " records from the byte view")
        self.reader = _Stopped() if self.reader is not None else None
        self.pending = None

    def feed(self, data: bytes, hits: list[tuple[int, int]]) -> None:
        try:
            self._feed(data, hits)
        except Exception as e:  # noqa: BLE001 - see _failed
            self._failed(e)

    def _feed(self, data: bytes, hits: list[tuple[int, int]]) -> None:
        """``hits`` are the byte view's Hyperscan hits in ``data``: the reader starts at the first
        one that could belong to a person (a strong or quasi value, or such a signature's hotword)."""
        if self.pending is not None:
            hit = bool(hits) and not self.opening.isdisjoint([i for i, _ in hits])
            self.pending.append(data)
            self.pending_size += len(data)
            if not hit:
                if self.pending_size > WHOLE_LIMIT:
                    self.pending = None          # 8 MiB without a single hit: nothing to rebuild
                return
            data = b"".join(self.pending)
            self.pending = None
            if self.child is None:
                self._open_child()
            self.base = self.base[:3] + self._counts()[3:]
            self.reader = _reader(self.kind, self.writer, self.parent.result.notes)
            self.child.begin_part("lines")
            self.child.feed(SHADOW_HEAD)
        if self.reader is not None:
            self._write(self.reader.feed(data))

    def _write(self, lines: Iterator[bytes]) -> None:
        chunk: list[bytes] = []
        size = 0
        for ln in lines:
            chunk.append(ln)
            size += len(ln)
            if size >= 1 << 16:
                self.child.feed(b"".join(chunk))
                chunk, size = [], 0
        if chunk:
            self.child.feed(b"".join(chunk))

    def close(self) -> None:
        if self.reader is not None:
            try:
                self._write(self.reader.close())
            except Exception as e:  # noqa: BLE001 - see _failed
                self._failed(e)
            if self.child._stream is not None:
                self.child._close_stream()
            self.closed = list(self.extra()[:3])
        self.reader = None
        self.pending = None
