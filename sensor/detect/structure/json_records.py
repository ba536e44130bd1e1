"""Records from the structure of a JSON document (or of each line of JSON Lines).

Every object is a record candidate wherever it sits: the elements of an array of objects are
records, and so are the values of an object whose values are all objects of one shape (records
keyed by id, a dataframe's ``index`` orient). An object's nested objects and short arrays belong
to its record. Tabular layouts are turned back into rows:

- arrays of row arrays, typed by position with a header found elsewhere in the document: an
  array of as many strings (dataframe ``split`` ``columns``) or of as many objects that carry a
  name (open-data ``meta.view.columns``); the last header of that width in the document wins;
- columnar objects: parallel arrays of one length under column keys, and objects of
  ``{index: value}`` objects under column keys (dataframe ``columns`` orient);
- a flat array of scalars whose length is a multiple of a header's width (a dashboard's data
  dictionary, where the values of several fields share one array);
- arrays of cells (objects of one scalar, or with a ``v``/``value`` key) are the fields of one row,
  named by position from a header of that width (a DataTable's ``cols``/``rows[].c``).

The document is parsed whole with orjson (C speed) when it is at most :data:`WHOLE_LIMIT` bytes.
"""
from __future__ import annotations

from typing import Callable, Iterator

import orjson

from sensor.detect.structure.records import scalar

WHOLE_LIMIT = 8 << 20        # a JSON document up to this size is parsed whole
SHORT_ARRAY = 4              # arrays of objects up to this length inside a record belong to it
MAX_DEPTH = 48               # nesting read below a record (orjson allows 1024; Python's stack does not)
_NAME_KEYS = ("name", "fieldName", "field", "title", "label", "key", "id")

Fields = list[tuple[str, str]]
Emit = Callable[[Fields], None]


def _header_of(v: list) -> list[str] | None:
    """Column names if ``v`` looks like a header: strings, or objects that carry a name."""
    if len(v) < 2 or len(v) > 500:
        return None
    if all(isinstance(x, str) for x in v):
        return v
    if all(isinstance(x, dict) for x in v):
        names = []
        for x in v:
            n = next((x[k] for k in _NAME_KEYS if isinstance(x.get(k), str)), None)
            if n is None:
                return None
            names.append(n)
        return names
    return None


