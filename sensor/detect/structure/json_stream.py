"""JSON documents too large to parse whole, cut into their records as they stream.

A small incremental tokenizer for structure only (strings are skipped whole by one C-speed regex;
only brackets, commas and colons reach Python) cuts out, as soon as each is complete:

- every top-level document after the first (JSON Lines whose lines are too long to sniff);
- every element of the root array, and of an array that is the value of a root key
  (``{"data": [...]}``, ``{"features": [...]}``, ``{"rows": [...]}``);
- every other object value of a root key (``"meta": {...}``), and a root key's short array of
  scalars (``"columns": [...]``), so column names that come before the rows still type them by
  position (a bounded look-behind: the last 64 headers).

Each piece is parsed with orjson and read like the whole-document case. Memory holds one piece
(at most :data:`MAX_PIECE` bytes; a larger one is skipped) and the headers. What this cannot see:
headers that come after their rows, and columnar layouts larger than the whole-document limit.
"""
from __future__ import annotations

import re
from typing import Callable

import orjson

from sensor.detect.structure.json_records import _Walker

MAX_PIECE = 4 << 20
MAX_HEADERS = 64
MAX_HEADER_BYTES = 64 << 10   # a root key's array of scalars up to this size is kept as a header
_TOK = re.compile(rb'"(?:[^"\\]|\\.)*"|"|[{}\[\]:]', re.S)


class JsonSplitter:
    def __init__(self, emit: Callable[[list[tuple[str, str]]], None]):
        self.walker = _Walker(emit)
        self.buf = b""
        self.base = 0                 # absolute offset of buf[0]
        self.stack: list[bytes] = []  # open containers: b"{" or b"["
        self.key: str = ""            # last root key
        self.last_str: bytes | None = None
        self.cap: int | None = None   # absolute start of the piece being cut out
        self.cap_depth = 0
        self.skip = False             # the piece grew past MAX_PIECE: let it go
        self.scanned = 0              # absolute offset up to which buf has been tokenized
        self.arr: int | None = None   # start of a root key's array of scalars (a header, maybe)
        self.roots = 0                # top-level values seen (more than one: JSON Lines)

    def feed(self, data: bytes) -> None:
        buf = self.buf + data
        base = self.base
        stack = self.stack
        pos = self.scanned - base
        for m in _TOK.finditer(buf, pos):
            t = m.group()
            c = t[:1]
            if c == b'"':
                if len(t) == 1:                 # a string that goes on in the next chunk
                    pos = m.start()
                    break
                self.last_str = t
                continue
            pos = m.end()
            if c == b":":
                if len(stack) == 1 and stack[0] == b"{" and self.last_str is not None:
                    try:
                        self.key = orjson.loads(self.last_str)
                    except orjson.JSONDecodeError:
                        self.key = ""
                continue
            if c in b"{[":
                d = len(stack)
                stack.append(c)
                if d == 1 and stack[0] == b"{" and c == b"[":
                    self.arr = base + m.start()
                elif d == 2 and self.arr is not None:
                    self.arr = None              # an array of containers: its elements are cut out
                if d == 0:
                    self.roots += 1
                if self.cap is None and (d == 0 and self.roots > 1          # JSON Lines / concatenated
                                         or d == 1 and stack[0] == b"["
                                         or d == 1 and stack[0] == b"{" and c == b"{"
                                         or d == 2 and stack[0] == b"{" and stack[1] == b"["):
                    self.cap = base + m.start()
                    self.cap_depth = d
                    self.skip = False
                continue
            # closing bracket
            if stack:
                stack.pop()
            if self.arr is not None and len(stack) == 1:
                self._header(buf[self.arr - base:m.end()])
                self.arr = None
            if self.cap is not None and len(stack) == self.cap_depth:
                if not self.skip:
                    self._piece(buf[self.cap - base:m.end()], stack)
                self.cap = None
        else:
            pos = len(buf)
        # keep what a piece in progress (or an unfinished string) still needs
        keep = pos if self.cap is None or self.skip else min(self.cap - base, pos)
        if self.arr is not None:
            if len(buf) - (self.arr - base) > MAX_HEADER_BYTES:
                self.arr = None
            else:
                keep = min(keep, self.arr - base)
        if self.cap is not None and not self.skip and len(buf) - keep > MAX_PIECE:
            self.skip = True
            keep = pos
        self.buf = buf[keep:]
        self.base = base + keep
        self.scanned = base + pos

    def _header(self, raw: bytes) -> None:
        try:
            v = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if isinstance(v, list):
            self.walker.gather(v)

    def _piece(self, raw: bytes, stack: list[bytes]) -> None:
        try:
            v = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        w = self.walker
        if isinstance(v, dict) or (isinstance(v, list) and v and isinstance(v[0], dict)):
            w.gather(v)                      # a row of scalars is data, never a header
        del w.headers[:-MAX_HEADERS]
        if isinstance(v, list) and not (v and isinstance(v[0], (dict, list))):
            header = w.header_for(len(v)) if len(v) >= 2 else None
            if header is not None and len(set(header)) == len(header):
                w.record(dict(zip(header, v)))
                return
        if not stack:
            w.top(v)                         # a whole later document of JSON Lines
        elif len(stack) == 1 and stack[0] == b"{" and isinstance(v, dict):
            w.record(v, self.key)            # a root key's object value: its records
        else:
            w.record(v)

    def close(self) -> None:
        self.buf = b""
