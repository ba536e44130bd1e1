"""Validators: cheap checks on the few bytes of a match, run before a value is counted.

Each takes the matched bytes and returns True when the value is plausible. They see raw personal
values, so they keep nothing and raise nothing that carries the value.
"""
from __future__ import annotations

import datetime as _dt
from functools import lru_cache
from typing import Callable

Validator = Callable[[bytes], bool]

_DIGITS = bytes(range(48, 58))
_DELETE_NON_DIGITS = bytes(c for c in range(256) if c not in _DIGITS)


def digits(v: bytes) -> bytes:
    return v.translate(None, _DELETE_NON_DIGITS)


# Published test / specimen values that look valid but identify nobody.
_SSN_INVALID = {b"078051120", b"219099999", b"123456789", b"111111111", b"333333333", b"987654320",
                b"987654321", b"987654322", b"987654323", b"987654324", b"987654325",
                b"987654326", b"987654327", b"987654328", b"987654329"}
_TEST_CARDS = {b"4111111111111111", b"4242424242424242", b"4012888888881881", b"4222222222222",
               b"5555555555554444", b"5105105105105100", b"378282246310005", b"371449635398431",
               b"378734493671000", b"6011111111111117", b"6011000990139424", b"30569309025904",
               b"38520000023237", b"3530111333300000", b"3566002020360505", b"4000056655665556",
               b"5200828282828210", b"2223003122003222", b"4000000000000002", b"4000000000000077",
               # Maestro, UATP and Dankort numbers that processors publish for their sandboxes
               b"6759649826438453", b"6799990100000000019", b"6771798021000008", b"6304000000000000",
               b"5018000000000009", b"135410014004955", b"5019555544445555", b"4571000000000001"}


def ssn(v: bytes) -> bool:
    d = digits(v)
    if len(d) != 9 or d in _SSN_INVALID:
        return False
    area, group, serial = d[:3], d[3:5], d[5:]
    if area in (b"000", b"666") or area[0] == 57:  # 9xx are ITINs, never SSNs
        return False
    if group == b"00" or serial == b"0000":
        return False
    return len(set(d)) > 1


def luhn(v: bytes) -> bool:
    d = digits(v)
    if not 12 <= len(d) <= 19 or d in _TEST_CARDS or len(set(d)) < 3:
        return False
    total = 0
    for i, c in enumerate(reversed(d)):
        n = c - 48
        if i & 1:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return total % 10 == 0


# (prefix, lengths) of the card brands that carry personal accounts
_PAN_BRANDS = (
    ((b"4",), (13, 16, 19)),                                                          # Visa
    (tuple(str(i).encode() for i in range(51, 56)) + tuple(str(i).encode() for i in range(2221, 2721)), (16,)),  # Mastercard
    ((b"34", b"37"), (15,)),                                                          # Amex
    ((b"6011", b"65") + tuple(str(i).encode() for i in range(644, 650)), (16, 19)),   # Discover
    (tuple(str(i).encode() for i in range(3528, 3590)), (16, 19)),                    # JCB
    ((b"300", b"301", b"302", b"303", b"304", b"305", b"36", b"38"), (14, 16)),       # Diners
    ((b"5018", b"5020", b"5038", b"5893", b"6304", b"6759", b"6761", b"6762", b"6763",
      b"676770", b"676774"), tuple(range(12, 20))),                                    # Maestro
    ((b"5019",), (16,)),                                                              # Dankort (4571: Visa/Dankort)
    ((b"1",), (15,)),                                                                 # UATP
)


def pan(v: bytes) -> bool:
    """A card number: a real brand prefix with that brand's length, and Luhn."""
    d = digits(v)
    n = len(d)
    for prefixes, lengths in _PAN_BRANDS:
        if n in lengths and d.startswith(prefixes):
            return luhn(d)
    return False


