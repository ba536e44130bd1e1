"""Issue 15 acceptance: every leak shape the sensor supports trips with records within 5% of the
people in it; no public-by-design file trips; what is not supported yet is listed, honestly.

The table (file, expected, verdict, records, truth) is printed at the end of every pytest run
that collects this module (``tests/conftest.py`` prints :data:`tests.conftest.REPORT_TABLES`).
The pending sets are asserted to be exactly the complement of the supported ones, so a shape that
starts to work fails the test until it is moved to the supported set (and one that stops working
fails it too).
"""
from __future__ import annotations

import pytest

from tests import corpus15
from tests.conftest import REPORT_TABLES, scan_bytes

# leak files that must trip with records within 5% of the truth
SUPPORTED = {
    "json_nested.json", "jsonl_nested.jsonl", "rows_meta.json", "df_split.json", "df_columns.json",
    "df_index.json", "parallel_arrays.json", "dashboard_dictionary.json", "features.geojson",
    "holders_children.xml", "holders_attributes.xml", "holders_dump.sql", "applicants_insert_cols.sql",
    "cards.html", "no_header.txt", "table.pdf",
}
# public-by-design files that must not trip (the others are issue 15 point 3, pending)
PUBLIC_OK = {
    "staff_directory.json", "staff_directory.xml", "press_list.csv",
}
TOLERANCE = 0.05


@pytest.fixture(scope="module")
def outcomes(engine):
    rows = []
    for f in corpus15.build():
        r = scan_bytes(engine, f.data, content_type=f.content_type)
        if f.expected == "trip":
            ok = r.verdict == "trip" and abs(r.records - f.truth) <= TOLERANCE * f.truth
        else:
            ok = r.verdict != "trip"
        rows.append((f, r, ok))
    REPORT_TABLES.append(_table(rows))
    return rows


def _table(rows) -> str:
    lines = ["issue 15 corpus: file, expected, verdict, records, truth, status",
             f"  {'file':30} {'expected':8} {'verdict':7} {'records':>7} {'truth':>5}  status"]
    for f, r, ok in rows:
        listed = f.name in (SUPPORTED if f.expected == "trip" else PUBLIC_OK)
        status = ("ok" if ok else "FAIL") if listed else ("pending (now passes: move it)" if ok else "pending")
        lines.append(f"  {f.name:30} {f.expected:8} {r.verdict:7} {r.records:7d} {f.truth:5d}  {status}  [{f.shape}]")
    missing = [name for name, _, gen, _ in corpus15.LEAKS if name not in {f.name for f, _, _ in rows}]
    for name in missing:
        lines.append(f"  {name:30} {'trip':8} {'-':7} {'-':>7} {'-':>5}  pending (not generated here)")
    return "\n".join(lines)


def test_corpus_has_the_promised_size():
    files = corpus15.build()
    assert len(corpus15.LEAKS) >= 20 and sum(f.expected == "public" for f in files) >= 8


def test_supported_leaks_trip_with_records_near_the_truth(outcomes):
    bad = [(f.name, r.verdict, r.records, f.truth) for f, r, ok in outcomes if f.name in SUPPORTED and not ok]
    assert bad == [], _table(outcomes)


def test_public_by_design_files_do_not_trip(outcomes):
    bad = [(f.name, r.verdict, r.records) for f, r, ok in outcomes if f.name in PUBLIC_OK and not ok]
    assert bad == [], _table(outcomes)


def test_pending_is_exactly_what_does_not_work_yet(outcomes):
    """Honest tracking: every file outside the supported sets fails its check today."""
    passing_leaks = {f.name for f, _, ok in outcomes if f.expected == "trip" and ok}
    passing_public = {f.name for f, _, ok in outcomes if f.expected == "public" and ok}
    assert passing_leaks == SUPPORTED, _table(outcomes)
    assert passing_public == PUBLIC_OK, _table(outcomes)
