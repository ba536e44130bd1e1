"""Read the protected table: CSV/TSV, JSON Lines, xlsx, Parquet. Rows come out as dicts.

- CSV/TSV: the ``csv`` module, delimiter sniffed from the first line (tab, comma, semicolon, pipe);
  the first row is the header.
- JSON Lines: one object per line (``.jsonl``/``.ndjson``, or any file whose first byte is ``{``).
- xlsx: read by the sensor's own container reader (``sensor.decode.containers``), which already
  turns a workbook into tab-separated lines with date-styled cells as ISO dates; no extra package.
  The first sheet's first row is the header.
- Parquet: only when ``pyarrow`` is importable (an optional dependency); otherwise a clear error.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Iterator

ROW_ERRORS_SHOWN = 3


class SourceError(ValueError):
    """A source table that cannot be read; the message names the file (never a cell value)."""


def _delimiter(first_line: str) -> str:
    counts = {d: first_line.count(d) for d in ("\t", ",", ";", "|")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _csv_rows(text: Iterator[str] | io.TextIOBase, first: str) -> Iterator[dict[str, object]]:
    reader = csv.DictReader(text, delimiter=_delimiter(first))
    for row in reader:
        yield row


def _xlsx_rows(path: Path) -> Iterator[dict[str, object]]:
    from sensor.decode.containers import Sniffer
    from sensor.decode.limits import Budget, DecodeLimits, DecodeProblem

    class _Collect:
        def __init__(self) -> None:
            self.parts: list[bytes] = []
            self.sheets = 0

        def begin_part(self, mode: str | None = None, name: str | None = None) -> None:
            self.sheets += 1

        def feed(self, data: bytes) -> None:
            if self.sheets == 1:             # the first sheet is the table
                self.parts.append(data)

    sink = _Collect()
    limits = DecodeLimits(max_decoded_bytes=1 << 40, max_ratio=1e12, max_container_bytes=1 << 34)
    sniff = Sniffer(sink, Budget(limits))
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                sniff.write(chunk)
        sniff.close()
    except DecodeProblem as e:
        raise SourceError(f"{path}: cannot read the workbook ({e.note})") from None
    if sniff.kind != "xlsx":
        raise SourceError(f"{path}: not an xlsx workbook")
    text = b"".join(sink.parts).decode("utf-8", "replace")
    yield from csv.DictReader(io.StringIO(text), delimiter="\t")


def _parquet_rows(path: Path) -> Iterator[dict[str, object]]:
    try:
        import pyarrow.parquet as pq  # type: ignore[import-not-found]
    except ImportError:
        raise SourceError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow), "
                          "or export the table as CSV") from None
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=65536):
        yield from batch.to_pylist()


def _magic(path: Path) -> bytes:
    """The first 4 bytes of a source: what kind of table it is, whatever its name says."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4)
    except OSError as e:
        raise SourceError(f"{path}: {e.strerror}") from None


def read_table(path: Path) -> tuple[list[str], Iterator[list]]:
    """(header, rows as lists in header order): the build's fast path (no dict per row for CSV)."""
    path = Path(path)
    suffix, magic = path.suffix.lower(), _magic(path)
    if magic[:2] != b"PK" and magic != b"PAR1" and suffix not in (".xlsx", ".xlsm", ".parquet", ".jsonl", ".ndjson"):
        fh = open(path, encoding="utf-8-sig", errors="replace", newline="")
        first = fh.readline()
        if not first.lstrip().startswith("{"):
            reader = csv.reader(_chain(first, fh), delimiter=_delimiter(first))
            header = next(reader, [])
            return header, _closing(reader, fh)
        fh.close()
    rows = read_rows(path)
    try:
        head = next(rows)
    except StopIteration:
        return [], iter(())
    header = list(head)

    def as_lists() -> Iterator[list]:
        yield [head.get(c) for c in header]
        for r in rows:
            yield [r.get(c) for c in header]
    return header, as_lists()


def _closing(it: Iterator[list], fh) -> Iterator[list]:
    with fh:
        for row in it:
            if row:                          # a blank line is not a data row (as csv.DictReader and Arrow read it)
                yield row


def read_rows(path: Path) -> Iterator[dict[str, object]]:
    """Rows of one source file, as header -> value dicts."""
    path = Path(path)
    suffix, magic = path.suffix.lower(), _magic(path)
    if magic[:2] == b"PK" or suffix in (".xlsx", ".xlsm"):
        yield from _xlsx_rows(path)
        return
    if magic == b"PAR1" or suffix == ".parquet":
        yield from _parquet_rows(path)
        return
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
        first = fh.readline()
        if suffix in (".jsonl", ".ndjson") or first.lstrip().startswith("{"):
            for n, line in enumerate([first] if first else [], 1):
                yield _json_row(path, n, line)
            for n, line in enumerate(fh, 2):
                if line.strip():
                    yield _json_row(path, n, line)
            return
        yield from _csv_rows(_chain(first, fh), first)


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


def _json_row(path: Path, n: int, line: str) -> dict[str, object]:
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise SourceError(f"{path}:{n}: not a JSON object ({e.msg})") from None
    if not isinstance(obj, dict):
        raise SourceError(f"{path}:{n}: a JSON Lines row must be an object")
    return obj
