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
    if len(tokens) < 2 or not tokens[0][:1].isdigit():
        return None
    t = tokens[1]
    out = [tokens[0], SUFFIXES.get(t) or _DIRECTIONS.get(t, t)]   # a direction only right after the number
    for t in tokens[2:]:
        t = SUFFIXES.get(t, t)
        out.append(t)
        if t in _SUFFIX_ABBR:
            break                        # the street line ends at its suffix (no unit, no city)
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


# -- the same, from the raw bytes a scan hands over (canonical UTF-8 bytes out) --------------------
# Why: a scan looks values up as bytes; the ASCII fast paths below skip a decode, a regex and an
# encode per value (the matcher runs once per record of dense content). They give exactly the bytes
# of ``normaliser(kind)(raw.decode("utf-8", "replace")).encode()`` (tests compare them); any other
# input takes that path.
_UPPER = bytes(range(256)).upper()
_NON_ALNUM = bytes(b for b in range(256) if not (48 <= b <= 57 or 65 <= b <= 90 or 97 <= b <= 122))
# punctuation -> blank, and the separators str.split() splits on but bytes.split() does not
_PUNCT_BLANK_B = bytes(32 if chr(b) in "!\"#$%&'()*+-./:;<=>?@[\\]^_`{|}~\t\r\n\x1c\x1d\x1e\x1f" else b
                       for b in range(256)).upper()
_BLANKS = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"            # what str.strip() strips of ASCII
_SUFFIXES_B = {k.encode(): v.encode() for k, v in SUFFIXES.items()}
_SUFFIX_ABBR_B = {v.encode() for v in _SUFFIX_ABBR}
_DIRECTIONS_B = {k.encode(): v.encode() for k, v in _DIRECTIONS.items()}


def _via_str(kind: str) -> Callable[[bytes], bytes | None]:
    fn = normaliser(kind)

    def norm(raw: bytes) -> bytes | None:
        v = fn(raw.decode("utf-8", "replace"))
        return None if v is None else v.encode()
    return norm


def identifier_bytes(raw: bytes) -> bytes | None:
    # non-ASCII characters are dropped by ``identifier`` too: every byte of one is >= 0x80
    return raw.translate(_UPPER, _NON_ALNUM) or None


def address_bytes(raw: bytes) -> bytes | None:
    if not raw.isascii():
        return _address_str(raw)
    s = raw.lstrip(_BLANKS)
    if not s[:1].isdigit():
        return None
    tokens = s.split(b",", 1)[0].translate(_PUNCT_BLANK_B).split()
    if len(tokens) < 2 or not tokens[0][:1].isdigit():
        return None
    t = tokens[1]
    out = [tokens[0], _SUFFIXES_B.get(t) or _DIRECTIONS_B.get(t, t)]
    for t in tokens[2:]:
        t = _SUFFIXES_B.get(t, t)
        out.append(t)
        if t in _SUFFIX_ABBR_B:
            break
    return b" ".join(out)


_address_str = _via_str("address")


def bytes_normaliser(kind: str) -> Callable[[bytes], bytes | None]:
    """Raw bytes -> canonical UTF-8 bytes (or None) for a field kind; names and dates cached (they
    repeat), like their text normalisers."""
    fn = normaliser(kind)
    if fn is identifier:
        return identifier_bytes
    if fn is address:
        return address_bytes
    if fn is name or fn is date:
        return lru_cache(maxsize=65536)(_via_str(kind))
    return _via_str(kind)
