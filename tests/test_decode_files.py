"""zstd, xz and bzip2 *files* (found by magic bytes, whatever the Content-Encoding): read like the
plain file, nested containers read in the worker thread as inline, bombs refused, corrupt input
noted without a crash."""
from __future__ import annotations

import bz2
import gzip
import lzma
import os

import pytest
import zstandard

from sensor import synth
from sensor.decode.limits import DecodeLimits
from sensor.synth import breach_csv
from tests import corpus15
from tests.conftest import scan_bytes, zip_bytes
from tests.test_decode import _scan_as_a_tap

LEAK = breach_csv(300)
_ROWS = [line.split(",") for line in LEAK.decode().splitlines()]
_XLSX = synth.xlsx(_ROWS)

COMPRESS = {
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
    "xz": lzma.compress,
    "bzip2": bz2.compress,
}




@pytest.mark.parametrize("kind", sorted(COMPRESS))
def test_compressed_csv_file_trips_like_the_plain_file(engine, kind):
    plain = scan_bytes(engine, LEAK)
    r = scan_bytes(engine, COMPRESS[kind](LEAK), chunk=997)
    assert r.notes[0] == f"container:{kind}", r.notes
    assert (r.verdict, r.records, r.findings) == (plain.verdict, plain.records, plain.findings) == ("trip", 300, plain.findings)
    assert r.decoded_bytes == len(LEAK)


@pytest.mark.parametrize("kind", sorted(COMPRESS))
def test_compressed_file_wins_over_a_content_encoding(engine, kind):
    """A .csv.xz sent gzip-encoded: the encoding is undone, then the file is found by its magic."""
    r = scan_bytes(engine, gzip.compress(COMPRESS[kind](LEAK)), content_encoding="gzip")
    assert r.records == 300 and r.notes[0] == f"container:{kind}", r.notes


@pytest.mark.parametrize("kind", sorted(COMPRESS))
def test_xlsx_inside_a_compressed_file_is_read_in_a_thread_as_inline(engine, kind):
    data = COMPRESS[kind](_XLSX)
    inline = scan_bytes(engine, data).to_json()
    tap = _scan_as_a_tap(engine, data).to_json()
    for r in (inline, tap):
        r.pop("seconds")
    assert tap == inline
    assert inline["verdict"] == "trip" and inline["records"] == 300


def test_compressed_files_inside_a_zip_and_inside_each_other(engine):
    z = zip_bytes({"readme.txt": b"hello", "export/roster.csv.xz": lzma.compress(LEAK),
              "more/roster.csv.bz2": bz2.compress(LEAK)})
    assert scan_bytes(engine, z).records == 300
    onion = zstandard.ZstdCompressor().compress(lzma.compress(bz2.compress(LEAK)))   # .csv.bz2.xz.zst
    r = scan_bytes(engine, onion, chunk=501)
    assert r.records == 300 and r.notes[0] == "container:zstd"
    too_deep = onion
    for _ in range(3):
        too_deep = lzma.compress(too_deep)
    r = scan_bytes(engine, too_deep, limits=DecodeLimits(max_depth=4))
    assert any(n.startswith("decode-limit:depth") for n in r.notes), r.notes


def test_concatenated_streams_are_all_read(engine):
    cut = LEAK.index(b"\n", len(LEAK) // 2) + 1
    for kind in ("xz", "bzip2"):
        data = COMPRESS[kind](LEAK[:cut]) + COMPRESS[kind](LEAK[cut:])
        r = scan_bytes(engine, data, chunk=1000)
        assert r.records == 300 and len(r.notes) == 1, (kind, r.notes)
    xz_padded = lzma.compress(LEAK[:cut]) + b"\0" * 8 + lzma.compress(LEAK[cut:])   # stream padding
    assert scan_bytes(engine, xz_padded).records == 300


@pytest.mark.parametrize("kind", sorted(COMPRESS))
def test_a_bomb_is_refused_early(engine, kind):
    zeros = bytes(96 << 20)
    bomb = COMPRESS[kind](zeros)
    assert len(bomb) < 1 << 20
    r = scan_bytes(engine, bomb)
    assert any(n.startswith("decode-limit:ratio") for n in r.notes), r.notes
    assert r.decoded_bytes < 16 << 20            # stopped just past the ratio's grace, not at the end
    assert r.verdict == "alert"                  # not fully inspected: never a silent pass
    assert any(n.startswith("uninspected:decode-limit:ratio") for n in r.notes), r.notes


@pytest.mark.parametrize("label,data,expect", [
    ("xz header then garbage", b"\xfd7zXZ\x00" + os.urandom(4000), "decode-error:xz"),
    ("bzip2 header then garbage", b"BZh91AY&SY" + os.urandom(4000), "decode-error:bzip2"),
    ("zstd header then garbage", b"\x28\xb5\x2f\xfd" + os.urandom(4000), "decode-error:zstd"),
    ("truncated xz", lzma.compress(LEAK)[:3000], "truncated:xz"),
    ("truncated bzip2", bz2.compress(LEAK)[:6000], "truncated:bzip2"),
    ("xz then trailing junk", lzma.compress(LEAK) + b"JUNKJUNK", "decode-error:xz"),
])
def test_corrupt_files_give_notes_not_crashes(engine, label, data, expect):
    r = scan_bytes(engine, data, chunk=997)
    assert any(n.startswith(expect) for n in r.notes), (label, r.notes)


def test_truncated_xz_still_scans_what_arrived(engine):
    data = lzma.compress(LEAK)
    r = scan_bytes(engine, data[: len(data) * 2 // 3])
    assert 0 < r.records < 300 and any(n.startswith("truncated:xz") for n in r.notes), r.notes


def test_text_that_starts_like_bzip2_is_text(engine):
    text = b"BZh9 is how a bzip2 file starts; this is prose.\n" + LEAK
    r = scan_bytes(engine, text)
    assert r.records == 300 and not any(n.startswith("container:") for n in r.notes), r.notes


# corpus15's text files (JSON, JSON lines, XML, HTML, CSV, TSV, fixed width, SQL): the shapes a
# Windows tool may write with a UTF-8 byte order mark first
TEXT_SHAPES = [f for f in corpus15.build()
               if f.name.endswith((".json", ".jsonl", ".xml", ".html", ".csv", ".tsv", ".txt", ".sql"))]


@pytest.mark.parametrize("f", TEXT_SHAPES, ids=[f.name for f in TEXT_SHAPES])
def test_a_utf8_byte_order_mark_changes_nothing(engine, f):
    """A UTF-8 BOM before the text reads as the text without it: before, it hid the shape (JSON and
    XML read as prose: a JSON roster passed, a public register in XML tripped on its businesses),
    also when it arrives one byte at a time."""
    plain = scan_bytes(engine, f.data, content_type=f.content_type)
    for chunk in (65536, 1):
        bom = scan_bytes(engine, b"\xef\xbb\xbf" + f.data[:4096 if chunk == 1 else None], chunk=chunk,
                         content_type=f.content_type)
        ref = plain if chunk != 1 else scan_bytes(engine, f.data[:4096], content_type=f.content_type)
        assert (bom.verdict, bom.records, bom.findings) == (ref.verdict, ref.records, ref.findings), f.name
