"""Where a table starts when lines that are not the table come before it.

Exports often open with a title, a banner or comments before the header row: ``Report generated
2026-06-27``, ``# exported from the permits dashboard``, a spreadsheet's title row
(``Permit holders,,,,``), blank lines. The scanner reads a table's header from the first line of a
part (its column names are context for every later row, and a fixed-width or delimited layout is
recognised from it), so without this a one-line banner hid the header: a licence-holder roster
with a title line passed as prose, a public staff directory lost the column names that say its
addresses are offices.

The table is found from its shape, not from a list of banners: the lines that follow share a
delimiter and a field count; the first line with that shape is the header, and what comes before
it is a preamble (it is scanned all the same, as a part of its own). No shape shared by enough
lines, or a table starting past :data:`MAX_LINES`: no preamble.
"""
from __future__ import annotations

import csv
import re
from collections import Counter

MAX_LINES = 8              # a preamble longer than this is a document, not a banner
HOLD_LINES = 16            # the scanner holds a part's first bytes until this many lines (or HOLD_BYTES)
HOLD_BYTES = 4096          # ... or this many bytes: only these are read, whatever the first piece held
MIN_ROWS = 3               # lines of one shape (the header included) that make a table
_SPACES = re.compile(rb"\s{2,}")
# A JSON document behind the short guard or callback an API puts before it: ``)]}',`` (the
# anti-hijacking prefix of Angular and Google APIs), ``while(1);``, ``for(;;);``, a JSONP callback
# ``/**/cb(``. Read from the ``{`` or ``[`` on, it is the JSON it is; the guard before it made the
# whole body prose (a JSON roster passed). The prefix is one short line of no letters but a
# keyword or a name before ``(``, and what follows must open an object or an array of values.
_GUARDED_JSON = re.compile(
    rb"\s*(?:/\*\*/\s*)?(?:\)\]\}'?,?|while\s*\(\s*1\s*\)\s*;|for\s*\(\s*;\s*;\s*\)\s*;|[A-Za-z_$][\w$.]{0,63}\s*\()"
    rb"\s*()(?:\{\s*[\"}]|\[\s*[\[{\"\]\d-])")
_DELIMS = (b",", b"\t", b";", b"|")


def _fields(line: bytes, delim: bytes | None) -> list[bytes]:
    """The fields of ``line`` for ``delim`` (None: columns set apart by two or more spaces)."""
    if delim is None:
        return _SPACES.split(line.strip())
    if b'"' in line:
        try:
            return [c.encode() for c in next(csv.reader([line.decode("utf-8", "replace")],
                                                        delimiter=delim.decode()))]
        except (csv.Error, StopIteration):
            pass
    return line.split(delim)


def _shape(line: bytes, delim: bytes | None) -> int:
    """The field count of a table line for ``delim``, or 0 when the line is not one (fewer than
    two fields with text: a title, a comment, a blank line, a title row of empty cells)."""
    fields = _fields(line.rstrip(b"\r"), delim)
    return len(fields) if len(fields) >= 2 and sum(1 for f in fields if f.strip()) >= 2 else 0


def preamble_end(head: bytes, *, final: bool = False) -> int:
    """The offset in ``head`` (a part's first bytes) of the table's header line when lines that
    are not the table come first, else 0. ``final``: ``head`` is the whole part (its last line is
    complete even without a line break).

    Only the first :data:`HOLD_BYTES` count: a body fed whole and the same body fed in small
    pieces (held until 4 KiB) must split at the same place, or a roster's verdict would depend on
    how the network cut it."""
    if len(head) > HOLD_BYTES:
        head, final = head[:HOLD_BYTES], False
    stripped = head.lstrip()
    if not stripped or stripped[:1] in b"{[<":
        return 0                                # JSON, markup (a byte order mark is gone: decode.containers)
    if (m := _GUARDED_JSON.match(head)) is not None:
        return m.end(1)                         # JSON behind a guard or a callback
    lines = head.split(b"\n")
    if not final:
        lines = lines[:-1]                      # the last one may be cut
    lines = lines[:HOLD_LINES]
    if len(lines) < MIN_ROWS:
        return 0
    for delim in (d for d in _DELIMS if d in lines[0]):      # the common case: the header comes first
        if (n := _shape(lines[0], delim)) and all(_shape(ln, delim) == n for ln in lines[1:MIN_ROWS]):
            return 0
        # ... with a ragged or sparse row among the first (a trailing empty cell trimmed, a row of
        # one value): the next line has the delimiter and the lines' commonest count is the first's.
        # Else another delimiter inside the cells (the commas of a TSV's addresses) would make a
        # table from the first row on, and the header would be cut off as a preamble.
        counts = Counter(s for s in (_shape(ln, delim) for ln in lines[1:]) if s)
        if n and delim in lines[1] and counts[n] >= MIN_ROWS - 1 and counts[n] == max(counts.values()):
            return 0
    best: tuple[int, int, bytes | None, int] | None = None      # (rows, -header index, delim, count)
    for delim in (*_DELIMS, None):
        shapes = [_shape(ln, delim) for ln in lines]
        counts = Counter(s for s in shapes if s)
        if not counts:
            continue
        count, rows = counts.most_common(1)[0]
        first = shapes.index(count)
        # the table: its header and at least MIN_ROWS - 1 rows after it, all of that shape
        if rows < MIN_ROWS or shapes[first:first + MIN_ROWS] != [count] * MIN_ROWS:
            continue
        if first and shapes[first - 1] and (delim is None or abs(shapes[first - 1] - count) == 1
                                            or shapes[first - 1] >= 3):
            # the header, of another count: fixed-width columns run together, a trailing delimiter,
            # a header of more columns than the rows fill (trailing empty cells trimmed) or of fewer
            # (a comma in a cell unquoted). Three fields or more are a header, not a title: without
            # it a card list whose header named two more columns lost its header and passed.
            first -= 1
        key = (rows, -first, delim, count)
        if best is None or key[:2] > best[:2]:
            best = key
    if best is None or best[1] == 0 or -best[1] > MAX_LINES:
        return 0
    return sum(len(ln) + 1 for ln in lines[:-best[1]])
