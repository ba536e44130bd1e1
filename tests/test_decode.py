"""Decoders and containers: every encoding, stacked; bombs, corrupt and truncated input."""
from __future__ import annotations

import gzip
import io
import os

import subprocess
import sys
import textwrap
import zipfile
import zlib

import brotli
import pytest
import zstandard

from sensor.decode.limits import DecodeLimits
from sensor.detect.policy import Policy
from sensor import synth
from sensor.synth import breach_csv
from tests.conftest import scan_bytes, zip_bytes

LEAK = breach_csv(300)


def _raw_deflate(b: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(b) + c.flush()


ENCODERS = {
    "gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
}


@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_content_encodings_trip(engine, coding):
    r = scan_bytes(engine, ENCODERS[coding](LEAK), content_encoding=coding, chunk=1000)
    assert r.verdict == "trip" and r.records == 300 and r.decoded_bytes == len(LEAK), r.notes


def test_raw_deflate_and_stacked_encodings(engine):
    assert scan_bytes(engine, _raw_deflate(LEAK), content_encoding="deflate").records == 300
    stacked = brotli.compress(gzip.compress(LEAK))                    # gzip applied first, then br
    r = scan_bytes(engine, stacked, content_encoding="gzip, br", chunk=777)
    assert r.records == 300 and not r.notes


def test_concatenated_gzip_members(engine):
    half = len(LEAK) // 2
    cut = LEAK.index(b"\n", half) + 1
    r = scan_bytes(engine, gzip.compress(LEAK[:cut]) + gzip.compress(LEAK[cut:]), content_encoding="gzip")
    assert r.records == 300


def test_unknown_content_encoding_is_a_note(engine):
    r = scan_bytes(engine, b"whatever", content_encoding="compress")
    assert any("unsupported coding" in n for n in r.notes)




def test_gzip_file_zip_and_nested_trip(engine):
    assert scan_bytes(engine, gzip.compress(LEAK)).records == 300                  # .csv.gz
    r = scan_bytes(engine, zip_bytes({"readme.txt": b"hello", "export/roster.csv": LEAK}))
    assert r.records == 300 and r.notes[0] == "container:zip"
    nested = zip_bytes({"inner.zip": zip_bytes({"roster.csv.gz": gzip.compress(LEAK)})})
    assert scan_bytes(engine, nested).records == 300


def test_depth_limit(engine):
    data = LEAK
    for _ in range(6):
        data = zip_bytes({"x.zip": data})
    r = scan_bytes(engine, data, limits=DecodeLimits(max_depth=3))
    assert any(n.startswith("decode-limit:depth") for n in r.notes)


def test_xlsx_with_shared_strings_trips(engine):
    data = synth.xlsx([line.split(",") for line in LEAK.decode().splitlines()])
    r = scan_bytes(engine, data)
    assert r.notes[0] == "container:xlsx" and r.verdict == "trip" and r.records == 300


def test_xlsx_written_by_openpyxl_trips(engine, tmp_path):
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    for line in LEAK.decode().splitlines():
        ws.append(line.split(","))
    path = tmp_path / "roster.xlsx"
    wb.save(path)
    r = scan_bytes(engine, path.read_bytes())
    assert r.notes[0] == "container:xlsx" and r.verdict == "trip" and r.records == 300


@pytest.mark.parametrize("epoch", ["1900", "1904"])
def test_xlsx_dates_stored_as_day_counts_are_dates_of_birth(engine, tmp_path, epoch):
    """openpyxl (like Excel) stores a date cell as a day count with a date style: the reader renders it
    as the date it shows. A plain number in an unstyled column stays a number."""
    import datetime as dt

    import openpyxl
    from openpyxl.utils.datetime import CALENDAR_MAC_1904

    rows = [line.split(",") for line in LEAK.decode().splitlines()][:41]
    wb = openpyxl.Workbook()
    if epoch == "1904":
        wb.epoch = CALENDAR_MAC_1904
    ws = wb.active
    ws.append(["last_name", "first_name", "date_of_birth", "driver_license", "visits"])
    births = [dt.date(1950, 1, 1) + dt.timedelta(days=173 * i) for i in range(40)]
    for r, born, i in zip(rows[1:], births, range(40)):
        ws.append([r[1], r[2], born, r[11], 30000 + i])   # 30000+ would be 1982 dates if read as days
    path = tmp_path / "dob.xlsx"
    wb.save(path)
    r = scan_bytes(engine, path.read_bytes())
    assert r.notes[0] == "container:xlsx" and r.findings.get("dob") == 40, r.findings
    assert any("-" in s.redacted for s in r.samples["dob"]), r.samples["dob"]    # ISO dates, redacted


def test_xlsx_with_malformed_styles_is_still_read(engine):
    rows = "".join("<row>" + "".join(f'<c t="inlineStr"><is><t>{v}</t></is></c>' for v in line.split(",")) + "</row>"
                   for line in LEAK.decode().splitlines())
    data = zip_bytes({"xl/workbook.xml": b"<workbook/>", "xl/styles.xml": b"<styleSheet><cellXfs><xf",
                 "xl/worksheets/sheet1.xml": f"<worksheet><sheetData>{rows}</sheetData></worksheet>".encode()})
    r = scan_bytes(engine, data)
    assert r.verdict == "trip" and r.records == 300, r.notes
    assert any(n.startswith("decode-error:xlsx (styles") for n in r.notes), r.notes


def _docx(paragraphs: list[str], rows: list[list[str]]) -> bytes:
    w = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
    ps = "".join(f"<w:p><w:r><w:t>{p}</w:t></w:r></w:p>" for p in paragraphs)
    trs = "".join("<w:tr>" + "".join(f"<w:tc><w:p><w:r><w:t>{c}</w:t></w:r></w:p></w:tc>" for c in r) + "</w:tr>"
                  for r in rows)
    doc = f'<?xml version="1.0"?><w:document {w}><w:body>{ps}<w:tbl>{trs}</w:tbl></w:body></w:document>'
    return zip_bytes({"[Content_Types].xml": b"<Types/>", "word/document.xml": doc.encode()})


def _ods(rows: list[list[str]]) -> bytes:
    ns = ('xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
          'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
          'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0"')
    trs = "".join("<table:table-row>" + "".join(f"<table:table-cell><text:p>{c}</text:p></table:table-cell>" for c in r)
                  + "</table:table-row>" for r in rows)
    content = f'<?xml version="1.0"?><office:document-content {ns}><office:body><office:spreadsheet><table:table>{trs}</table:table></office:spreadsheet></office:body></office:document-content>'
    return zip_bytes({"mimetype": b"application/vnd.oasis.opendocument.spreadsheet", "content.xml": content.encode()})


def test_docx_and_ods_tables_keep_records(engine):
    rows = [line.split(",") for line in LEAK.decode().splitlines()]
    r = scan_bytes(engine, _docx(["Permit holders export", "Confidential"], rows))
    assert r.notes[0] == "container:docx" and r.records == 300
    r = scan_bytes(engine, _ods(rows))
    assert r.notes[0] == "container:odf" and r.records == 300


def _report_rows(n: int) -> list[str]:
    """The roster as a PDF report prints it: a heading, column titles, fields spaced into columns."""
    out = ["Firearm permit holders - 2022 export (CONFIDENTIAL)",
           "NAME  DATE OF BIRTH  ADDRESS  DRIVER LICENSE  CRIMINAL HISTORY"]
    for row in synth.breach_rows(n):
        f = row.split(",")
        out.append(f"{f[1]}, {f[2]} {f[3]}   {f[4]}   {f[7]}, {f[8]}, {f[9]} {f[10]}   {f[11]}   {f[13]} {f[14]}")
    return out


def test_pdf_text_is_extracted_and_trips(engine):
    """The text of a PDF is in compressed content streams: without extraction nothing is seen."""
    data = synth.pdf(_report_rows(300))
    assert b"01/17/1992" not in data                             # nothing readable on the wire
    r = scan_bytes(engine, data, chunk=4096)
    assert r.notes[0] == "container:pdf" and r.verdict == "trip", r.notes
    assert 297 <= r.records <= 300                              # within 1 % of the truth
    csv_lines = scan_bytes(engine, synth.pdf(LEAK.decode().splitlines()), chunk=65536)
    assert csv_lines.verdict == "trip" and csv_lines.records == 300
    benign = scan_bytes(engine, synth.pdf([f"Quarterly statistics, table {i}: 12.5 % of 4,301 permits" for i in range(200)]))
    assert benign.notes[0] == "container:pdf" and benign.verdict == "pass"


def _encrypted(data: bytes, user_password: str) -> bytes:
    import pypdf
    w = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(data)))
    w.encrypt(user_password=user_password, owner_password="owner-secret", algorithm="AES-256")
    out = io.BytesIO()
    w.write(out)
    return out.getvalue()


