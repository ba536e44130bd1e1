"""Legacy binary Excel workbooks (``.xls``, BIFF inside an OLE2 compound file), read as tables.

An OLE2 compound file keeps its sector allocation table anywhere in the file, so it is spooled
like a zip (memory, then disk, never beyond ``max_container_bytes``) and read when complete — in
the worker thread for the taps. xlrd 2.x (the maintained reader for ``.xls``, and only ``.xls``)
parses it; each sheet becomes what a CSV would be: one tab-separated line per row, the first row
(the header, when the sheet has one) included, so the scanner's header-column context types the
values exactly as for an xlsx sheet.

A cell is a date only because its format says so: xlrd marks such cells ``XL_CELL_DATE`` and they
are written as ISO dates (``1975-03-14``) with the same conversion as xlsx cells
(:func:`sensor.decode.containers._serial_date`, the workbook's 1900 or 1904 date system). Whole
numbers lose their ``.0`` (a ZIP code stored as a number reads ``94110``). Every line produced is
metered against the body's budget, and a workbook with more sheets than ``max_members`` stops
with a decode-limit note, as an xlsx with too many members does.

The same magic bytes also open Word, PowerPoint and Outlook files. A compound file without a
workbook stream is scanned as its raw bytes, as it was before this reader existed (their text
is stored as plain 8-bit or UTF-16 runs); a damaged workbook is a ``decode-error:xls`` note.
xlrd's own warnings go to a sink, never to a log: they can quote cell data. Whatever exception xlrd
raises on damaged bytes becomes that note (only its type is named): a parser bug must not stop a tap.
"""
from __future__ import annotations

import datetime as dt
import io
from typing import TYPE_CHECKING

from sensor.decode.containers import _EXCEL_1900, _EXCEL_1904, PartSink, Spool, _Lines, _serial_date
from sensor.decode.limits import CorruptInput, DecodeProblem, LimitExceeded

if TYPE_CHECKING:
    import xlrd

MAX_COLUMNS = 256                    # BIFF8 sheets are 256 columns wide (65 536 rows)


class XlsSpool(Spool):
    """An OLE2 compound file: a ``.xls`` workbook read sheet by sheet, anything else as raw bytes."""

    kind = "xls"

    def _read(self, out: PartSink) -> None:
        import xlrd
        s = self.s
        data = self.file.read()
        try:
            book = xlrd.open_workbook(file_contents=data, logfile=io.StringIO(), verbosity=0,
                                      on_demand=True, formatting_info=False)
        except xlrd.XLRDError as e:
            if "workbook" in str(e).lower() and "ole2" in str(e).lower():
                self.kind = s.kind = "ole2"
                self._raw(out, data)
                return
            raise CorruptInput("xls", f"unreadable xls ({type(e).__name__})") from None
        except Exception as e:   # noqa: BLE001 - untrusted bytes: whatever xlrd trips on is a corrupt file
            raise CorruptInput("xls", f"unreadable xls ({type(e).__name__})") from None
        del data
        try:
            if book.nsheets > s.budget.limits.max_members:
                raise LimitExceeded("members", f"more than {s.budget.limits.max_members} sheets")
            epoch = _EXCEL_1904 if book.datemode == 1 else _EXCEL_1900
            for i in range(book.nsheets):
                if s.stop():
                    return
                sheet = book.sheet_by_index(i)
                out.begin_part("lines", f"{s.name or 'workbook.xls'}#{i + 1}")
                lines = _Lines(out, s.budget.limits.piece)
                for r in range(sheet.nrows):
                    if s.stop():
                        return
                    line = "\t".join(_cell_text(c, epoch) for c in sheet.row(r)[:MAX_COLUMNS]) + "\n"
                    s.budget.take(len(line))
                    lines.add(line)
                lines.flush()
                book.unload_sheet(i)
        except DecodeProblem:
            raise                # a limit (or a decoder below) stopped it: the note says which
        except Exception as e:   # noqa: BLE001 - untrusted bytes: whatever xlrd trips on is a corrupt file
            raise CorruptInput("xls", f"unreadable xls sheet ({type(e).__name__})") from None
        finally:
            book.release_resources()

    def _raw(self, out: PartSink, data: bytes) -> None:
        """A compound file that is not a workbook (.doc, .ppt, .msg): its bytes as text, metered."""
        s = self.s
        s.notes.append("decode-error:ole2 (compound file without a workbook: scanned as raw bytes)")
        out.begin_part(None, s.name)
        piece = s.budget.limits.piece
        for at in range(0, len(data), piece):
            if s.stop():
                return
            chunk = data[at:at + piece]
            s.budget.take(len(chunk))
            out.feed(chunk)


def _cell_text(cell: "xlrd.sheet.Cell", epoch: dt.date) -> str:
    """One cell as the text a CSV would hold (see the module docstring)."""
    import xlrd
    kind, value = cell.ctype, cell.value
    if kind in (xlrd.XL_CELL_EMPTY, xlrd.XL_CELL_BLANK, xlrd.XL_CELL_ERROR):
        return ""
    if kind == xlrd.XL_CELL_DATE:
        return _serial_date(repr(float(value)), epoch) or _number(value)
    if kind == xlrd.XL_CELL_NUMBER:
        return _number(value)
    if kind == xlrd.XL_CELL_BOOLEAN:
        return "TRUE" if value else "FALSE"
    return str(value).replace("\t", " ").replace("\n", " ").replace("\r", " ")


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return str(value)
