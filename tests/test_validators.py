from __future__ import annotations

import datetime as dt

import pytest

from sensor.detect import validators as v


@pytest.mark.parametrize("value,ok", [
    (b"536-22-8714", True), (b"078-05-1120", False), (b"219-09-9999", False), (b"123-45-6789", False),
    (b"000-22-8714", False), (b"666-22-8714", False), (b"900-22-8714", False), (b"536-00-8714", False),
    (b"536-22-0000", False), (b"536228714", True),
])
def test_ssn(value, ok):
    assert v.ssn(value) is ok


def test_luhn_and_test_cards():
    assert v.luhn(b"4539 1488 0343 6467")
    assert not v.luhn(b"4539 1488 0343 6468")
    assert not v.luhn(b"4111111111111111")        # published test card
    assert not v.luhn(b"0000000000000000")


def test_aba_iban_nanp_email():
    assert v.aba(b"021000021") and not v.aba(b"021000022")
    assert v.iban(b"GB82 WEST 1234 5698 7654 32") and not v.iban(b"GB82WEST12345698765431")
    assert v.iban(b"DE89370400440532013000") and not v.iban(b"DE8937040044053201300")   # wrong length
    assert v.nanp(b"(916) 445-9555")
    assert not v.nanp(b"(916) 555-0123") and not v.nanp(b"911-445-9555") and not v.nanp(b"916-211-9555")
    assert v.email(b"a@gmail.com") and not v.email(b"a@example.com") and not v.email(b"a@mail.example.org")


def test_dob_range():
    today = dt.date.today()
    assert v.dob(b"03/14/1975") and v.dob(b"1975-03-14") and v.dob(b"March 14, 1975") and v.dob(b"14 Mar 1975")
    assert v.dob(b"19750314")
    assert not v.dob(b"02/30/1975")                                   # no such day
    assert not v.dob(f"01/01/{today.year + 1}".encode())              # future
    assert not v.dob(f"01/01/{today.year - 121}".encode())            # older than anyone alive
