"""Base64 documents inside text: JSON/XML/HTML string values, ``data:`` URIs, bare runs.

A web app that serves ``{"file": "UEsDB..."}`` or ``<a href="data:text/csv;base64,...">`` ships a
whole document that the text scanner cannot read. :class:`Base64Finder` watches the text stream
beside the scanner (the text itself is scanned unchanged) and decodes every run of at least
:data:`MIN_RUN` base64 characters as it streams:

- a one-pattern Hyperscan block scan (``[base64]{256}``, first match only) tells whether a chunk
  holds a run at all, so benign text pays a few percent of what the scanner costs; only chunks
  that do are classified with ``bytes.translate`` + ``find``. A run cut by a chunk boundary
  continues into the next chunk, and a shorter tail is carried over (at most ``MIN_RUN - 1``
  bytes) until it is known to be long enough;
- ordinary tokens, hashes and separator lines are not decoded: a run shorter than 256
  characters, one whose first 256 characters are all hex digits (a digest), or use fewer than 8
  distinct symbols (``=====`` rules), is left alone; so is a decoded image or font (their magic
  bytes);
- JSON escapes inside a string (``\\/``, ``\\n`` line wraps, ``\\u003d``) and the URL-safe alphabet
  are undone before decoding;
- base64 wrapped into lines as MIME, PEM and XML serialisers write it (``\n``, ``\r\n`` or
  ``&#13;\n`` after every 64 or 76 characters) is joined back first: a line break counts as part of
  the run when at least :data:`WRAP_MIN` base64 characters come before it and one comes right after
  it (a second Hyperscan pattern finds such breaks; ordinary text, whose lines hold blanks, has
  none). In XML (``<?xml`` or ``xmlns`` up front) the next line may be indented, as pretty-printers
  write an element's text: the blanks go with the break. The joining only feeds the run finder:
  the text itself is scanned as it came;
- the decoded bytes go through a :class:`~sensor.decode.containers.Sniffer` one level deeper, so a
  base64 zip, xlsx, PDF, gzip or CSV is read as such, metered by the body's
  :class:`~sensor.decode.limits.Budget` (output size, ratio, depth) like any other decoding;
- what they produce is recorded (memory up to 8 MiB, then a temporary file) and scanned as parts
  of their own after the text that carried them, so the text's records are not cut in two.

A corrupt embedded document gets a ``decode-error:base64`` note and the rest of the body goes on;
a decode limit stops the body as every limit does, after what was decoded has been scanned.
"""
from __future__ import annotations

import binascii
import threading
from typing import TYPE_CHECKING

import hyperscan as hs

from sensor.decode.limits import CorruptInput, LimitExceeded
from sensor.detect.scratch import block_ends as _ends

if TYPE_CHECKING:
    from sensor.decode.containers import PartRecorder, Sniffer

MIN_RUN = 256                      # base64 characters before a run is decoded
WRAP_MIN = 40                      # base64 characters before a line break that continues a run
MIN_SYMBOLS = 8                    # distinct characters among the first MIN_RUN (a bomb's base64 has ~12)
_HEX = frozenset(b"0123456789abcdefABCDEF")
_RUN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_=\\"
_CLASS = bytes(0x41 if c in _RUN_CHARS else 0x2E for c in range(256))   # run chars -> "A", others -> "."
_MARK = b"A" * MIN_RUN
_WIDE_CHARS = _RUN_CHARS + b"\r\n&#;"       # ... and what a wrapped run's line breaks are written with
_WIDE = frozenset(bytes([c]) for c in _WIDE_CHARS)
_WIDE_CLASS = bytes(0x41 if c in _WIDE_CHARS else 0x2E for c in range(256))
_URLSAFE = bytes.maketrans(b"-_", b"+/")
# decoded media that cannot hold text worth scanning: images and fonts inlined as data: URIs
_MEDIA = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"wOFF", b"wOF2", b"OTTO", b"\x00\x01\x00\x00",
          b"\x00\x00\x01\x00", b"<svg", b"BM",
          b"\x30\x82", b"\x30\x83")   # DER (a PEM certificate or key, now that wrapped lines are joined)


def _unescape(chars: bytes) -> bytes:
    """Undo the JSON escapes a base64 string can carry (a base64 character is never a backslash)."""
    return (chars.replace(b"\\u003d", b"=").replace(b"\\u003D", b"=").replace(b"\\/", b"/")
            .replace(b"\\n", b"").replace(b"\\r", b"").replace(b"\\", b""))


_PREFILTER: hs.Database | None = None
_PRE_LOCK = threading.Lock()


