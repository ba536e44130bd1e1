r"""Records from a SQL dump: each tuple of ``INSERT ... VALUES (...), (...)`` is a record.

Column names come from the INSERT's own column list, else from the ``CREATE TABLE`` of that table
seen earlier in the dump. PostgreSQL's ``COPY table (columns) FROM stdin;`` rows (tab-separated,
up to ``\.``) are records too. Statements are read as they complete (a ``;`` at the end of a line), so
a dump streams with one statement in memory; tuples and values are cut with C-speed regexes.
"""
from __future__ import annotations

import re
from typing import Iterator

from sensor.detect.structure.records import LineWriter, scalar

MAX_STATEMENT = 16 << 20
_END = re.compile(rb";[ \t]*\r?\n")
_IDENT = r"(?:`[^`]+`|\"[^\"]+\"|\[[^\]]+\]|[\w$]+)"
_NAME = rf"{_IDENT}(?:\s*\.\s*{_IDENT})*"
_CREATE = re.compile(rf"(?is)\bcreate\s+(?:temporary\s+)?table\s+(?:if\s+not\s+exists\s+)?({_NAME})\s*\((.*)\)")
_INSERT = re.compile(rf"(?is)\b(?:insert|replace)\s+(?:ignore\s+)?into\s+({_NAME})\s*(?:\(([^)]*)\))?\s*values\s*")
_COPY = re.compile(rf"(?is)\bcopy\s+({_NAME})\s*(?:\(([^)]*)\))?\s+from\s+stdin")
_TUPLE = re.compile(r"\(((?:'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.)*\"|[^()'\"])*)\)", re.S)
_VALUE = re.compile(r"\s*(?:'((?:[^'\\]|\\.|'')*)'|\"((?:[^\"\\]|\\.)*)\"|([^,]*?))\s*(?:,|$)", re.S)
_SPLIT = re.compile(r",(?![^()]*\))")
_NOT_COLUMN = {"primary", "key", "unique", "constraint", "index", "foreign", "check", "fulltext", "spatial"}


def _ident(s: str) -> str:
    s = s.strip()
    return s[1:-1] if s[:1] in "`\"[" else s


def _table(name: str) -> str:
    return _ident(re.split(r"\s*\.\s*", name.strip())[-1]).lower()


class SqlReader:
    def __init__(self, writer: LineWriter, notes: list[str]):
        self.w = writer
        self.notes = notes
        self.rest = b""
        self.tables: dict[str, list[str]] = {}
        self.dead = False
        self.copy: list[str] | None = None     # columns while inside COPY ... FROM stdin rows

    def _statement(self, stmt: str, out: list[bytes]) -> None:
        m = _INSERT.search(stmt)
        if m is None:
            cp = _COPY.search(stmt)
            if cp:
                self.copy = ([_ident(x) for x in cp.group(2).split(",")] if cp.group(2)
                             else self.tables.get(_table(cp.group(1)), []))
                return
            c = _CREATE.search(stmt)
            if c:
                cols = []
                for part in _SPLIT.split(c.group(2)):
                    tok = part.strip().split(None, 1)
                    if tok and tok[0].lower() not in _NOT_COLUMN:
                        cols.append(_ident(tok[0]))
                self.tables[_table(c.group(1))] = cols
            return
        cols = [_ident(x) for x in m.group(2).split(",")] if m.group(2) else self.tables.get(_table(m.group(1)), [])
        for t in _TUPLE.finditer(stmt, m.end()):
            fields = []
            for k, v in enumerate(_VALUE.finditer(t.group(1))):
                raw = v.group(1) if v.group(1) is not None else v.group(2) if v.group(2) is not None else v.group(3)
                if v.group(3) is not None and raw.upper() in ("NULL", ""):
                    continue
                s = scalar(raw.replace("''", "'").replace("\\'", "'"))
                if s is not None:
                    fields.append((cols[k] if k < len(cols) else "", s))
                if v.end() >= len(t.group(1)):
                    break
            if fields:
                line = self.w.line(fields)
                if line:
                    out.append(line)

    def _copy_row(self, line: bytes, out: list[bytes]) -> None:
        cols = self.copy or []
        fields = []
        for k, raw in enumerate(line.decode("utf-8", "replace").rstrip("\r").split("\t")):
            if raw == "\\N":
                continue
            s = scalar(raw.replace("\\t", " ").replace("\\n", " ").replace("\\\\", "\\"))
            if s is not None:
                fields.append((cols[k] if k < len(cols) else "", s))
        if fields:
            ln = self.w.line(fields)
            if ln:
                out.append(ln)

    def _run(self, buf: bytes, final: bool) -> tuple[list[bytes], int]:
        """Read the complete statements (and COPY rows) in ``buf``; return the records and how far."""
        out: list[bytes] = []
        pos = 0
        n = len(buf)
        while pos < n:
            if self.copy is not None:                  # PostgreSQL COPY ... FROM stdin rows
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    if not final:
                        break
                    nl = n
                line = buf[pos:nl]
                pos = nl + 1
                if line.rstrip(b"\r") == b"\\.":
                    self.copy = None
                elif line:
                    self._copy_row(line, out)
                continue
            m = _END.search(buf, pos)
            end = m.end() if m else (n if final else -1)
            if end < 0:
                break
            self._statement(buf[pos:end].decode("utf-8", "replace"), out)
            pos = end
        return out, pos

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self.dead:
            return iter(())
        buf = self.rest + data
        out, pos = self._run(buf, False)
        self.rest = buf[pos:]
        if len(self.rest) > MAX_STATEMENT:
            self.dead = True
            self.rest = b""
            self.notes.append("structure: SQL statement over 16 MiB; records from the byte view")
        return iter(out)

    def close(self) -> Iterator[bytes]:
        rest, self.rest = self.rest, b""
        if self.dead or not rest.strip():
            return iter(())
        return iter(self._run(rest, True)[0])
