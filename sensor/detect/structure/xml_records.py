"""Records from the structure of an XML document, streamed through expat.

Repeated sibling elements with at least three fields are records (smaller repeated elements —
label/value pairs, phone entries — belong to their parent's record, unless it holds more than
eight of them: then they are records too, a list of two-field people): the second ``<Holder>``
under one parent makes both it and the first one records, and every later one is emitted as it closes (so memory holds one record
and at most one waiting sibling per open element). An element's attributes, its leaf children's
text and its non-repeated complex children (``<Name><First/><Last/></Name>``) are its fields,
named by their path below the record. Entity declarations stop the reader (no expansion, no
external entities): the byte view still reads the part.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator
from xml.parsers import expat

from sensor.detect.structure.records import LineWriter, scalar

MAX_FIELDS = 200          # fields kept per element (a record window, not the whole document)
MAX_TEXT = 400            # characters of text kept per element
MIN_RECORD_FIELDS = 3     # a repeated element with fewer fields belongs to its parent's record ...
SMALL_SIBLINGS = 8        # ... while the parent holds at most this many of them


class _Refused(Exception):
    pass


@dataclass
class _Frame:
    tag: str
    fields: list[tuple[str, str]]
    text: list[str] = field(default_factory=list)
    size: int = 0
    complex: bool = False                                  # has element children
    pending: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    repeated: set[str] = field(default_factory=set)
    small: dict[str, list[list[tuple[str, str]]]] = field(default_factory=dict)


class XmlReader:
    small_siblings = SMALL_SIBLINGS
    def __init__(self, writer: LineWriter, notes: list[str]):
        self.w = writer
        self.notes = notes
        self.out: list[bytes] = []
        self.stack: list[_Frame] = []
        self.dead = False
        p = expat.ParserCreate()
        p.buffer_text = True
        p.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        p.StartElementHandler = self._start
        p.EndElementHandler = self._end
        p.CharacterDataHandler = self._text
        p.EntityDeclHandler = self._refuse
        p.ExternalEntityRefHandler = self._refuse
        self.p = p

    # -- expat callbacks --------------------------------------------------------------------------
    def _refuse(self, *args) -> None:
        raise _Refused()

    def _start(self, tag: str, attrs: dict[str, str]) -> None:
        if self.stack:
            self.stack[-1].complex = True
        fields = []
        for k, v in attrs.items():
            s = scalar(v)
            if s is not None:
                fields.append((f"{tag}.{k}", s))
        self.stack.append(_Frame(tag, fields))

    def _text(self, data: str) -> None:
        f = self.stack[-1] if self.stack else None
        if f is not None and f.size < MAX_TEXT:
            f.text.append(data)
            f.size += len(data)

    def _emit(self, fields: list[tuple[str, str]]) -> None:
        if fields:
            line = self.w.line(fields)
            if line:
                self.out.append(line)

    def _end(self, tag: str) -> None:
        f = self.stack.pop()
        text = scalar("".join(f.text)) if f.text else None
        fields = f.fields
        if text is not None:
            fields.append((tag, text))
        for child, cf in f.pending.items():                # complex children seen once: this element's
            fields.extend((f"{child}.{k}", v) for k, v in cf)
        for child, held in f.small.items():                # a few small repeated children: this element's
            for cf in held:
                fields.extend((f"{child}.{k}", v) for k, v in cf)
        del fields[MAX_FIELDS:]
        parent = self.stack[-1] if self.stack else None
        if parent is None:
            self._emit(fields)
            return
        if not f.complex and len(f.fields) - (text is not None) < 2:
            parent.fields.extend(fields)                   # a leaf (text, maybe an attribute): a field
            return
        if len(fields) < MIN_RECORD_FIELDS and tag not in parent.repeated:
            # a label/value pair or a phone entry belongs to its parent's record ... unless the
            # parent holds many of them: then each is a record (a list of two-field people)
            held = parent.small.setdefault(tag, [])
            held.append(fields)
            if len(held) > self.small_siblings:
                for h in held:
                    self._emit(h)
                del parent.small[tag]
                parent.repeated.add(tag)
            return
        if tag in parent.repeated:
            self._emit(fields)
        elif tag in parent.pending:
            self._emit(parent.pending.pop(tag))
            self._emit(fields)
            parent.repeated.add(tag)
        else:
            parent.pending[tag] = fields

    # -- reader ---------------------------------------------------------------------------------
    def _parse(self, data: bytes, final: bool) -> Iterator[bytes]:
        if self.dead:
            return iter(())
        try:
            self.p.Parse(data, final)
        except _Refused:
            self.dead = True
            self.notes.append("structure: XML declares entities; not expanded, records from the byte view")
        except expat.ExpatError as e:
            self.dead = True
            self.notes.append(f"structure: XML not well-formed ({expat.ErrorString(e.code)}, line {e.lineno});"
                              " records from the byte view")
        out, self.out = self.out, []
        return iter(out)

    def feed(self, data: bytes) -> Iterator[bytes]:
        return self._parse(data, False)

    def close(self) -> Iterator[bytes]:
        return self._parse(b"", True)