def _single(expr: bytes, name: str, flags: int = hs.HS_FLAG_SINGLEMATCH) -> hs.Database:
    """A one-pattern block database, compiled on first use (``name``: the module global holding it)."""
    db = globals()[name]
    if db is None:
        with _PRE_LOCK:
            db = globals()[name]
            if db is None:
                db = hs.Database(mode=hs.HS_MODE_BLOCK)
                db.compile(expressions=[expr], ids=[0], flags=[flags])
                globals()[name] = db
    return db


def _has_run(buf: bytes) -> bool:
    """Whether ``buf`` holds MIN_RUN base64 characters in a row (Hyperscan, block mode)."""
    return bool(_ends(_single(rb"[A-Za-z0-9+/=_\-\\]{%d}" % MIN_RUN, "_PREFILTER"), buf))


_ANYFILTER: hs.Database | None = None


_ANYFILTER_XML: hs.Database | None = None
_WIDE_EXPR = rb"[A-Za-z0-9+/=_\-\\\r\n&#;]{%d}" % MIN_RUN


def _may_run(buf: bytes, indented: bool = False) -> bool:
    """Whether ``buf`` holds MIN_RUN characters in a row that could be base64 once wrapped lines
    are joined (line breaks and CR character references count), or, in XML (``indented``), a long
    base64 line followed by an indented one: the one scan a chunk without any base64 pays; joining
    lines costs a second scan, paid only where this one fires."""
    if not indented:
        return bool(_ends(_ANYFILTER or _single(_WIDE_EXPR, "_ANYFILTER"), buf))
    db = _ANYFILTER_XML
    if db is None:
        with _PRE_LOCK:
            db = hs.Database(mode=hs.HS_MODE_BLOCK)
            db.compile(expressions=[_WIDE_EXPR, rb"[A-Za-z0-9+/]{%d}\r?\n[ \t]" % WRAP_MIN], ids=[0, 1],
                       flags=[hs.HS_FLAG_SINGLEMATCH] * 2)
            globals()["_ANYFILTER_XML"] = db
    return bool(_ends(db, buf))


# a line break inside wrapped base64: WRAP_MIN base64 characters, an optional CR (raw or as an XML
# character reference), LF, and one more base64 character (the end offset Hyperscan reports is after it)
_B64 = rb"[A-Za-z0-9+/]"
_WRAP_EXPR = _B64 + rb"{%d}(?:\r|&#13;|&#[xX]0?[dD];)?\n" % WRAP_MIN + _B64
# ... in XML, pretty-printers indent every line of an element's text: blanks may follow the LF
_WRAP_XML_EXPR = _B64 + rb"{%d}(?:\r|&#13;|&#[xX]0?[dD];)?\n[ \t]{0,%d}" % (WRAP_MIN, 64) + _B64
_WRAPDB_XML: hs.Database | None = None
_BREAKS = (b"\r\n", b"&#13;\n", b"&#xD;\n", b"&#xd;\n", b"&#XD;\n", b"&#x0D;\n", b"&#x0d;\n", b"\n")
_BREAK_ENDS = frozenset(bytes([c]) for br in _BREAKS for c in br)
_BREAK_PREFIXES = frozenset(br[:k] for br in _BREAKS for k in range(1, len(br) + 1))
_BREAK_MAX = max(map(len, _BREAKS))
_BREAK_PENULT = frozenset(br[-2:-1] for br in _BREAKS if len(br) > 1)   # the byte before the LF: CR or ';'
_WRAPDB: hs.Database | None = None


def _on_break(i: int, start: int, end: int, flags: int, ctx: list) -> None:
    ctx.append(end)


def _break_ends(buf: bytes, indented: bool) -> list[int]:
    """End offsets (one past the next line's first character) of every wrapped-line break in ``buf``."""
    if indented:
        return _ends(_single(_WRAP_XML_EXPR, "_WRAPDB_XML", 0), buf, _on_break)
    return _ends(_single(_WRAP_EXPR, "_WRAPDB", 0), buf, _on_break)


def _held(buf: bytes, indented: bool = False) -> int:
    """How many trailing bytes of ``buf`` may be a line break whose next character is still to come
    (with the indentation after it, in XML)."""
    if indented and buf[-1:] in b" \t":
        k = len(buf.rstrip(b" \t"))
        if len(buf) - k <= 64 and buf[k - 1:k] == b"\n":
            return len(buf) - k + _held(buf[:k])
        return 0
    if buf[-1:] not in _BREAK_ENDS:
        return 0
    for k in range(min(len(buf), _BREAK_MAX), 0, -1):     # the longest first: a few set look-ups
        if buf[-k:] in _BREAK_PREFIXES:
            return k
    return 0


