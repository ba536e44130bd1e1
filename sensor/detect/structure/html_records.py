"""Records from the structure of an HTML page: repeated sibling blocks (cards, articles, list
items, table rows, definition lists) are records, read with the same rules as XML.

Tags are cut with one C-speed regex (only tags and text runs reach Python); void elements never
open a frame, an end tag closes the elements left open inside it, stray end tags are ignored,
and script/style bodies are skipped. Tag names say nothing about a value in HTML (``<dl>`` is not
a licence), so fields carry no label: the page's own text ("Date of birth", "Licence") is the
context the scanner reads beside each value.
"""
from __future__ import annotations

import codecs
import html
import re
from typing import Iterator

from sensor.detect.structure.records import LineWriter
from sensor.detect.structure.xml_records import MAX_TEXT, XmlReader

_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
                   "track", "wbr", "param", "!doctype"})
_SKIP = frozenset({"script", "style", "template", "noscript", "svg"})
_TOKEN = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9:-]*)(?:\s[^>]*)?/?>|<!--.*?-->|<[!?][^>]*>", re.S)
_CARRY = 64 << 10        # an unfinished tag or comment longer than this is dropped as text


class HtmlReader(XmlReader):
    """The XML reader's record rules on an HTML token stream; fields unlabelled (see module doc).
    Small repeated blocks always belong to their parent: a profile card has many label/value rows."""
    small_siblings = 1 << 30

    def __init__(self, writer: LineWriter, notes: list[str]):
        super().__init__(writer, notes)
        self.dec = codecs.getincrementaldecoder("utf-8")("replace")
        self.rest = ""
        self.open: list[str] = []
        self.skip_until: str | None = None       # "</script" while inside a script body

    def _emit(self, fields):
        super()._emit([("", v) for _, v in fields])

    def _close_to(self, tag: str) -> None:
        if tag not in self.open:
            return
        while self.open:
            t = self.open.pop()
            self._end(t)
            if t == tag:
                break

    def _run(self, text: str, final: bool) -> None:
        pos = 0
        n = len(text)
        while pos < n:
            if self.skip_until is not None:
                k = text.lower().find(self.skip_until, pos)
                if k < 0:
                    pos = max(pos, n - len(self.skip_until)) if not final else n
                    break
                pos = k
                self.skip_until = None
            lt = text.find("<", pos)
            if lt < 0:
                if not final and n - pos < _CARRY:
                    break                              # text may go on in the next chunk: keep it
                self._data(text[pos:])
                pos = n
                break
            if lt > pos:
                self._data(text[pos:lt])
            m = _TOKEN.match(text, lt)
            if m is None:
                if not final and text.find(">", lt) < 0 and n - lt < _CARRY:
                    pos = lt                           # a tag cut by the chunk boundary
                    break
                self._data("<")
                pos = lt + 1
                continue
            pos = m.end()
            name = m.group(2)
            if name is None:
                continue                               # comment, doctype, processing instruction
            tag = name.lower()
            if m.group(1):
                self._close_to(tag)
            elif tag in _VOID or m.group(0).endswith("/>"):
                continue
            elif tag in _SKIP:
                self.skip_until = "</" + tag
            else:
                self.open.append(tag)
                self._start(tag, {})
        self.rest = text[pos:]

    def _data(self, data: str) -> None:
        if self.stack and not data.isspace():
            f = self.stack[-1]
            if f.size < MAX_TEXT:
                if "&" in data:
                    data = html.unescape(data)
                f.text.append(" " + data)
                f.size += len(data)

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._run(self.rest + self.dec.decode(data), False)
        out, self.out = self.out, []
        return iter(out)

    def close(self) -> Iterator[bytes]:
        self._run(self.rest + self.dec.decode(b"", True), True)
        while self.open:
            self._close_to(self.open[-1])
        out, self.out = self.out, []
        return iter(out)
