"""Containers found by magic bytes: gzip, zstd, xz and bzip2 files, zip and the zip-based office
formats, PDF, Parquet and Arrow IPC tables, legacy ``.xls`` workbooks, UTF-16 text; and base64 documents inside text.

A zip cannot be read in order (its directory is at the end), so it is spooled — in memory up to
8 MiB, then to a temporary file, never beyond ``max_container_bytes`` — and read when complete
(in a thread, for the taps: see :class:`Spool`).
A PDF likewise (its cross-reference table is at the end, and its text sits in compressed content
streams drawn through font encodings): it is spooled the same way and its text is extracted page
by page with pypdf and its printed rows rebuilt from text positions (:mod:`sensor.decode.pdfrows`).
Office files are turned back into text that keeps their structure: spreadsheet rows become
tab-separated lines (shared strings resolved), document paragraphs and table rows become lines,
so that the scanner sees records and header columns as it does in a CSV.
"""
from __future__ import annotations

import datetime as dt
import re
import tempfile
import zipfile
import zlib
import weakref
from typing import IO, Callable, Iterator, Protocol
from xml.etree.ElementTree import ParseError, iterparse

from sensor.decode.encodings import Bzip2Decoder, GzipDecoder, XzDecoder, ZstdDecoder
from sensor.decode.limits import Budget, CorruptInput, DecodeProblem, LimitExceeded
from sensor.decode.pdfrows import PageRows
from sensor.decode.text import Transcoder, sniff_wide_text

PDF_MAGIC = b"%PDF-"
ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
XZ_MAGIC = b"\xfd7zXZ\x00"
_BZIP2_BLOCK = b"\x31\x41\x59\x26\x53\x59"      # "BZh" + level, then the first block's magic (pi)
_BZIP2_EMPTY = b"\x17\x72\x45\x38\x50\x90"      # ... or the end-of-stream magic (sqrt pi)
PARQUET_MAGIC = b"PAR1"
ARROW_MAGIC = b"ARROW1\x00\x00"
OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"   # compound file: .xls (and .doc/.ppt/.msg)
SPOOL_MEMORY = 8 << 20
SNIFF_HEAD = 64
UTF8_BOM = b"\xef\xbb\xbf"


class PartSink(Protocol):
    """The scanner side: a new part starts a fresh stream (new file in an archive)."""

    def begin_part(self, mode: str | None = None, name: str | None = None) -> None: ...
    def feed(self, data: bytes) -> object: ...


