"""One canonical spelling per field kind, used identically when building and when scanning.

Why canonical forms rather than fuzzy matching: the index holds only keyed hashes, so the two sides
can only meet on byte-identical input. Each normaliser therefore folds every spelling the signature
pack recognises for its kind into one string:

- ``name``: upper case, accents and punctuation dropped, single-letter initials dropped, tokens
  sorted — "GARCIA, MARIA L", "Maria L. Garcia" and "garcia maria" all become ``GARCIA MARIA``;
- ``dob`` (any date): every date spelling of the ``dob`` signature -> ISO ``YYYY-MM-DD``;
- ``address``: the street line only, upper case, USPS suffix and direction abbreviations
  (STREET -> ST, NORTH -> N), cut after the street suffix ("Apt 5", city and ZIP dropped);
- identifiers (``dl``, ``ssn``, ``passport``, ``card``, ``iban`` …): separators stripped, upper case;
- ``email``: lower case; ``phone``: the last ten digits.

A normaliser returns ``None`` when the value cannot be a value of its kind (it is then neither
indexed nor looked up).
"""
from __future__ import annotations

import datetime as _dt
import re
import unicodedata
from functools import lru_cache
from typing import Callable

_MONTHS = {m: i for i, ms in enumerate(
    [("JAN", "JANUARY"), ("FEB", "FEBRUARY"), ("MAR", "MARCH"), ("APR", "APRIL"), ("MAY",), ("JUN", "JUNE"),
     ("JUL", "JULY"), ("AUG", "AUGUST"), ("SEP", "SEPT", "SEPTEMBER"), ("OCT", "OCTOBER"),
     ("NOV", "NOVEMBER"), ("DEC", "DECEMBER")], 1) for m in ms}

SUFFIXES = {
    "STREET": "ST", "AVENUE": "AVE", "AV": "AVE", "ROAD": "RD", "BOULEVARD": "BLVD", "DRIVE": "DR",
    "LANE": "LN", "COURT": "CT", "WAY": "WAY", "PLACE": "PL", "CIRCLE": "CIR", "TERRACE": "TER",
    "PARKWAY": "PKWY", "HIGHWAY": "HWY", "TRAIL": "TRL", "SQUARE": "SQ",
}
_SUFFIX_ABBR = set(SUFFIXES.values())
_DIRECTIONS = {"NORTH": "N", "SOUTH": "S", "EAST": "E", "WEST": "W"}
_NON_ALNUM = re.compile(r"[^0-9A-Z]+")
_NAME_SPLIT = re.compile(r"[^A-Z]+")
_ID_DROP = re.compile(r"[^0-9A-Za-z]+")

_D_NUM = re.compile(r"^(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})$")          # US month/day/year
_D_ISO = re.compile(r"^(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?:[T ].*)?$")
_D_COMPACT = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_D_MDY = re.compile(r"^([A-Z]+)\.? (\d{1,2}),? (\d{4})$")               # March 14, 1975
_D_DMY = re.compile(r"^(\d{1,2}) ([A-Z]+)\.?,? (\d{4})$")               # 14 Mar 1975


def _ascii_upper(s: str) -> str:
    if not s.isascii():
        s = unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode()
    return s.upper()


@lru_cache(maxsize=65536)
def name(s: str) -> str | None:
    tokens = [t for t in _NAME_SPLIT.split(_ascii_upper(s).replace("'", "")) if len(t) > 1]
    if not tokens:
        return None
    return " ".join(sorted(tokens))


def _iso(y: int, m: int, d: int) -> str | None:
    try:
        return _dt.date(y, m, d).isoformat()
    except ValueError:
        return None


@lru_cache(maxsize=65536)
def date(s: str) -> str | None:
    s = " ".join(s.strip().upper().split())
    if m := _D_NUM.match(s):
        return _iso(int(m[3]), int(m[1]), int(m[2]))
    if m := _D_ISO.match(s):
        return _iso(int(m[1]), int(m[2]), int(m[3]))
    if m := _D_COMPACT.match(s):
        return _iso(int(m[1]), int(m[2]), int(m[3]))
    if (m := _D_MDY.match(s)) and m[1] in _MONTHS:
        return _iso(int(m[3]), _MONTHS[m[1]], int(m[2]))
    if (m := _D_DMY.match(s)) and m[2] in _MONTHS:
        return _iso(int(m[3]), _MONTHS[m[2]], int(m[1]))
    return None


_PUNCT_BLANK = str.maketrans({c: " " for c in "!\"#$%&'()*+-./:;<=>?@[\\]^_`{|}~\t\r\n"})


def address(s: str) -> str | None:
    s = s.lstrip()
    if not s[:1].isdigit():
        return None                      # a street line starts with its number
    tokens = _ascii_upper(s.split(",", 1)[0]).translate(_PUNCT_BLANK).split()
    out: list[str] = []
    for i, t in enumerate(tokens):
        t = SUFFIXES.get(t, t)
        if i > 0 and t in _DIRECTIONS and len(out) == 1:
            t = _DIRECTIONS[t]
        out.append(t)
        if i >= 2 and t in _SUFFIX_ABBR:
            break                        # the street line ends at its suffix (no unit, no city)
    if len(out) < 2 or not out[0][:1].isdigit():
        return None
    return " ".join(out)


def identifier(s: str) -> str | None:
    v = _ID_DROP.sub("", s).upper()
    return v or None


def email(s: str) -> str | None:
    v = s.strip().lower()
    return v if "@" in v else None


def phone(s: str) -> str | None:
    digits = "".join(ch for ch in s if ch.isdigit())
    return digits[-10:] if len(digits) >= 10 else None


NORMALISERS: dict[str, Callable[[str], str | None]] = {
    "name": name, "dob": date, "date": date, "address": address, "email": email, "phone": phone,
}
KNOWN_KINDS = ("name", "dob", "date", "address", "dl", "ssn", "itin", "passport", "card", "iban", "aba",
               "email", "phone", "id")


def normaliser(kind: str) -> Callable[[str], str | None]:
    """The normaliser of a field kind (identifiers for every kind that is not text-like)."""
    return NORMALISERS.get(kind, identifier)


def normalise(kind: str, value: object) -> str | None:
    """Canonical spelling of one value of ``kind``; dates from spreadsheets/Parquet become ISO."""
    if value is None:
        return None
    if isinstance(value, (_dt.date, _dt.datetime)):
        if kind in ("dob", "date"):
            return (value.date() if isinstance(value, _dt.datetime) else value).isoformat()
        value = value.isoformat()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    s = value if isinstance(value, str) else value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    if not s.strip():
        return None
    return normaliser(kind)(s)
