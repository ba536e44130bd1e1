"""Writes the legacy ``.xls`` fixtures once: nothing in the maintained Python world writes BIFF
(xlwt, last released 2017, is unmaintained), so the files are committed and this script records
how they were made. Run from the repository root in a throwaway venv that has ``xlwt==1.3.0``:

    python -m venv /tmp/xlwt && /tmp/xlwt/bin/pip install xlwt==1.3.0
    PYTHONPATH=. /tmp/xlwt/bin/python tests/data/make_xls.py

- ``breach100.xls``: the first 100 people of :func:`sensor.synth.breach_rows` (seed 2022) under
  the breach header, dates of birth as real date cells (a day count with a ``mm/dd/yyyy`` format),
  ZIP codes as numbers.
- ``corpus15_people.xls``: the people of :func:`tests.corpus15.people` (the corpus truth), dates
  of birth as date cells in the 1904 date system (a Mac workbook), for the issue-15 corpus.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import xlwt

from sensor import synth
from tests import corpus15

HERE = Path(__file__).resolve().parent


def breach100() -> None:
    book = xlwt.Workbook()
    sheet = book.add_sheet("permits")
    date = xlwt.easyxf(num_format_str="mm/dd/yyyy")
    for c, name in enumerate(synth.BREACH_HEADER.strip().split(",")):
        sheet.write(0, c, name)
    for r, row in enumerate(synth.breach_rows(100, 2022), start=1):
        cells = row.rstrip("\n").split(",")
        for c, value in enumerate(cells):
            if c == 4:                                        # date_of_birth
                m, d, y = (int(x) for x in value.split("/"))
                sheet.write(r, c, dt.date(y, m, d), date)
            elif c in (0, 10):                                # permit id, zip: numbers
                sheet.write(r, c, int(value))
            else:
                sheet.write(r, c, value)
    book.save(str(HERE / "breach100.xls"))


def corpus_people() -> None:
    book = xlwt.Workbook()
    book.dates_1904 = True
    sheet = book.add_sheet("Applicants")
    date = xlwt.easyxf(num_format_str="yyyy-mm-dd")
    head = ["Last Name", "First Name", "Birth Date", "Street", "City", "State", "Zip", "DL Number"]
    for c, name in enumerate(head):
        sheet.write(0, c, name)
    for r, p in enumerate(corpus15.people(), start=1):
        for c, value in enumerate([p.last, p.first, p.dob, p.street, p.city, p.state, int(p.zip), p.dl]):
            sheet.write(r, c, value, date) if c == 2 else sheet.write(r, c, value)
    book.save(str(HERE / "corpus15_people.xls"))


if __name__ == "__main__":
    breach100()
    corpus_people()