class Sniffer:
    """Looks at the first bytes of a stream and routes it: container, gzip, UTF-16 or text.

    ``charset`` is the codec the response declares when it is not ASCII-compatible (see
    :mod:`sensor.decode.text`): text in it is transcoded; a container's magic bytes still win."""

    def __init__(self, out: PartSink, budget: Budget, depth: int = 0, name: str | None = None,
                 notes: list[str] | None = None, stop: Callable[[], bool] = lambda: False,
                 charset: str | None = None):
        self.out = out
        self.budget = budget
        self.depth = depth
        self.name = name
        self.notes = notes if notes is not None else []
        self.stop = stop
        self._head = b""
        self._route: object = None
        self.charset = charset
        self.kind = "unknown"

    @property
    def route(self) -> object:
        return self._route

    @property
    def held(self) -> int:
        """Bytes held until the route can be chosen (the first ``SNIFF_HEAD``), not yet passed on."""
        return len(self._head)

    def write(self, data: bytes) -> None:
        if self._route is None:
            self._head += data
            if len(self._head) < SNIFF_HEAD + len(UTF8_BOM):
                return
            data, self._head = _without_bom(self._head), b""
            self._choose(data[:SNIFF_HEAD])
        self._route.write(data)  # type: ignore[attr-defined]

    def close(self) -> None:
        if self._route is None:
            data, self._head = _without_bom(self._head), b""
            self._choose(data[:SNIFF_HEAD])
            if data:
                self._route.write(data)  # type: ignore[attr-defined]
        self._route.close()  # type: ignore[attr-defined]

    def salvage(self) -> None:
        """Decoding stopped (a limit or corrupt input): base64 documents already decoded from this
        stream's text are scanned all the same, as everything else decoded before the stop was."""
        route = self._route
        while isinstance(route, CompressedFile):
            route = route.sink._route
        if isinstance(route, _Text):
            route.finder.salvage()

    def _choose(self, magic: bytes) -> None:
        # The route needs this sniffer back (its out, budget, notes, stop): a weak proxy, so that
        # sniffer -> route -> sniffer is no reference cycle and an exchange's decoders are freed by
        # refcount when it ends, not by a cyclic GC pass on whichever thread allocates next (the
        # event loop: issue 19). The route never outlives its sniffer, which owns it.
        me = weakref.proxy(self)
        if magic.startswith(ZIP_MAGIC) or magic.startswith(EMPTY_ZIP_MAGIC):
            self.budget.check_depth(self.depth + 1)
            self.kind = "zip"
            self._route = ZipSpool(me)
        elif magic.startswith(PDF_MAGIC):
            self.budget.check_depth(self.depth + 1)
            self.kind = "pdf"
            self._route = PdfSpool(me)
        elif magic.startswith(PARQUET_MAGIC) or magic.startswith(ARROW_MAGIC):
            self.budget.check_depth(self.depth + 1)
            from sensor.decode.columnar import ColumnarSpool   # pyarrow loads only when a table comes
            self._route = ColumnarSpool(me, "parquet" if magic.startswith(PARQUET_MAGIC) else "arrow")
            self.kind = self._route.kind
        elif magic.startswith(OLE2_MAGIC):
            self.budget.check_depth(self.depth + 1)
            from sensor.decode.xls import XlsSpool          # xlrd loads only when a workbook comes
            self.kind = "xls"
            self._route = XlsSpool(me)
        elif (file_kind := _compressed_kind(magic)) is not None:
            self.budget.check_depth(self.depth + 1)
            self.kind = file_kind
            inner = Sniffer(self.out, self.budget, self.depth + 1, self.name, self.notes, self.stop)
            self._route = COMPRESSED_FILES[file_kind](inner, self.budget, self.notes)
        elif self.charset is not None and (b"\0" in magic or not self.charset.startswith(("utf-16", "utf-32"))):
            self.kind = "text"
            self._route = Transcoder(self.out, self.charset)
        elif (codec := sniff_wide_text(magic)) is not None:
            self.kind = "utf-16"
            self._route = Transcoder(self.out, codec)
        else:
            self.kind = "text"
            self._route = _Text(me)


def _without_bom(head: bytes) -> bytes:
    """A stream's first bytes without a UTF-8 byte order mark. Windows tools write one before
    CSV, JSON and XML; left in, it hid the text's shape: JSON and XML read as prose (a roster in
    JSON passed, a public register in XML tripped on its 300 businesses), a fixed-width table lost
    its header. It carries no data, and the same content with or without it reads the same."""
    return head[len(UTF8_BOM):] if head.startswith(UTF8_BOM) else head


def _compressed_kind(magic: bytes) -> str | None:
    if magic.startswith(GZIP_MAGIC):
        return "gzip"
    if magic.startswith(ZSTD_MAGIC):
        return "zstd"
    if magic.startswith(XZ_MAGIC):
        return "xz"
    if magic[:3] == b"BZh" and magic[3:4] in b"123456789" and len(magic) >= 4 \
            and magic[4:10] in (_BZIP2_BLOCK, _BZIP2_EMPTY):
        return "bzip2"
    return None


class _Text:
    """Text goes to the scanner as it is; base64 documents inside it are decoded beside it
    (:class:`~sensor.decode.base64parts.Base64Finder`) and scanned as parts after it."""

    def __init__(self, sniffer: Sniffer):
        from sensor.decode.base64parts import Base64Finder
        self.out = sniffer.out
        self.finder = Base64Finder(sniffer)

    def write(self, data: bytes) -> None:
        self.out.feed(data)
        self.finder.write(data)

    def close(self) -> None:
        self.finder.close()


class CompressedFile:
    """Mixin of the compressed *files* (magic bytes, not Content-Encoding): each decodes into a
    sniffer of its own, so a ``.csv.zst`` is read as a CSV and an ``.xlsx.xz`` as a workbook (in
    the worker thread, for the taps: see :meth:`sensor.pipeline.BodyScan.prepare`)."""

    sink: Sniffer
    notes: list[str]
    truncated: bool
    name: str

    def close(self) -> None:
        super().close()  # type: ignore[misc]
        if self.truncated:
            self.notes.append(f"truncated:{self.name} (stream ended early; scanned what arrived)")


