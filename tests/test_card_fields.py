"""UATP card numbers (15 digits from 1) count in a field named like a card, and nowhere else bare.

A bare 15-digit number from 1 is also a social-network id or an epoch-microsecond stamp: ten per
cent of them pass Luhn. So the number counts bare only in a column, key or element whose name is a
card field's (signature ``uatp-card``, a gated pattern); the same numbers under other names, or
beside an HTML "card" block, are not cards.
"""
from __future__ import annotations

import json
import random

import pytest

from tests import corpus15
from tests.conftest import scan_bytes

N = 80


def _numbers(seed: int, valid: bool = True) -> list[str]:
    rng = random.Random(seed)
    out = []
    while len(out) < N:
        v = corpus15._uatp(rng)
        out.append(v if valid else v[:-1] + str((int(v[-1]) + 1) % 10))
    return out


@pytest.mark.parametrize("key", ["card_number", "CardNo", "cc_num", "PaymentCardNumber", "uatp", "Credit Card"])
def test_card_named_fields_count_bare_uatp_numbers(engine, key):
    ps = corpus15.people(N, seed=31)
    nums = _numbers(32)
    csv = (f"name,{key},seat\n" + "".join(f"{p.first} {p.last},{n},{i}A\n" for i, (p, n) in enumerate(zip(ps, nums))))
    js = json.dumps([{"traveller": f"{p.first} {p.last}", key: int(n)} for p, n in zip(ps, nums)])
    for data, ct in ((csv, "text/csv"), (js, "application/json")):
        r = scan_bytes(engine, data.encode(), content_type=ct)
        assert r.findings.get("uatp-card") == N and r.verdict == "trip", (key, ct, r.findings)
        assert abs(r.strong_records - N) <= 0.05 * N, (key, ct, r.strong_records)


@pytest.mark.parametrize("key", ["user_id", "tweet_id", "timestamp_us", "order", "card_id_internal_ref"])
def test_the_same_numbers_under_other_names_are_not_cards(engine, key):
    ps = corpus15.people(N, seed=33)
    nums = _numbers(34)
    csv = f"name,{key}\n" + "".join(f"{p.first} {p.last},{n}\n" for p, n in zip(ps, nums))
    js = json.dumps({"items": [{"name": f"{p.first} {p.last}", key: int(n)} for p, n in zip(ps, nums)]})
    html = ('<div class="cards">' + "".join(f'<div class="card"><h3>{p.first} {p.last}</h3><p>{n}</p></div>'
                                           for p, n in zip(ps, nums)) + "</div>")
    for data, ct in ((csv, "text/csv"), (js, "application/json"), (html, "text/html")):
        r = scan_bytes(engine, data.encode(), content_type=ct)
        assert "uatp-card" not in r.findings and r.verdict != "trip", (key, ct, r.findings)


def test_a_card_field_still_needs_luhn_and_the_brand_length(engine):
    ps = corpus15.people(N, seed=35)
    bad = _numbers(36, valid=False)
    csv = "name,card_number\n" + "".join(f"{p.first} {p.last},{n}\n" for p, n in zip(ps, bad))
    r = scan_bytes(engine, csv.encode(), content_type="text/csv")
    assert "uatp-card" not in r.findings, r.findings
