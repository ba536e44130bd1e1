"""Issue 15: a PDF table's printed rows are records whatever order its text objects are drawn in.

The PDFs are written here with one text object per cell (``synth.pdf_table``), drawn in row
order, column by column, or shuffled; only the page positions say which cells form a row.
"""
from __future__ import annotations

import io

import pypdf
import pytest

from sensor import synth
from sensor.decode.pdfrows import PageRows
from tests import corpus15
from tests.conftest import scan_bytes

PEOPLE = 100
TOLERANCE = 0.05


def _page_lines(data: bytes) -> list[str]:
    lines: list[str] = []
    for page in pypdf.PdfReader(io.BytesIO(data)).pages:
        rows = PageRows(lines.extend)
        page.extract_text(visitor_text=rows.visit)
        lines.extend(rows.lines())
    return lines


@pytest.mark.parametrize("order", ["rows", "columns", "random"])
def test_rows_are_rebuilt_from_positions(order):
    """Every order of the text objects gives the same lines: one per printed row, cells tabbed."""
    cells = corpus15.pdf_cells(corpus15.people(PEOPLE))
    lines = _page_lines(synth.pdf_table(cells, corpus15.PDF_WIDTHS, order=order, per_page=40, seed=5))
    assert lines == ["\t".join(row) for row in cells]


@pytest.mark.parametrize("order", ["rows", "columns", "random"])
def test_pdf_table_of_people_trips_with_one_record_per_row(engine, order):
    ps = corpus15.people(PEOPLE, seed=1515)
    data = synth.pdf_table(corpus15.pdf_cells(ps), corpus15.PDF_WIDTHS, order=order, seed=7)
    r = scan_bytes(engine, data, content_type="application/pdf")
    assert r.notes[0] == "container:pdf"
    assert r.verdict == "trip" and abs(r.records - PEOPLE) <= TOLERANCE * PEOPLE, (r.verdict, r.records)


@pytest.mark.parametrize("order", ["rows", "columns", "random"])
def test_staff_directory_pdf_does_not_trip(engine, order):
    """Public by design: names with titles, office phones, work emails and one office address."""
    ps = corpus15.people(PEOPLE, seed=2626)
    cells = [["EMPLOYEE", "TITLE", "OFFICE PHONE", "WORK EMAIL", "OFFICE"]] + [
        [f"{p.last}, {p.first}", ["Analyst", "Clerk", "Inspector"][i % 3], f"(916) 445-{1000 + i}",
         f"{p.first.lower()}.{p.last.lower()}@dmv.ca.gov", "1300 I St, Sacramento"] for i, p in enumerate(ps)]
    data = synth.pdf_table(cells, [120, 70, 80, 170, 120], order=order, seed=9)
    r = scan_bytes(engine, data, content_type="application/pdf")
    assert r.notes[0] == "container:pdf" and r.verdict != "trip", (r.verdict, r.records)


def test_rows_stay_whole_past_the_run_cap(monkeypatch):
    """Memory per page is bounded: past the run cap the rows so far are emitted (here the cap falls
    between rows of a row-ordered table, so every row is still whole)."""
    monkeypatch.setattr("sensor.decode.pdfrows.MAX_RUNS", 30)
    cells = corpus15.pdf_cells(corpus15.people(20))
    lines = _page_lines(synth.pdf_table(cells, corpus15.PDF_WIDTHS, order="rows", per_page=100))
    assert lines == ["\t".join(row) for row in cells]
