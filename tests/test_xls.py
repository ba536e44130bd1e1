"""Legacy binary ``.xls`` workbooks are read as tables: the header row, then one line per row, with
date cells as ISO dates, so a leak workbook trips with one record per person. The fixtures are
committed (no maintained library writes BIFF); tests/data/make_xls.py records how they were made."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from sensor.decode.containers import PartRecorder, Sniffer
from sensor.decode.limits import Budget, DecodeLimits
from sensor.synth import BREACH_HEADER, breach_rows
from tests.conftest import scan_bytes, zip_bytes
from tests.test_decode import _scan_as_a_tap

DATA = Path(__file__).resolve().parent / "data"
XLS = (DATA / "breach100.xls").read_bytes()
N = 100


def _iso(us_date: str) -> str:
    return dt.datetime.strptime(us_date, "%m/%d/%Y").date().isoformat()


def _lines(data: bytes, limits: DecodeLimits | None = None) -> list[str]:
    rec = PartRecorder()
    sn = Sniffer(rec, Budget(limits or DecodeLimits()))
    sn.write(data)
    sn.close()
    rec.file.seek(0)
    return rec.file.read().decode().splitlines()


def test_a_workbook_reads_as_its_rows_with_date_cells_as_iso_dates():
    rows = [r.rstrip("\n").split(",") for r in breach_rows(N, 2022)]
    want = ["\t".join(BREACH_HEADER.strip().split(","))] + [
        "\t".join(_iso(v) if i == 4 else v for i, v in enumerate(r)) for r in rows]
    assert _lines(XLS) == want


def test_leak_workbook_trips_with_a_record_per_person(engine):
    r = scan_bytes(engine, XLS, chunk=4096)
    assert r.notes[0] == "container:xls", r.notes
    assert r.verdict == "trip" and abs(r.records - N) <= 0.05 * N, (r.records, r.findings)
    assert r.findings["dob"] == N                      # date cells typed as dates of birth


def test_1904_workbook_dates_and_the_corpus_truth(engine):
    from tests.corpus15 import people
    ps = people()
    lines = _lines((DATA / "corpus15_people.xls").read_bytes())
    assert lines[0].split("\t")[2] == "Birth Date"
    assert [line.split("\t")[2] for line in lines[1:]] == [p.dob.isoformat() for p in ps]
    r = scan_bytes(engine, (DATA / "corpus15_people.xls").read_bytes())
    assert r.verdict == "trip" and abs(r.records - len(ps)) <= 0.05 * len(ps)


def test_a_workbook_is_read_in_a_thread_as_inline(engine):
    inline = scan_bytes(engine, XLS).to_json()
    tap = _scan_as_a_tap(engine, XLS).to_json()
    for x in (inline, tap):
        x.pop("seconds")
    assert tap == inline and inline["records"] == N


def test_a_workbook_inside_a_zip(engine):
    assert scan_bytes(engine, zip_bytes({"export/permits.xls": XLS})).records == N


@pytest.mark.parametrize("label,data", [
    ("truncated", XLS[:3000]),
    ("cut in half", XLS[: len(XLS) // 2]),
    ("magic then zeros", XLS[:512] + b"\0" * 4096),
    ("sector table scrambled", XLS[:76] + bytes(reversed(XLS[76:512])) + XLS[512:]),
])
def test_corrupt_workbooks_give_a_note_not_a_crash(engine, label, data):
    r = scan_bytes(engine, data, chunk=997)
    assert any(n.startswith("decode-error:xls") for n in r.notes), (label, r.notes)


def test_a_compound_file_without_a_workbook_is_scanned_as_raw_bytes(engine):
    """Same magic, a Word/PowerPoint/Outlook file: read as its bytes (as before), with a note."""
    name = "Workbook".encode("utf-16-le")
    assert name in XLS
    r = scan_bytes(engine, XLS.replace(name, "WordDocu".encode("utf-16-le")))
    assert any(n.startswith("decode-error:ole2") for n in r.notes), r.notes
    assert r.decoded_bytes == len(XLS)


@pytest.mark.parametrize("limits,note", [
    (DecodeLimits(max_decoded_bytes=4000), "decode-limit:decoded-bytes"),
    (DecodeLimits(max_container_bytes=10_000), "decode-limit:container-bytes"),
    (DecodeLimits(max_members=0), "decode-limit:members"),
])
def test_a_workbook_is_bounded_like_an_xlsx(engine, limits, note):
    r = scan_bytes(engine, XLS, limits=limits)
    assert any(n.startswith(note) for n in r.notes), r.notes
    assert r.decoded_bytes <= max(limits.max_decoded_bytes, 0) + limits.piece


def test_damaged_workbooks_never_crash():
    """Seeded byte flips and cuts: every outcome is rows or a decode note, never an exception."""
    import random

    from sensor.decode.limits import DecodeProblem
    rng = random.Random(15)
    outcomes = set()
    for _ in range(60):
        b = bytearray(XLS)
        for _ in range(rng.randint(1, 40)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        if rng.random() < 0.3:
            b = b[:rng.randrange(512, len(b))]
        try:
            _lines(bytes(b))
            outcomes.add("read")
        except DecodeProblem as e:
            assert e.note.startswith(("decode-error:xls", "decode-error:ole2", "decode-limit:")), e.note
            outcomes.add("note")
    assert "note" in outcomes