def test_encrypted_pdfs_restrictions_only_are_read_passwords_are_noted(engine):
    data = synth.pdf(_report_rows(300))
    r = scan_bytes(engine, _encrypted(data, ""))                  # opens without a password: read it
    assert r.verdict == "trip" and r.records >= 297, r.notes
    r = scan_bytes(engine, _encrypted(data, "s3cret"))
    assert r.verdict == "pass" and "decode-error:pdf (encrypted with a password; not read)" in r.notes


def test_pdf_in_a_zip_and_gzip_trips(engine):
    data = synth.pdf(_report_rows(300))
    for wrapped in (zip_bytes({"report.pdf": data}), gzip.compress(data)):
        r = scan_bytes(engine, wrapped)
        assert r.verdict == "trip" and r.records >= 297, r.notes


@pytest.mark.parametrize("label,data,expect", [
    ("truncated pdf", synth.pdf(["x"] * 500)[:1500], "decode-error:pdf"),
    ("pdf header then garbage", b"%PDF-1.7\n" + os.urandom(5000), "decode-error:pdf"),
    ("corrupt gzip", b"\x1f\x8b\x08\x00" + os.urandom(4000), "decode-error:gzip"),
    ("truncated gzip", gzip.compress(LEAK)[:3000], "truncated:gzip"),
    ("truncated zip", zip_bytes({"a.csv": LEAK})[:2000], "decode-error:zip"),
    ("zip with junk directory", b"PK\x03\x04" + b"\0" * 100, "decode-error:zip"),
    ("malformed xlsx xml", zip_bytes({"xl/workbook.xml": b"<w/>", "xl/worksheets/sheet1.xml": b"<row><c"}), "decode-error:xlsx"),
])
def test_bad_containers_give_notes_not_crashes(engine, label, data, expect):
    r = scan_bytes(engine, data, chunk=997)
    assert any(n.startswith(expect) for n in r.notes), (label, r.notes)


