"""Printed rows of a PDF page rebuilt from the positions of its text.

A PDF draws text objects wherever its content stream says, in any order: a report engine may draw
a table column by column, or cell by cell in no order at all. Read in stream order (pypdf's plain
``extract_text``), such a table comes out one value per line and the people in it fall apart. Here
every text run pypdf reports (through ``visitor_text``, with its text and current transformation
matrices) is placed at its page position; runs whose baselines lie within a fraction of the font
size form one printed row, ordered left to right; runs separated by a gap wider than about a
character become cells joined by a tab, which the scanner reads as a column separator. Each
printed row is then one line: one record, whatever order the text objects came in.

A page printed *n-up* (a roster laid out as two or three copies of the same table side by side, or
a list set in two or three text columns, so that each printed row holds two or three people) would
come out as one line per printed row, two people to a record. So before rows are joined the page's
columns are rebuilt from the x-positions where cells start: when those column starts fall into n
equal groups, each group the previous one shifted by the same distance, and the groups hold the
same kind of values (the same header text, or in every column the same shape of value: a date
beside a date, a name beside a name; for text columns, one cell a side, the shape of the whole
line with runs of words taken as one), the page is cut at the gutters and each group is read as a
table of its own, left group first. An ordinary table never repeats its columns that way (its date
column does not sit where its name column would, its street column holds no names); the split only
happens on that evidence.

Memory is bounded per page: at most :data:`MAX_RUNS` runs are held; past that the rows gathered
so far are emitted and the page continues (a table that large still comes out row by row, in
slices).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator

MAX_RUNS = 50_000
ROW_TOLERANCE = 0.4     # baselines within this many font sizes are one printed row
CELL_GAP = 0.8          # a gap wider than this many font sizes separates two cells
CHAR_WIDTH = 0.5        # estimated average glyph width in font sizes (no widths from the visitor)
COLUMN_SHARE = 0.3      # a column start is one that at least this share of the page's rows use
MAX_UP = 3              # pages printed up to this many tables side by side are cut apart


@dataclass(slots=True)
class Run:
    """One run of text at its page position (x, y of its start; size = rendered font size)."""

    x: float
    y: float
    size: float
    text: str

    @property
    def end(self) -> float:
        return self.x + len(self.text) * self.size * CHAR_WIDTH


@dataclass
class PageRows:
    """Collects the text runs of one page (the pypdf ``visitor_text`` callback) and turns them into
    lines, one per printed row. ``flush`` is called with finished lines when the run cap is hit."""

    flush: Callable[[list[str]], None]
    runs: list[Run] = field(default_factory=list)

    def visit(self, text: str, cm: list[float], tm: list[float], font_dict: object, font_size: float) -> None:
        if not text or text.isspace():
            return
        # the text space origin in page space: tm × cm (PDF row-vector convention)
        a, b, c, d, e, f = (float(v) for v in cm)
        ta, tb, tc, td, te, tf = (float(v) for v in tm)
        x = te * a + tf * c + e
        y = te * b + tf * d + f
        scale = math.hypot(tc * a + td * c, tc * b + td * d) or 1.0
        size = max(abs(float(font_size or 0.0)) * scale, 1.0)
        for k, line in enumerate(text.split("\n")):
            if line and not line.isspace():
                self.runs.append(Run(x, y - k * size * 1.2, size, line))
        if len(self.runs) >= MAX_RUNS:
            self.flush(list(self.lines()))

    def lines(self) -> Iterator[str]:
        """The page's printed rows, top to bottom, each as one line (group by group on a page printed
        n-up, see the module docstring); empties the collected runs."""
        runs, self.runs = self.runs, []
        rows = _rows(runs)
        cuts = _gutters(rows)
        if not cuts:
            yield from (_join(row) for row in rows)
            return
        for lo, hi in zip([-math.inf] + cuts, cuts + [math.inf]):
            for row in _rows([r for r in runs if lo <= r.x < hi]):
                yield _join(row)


def _rows(runs: list[Run]) -> list[list[Run]]:
    """Runs grouped into printed rows (baselines within a fraction of the font size), top to bottom."""
    runs = sorted(runs, key=lambda r: -r.y)
    rows: list[list[Run]] = []
    row: list[Run] = []
    for run in runs:
        if row and row[0].y - run.y > ROW_TOLERANCE * max(row[0].size, run.size):
            rows.append(row)
            row = []
        row.append(run)
    if row:
        rows.append(row)
    return rows


def _cells(row: list[Run]) -> list[tuple[float, str]]:
    """A row's cells as (x where the cell starts, its text), split where _join puts a tab."""
    row = sorted(row, key=lambda r: r.x)
    cells = [(row[0].x, [row[0].text.strip()])]
    prev = row[0]
    for run in row[1:]:
        if run.x - prev.end > CELL_GAP * run.size:
            cells.append((run.x, [run.text.strip()]))
        else:
            cells[-1][1].append(run.text.strip())
        prev = run if run.end > prev.end else prev
    return [(x, " ".join(t)) for x, t in cells]