class _Walker:
    def __init__(self, emit: Emit):
        self.emit = emit
        self.headers: list[list[str]] = []     # headers seen so far, in document order
        self.depth = 0

    # -- headers: gathered in document order, so rows find the nearest one before them -------------------
    def header_for(self, width: int, multiple_of: bool = False) -> list[str] | None:
        for h in reversed(self.headers):
            n = len(h)
            if (n == width) if not multiple_of else (n >= 2 and width > n and width % n == 0):
                return h
        return None

    def gather(self, v: object) -> None:
        """Collect every candidate header (bounded: headers are short arrays)."""
        stack = [v]
        while stack:
            x = stack.pop()
            if isinstance(x, dict):
                stack.extend(reversed(list(x.values())))
            elif isinstance(x, list):
                h = _header_of(x)
                if h is not None:
                    self.headers.append(h)
                if x and isinstance(x[0], dict):       # rows (arrays of arrays) are never headers
                    stack.extend(reversed(x))

    # -- records -------------------------------------------------------------------------------
    def top(self, v: object) -> None:
        if isinstance(v, (dict, list)):
            fields: Fields = []
            self.value(v, "", fields)
            if fields:
                self.emit(fields)
        else:
            s = scalar(v)
            if s is not None:
                self.emit([("", s)])

    def record(self, v: object, prefix: str = "") -> None:
        fields: Fields = []
        self.value(v, prefix, fields)
        if fields:
            self.emit(fields)

    def value(self, v: object, path: str, fields: Fields) -> None:
        if isinstance(v, dict):
            if self.depth < MAX_DEPTH:
                self.depth += 1
                try:
                    self.obj(v, path, fields)
                finally:
                    self.depth -= 1
        elif isinstance(v, list):
            if self.depth < MAX_DEPTH:
                self.depth += 1
                try:
                    self.array(v, path, fields)
                finally:
                    self.depth -= 1
        else:
            s = scalar(v)
            if s is not None:
                fields.append((path, s))

    def obj(self, d: dict, path: str, fields: Fields) -> None:
        if self.columnar(d):
            return
        vals = list(d.values())
        if len(vals) >= 3 and all(isinstance(x, dict) and x for x in vals):
            shape = set(vals[0])
            # records keyed by id / row index: objects of one shape (optional fields may be missing)
            if all(2 * len(shape & x.keys()) >= len(shape) for x in vals):
                for x in vals:
                    self.record(x)
                return
        for k, x in d.items():
            self.value(x, f"{path}.{k}" if path else k, fields)

    def array(self, a: list, path: str, fields: Fields) -> None:
        if not a:
            return
        first = a[0]
        if isinstance(first, dict) and all(isinstance(x, dict) and (len(x) == 1 or "v" in x or "value" in x)
                                           and len(x) <= 3 for x in a[:64]) \
                and all(not isinstance(y, (dict, list)) for x in a[:64] for y in x.values()):
            # cells ({"v": ...}, {"type": .., "value": ..}): the fields of one row, named by the
            # position in a header of that width when there is one (a DataTable's cols)
            header = self.header_for(len(a)) if len(a) >= 2 else None
            for k, x in enumerate(a[:64]):
                v = x.get("v", x.get("value", next(iter(x.values()), None)))
                s = scalar(v)
                if s is not None:
                    fields.append((header[k] if header is not None else path, s))
            return
        if isinstance(first, dict):
            if len(a) <= SHORT_ARRAY and fields:          # a few sub-objects of one record
                for x in a:
                    self.value(x, path, fields)
            else:
                for x in a:
                    self.record(x)
            return
        if isinstance(first, list):
            width = len(first)
            header = self.header_for(width) if width >= 2 else None
            if header is None and width >= 2 and all(isinstance(x, str) for x in first):
                header, a = first, a[1:]                 # a first row of names is the header
            for row in a:
                if isinstance(row, list):
                    if header is not None and len(row) == len(header):
                        self.record(dict(zip(header, row)) if len(set(header)) == len(header)
                                    else row)
                    else:
                        self.record(row)
                else:
                    self.record(row)
            return
        # an array of scalars: values of several fields sharing one array, or one field's values
        header = self.header_for(len(a), multiple_of=True) if len(a) >= 4 else None
        if header is not None and all(not isinstance(x, (dict, list)) for x in a):
            n = len(header)
            for k in range(0, len(a), n):
                self.record(dict(zip(header, a[k:k + n])))
            return
        for x in a[:64]:
            self.value(x, path, fields)

    def columnar(self, d: dict) -> bool:
        """Parallel arrays, or {column: {index: value}}: rows rebuilt by position / index."""
        cols = [(k, v) for k, v in d.items() if isinstance(v, list) and len(v) >= 2
                and not isinstance(v[0], (dict, list))]
        if len(cols) >= 2:
            n = len(cols[0][1])
            if all(len(v) == n for _, v in cols) and n > len(cols) // 2:
                for i in range(n):
                    self.record({k: v[i] for k, v in cols})
                rest = {k: v for k, v in d.items() if not (isinstance(v, list) and len(v) == n)}
                if rest:
                    self.record(rest)
                return True
        vals = list(d.values())
        if len(vals) >= 2 and all(isinstance(x, dict) and x for x in vals):
            idx = list(vals[0])
            if (all(list(x) == idx for x in vals) and all(not isinstance(y, (dict, list)) for y in vals[0].values())
                    and (len(idx) > len(vals) or all(k.isdigit() for k in idx))):
                keys = list(d)
                for i in idx:
                    self.record({k: d[k][i] for k in keys})
                return True
        return False


def records_of(doc: object, emit: Emit) -> None:
    """Emit the records of one parsed JSON value."""
    w = _Walker(emit)
    w.gather(doc)
    w.top(doc)


def parse(data: bytes) -> object:
    return orjson.loads(data)
