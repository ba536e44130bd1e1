"""Printed rows of a PDF page rebuilt from the positions of its text.

A PDF draws text objects wherever its content stream says, in any order: a report engine may draw
a table column by column, or cell by cell in no order at all. Read in stream order (pypdf's plain
``extract_text``), such a table comes out one value per line and the people in it fall apart. Here
every text run pypdf reports (through ``visitor_text``, with its text and current transformation
matrices) is placed at its page position; runs whose baselines lie within a fraction of the font
size form one printed row, ordered left to right; runs separated by a gap wider than about a
character become cells joined by a tab, which the scanner reads as a column separator. Each
printed row is then one line: one record, whatever order the text objects came in.

Memory is bounded per page: at most :data:`MAX_RUNS` runs are held; past that the rows gathered
so far are emitted and the page continues (a table that large still comes out row by row, in
slices).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

MAX_RUNS = 50_000
ROW_TOLERANCE = 0.4     # baselines within this many font sizes are one printed row
CELL_GAP = 0.8          # a gap wider than this many font sizes separates two cells
CHAR_WIDTH = 0.5        # estimated average glyph width in font sizes (no widths from the visitor)


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
        """The page's printed rows, top to bottom, each as one line; empties the collected runs."""
        runs, self.runs = self.runs, []
        runs.sort(key=lambda r: -r.y)
        row: list[Run] = []
        for run in runs:
            if row and row[0].y - run.y > ROW_TOLERANCE * max(row[0].size, run.size):
                yield _join(row)
                row = []
            row.append(run)
        if row:
            yield _join(row)


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
