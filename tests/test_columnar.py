"""Parquet and Arrow IPC files are read as tables: a header line of column names, then one line
per row, so a leak table trips with one record per row and date columns read as dates."""
from __future__ import annotations

import datetime as dt
import gzip
import io
import lzma
import os
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sensor.decode.limits import DecodeLimits
from sensor.synth import breach_csv
from tests.conftest import scan_bytes
from tests.test_decode import _scan_as_a_tap

N = 300
_LINES = breach_csv(N).decode().splitlines()
HEADER = _LINES[0].split(",")
ROWS = [line.split(",") for line in _LINES[1:]]


def _iso(us_date: str) -> str:
    return dt.datetime.strptime(us_date, "%m/%d/%Y").date().isoformat()


def _table(dob_type: str = "date32") -> pa.Table:
    cols: dict[str, pa.Array] = {}
    for i, name in enumerate(HEADER):
        values = [r[i] for r in ROWS]
        if name == "date_of_birth":
            days = [dt.datetime.strptime(v, "%m/%d/%Y") for v in values]
            if dob_type == "date32":
                cols[name] = pa.array([d.date() for d in days], pa.date32())
            else:
                cols[name] = pa.array(days, pa.timestamp("ms"))
        elif name == "permit_id":
            cols[name] = pa.array([int(v) for v in values], pa.int64())
        else:
            cols[name] = pa.array([v or None for v in values], pa.string())
    return pa.table(cols)


def _parquet(table: pa.Table, **kw) -> bytes:
    bio = io.BytesIO()
    pq.write_table(table, bio, **kw)
    return bio.getvalue()


def _arrow(table: pa.Table, max_chunksize: int = 64) -> bytes:
    bio = io.BytesIO()
    with pa.ipc.new_file(bio, table.schema) as w:
        w.write_table(table, max_chunksize=max_chunksize)
    return bio.getvalue()


# the same rows as a CSV with ISO dates: what the table must read like
_CSV_ISO = ("\t".join(HEADER) + "\n" + "".join(
    "\t".join(_iso(v) if HEADER[i] == "date_of_birth" else v for i, v in enumerate(r)) + "\n" for r in ROWS)).encode()


@pytest.mark.parametrize("label,data,kind", [
    ("parquet, row groups of 50", _parquet(_table(), row_group_size=50), "parquet"),
    ("parquet, dictionary-encoded, zstd", _parquet(_table(), compression="zstd", use_dictionary=True), "parquet"),
    ("parquet, timestamps", _parquet(_table("timestamp")), "parquet"),
    ("arrow ipc file, batches of 64", _arrow(_table()), "arrow"),
    ("arrow ipc file, timestamps", _arrow(_table("timestamp"), 1000), "arrow"),
])
def test_leak_table_trips_with_a_record_per_row(engine, label, data, kind):
    plain = scan_bytes(engine, _CSV_ISO)
    r = scan_bytes(engine, data, chunk=4096)
    assert r.notes[0] == f"container:{kind}", (label, r.notes)
    assert r.verdict == "trip" and r.records == N, (label, r.records, r.findings)
    assert r.findings == plain.findings, label          # dates typed as dates, like the CSV
    assert r.findings["dob"] > 0.9 * N


def test_a_table_is_read_in_a_thread_as_inline(engine):
    for data in (_parquet(_table(), row_group_size=100), _arrow(_table())):
        inline = scan_bytes(engine, data).to_json()
        tap = _scan_as_a_tap(engine, data).to_json()
        for x in (inline, tap):
            x.pop("seconds")
        assert tap == inline and inline["records"] == N


def test_tables_inside_compressed_files_and_zips(engine):
    pqd = _parquet(_table())
    assert scan_bytes(engine, gzip.compress(pqd)).records == N
    assert scan_bytes(engine, lzma.compress(_arrow(_table()))).records == N
    bio = io.BytesIO()
    with zipfile.ZipFile(bio, "w") as z:
        z.writestr("export/people.parquet", pqd)
    assert scan_bytes(engine, bio.getvalue()).records == N
    data = lzma.compress(pqd)
    inline = scan_bytes(engine, data).to_json()
    tap = _scan_as_a_tap(engine, data).to_json()
    for x in (inline, tap):
        x.pop("seconds")
    assert tap == inline


def test_nulls_nested_values_and_odd_names_keep_one_line_per_row(engine):
    t = pa.table({
        "name\twith tab": pa.array(["GARCIA, MARIA", None, "LEE\nKIM"]),
        "tags": pa.array([["a", "b"], None, []], pa.list_(pa.string())),
        "blob": pa.array([b"\x00\xff", None, b"ok"], pa.binary()),
        "amount": pa.array([1.5, None, 3.0]),
    })
    from sensor.decode.containers import PartRecorder, Sniffer
    from sensor.decode.limits import Budget
    rec = PartRecorder()
    sn = Sniffer(rec, Budget(DecodeLimits()))
    sn.write(_parquet(t))
    sn.close()
    rec.file.seek(0)
    lines = rec.file.read().decode().splitlines()
    assert lines[0] == "name with tab\ttags\tblob\tamount"
    assert len(lines) == 4 and all(line.count("\t") == 3 for line in lines)
    assert lines[2] == "\t\t\t" and lines[3].startswith("LEE KIM\t")


def test_a_table_that_repeats_past_the_ratio_is_refused(engine):
    t = pa.table({"note": pa.array(["x" * 100] * 400_000)})
    bomb = _parquet(t, use_dictionary=True, compression="zstd")
    assert len(bomb) < 200_000
    r = scan_bytes(engine, bomb)
    assert any(n.startswith("decode-limit:ratio") for n in r.notes), r.notes
    assert r.decoded_bytes < 16 << 20


@pytest.mark.parametrize("label,data,expect", [
    ("truncated parquet", _parquet(_table())[:3000], "decode-error:parquet"),
    ("parquet magic then garbage", b"PAR1" + os.urandom(5000), "decode-error:parquet"),
    ("arrow magic then garbage", b"ARROW1\x00\x00" + os.urandom(5000), "decode-error:arrow"),
    ("truncated arrow", _arrow(_table())[:-100], "decode-error:arrow"),
])
def test_corrupt_tables_give_notes_not_crashes(engine, label, data, expect):
    r = scan_bytes(engine, data, chunk=997)
    assert any(n.startswith(expect) for n in r.notes), (label, r.notes)
