"""Records from fixed-width text whose header line gives the column positions.

The header's words start the columns; every later line is cut at those positions, so values
that touch (``19750314B1234567`` under ``DOB     DL``) are still two fields, each named by its
header word. Streamed line by line.
"""
from __future__ import annotations

import re
from typing import Iterator

from sensor.detect.structure.records import LineReader, LineWriter, scalar

_WORD = re.compile(r"\S+")
_HEADER_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_#./()-]{0,30}")
_DELIMS = re.compile(rb"[,\t;|]")


def header_columns(line: str) -> list[tuple[int, str]] | None:
    """Column starts and names if ``line`` looks like a fixed-width header: identifier-like
    words in at least three columns, columns two spaces or more apart (words one space apart
    are one column's name: ``DATE OF BIRTH``)."""
    words = [(m.start(), m.group()) for m in _WORD.finditer(line)]
    if len(words) < 3 or not all(_HEADER_WORD.fullmatch(w) for _, w in words):
        return None
    cols = [words[0]]
    for start, w in words[1:]:
        s0, name = cols[-1]
        if start - (s0 + len(name)) == 1:
            cols[-1] = (s0, f"{name} {w}")
        else:
            cols.append((start, w))
    return cols if len(cols) >= 3 else None


def sniff_fixed(head: bytes) -> bool:
    lines = head.split(b"\n", 2)
    if len(lines) < 2 or _DELIMS.search(lines[0]):
        return False
    first = lines[0].decode("utf-8", "replace").rstrip("\r")
    cols = header_columns(first)
    if cols is None:
        return False
    second = lines[1].decode("utf-8", "replace").rstrip("\r")
    return len(second) > cols[-1][0]                    # rows reach the last column


class FixedReader(LineReader):
    def __init__(self, writer: LineWriter, notes: list[str]):
        super().__init__(writer, notes)
        self.cols: list[tuple[int, str]] | None = None

    def _lines(self, lines: list[bytes]) -> Iterator[bytes]:
        out = []
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            if self.cols is None:
                self.cols = header_columns(line) or []
                continue
            if not line.strip():
                continue
            fields = []
            cols = self.cols
            for k, (start, name) in enumerate(cols):
                end = cols[k + 1][0] if k + 1 < len(cols) else len(line)
                v = scalar(line[start:end])
                if v is not None:
                    fields.append((name, v))
            if fields:
                ln = self.w.line(fields)
                if ln:
                    out.append(ln)
        return iter(out)

