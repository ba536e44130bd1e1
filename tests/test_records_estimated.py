"""Where the structure gives no row at all (plain text: one long line of prose), a person is a
distinct strong identifier that shares its container with quasi-identifiers, and the result
says in ``notes`` that the count is estimated and how."""
from __future__ import annotations

import random

from sensor import synth
from sensor.detect.scanner import ESTIMATE_MIN_IDS
from tests.conftest import scan_bytes

FIRSTS, LASTS = synth._words("first-names.txt"), synth._words("surnames.txt")


def _ssn(rng: random.Random) -> str:
    return f"{rng.randint(100, 665):03d}-{rng.randint(10, 99):02d}-{rng.randint(1000, 9999):04d}"


def _person(rng: random.Random, i: int) -> str:
    return (f"{FIRSTS[i * 7 % len(FIRSTS)].title()} {LASTS[i * 11 % len(LASTS)].title()} of "
            f"{rng.randint(10, 9999)} {rng.choice(synth.STREETS).title()} St, {rng.choice(synth.CITIES).title()}, "
            f"CA {rng.randint(90001, 96162)} gave SSN {_ssn(rng)}")


def prose(n: int, seed: int = 5) -> bytes:
    """``n`` people in one line of prose: no line, object or row per person."""
    rng = random.Random(seed)
    return ("Notes from the intake meeting: " + "; then ".join(_person(rng, i) for i in range(n)) + ".\n").encode()


def _estimated(notes: list[str]) -> list[str]:
    return [n for n in notes if n.startswith("records-estimated:")]


def test_one_line_of_prose_counts_each_identifier_as_a_person(engine):
    r = scan_bytes(engine, prose(30))
    assert r.verdict == "trip" and r.records == 30 and r.strong_records == 30, (r.records, r.notes)
    assert _estimated(r.notes) == [
        "records-estimated: 30 distinct strong identifiers sharing their container with quasi-identifiers "
        f"(no row structure; each counted as one person where a line of plain text held {ESTIMATE_MIN_IDS} "
        "or more of one kind)"]


def test_the_estimate_does_not_depend_on_chunking_or_repetition(engine):
    data = prose(30)
    assert scan_bytes(engine, data, chunk=97).records == 30
    assert scan_bytes(engine, data + data).records == 30           # the same people twice: 30


def test_a_line_longer_than_a_record_window_is_estimated_window_by_window(engine):
    r = scan_bytes(engine, prose(300, seed=9), chunk=4096)          # ~24 KB on one line
    assert abs(r.records - 300) <= 15, (r.records, r.notes)
    assert _estimated(r.notes)


def test_rows_are_not_estimated(engine):
    rng = random.Random(3)
    rows = "".join(f"{_person(rng, i)}; spouse SSN {_ssn(rng)}\n" for i in range(20)).encode()
    r = scan_bytes(engine, rows)                       # two SSNs per line: one row, one record
    assert r.records == 20 and not _estimated(r.notes), (r.records, r.notes)
    r = scan_bytes(engine, synth.breach_csv(100))
    assert r.records == 100 and not _estimated(r.notes)


def test_structured_parts_are_never_estimated(engine):
    """JSON with every SSN in one object's array: the structure says what a record is."""
    rng = random.Random(4)
    body = ('{"case": {"city": "Fresno, CA 93701", "address": "12 Main St", "ssns": ['
            + ", ".join(f'"{_ssn(rng)}"' for _ in range(30)) + "]}}").encode()
    r = scan_bytes(engine, body)
    assert not _estimated(r.notes), r.notes
