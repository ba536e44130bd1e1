"""Records from a SQL dump: each tuple of ``INSERT ... VALUES (...), (...)`` is a record.

Column names come from the INSERT's own column list, else from the ``CREATE TABLE`` of that table
seen earlier in the dump. Statements are read as they complete (a ``;`` at the end of a line), so
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

    def _statement(self, stmt: str, out: list[bytes]) -> None:
        m = _INSERT.search(stmt)
        if m is None:
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

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self.dead:
            return iter(())
        buf = self.rest + data
        last = None
        for last in _END.finditer(buf):
            pass
        if last is None:
            self.rest = buf
            if len(buf) > MAX_STATEMENT:
                self.dead = True
                self.rest = b""
                self.notes.append("structure: SQL statement over 16 MiB; records from the byte view")
            return iter(())
        self.rest = buf[last.end():]
        return self._run(buf[:last.end()])

    def _run(self, text: bytes) -> Iterator[bytes]:
        out: list[bytes] = []
        s = text.decode("utf-8", "replace")
        start = 0
        for m in _END.finditer(text):
            pass
        for stmt in re.split(r";[ \t]*\r?\n", s):
            if stmt.strip():
                self._statement(stmt, out)
        return iter(out)

    def close(self) -> Iterator[bytes]:
        rest, self.rest = self.rest, b""
        return self._run(rest) if rest.strip() and not self.dead else iter(())