class GzipFile(CompressedFile, GzipDecoder):
    def __init__(self, sink: Sniffer, budget: Budget, notes: list[str]):
        super().__init__(sink, budget, wbits=31)
        self.notes = notes


class ZstdFile(CompressedFile, ZstdDecoder):
    def __init__(self, sink: Sniffer, budget: Budget, notes: list[str]):
        super().__init__(sink, budget)
        self.notes = notes


class XzFile(CompressedFile, XzDecoder):
    def __init__(self, sink: Sniffer, budget: Budget, notes: list[str]):
        super().__init__(sink, budget)
        self.notes = notes


class Bzip2File(CompressedFile, Bzip2Decoder):
    def __init__(self, sink: Sniffer, budget: Budget, notes: list[str]):
        super().__init__(sink, budget)
        self.notes = notes


COMPRESSED_FILES: dict[str, type[CompressedFile]] = {
    "gzip": GzipFile, "zstd": ZstdFile, "xz": XzFile, "bzip2": Bzip2File}


class PartRecorder:
    """A :class:`PartSink` that keeps what a container produced — parts and their bytes, in memory
    up to 8 MiB, then in a temporary file — so that a thread can read the container while the
    event loop keeps serving, and the loop feeds the scanner afterwards in slices."""

    def __init__(self) -> None:
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)
        self.size = 0
        self._marks: list[tuple[int, str | None, str | None]] = []   # (offset, mode, name) per begin_part
        self._at = 0
        self._next = 0

    def begin_part(self, mode: str | None = None, name: str | None = None) -> None:
        self._marks.append((self.size, mode, name))

    def feed(self, data: bytes) -> None:
        self.file.write(data)
        self.size += len(data)

    def replay_some(self, out: PartSink, limit: int, piece: int) -> bool:
        """Give ``out`` the same parts, about ``limit`` more bytes of them; False once all is given."""
        marks, fed = self._marks, 0
        self.file.seek(self._at)
        while fed < limit:
            while self._next < len(marks) and marks[self._next][0] == self._at:
                out.begin_part(marks[self._next][1], marks[self._next][2])
                self._next += 1
            end = marks[self._next][0] if self._next < len(marks) else self.size
            if end == self._at:
                return False
            data = self.file.read(min(piece, end - self._at))
            self._at += len(data)
            fed += len(data)
            out.feed(data)
        return True

    def close(self) -> None:
        self.file.close()


class Spool:
    """A container that can only be read whole: collected (bounded: memory, then disk), then read.

    Reading it is slow pure-Python work (XML of a spreadsheet, PDF content streams: about 1 s per
    MB of xlsx here), so it comes in two ways. Inline (:meth:`close` alone, ``dlp-sensor scan``):
    straight into the scanner, which stops reading at a trip. For a tap: :meth:`extract` touches no
    Hyperscan state and runs in a thread, recording the parts; then :meth:`scan_some` feeds them
    to the scanner in slices with the event loop given back between them, and :meth:`close` feeds
    the rest and raises what went wrong while reading (after what was read has been scanned)."""

    kind = "container"

    def __init__(self, sniffer: Sniffer):
        self.s = sniffer
        self.size = 0
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)
        self._parts: PartRecorder | None = None
        self._error: DecodeProblem | None = None

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.s.budget.limits.max_container_bytes:
            raise LimitExceeded("container-bytes",
                                f"{self.kind} larger than {self.s.budget.limits.max_container_bytes} bytes")
        self.file.write(data)

    @property
    def extracted(self) -> bool:
        return self._parts is not None

    def extract(self) -> None:
        self._parts = PartRecorder()
        try:
            self.file.seek(0)
            self._read(self._parts)
        except DecodeProblem as e:
            self._error = e
        finally:
            self.file.close()

    def scan_some(self, limit: int) -> bool:
        """Feed about ``limit`` more bytes of what :meth:`extract` read; False once all is fed."""
        assert self._parts is not None
        return self._parts.replay_some(self.s.out, limit, self.s.budget.limits.piece)

    def close(self) -> None:
        try:
            if self._parts is None:
                self.file.seek(0)
                self._read(self.s.out)
            else:
                while not self.s.stop() and self.scan_some(1 << 30):
                    pass
                if self._error is not None:
                    raise self._error
        finally:
            self.file.close()
            if self._parts is not None:
                self._parts.close()

    def _read(self, out: PartSink) -> None:   # pragma: no cover - abstract
        raise NotImplementedError


