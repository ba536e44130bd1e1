"""One record from structure -> one line the scanner reads as one person.

A record is a list of ``(field name, value)`` pairs however the document spelled it (JSON keys and
paths, XML element/attribute names, SQL columns). The line puts the normalised field name before
each value (so hotword context applies), joins a name split over given/family fields back into
one name, cuts the time off ISO date-times (``1975-03-14T00:00:00`` is a date), reads a number in
a field named as a date of birth as the date it encodes (Excel serial, Unix seconds or
milliseconds), leaves out fields
named as the organisation's, and stays under the scanner's record window.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import Iterator

from sensor.detect.structure.labels import Labels, normalise

MAX_VALUE = 200          # characters of one value in a record line
MAX_LINE = 3000          # below the scanner's max_record_bytes (4096): one line is one record
_ISO_DT = re.compile(r"((?:19|20)\d\d-[01]\d-[0-3]\d)[T ][0-2]\d:[0-5]\d(?::[0-5]\d(?:\.\d+)?)?(?:Z|[+-]\d\d:?\d\d)?")
_BLANKS = re.compile(r"[\r\n\t]+")


def scalar(v: object) -> str | None:
    """The text of a scalar field value, or None for nothing worth scanning."""
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, str):
        s = v.strip()
        if not s:
            return None
        if len(s) > MAX_VALUE:
            s = s[:MAX_VALUE]
        m = _ISO_DT.fullmatch(s)
        if m:
            return m.group(1)
        return _BLANKS.sub(" ", s) if ("\n" in s or "\t" in s or "\r" in s) else s
    if isinstance(v, (int, float)):
        return str(v)
    return None


_NUMBER_DATE = re.compile(r"-?\d{5,13}")
_EXCEL_EPOCH = dt.date(1899, 12, 30)
_UNIX_EPOCH = dt.datetime(1970, 1, 1)


def number_date(s: str) -> str | None:
    """A date written as a number in a field named as a date of birth: an Excel serial (5 digits),
    Unix seconds (9-10 digits) or milliseconds (11-13 digits), negative before 1970. None when
    the number is none of these or lands outside 1900-2099. Nine or ten digits are read as
    seconds (milliseconds that short fall in the first four months of 1970)."""
    if not _NUMBER_DATE.fullmatch(s):
        return None
    n = int(s)
    digits = len(s.lstrip("-"))
    try:
        if digits == 5 and n > 0:
            d = _EXCEL_EPOCH + dt.timedelta(days=n)
        elif 9 <= digits <= 10:
            d = (_UNIX_EPOCH + dt.timedelta(seconds=n)).date()
        elif 11 <= digits <= 13:                           # 11 digits: ms in 1970-73 (seconds: year 2286+)
            d = (_UNIX_EPOCH + dt.timedelta(milliseconds=n)).date()
        else:
            return None
    except OverflowError:
        return None
    return d.isoformat() if 1900 <= d.year <= 2099 else None


class LineWriter:
    """Turns records into the lines the shadow scanner reads."""

    def __init__(self, labels: Labels):
        self.labels = labels
        self._keys: dict[str, tuple[str, int, bool, bool]] = {}   # key -> what its name means

    def _key(self, key: str) -> tuple[str, int, bool, bool]:
        """(label, name part, organisational, DOB field) of a field key; keys repeat every record."""
        k = self._keys.get(key)
        if k is None:
            label = normalise(" ".join(key.rsplit(".", 2)[-2:])) if key else ""
            L = self.labels
            k = (label, L.name_part(label) if label else 0, bool(label) and L.organisational(label),
                 bool(label) and L.dob_field(label))
            if len(self._keys) < 4096:
                self._keys[key] = k
        return k

    def line(self, fields: list[tuple[str, str]]) -> bytes | None:
        lead: list[str] = []
        trail: list[str] = []
        out: list[str] = []
        size = 0
        for key, value in fields:
            label, part, org, dob = self._key(key)
            if org:
                # the organisation's field says nothing private about the person: its value is left
                # out, its name stays (a business-name field makes the record a business's)
                piece = f"{label}: -"
                size += len(piece) + 2
                if size <= MAX_LINE:
                    out.append(piece)
                continue
            if part == 1:
                lead.append(value)
                continue
            if part == 2:
                trail.append(value)
                continue
            if dob and value[-1:].isdigit():
                value = number_date(value) or value       # column consistency: the same date, spelled as a number
            piece = f"{label}: {value}" if label else value
            size += len(piece) + 2
            if size > MAX_LINE:
                break
            out.append(piece)
        if lead or trail:
            out.insert(0, "name: " + " ".join(lead + trail))
        if not out:
            return None
        return ("; ".join(out) + "\n").encode("utf-8", "replace")


class LineReader:
    """A reader of whole lines: bytes are cut at the last newline and the tail waits for the next
    chunk, so a line split across chunks is read once, whole. Subclasses say what a batch of
    lines gives (``_lines``)."""

    def __init__(self, writer: LineWriter, notes: list[str]):
        self.w = writer
        self.rest = b""

    def _lines(self, lines: list[bytes]) -> Iterator[bytes]:
        raise NotImplementedError

    def feed(self, data: bytes) -> Iterator[bytes]:
        data = self.rest + data
        cut = data.rfind(b"\n")
        if cut < 0:
            self.rest = data
            return iter(())
        self.rest = data[cut + 1:]
        return self._lines(data[:cut].split(b"\n"))

    def close(self) -> Iterator[bytes]:
        rest, self.rest = self.rest, b""
        return self._lines([rest]) if rest.strip() else iter(())