class _Unwrap:
    """Joins base64 lines back across chunk boundaries (module docstring): keeps the last
    :data:`WRAP_MIN` bytes it passed on as context, and holds back a possible line break until the
    character after it is known."""

    def __init__(self, indented: bool = False) -> None:
        self.indented = indented
        self.ctx = b""
        self.hold = b""

    def write(self, data: bytes) -> bytes:
        buf = self.ctx + self.hold + data
        h = _held(buf, self.indented)
        work = buf[:len(buf) - h] if h else buf
        self.hold = buf[len(work):]
        out = self._join(work)[len(self.ctx):]
        self.ctx = (self.ctx + out)[-WRAP_MIN:]
        return out

    def flush(self) -> bytes:
        out, self.hold = self.hold, b""
        return out

    def _join(self, work: bytes) -> bytes:
        if b"\n" not in work:
            return work
        ends = _break_ends(work, self.indented)
        if not ends:
            return work
        pieces = []
        pos = 0
        for e in ends:
            nl = work.rfind(b"\n", 0, e - 1)           # the LF; what comes before it is the rest of the break
            s = nl
            if work[nl - 1:nl] in _BREAK_PENULT:      # else a bare LF (most breaks): no other to try
                for br in _BREAKS:
                    if work.startswith(br, nl + 1 - len(br)):
                        s = nl + 1 - len(br)
                        break
            pieces.append(work[pos:s])
            pos = e - 1                              # the next line's first base64 character
        pieces.append(work[pos:])
        return b"".join(pieces)


class _Run:
    """One base64 run being decoded into a sniffer of its own."""

    def __init__(self, finder: "Base64Finder", first: bytes):
        self.f = finder
        self.rest = b""
        symbols = set(first[:MIN_RUN])
        self.skip = len(symbols) < MIN_SYMBOLS or symbols <= _HEX
        self.head: bytes | None = b""          # first decoded bytes, until the media check is made
        self.sniffer: Sniffer | None = None

    def write(self, chars: bytes) -> None:
        if self.skip or not chars:
            return
        chars = self.rest + chars
        tail = b""
        if b"\\" in chars:
            b = chars.rfind(b"\\", max(0, len(chars) - 6))
            if b >= 0:                           # an escape the chunk may have cut: wait for the rest
                chars, tail = chars[:b], chars[b:]
            chars = _unescape(chars)
        chars = chars.replace(b"=", b"").translate(_URLSAFE)
        n = len(chars) & ~3
        self.rest = chars[n:] + tail
        if n:
            self._decoded(chars[:n])

    def _decoded(self, chars: bytes) -> None:
        try:
            out = binascii.a2b_base64(chars)
        except binascii.Error:
            raise CorruptInput("base64", "invalid base64 run") from None
        if self.head is not None:
            self.head += out
            if len(self.head) < 8:
                return
            out, self.head = self.head, None
            if out.startswith(_MEDIA):
                self.skip = True
                return
            self.sniffer = self.f.open_part()
        self.f.budget.take(len(out))
        self.sniffer.write(out)  # type: ignore[union-attr]

    def close(self) -> None:
        if not self.skip:
            rest = _unescape(self.rest).replace(b"=", b"").translate(_URLSAFE)
            if len(rest) % 4 >= 2:
                self._decoded(rest + b"=" * (4 - len(rest) % 4))
            if self.head:                       # a document shorter than the media check
                head, self.head = self.head, None
                if not head.startswith(_MEDIA):
                    self.sniffer = self.f.open_part()
                    self.f.budget.take(len(head))
                    self.sniffer.write(head)
        if self.sniffer is not None:
            self.sniffer.close()