def test_truncated_gzip_still_scans_what_arrived(engine):
    data = gzip.compress(LEAK)
    r = scan_bytes(engine, data[: len(data) * 2 // 3], content_encoding="gzip")
    assert 0 < r.records < 300 and any(n.startswith("truncated:gzip") for n in r.notes)


def test_random_binary_and_invalid_utf8_pass_quietly(engine):
    rnd = os.urandom(300_000)
    r = scan_bytes(engine, rnd)
    assert r.verdict == "pass" and r.decoded_bytes == len(rnd)
    bad_utf8 = b"\xfd\xfe\xff" + b"".join(
        b"GARCIA, MARIA \xc3\x28 %d W MAIN ST \xa0 DL B%07d\n" % (i + 1, i) for i in range(20))
    r = scan_bytes(engine, bad_utf8)
    assert r.records == 20
    fake_bom = b"\xff\xfe" + bad_utf8                   # binary that happens to start like UTF-16
    r = scan_bytes(engine, fake_bom)
    assert r.records == 20 and "container:utf-16" not in r.notes


def test_utf16_text_is_transcoded(engine):
    text = LEAK.decode().encode("utf-16")
    assert scan_bytes(engine, text, chunk=1001).records == 300


BOMB_SCRIPT = textwrap.dedent("""
    import gzip, io, resource, sys, zipfile, zlib
    from sensor.detect.engine import Engine
    from sensor.detect.pack import load_pack
    from sensor.detect.policy import Policy
    from sensor.pipeline import BodyScan
    kind = sys.argv[1]
    # 1 GB of zeros, compressed without ever holding it in memory
    def zeros():
        for _ in range(1024):
            yield bytes(1 << 20)
    if kind == "gzip":
        c = zlib.compressobj(9, zlib.DEFLATED, 31)
        blob = b"".join(c.compress(z) for z in zeros()) + c.flush()
    else:
        bio = io.BytesIO()
        with zipfile.ZipFile(bio, "w", zipfile.ZIP_DEFLATED) as z:
            with z.open("zeros.bin", "w", force_zip64=True) as fh:
                for chunk in zeros():
                    fh.write(chunk)
        blob = bio.getvalue()
    engine = Engine(load_pack())           # (compiling it, on a cold cache, is not the bomb's doing)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    body = BodyScan(engine, Policy(), key=b"k" * 32)
    for i in range(0, len(blob), 65536):
        body.write(blob[i:i + 65536])
    r = body.finish()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(len(blob), r.decoded_bytes, (after - before) // 1024, "|".join(r.notes))
""")


@pytest.mark.parametrize("kind", ["gzip", "zip"])
def test_one_gigabyte_bomb_is_refused_with_bounded_memory(kind):
    out = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, kind], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    size, decoded, grew_mb, notes = out.stdout.split(maxsplit=3)
    assert int(size) < 5 << 20                          # it really is a bomb
    assert "decode-limit:ratio" in notes, notes
    assert int(decoded) < 64 << 20                      # refused early, not after a gigabyte
    assert int(grew_mb) < 100, f"scanning the bomb grew RSS by {grew_mb} MB"


def test_encoding_stack_deeper_than_the_limit_is_refused(engine):
    data = LEAK
    for _ in range(6):
        data = gzip.compress(data)
    r = scan_bytes(engine, data, content_encoding=", ".join(["gzip"] * 6), limits=DecodeLimits(max_depth=4))
    assert any(n.startswith("decode-limit:depth") for n in r.notes) and r.records == 0
    r = scan_bytes(engine, data, content_encoding=", ".join(["gzip"] * 6), limits=DecodeLimits(max_depth=8))
    assert r.records == 300


def test_one_long_line_keeps_memory_bounded(engine):
    import tracemalloc

    data = b"x" * (20 << 20) + b"\nGARCIA, MARIA 1 W MAIN ST DL B1234567\n"   # a 20 MB line first
    chunks = [data[i:i + (1 << 16)] for i in range(0, len(data), 1 << 16)]
    tracemalloc.start()
    try:
        from sensor.pipeline import BodyScan
        from tests.conftest import KEY
        body = BodyScan(engine, Policy(), key=KEY)
        for c in chunks:
            body.write(c)
        r = body.finish()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert r.records == 1
    assert peak < 2 << 20, f"scanning a 20 MB line allocated {peak} bytes at peak"


def _scan_as_a_tap(engine, data: bytes, content_encoding: str = ""):
    """What a tap does: the container is read in a worker thread (``prepare``), with no Hyperscan
    state touched there, then fed to the scanner in slices on the event loop (``finish_async``)."""
    import asyncio
    from sensor.pipeline import BodyScan, Exchange
    from tests.conftest import KEY

    body = BodyScan(engine, Policy(), key=KEY, exchange=Exchange(content_encoding=content_encoding))
    for i in range(0, len(data), 65536):
        body.write(data[i:i + 65536])
    assert body.needs_prepare, "a container read whole must be read off the event loop"
    fed = body.scanner.result.decoded_bytes
    body.prepare()
    assert body.scanner.result.decoded_bytes == fed, "prepare() fed the scanner: it must not, it runs in a thread"
    return asyncio.run(body.finish_async())


_ROWS = [line.split(",") for line in LEAK.decode().splitlines()]


@pytest.mark.parametrize("label,data", [
    ("xlsx", synth.xlsx(_ROWS)),
    ("docx", _docx(["Permit holders export"], _ROWS)),
    ("ods", _ods(_ROWS)),
    ("zip of a csv and a readme", zip_bytes({"readme.txt": b"hello", "export/roster.csv": LEAK})),
    ("zip in a zip, gzip inside", zip_bytes({"inner.zip": zip_bytes({"roster.csv.gz": gzip.compress(LEAK)})})),
    ("pdf", synth.pdf(_report_rows(300))),
    ("pdf in a zip", zip_bytes({"report.pdf": synth.pdf(_report_rows(300))})),
    ("empty members around the leak", zip_bytes({"a.txt": b"", "b.csv": LEAK, "c.txt": b""})),
    ("truncated zip", zip_bytes({"a.csv": LEAK})[:2000]),
    ("malformed xlsx xml", zip_bytes({"xl/workbook.xml": b"<w/>", "xl/worksheets/sheet1.xml": b"<row><c"})),
    ("truncated pdf", synth.pdf(["x"] * 500)[:1500]),
])
def test_a_container_read_in_a_thread_scans_as_it_does_inline(engine, label, data):
    inline = scan_bytes(engine, data).to_json()
    tap = _scan_as_a_tap(engine, data).to_json()
    for r in (inline, tap):
        r.pop("seconds")
    assert tap == inline, label


_XLSX = synth.xlsx(_ROWS)


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize("label,encoding,data", [
    ("xlsx sent gzip-encoded", "gzip", gzip.compress(_XLSX)),
    ("pdf sent br-encoded", "br", brotli.compress(synth.pdf(_report_rows(300)))),
    ("xlsx sent as raw deflate", "deflate", _raw_deflate(_XLSX)),
    ("xlsx in a gzip file", "", gzip.compress(_XLSX)),
    ("xlsx in a gzip file, zstd-encoded", "zstd", zstandard.ZstdCompressor().compress(gzip.compress(_XLSX))),
    ("gzip-encoded xlsx cut short", "gzip", gzip.compress(_XLSX)[:-400]),
])
def test_a_container_under_an_encoding_is_read_in_a_thread_as_inline(engine, label, encoding, data):
    """The decoders in front of the container are drained into it in the thread, then it is read there."""
    inline = scan_bytes(engine, data, content_encoding=encoding).to_json()
    tap = _scan_as_a_tap(engine, data, encoding).to_json()
    for r in (inline, tap):
        r.pop("seconds")
    assert tap == inline, label
    assert inline["notes"][0].startswith("container:"), inline["notes"]


def test_a_zip_bomb_read_in_a_thread_is_refused_as_inline(engine):
    bomb = zip_bytes({"zeros.csv": b"0" * (64 << 20)})
    r = _scan_as_a_tap(engine, bomb)
    # not fully inspected: an alert says why (issue 18), never a silent pass
    assert any(n.startswith("decode-limit:") for n in r.notes) and r.verdict == "alert", r.notes
    assert r.notes == scan_bytes(engine, bomb).notes