_SHAPE = re.compile(r"[A-Za-z]+|[0-9]+")


def _shape(text: str) -> str:
    """A value's shape: letters -> A, digits -> 9, the rest kept ("01/02/1970" -> "9/9/9")."""
    return _SHAPE.sub(lambda m: "A" if m.group()[0].isalpha() else "9", text.upper())


_WORDS = re.compile(r"A(?: A)+")


def _line_shape(text: str) -> str:
    return _WORDS.sub("A", _shape(text))


def _gutters(rows: list[list[Run]]) -> list[float]:
    """The x-positions to cut a page printed n-up at (module docstring), or [] for any other page."""
    if len(rows) < 3:
        return []
    table = [_cells(row) for row in rows]
    size = sorted(r.size for row in rows for r in row)[len([r for row in rows for r in row]) // 2]
    tol = size
    # column starts: x-positions (merged within a font size) where enough rows start a cell
    xs = sorted(x for cells in table for x, _ in cells)
    groups: list[list[float]] = []
    for x in xs:
        if groups and x - groups[-1][-1] <= tol:
            groups[-1].append(x)
        else:
            groups.append([x])
    starts = [g[0] for g in groups if len(g) >= max(2, COLUMN_SHARE * len(rows))]
    k = len(starts)
    for n in range(MAX_UP, 1, -1):
        if k % n or k < n:
            continue
        m = k // n
        parts = [starts[i * m:(i + 1) * m] for i in range(n)]
        shift = [p[0] - parts[0][0] for p in parts]
        if any(abs(p[j] - parts[0][j] - d) > tol for p, d in zip(parts, shift) for j in range(m)):
            continue
        if _same_values(table, parts, tol):
            return [p[0] - tol / 2 for p in parts[1:]]
    return []


def _same_values(table: list[list[tuple[float, str]]], parts: list[list[float]], tol: float) -> bool:
    """Do the column groups hold the same kind of values: the same header words, or in every column
    the same most common value shape? Groups of several columns must not all be one shape (plain
    text); a group of one column (text columns, a line per person) compares shapes with runs of
    words taken as one ("GARCIA, MARIA 03/14/1975 12 OAK ST" -> "A, A 9/9/9 9 A"), and columns of
    prose, whose lines are all words, are cut apart too: read column by column, as printed."""
    def column(cells: list[tuple[float, str]], x: float) -> str | None:
        return next((t for cx, t in cells if abs(cx - x) <= tol), None)

    head = table[0]
    heads = [[(column(head, x) or "").upper() for x in p] for p in parts]
    if all(heads[0]) and all(h == heads[0] for h in heads):
        return True
    single = len(parts[0]) == 1
    shapes = []
    for p in parts:
        group = []
        for x in p:
            c = Counter(_line_shape(t) if single else _shape(t) for cells in table if (t := column(cells, x)))
            group.append(c.most_common(1)[0][0] if c else "")
        shapes.append(group)
    return (single or len(set(shapes[0])) > 1) and all(g == shapes[0] for g in shapes)


def _join(row: list[Run]) -> str:
    """Cells of one printed row left to right: a tab between runs a column gap apart, the runs of
    one cell joined as drawn (pypdf already puts the spaces it sees at the start of a run)."""
    row.sort(key=lambda r: r.x)
    out = [row[0].text.strip()]
    prev = row[0]
    for run in row[1:]:
        gap = run.x - prev.end
        text = run.text.strip()
        if gap > CELL_GAP * run.size:
            out.append("\t")
        elif gap > 0.1 * run.size or run.text[:1].isspace():
            out.append(" ")
        out.append(text)
        prev = run if run.end > prev.end else prev
    return "".join(out)
