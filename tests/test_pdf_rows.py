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


# -- pages printed n-up (session 13): two or three copies of the table side by side ----------------------

def _n_up(cells: list[list[str]], n: int, widths: list[int], order: str) -> bytes:
    """``cells`` (header first) printed ``n``-up: the body split into n runs, laid side by side."""
    head, body = cells[0], cells[1:]
    per = -(-len(body) // n)
    rows = [sum(([*head, ""] for _ in range(n)), [])[:-1]]
    for k in range(per):
        row: list[str] = []
        for g in range(n):
            i = g * per + k
            row += (body[i] if i < len(body) else [""] * len(head)) + [""]
        rows.append(row[:-1])
    return synth.pdf_table(rows, sum(([*widths, 14] for _ in range(n)), [])[:-1], order=order, per_page=60, seed=3)


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("order", ["rows", "columns", "random"])
def test_a_page_printed_n_up_is_read_group_by_group(n, order):
    """Each printed row holds n people; every person comes out as a line of their own."""
    cells = [["NAME", "BORN", "DL"]] + [[f"{p.last.upper()}, {p.first.upper()}", p.us_dob, p.dl]
                                        for p in corpus15.people(60)]
    lines = _page_lines(_n_up(cells, n, [110, 62, 55], order))
    people = sorted("\t".join(row) for row in cells[1:])
    assert sorted(line for line in lines if not line.startswith("NAME")) == people
    assert lines.count("NAME\tBORN\tDL") == n


def test_n_up_without_a_header_is_told_by_the_shapes_of_its_values():
    cells = [[f"{p.last.upper()}, {p.first.upper()}", p.us_dob, p.dl] for p in corpus15.people(60)]
    lines = _page_lines(_n_up([["", "", ""]] + cells, 2, [110, 62, 55], "random"))
    assert sorted(lines) == sorted("\t".join(row) for row in cells)


def test_an_ordinary_table_with_even_columns_is_not_cut():
    """Four columns of one width (name, date, city, ZIP): the starts repeat at an even step, but the
    values beside each other are not the same kind, so every printed row stays one line."""
    cells = [["NAME", "DATE OF BIRTH", "CITY", "ZIP"]] + [
        [f"{p.first} {p.last}", p.us_dob, p.city, p.zip] for p in corpus15.people(50)]
    lines = _page_lines(synth.pdf_table(cells, [100, 100, 100, 100], order="random", seed=4))
    assert lines == ["\t".join(row) for row in cells]


def test_two_up_pdf_of_people_counts_one_record_per_person(engine):
    for name in ("two_up.pdf", "two_up_columns.pdf"):
        f = next(x for x in corpus15.build() if x.name == name)
        r = scan_bytes(engine, f.data, content_type=f.content_type)
        assert r.verdict == "trip" and abs(r.records - f.truth) <= TOLERANCE * f.truth, (name, r.records)


def test_two_text_columns_are_read_column_by_column():
    """A list set in two text columns (one cell per line on each side, here in mixed case with
    words between the values): each column's lines come out on their own, left column first."""
    ps = corpus15.people(60, seed=3)
    text = [f"{p.first} {p.middle}. {p.last}, born {p.us_dob}, of {p.street}, {p.city}" for p in ps]
    rows = [[text[k], text[30 + k]] for k in range(30)]
    lines = _page_lines(synth.pdf_table(rows, [300, 300], order="random", seed=2))
    assert lines == text


def test_a_two_column_person_table_is_not_cut():
    """Name | street: one cell per side too, but not the same kind of value: one record per row."""
    ps = corpus15.people(40, seed=4)
    cells = [[f"{p.first} {p.last}", f"{p.street}, {p.city}"] for p in ps]
    lines = _page_lines(synth.pdf_table(cells, [200, 250], order="columns"))
    assert lines == ["\t".join(row) for row in cells]