class PdfSpool(Spool):
    """Text of every page, one line per printed row, rebuilt from the positions of the text runs
    (a table row is one line, one record, whatever order its text objects are drawn in).

    pypdf is pure Python (~0.5 MB/s of text-heavy PDF here). It caps each stream's decompression
    itself (75 MB by default; a bomb is a decode-limit note), and the text is metered against the
    body's budget. Encrypted PDFs are opened with the empty user password (the common "no password
    to open, restrictions only" case); others get a note and are not read."""

    kind = "pdf"

    def _read(self, out: PartSink) -> None:
        import logging

        import pypdf
        from pypdf.errors import LimitReachedError, PyPdfError
        logging.getLogger("pypdf").setLevel(logging.ERROR)   # its warnings quote object data
        s = self.s
        try:
            reader = pypdf.PdfReader(self.file, strict=False)
            if reader.is_encrypted and not reader.decrypt(""):
                s.notes.append("decode-error:pdf (encrypted with a password; not read)")
                return
            pages = reader.pages
            if len(pages) > s.budget.limits.max_members:
                raise LimitExceeded("members", f"more than {s.budget.limits.max_members} pages")
            out.begin_part("lines", s.name)

            def emit(lines: list[str]) -> None:
                text = "".join(line + "\n" for line in lines).encode("utf-8", "replace")
                s.budget.take(len(text))
                out.feed(text)

            for page in pages:
                if s.stop():
                    return
                rows = PageRows(emit)
                page.extract_text(visitor_text=rows.visit)
                emit(list(rows.lines()) or [""])
        except LimitReachedError:
            raise LimitExceeded("pdf-stream", "a content stream inflates past pypdf's limit") from None
        except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError,
                RecursionError, zlib.error) as e:
            raise CorruptInput("pdf", f"unreadable PDF ({type(e).__name__})") from None


class ZipSpool(Spool):
    """Each member of a zip, office formats as text; members that are containers are read in turn."""

    kind = "zip"

    def _read(self, out: PartSink) -> None:
        s = self.s
        try:
            zf = zipfile.ZipFile(self.file)
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise CorruptInput("zip", f"unreadable zip ({e})") from None
        with zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            if len(infos) > s.budget.limits.max_members:
                raise LimitExceeded("members", f"more than {s.budget.limits.max_members} members")
            names = {i.filename for i in infos}
            if "xl/workbook.xml" in names:
                s.kind = "xlsx"
                _xlsx(zf, names, s, out)
            elif "word/document.xml" in names:
                s.kind = "docx"
                _office_text(zf, "word/document.xml", s, out)
            elif "content.xml" in names and "mimetype" in names:
                s.kind = "odf"
                _office_text(zf, "content.xml", s, out)
            else:
                for info in infos:
                    if s.stop():
                        return
                    inner = Sniffer(out, s.budget, s.depth + 1, info.filename, s.notes, s.stop)
                    out.begin_part(None, info.filename)
                    for piece in _member_pieces(zf, info, s):
                        inner.write(piece)
                    inner.close()


def _member_pieces(zf: zipfile.ZipFile, info: zipfile.ZipInfo, s: Sniffer) -> Iterator[bytes]:
    """A member's bytes in pieces, metered: a lying header or a bomb cannot run away."""
    lim = s.budget.limits
    if info.compress_size and info.file_size / info.compress_size > lim.max_ratio and info.file_size > lim.ratio_grace_bytes:
        raise LimitExceeded("ratio", f"member declares {info.file_size // max(info.compress_size, 1)}:1 expansion")
    try:
        with zf.open(info) as fh:
            while True:
                piece = fh.read(lim.piece)
                if not piece:
                    return
                s.budget.take(len(piece))
                yield piece
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise CorruptInput("zip", f"member {len(s.notes)} unreadable ({type(e).__name__}: {e})") from None
    except NotImplementedError as e:
        s.notes.append(f"decode-error:zip (member skipped: {e})")


class _MeteredReader:
    """A file-like view of a zip member for XML parsers, metered against the budget."""

    def __init__(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, s: Sniffer):
        self._it = _member_pieces(zf, info, s)
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            piece = next(self._it, None)
            if piece is None:
                break
            self._buf += piece
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out