class Base64Finder:
    """Finds base64 runs in a text stream and decodes them into recorded parts (module docstring)."""

    def __init__(self, sniffer: "Sniffer"):
        self.s = sniffer
        self.budget = sniffer.budget
        self.enabled = sniffer.depth + 1 <= sniffer.budget.limits.max_depth
        self._carry = b""
        self._run: _Run | None = None
        self._parts: PartRecorder | None = None
        self._unwrap: _Unwrap | None = None   # made on the first chunk: is the text XML?
        self._xml = False
        self._raw_tail = b""             # the last MIN_RUN - 1 bytes as they came (for _may_run across chunks)
        self._tail_run = 0               # run characters at the end of a quiet chunk (its edge, cheaply)
        self.count = 0

    def open_part(self) -> "Sniffer":
        from sensor.decode.containers import PartRecorder, Sniffer
        if self._parts is None:
            self._parts = PartRecorder()
        self.count += 1
        name = f"{self.s.name or 'body'}#base64-{self.count}"
        self._parts.begin_part(None, name)
        return Sniffer(self._parts, self.budget, self.s.depth + 1, name, self.s.notes, self.s.stop)

    def write(self, data: bytes) -> None:
        if not self.enabled or not data:
            return
        try:
            if self._unwrap is None:
                head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n")
                self._xml = head.startswith(b"<?xml") or (head.startswith(b"<") and b"xmlns" in head
                                                          and not head[:15].lower().startswith((b"<!doctype", b"<html")))
                self._unwrap = _Unwrap(self._xml)
            tail, xml = self._raw_tail, self._xml
            edge = tail[-1:] in _WIDE and (data[:1] in _WIDE or (xml and data[:1] in b" \t"))
            if edge and not xml:                     # run characters on both sides: how many in a row?
                lead = data[:MIN_RUN].translate(_WIDE_CLASS).find(b".")
                edge = self._tail_run + (MIN_RUN if lead < 0 else lead) >= MIN_RUN
            if (len(data) >= MIN_RUN and self._run is None and not _may_run(data, xml)
                    and not (edge and _may_run(tail + data[:MIN_RUN - 1], xml))):
                # no run overlaps this chunk: all it leaves for the next one (a run's start, a line
                # break) is its last stretch of run characters, shorter than a run
                self._raw_tail = data[1 - MIN_RUN:]
                t = data[-MIN_RUN:]
                seg = t[t.translate(_WIDE_CLASS).rfind(b".") + 1:]
                self._tail_run = len(seg)
                unwrap = self._unwrap
                if seg and seg[-1:] not in _BREAK_ENDS and b"\n" not in seg:
                    # what _Unwrap.write(seg) does from empty context when seg has no line break
                    # (the common case): nothing held back, nothing joined
                    unwrap.ctx, unwrap.hold = seg[-WRAP_MIN:], b""
                    self._carry = seg[seg.translate(_CLASS).rfind(b".") + 1:]
                else:
                    unwrap.ctx = unwrap.hold = self._carry = b""
                    if seg:
                        out = unwrap.write(seg)
                        self._carry = out[out.translate(_CLASS).rfind(b".") + 1:]
                return
            self._tail_run = MIN_RUN                 # not counted here: the next chunk scans its edge
            self._raw_tail = (tail + data)[1 - MIN_RUN:] if len(data) < MIN_RUN - 1 else data[1 - MIN_RUN:]
            data = self._unwrap.write(data)
            if data:
                self._write(data)
        except LimitExceeded:
            self._run = None
            self._replay()            # what was decoded is scanned; then the limit stops the body
            raise

    def _write(self, data: bytes) -> None:
        if self._run is not None:
            j = data.translate(_CLASS).find(b".")
            if j < 0:
                self._feed(data)
                return
            self._feed(data[:j])
            self._end_run()
            data = data[j:]
        buf = self._carry + data if self._carry else data
        if not _has_run(buf):
            tail = buf[1 - MIN_RUN:]              # the run a later chunk may continue is shorter than MIN_RUN
            self._carry = tail[tail.translate(_CLASS).rfind(b".") + 1:]
            return
        t = buf.translate(_CLASS)
        pos = 0
        while True:
            i = t.find(_MARK, pos)
            if i < 0:
                break
            j = t.find(b".", i + MIN_RUN)
            self._run = _Run(self, buf[i:i + MIN_RUN])
            if j < 0:
                self._feed(buf[i:])
                self._carry = b""
                return
            self._feed(buf[i:j])
            self._end_run()
            pos = j
        k = t.rfind(b".") + 1
        self._carry = buf[max(k, pos):] if len(buf) - k < MIN_RUN else b""

    def _feed(self, chars: bytes) -> None:
        run = self._run
        try:
            run.write(chars)  # type: ignore[union-attr]
        except CorruptInput as e:
            self._corrupt(run, e)  # type: ignore[arg-type]

    def _end_run(self) -> None:
        run, self._run = self._run, None
        if run is not None:
            try:
                run.close()
            except CorruptInput as e:
                self._corrupt(run, e)

    def _corrupt(self, run: _Run, e: CorruptInput) -> None:
        """A corrupt embedded document: noted; its remaining characters are consumed, not decoded,
        and the rest of the body goes on."""
        run.skip = True
        note = e.note if e.reason == "base64" else f"decode-error:base64 (embedded {e.note})"
        if note not in self.s.notes:
            self.s.notes.append(note)

    def _replay(self) -> None:
        parts, self._parts = self._parts, None
        if parts is None:
            return
        try:
            while not self.s.stop() and parts.replay_some(self.s.out, 1 << 30, self.budget.limits.piece):
                pass
        finally:
            parts.close()

    def salvage(self) -> None:
        """The body stopped elsewhere (a limit in front of this text): scan what was decoded."""
        self._run = None
        self._note()
        self._replay()

    def _note(self) -> None:
        if self.count:
            self.s.notes.append(f"base64:{self.count} embedded document(s) decoded and scanned")

    def close(self) -> None:
        """End of the text: finish the open run, then scan what the runs decoded."""
        if self.enabled:
            try:
                rest = self._unwrap.flush() if self._unwrap is not None else b""
                if rest:
                    self._write(rest)
                self._end_run()
            except LimitExceeded:
                self._replay()
                raise
        self._note()
        self._replay()