def aba(v: bytes) -> bool:
    d = digits(v)
    if len(d) != 9 or d == b"000000000":
        return False
    n = [c - 48 for c in d]
    s = 3 * (n[0] + n[3] + n[6]) + 7 * (n[1] + n[4] + n[7]) + (n[2] + n[5] + n[8])
    return s % 10 == 0


_IBAN_LEN = {"AD": 24, "AE": 23, "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22,
             "DK": 18, "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28,
             "IE": 22, "IS": 26, "IT": 27, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31,
             "NL": 18, "NO": 15, "PL": 28, "PT": 25, "RO": 24, "SA": 24, "SE": 24, "SI": 19, "SK": 24,
             "SM": 27, "TR": 26}


def iban(v: bytes) -> bool:
    s = v.replace(b" ", b"").decode("ascii", "replace").upper()
    want = _IBAN_LEN.get(s[:2])
    if want is None or len(s) != want:
        return False
    moved = s[4:] + s[:4]
    try:
        num = int("".join(str(int(ch, 36)) for ch in moved))
    except ValueError:
        return False
    return num % 97 == 1


def nanp(v: bytes) -> bool:
    d = digits(v)
    if len(d) == 11 and d[0] == 49:
        d = d[1:]
    if len(d) != 10:
        return False
    area, exch, line = d[:3], d[3:6], d[6:]
    if area[0] < 50 or exch[0] < 50:          # N must be 2-9
        return False
    if area[1:] == b"11" or exch[1:] == b"11":  # N11 service codes
        return False
    if exch == b"555" and line.startswith(b"01"):  # 555-0100..0199 are fictional
        return False
    return len(set(d)) > 2


# Reserved names (RFC 2606 / 6761): documentation addresses, never a person's.
_EMAIL_RESERVED = (b"example.com", b"example.org", b"example.net", b"localhost", b"test", b"invalid",
                   b"example", b"local")
_EMAIL_SUFFIXES = tuple(b"." + r for r in _EMAIL_RESERVED)
_EMAIL_EXACT = frozenset(_EMAIL_RESERVED)


def email(v: bytes) -> bool:
    host = v.rpartition(b"@")[2].lower()
    return not (host in _EMAIL_EXACT or host.endswith(_EMAIL_SUFFIXES))


_MONTHS = {m: i + 1 for i, m in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])}


def _today() -> _dt.date:
    return _dt.date.today()


@lru_cache(maxsize=65536)
def dob(v: bytes) -> bool:
    """A real calendar date, not in the future, at most 120 years ago."""
    s = v.decode("ascii", "replace").replace(",", " ").replace(".", " ")
    parts = [p for p in s.replace("/", " ").replace("-", " ").split() if p]
    try:
        if len(parts) == 1 and len(parts[0]) == 8:          # YYYYMMDD
            y, m, d = int(parts[0][:4]), int(parts[0][4:6]), int(parts[0][6:])
        elif len(parts) == 3 and parts[0].isalpha():        # March 14 1975
            m, d, y = _MONTHS[parts[0][:3].lower()], int(parts[1]), int(parts[2])
        elif len(parts) == 3 and parts[1].isalpha():        # 14 March 1975
            d, m, y = int(parts[0]), _MONTHS[parts[1][:3].lower()], int(parts[2])
        elif len(parts) == 3 and len(parts[0]) == 4:        # 1975-03-14
            y, m, d = int(parts[0]), int(parts[1]), int(parts[2])
        elif len(parts) == 3:                               # 03/14/1975 (US order)
            m, d, y = int(parts[0]), int(parts[1]), int(parts[2])
        else:
            return False
        born = _dt.date(y, m, d)
    except (ValueError, KeyError):
        return False
    today = _today()
    return born <= today and today.year - y <= 120


REGISTRY: dict[str, Validator] = {
    "ssn": ssn, "luhn": luhn, "pan": pan, "aba": aba, "iban": iban, "nanp": nanp, "email": email, "dob": dob,
}