class _Lines:
    """Batch text lines into pieces before they reach the scanner."""

    def __init__(self, out: PartSink, piece: int):
        self.out = out
        self.piece = piece
        self.parts: list[str] = []
        self.size = 0

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)
        if self.size >= self.piece:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            self.out.feed("".join(self.parts).encode("utf-8", "replace"))
            self.parts, self.size = [], 0


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


_COL = re.compile(r"[A-Z]+")


def _col_index(ref: str | None, fallback: int) -> int:
    m = _COL.match(ref or "")
    if not m:
        return fallback
    n = 0
    for ch in m.group():
        n = n * 26 + ord(ch) - 64
    return n - 1


def _parse(reader: _MeteredReader, what: str) -> Iterator[tuple[str, object]]:
    try:
        yield from iterparse(reader, events=("start", "end"))  # type: ignore[arg-type]
    except ParseError as e:
        raise CorruptInput(what, f"malformed XML ({e.msg if hasattr(e, 'msg') else e})") from None


# Built-in number formats that show a date (ECMA-376 18.8.30; 27-36 and 50-58 are the East Asian
# locales' date formats). 18-21 and 45-47 are times of day: those stay numbers.
_BUILTIN_DATE_FORMATS = frozenset([14, 15, 16, 17, 22, *range(27, 37), *range(50, 59)])
_FORMAT_LITERALS = re.compile(r'"[^"]*"|\\.|\[[^\]]*\]')     # quoted text, escapes, [colour]/[h] sections


def _is_date_format(code: str) -> bool:
    code = _FORMAT_LITERALS.sub("", code).lower()
    return "d" in code or "y" in code


_EXCEL_1900 = dt.date(1899, 12, 30)        # day 0 of the 1900 date system, as Excel counts past 1900-03-01
_EXCEL_1904 = dt.date(1904, 1, 1)


def _date_styles(zf: zipfile.ZipFile, names: set[str], s: Sniffer) -> frozenset[str]:
    """Indexes of the cell styles (``cellXfs``) whose number format shows a date: a date of birth is
    stored as a day count (33620) and only its style says it is 1992-01-17. As strings: cells name
    their style by its ``s`` attribute."""
    if "xl/styles.xml" not in names:
        return frozenset()
    custom: dict[int, bool] = {}
    styles: list[bool] = []
    in_cell_xfs = False
    for ev, el in _parse(_MeteredReader(zf, zf.getinfo("xl/styles.xml"), s), "xlsx"):
        tag = _local(el.tag)  # type: ignore[attr-defined]
        if tag == "cellXfs":
            in_cell_xfs = ev == "start"
        elif ev == "start" and tag == "numFmt":
            try:
                custom[int(el.get("numFmtId", ""))] = _is_date_format(el.get("formatCode", ""))  # type: ignore[attr-defined]
            except ValueError:
                pass
        elif ev == "start" and tag == "xf" and in_cell_xfs:
            try:
                fmt = int(el.get("numFmtId", "0"))  # type: ignore[attr-defined]
            except ValueError:
                fmt = 0
            styles.append(custom.get(fmt, fmt in _BUILTIN_DATE_FORMATS))
    return frozenset(str(i) for i, is_date in enumerate(styles) if is_date)


def _epoch(zf: zipfile.ZipFile, names: set[str], s: Sniffer) -> dt.date:
    """Day 0 of the workbook's serial dates: 1899-12-30 (the 1900 system, as Excel counts it once
    past its phantom 1900-02-29), or 1904-01-01 for workbooks saved with ``date1904``."""
    if "xl/workbook.xml" in names:
        for ev, el in _parse(_MeteredReader(zf, zf.getinfo("xl/workbook.xml"), s), "xlsx"):
            if ev == "start" and _local(el.tag) == "workbookPr":  # type: ignore[attr-defined]
                if el.get("date1904", "").lower() in ("1", "true"):  # type: ignore[attr-defined]
                    return _EXCEL_1904
                break
    return _EXCEL_1900


