"""Records from the structure of an HTML page: repeated sibling blocks (cards, articles, list
items, table rows, definition lists) are records, read with the same rules as XML.

The page is tokenized by the standard library's tolerant, incremental ``html.parser``: void
elements never open a frame, an end tag closes the elements left open inside it, and
script/style text is skipped. Tag names say nothing about a value in HTML (``<dl>`` is not a
licence), so fields carry no label: the page's own text ("Date of birth", "Licence") is the
context the scanner reads beside each value.
"""
from __future__ import annotations

import codecs
from html.parser import HTMLParser
from typing import Iterator

from sensor.detect.structure.records import LineWriter
from sensor.detect.structure.xml_records import XmlReader

_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
                   "track", "wbr", "param"})
_SKIP = frozenset({"script", "style", "template", "noscript"})


class _Parser(HTMLParser):
    def __init__(self, reader: "HtmlReader"):
        super().__init__(convert_charrefs=True)
        self.r = reader
        self.open: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in _VOID:
            return
        if tag in _SKIP:
            self.skipping += 1
        self.open.append(tag)
        self.r._start(tag, {})

    def handle_endtag(self, tag):
        if tag not in self.open:
            return
        while self.open:
            t = self.open.pop()
            if t in _SKIP:
                self.skipping -= 1
            self.r._end(t)
            if t == tag:
                break

    def handle_data(self, data):
        if not self.skipping and self.r.stack:
            self.r._text(data)


class HtmlReader(XmlReader):
    """The XML reader's record rules, driven by html.parser; fields unlabelled (see module doc)."""

    def __init__(self, writer: LineWriter, notes: list[str]):
        super().__init__(writer, notes)
        self.h = _Parser(self)
        self.dec = codecs.getincrementaldecoder("utf-8")("replace")

    def _text(self, data: str) -> None:
        f = self.stack[-1] if self.stack else None
        if f is not None and f.size < 400:
            f.text.append(data)
            f.size += len(data)

    def _emit(self, fields):
        super()._emit([("", v) for _, v in fields])

    def feed(self, data: bytes) -> Iterator[bytes]:
        self.h.feed(self.dec.decode(data))
        out, self.out = self.out, []
        return iter(out)

    def close(self) -> Iterator[bytes]:
        self.h.feed(self.dec.decode(b"", True))
        self.h.close()
        while self.h.open:
            self.h.handle_endtag(self.h.open[-1])
        out, self.out = self.out, []
        return iter(out)