def _serial_date(value: str, epoch: dt.date) -> str | None:
    """An ISO date for a day count in a date-styled cell; None when it is not a plausible date."""
    try:
        days = float(value)
    except ValueError:
        return None
    if not 1 <= days < 2958466:                  # 0 and fractions are times of day; 9999-12-31 is the last
        return None
    if epoch == _EXCEL_1900 and days < 61:
        days += 1                                # before Excel's phantom 1900-02-29, day 1 is 1900-01-01
    return (epoch + dt.timedelta(days=int(days))).isoformat()


def _xlsx(zf: zipfile.ZipFile, names: set[str], s: Sniffer, out: PartSink) -> None:
    shared: list[str] = []
    if "xl/sharedStrings.xml" in names:
        buf: list[str] = []
        for ev, el in _parse(_MeteredReader(zf, zf.getinfo("xl/sharedStrings.xml"), s), "xlsx"):
            tag = _local(el.tag)  # type: ignore[attr-defined]
            if ev == "end" and tag == "t":
                buf.append(el.text or "")  # type: ignore[attr-defined]
            elif ev == "end" and tag == "si":
                shared.append("".join(buf).replace("\t", " ").replace("\n", " "))
                buf = []
                el.clear()  # type: ignore[attr-defined]
    sheets = sorted((n for n in names if n.startswith("xl/worksheets/") and n.endswith(".xml")),
                    key=lambda n: (len(n), n))
    try:
        dates = _date_styles(zf, names, s)
        epoch = _epoch(zf, names, s) if dates else _EXCEL_1900
    except CorruptInput:                     # the sheets can still be read; their dates stay day counts
        s.notes.append("decode-error:xlsx (styles or workbook XML malformed: date cells read as numbers)")
        dates, epoch = frozenset(), _EXCEL_1900
    max_cols = 16384
    for sheet in sheets:
        if s.stop():
            return
        out.begin_part("lines", sheet)
        lines = _Lines(out, s.budget.limits.piece)
        row: dict[int, str] = {}
        ctype = None
        ref = None
        style: str | None = None
        value: str | None = None
        for ev, el in _parse(_MeteredReader(zf, zf.getinfo(sheet), s), "xlsx"):
            tag = _local(el.tag)  # type: ignore[attr-defined]
            if ev == "start":
                if tag == "c":
                    ctype, ref, value = el.get("t"), el.get("r"), None  # type: ignore[attr-defined]
                    style = el.get("s")  # type: ignore[attr-defined]
                continue
            if tag in ("v", "t"):
                value = (value or "") + (el.text or "")  # type: ignore[attr-defined]
            elif tag == "c":
                if value is not None:
                    if ctype == "s":
                        try:
                            value = shared[int(value)]
                        except (ValueError, IndexError):
                            value = ""
                    elif ctype in (None, "n") and style in dates:
                        value = _serial_date(value, epoch) or value
                    col = min(_col_index(ref, len(row)), max_cols)
                    row[col] = value.replace("\t", " ").replace("\n", " ")
                el.clear()  # type: ignore[attr-defined]
            elif tag == "row":
                if row:
                    width = max(row) + 1
                    lines.add("\t".join(row.get(i, "") for i in range(width)) + "\n")
                row = {}
                el.clear()  # type: ignore[attr-defined]
        lines.flush()


_PARAGRAPHS = {"p", "h"}                   # docx w:p; odf text:p / text:h
_CELLS = {"tc", "table-cell"}
_ROWS = {"tr", "table-row"}


def _office_text(zf: zipfile.ZipFile, member: str, s: Sniffer, out: PartSink) -> None:
    """Paragraphs become lines; table cells become tab-separated columns of one line per row."""
    out.begin_part("lines", member)
    lines = _Lines(out, s.budget.limits.piece)
    in_cell = 0
    for ev, el in _parse(_MeteredReader(zf, zf.getinfo(member), s), "office"):
        tag = _local(el.tag)  # type: ignore[attr-defined]
        if ev == "start":
            in_cell += tag in _CELLS
            continue
        if tag in _PARAGRAPHS:
            text = "".join(el.itertext()).replace("\t", " ")  # type: ignore[attr-defined]
            lines.add(text + (" " if in_cell else "\n"))
            el.clear()  # type: ignore[attr-defined]
        elif tag in _CELLS:
            in_cell -= 1
            lines.add("\t")
            el.clear()  # type: ignore[attr-defined]
        elif tag in _ROWS:
            lines.add("\n")
            el.clear()  # type: ignore[attr-defined]
    lines.flush()
