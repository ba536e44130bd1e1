"""Base64 documents inside text (JSON/XML/HTML string values, ``data:`` URIs) are decoded and
scanned as parts under the body's decode budget; short tokens are not."""
from __future__ import annotations

import base64
import gzip
import json
import os

import pytest

from sensor import synth
from sensor.decode.base64parts import MIN_RUN
from sensor.decode.limits import DecodeLimits
from sensor.synth import breach_csv
from tests.conftest import scan_bytes, zip_bytes
from tests.test_decode import _scan_as_a_tap

LEAK = breach_csv(300)
_ROWS = [line.split(",") for line in LEAK.decode().splitlines()]
B64_CSV = base64.b64encode(LEAK).decode()




def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


CASES = {
    "csv in a JSON string": (json.dumps({"name": "export.csv", "file": B64_CSV}).encode(), "application/json"),
    "xlsx in a JSON string": (json.dumps({"file": _b64(synth.xlsx(_ROWS))}).encode(), "application/json"),
    "pdf as a data: URI in HTML": (
        f'<html><body><a href="data:application/pdf;base64,{_b64(synth.pdf([",".join(r) for r in _ROWS]))}">'
        f'report</a></body></html>'.encode(), "text/html"),
    "zip in an XML element": (
        f'<?xml version="1.0"?><export><attachment name="r.zip">{_b64(zip_bytes({"r.csv": LEAK}))}</attachment>'
        f'</export>'.encode(), "application/xml"),
    "gzip csv, URL-safe alphabet": (
        json.dumps({"blob": base64.urlsafe_b64encode(gzip.compress(LEAK)).decode()}).encode(), "application/json"),
    "JSON-escaped slashes and line wraps": (
        json.dumps({"f": base64.encodebytes(LEAK).decode().replace("/", "\\/")}).encode(), "application/json"),
}


@pytest.mark.parametrize("label", sorted(CASES))
def test_embedded_documents_trip_like_the_file(engine, label):
    data, ctype = CASES[label]
    r = scan_bytes(engine, data, content_type=ctype)
    assert r.verdict == "trip" and r.records == 300, (label, r.notes, r.findings)
    assert "base64:1 embedded document(s) decoded and scanned" in r.notes


@pytest.mark.parametrize("chunk", [3, 255, MIN_RUN, MIN_RUN + 1, 1000, 4096])
def test_a_run_split_across_chunks_is_one_document(engine, chunk):
    data, ctype = CASES["gzip csv, URL-safe alphabet"] if chunk > 100 else CASES["csv in a JSON string"]
    whole = scan_bytes(engine, data, content_type=ctype, chunk=len(data))
    r = scan_bytes(engine, data, content_type=ctype, chunk=chunk)
    assert r.records == whole.records == 300 and r.findings == whole.findings and r.notes == whole.notes


def test_json_escape_cut_by_a_chunk_boundary(engine):
    data = json.dumps({"f": base64.encodebytes(LEAK).decode().replace("/", "\\/")}).encode()
    for chunk in (2, 5, 77):
        assert scan_bytes(engine, data, chunk=chunk).records == 300, chunk


def test_short_tokens_and_hashes_are_not_decoded(engine):
    pii = b"SSN 536-22-8714 GARCIA MARIA DOB 03/14/1975 1234 MAIN ST\n" * 3
    short = base64.b64encode(pii)[:MIN_RUN - 1].decode()              # just below the minimum
    hexrun = os.urandom(400).hex()                                      # a long hex digest
    rule = "=" * 400                                                    # a separator line
    page = json.dumps({"token": short, "sha": hexrun, "rule": rule, "user": "someone"}).encode()
    r = scan_bytes(engine, page, content_type="application/json")
    assert r.verdict == "pass" and not r.findings, r.findings
    assert not any(n.startswith("base64") for n in r.notes), r.notes
    long_enough = json.dumps({"token": base64.b64encode(pii * 2).decode()}).encode()
    r = scan_bytes(engine, long_enough, content_type="application/json")
    assert "us-ssn" in r.findings and any(n.startswith("base64:1") for n in r.notes), (r.findings, r.notes)


def test_inline_images_are_not_scanned(engine):
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(3000)
    html = f'<img src="data:image/png;base64,{_b64(png)}">'.encode()
    r = scan_bytes(engine, html, content_type="text/html")
    assert r.verdict == "pass" and not any(n.startswith("base64") for n in r.notes), r.notes


def test_a_base64_bomb_is_capped(engine):
    bomb = gzip.compress(bytes(96 << 20))
    doc = json.dumps({"file": _b64(bomb)}).encode()
    r = scan_bytes(engine, doc, content_type="application/json")
    assert any(n.startswith("decode-limit:ratio") for n in r.notes), r.notes
    assert r.verdict == "alert"                      # not fully inspected: never a silent pass
    limited = scan_bytes(engine, json.dumps({"file": B64_CSV}).encode(),
                         limits=DecodeLimits(max_decoded_bytes=10_000), chunk=1000)
    assert any(n.startswith("decode-limit:decoded-bytes") for n in limited.notes), limited.notes
    assert 0 < limited.records < 300                 # what was decoded before the limit is scanned


def test_documents_decoded_before_a_limit_elsewhere_are_still_scanned(engine):
    """A gzip-encoded body whose tail is a bomb: the limit stops the body, and the base64 CSV that
    came before it is scanned all the same."""
    body = json.dumps({"file": B64_CSV}).encode() + b"\n" + bytes(96 << 20)
    r = scan_bytes(engine, gzip.compress(body), content_encoding="gzip", content_type="application/json")
    assert any(n.startswith("decode-limit:ratio") for n in r.notes), r.notes
    assert r.records == 300 and any(n.startswith("base64:1") for n in r.notes), r.notes


def test_a_corrupt_embedded_document_is_noted_and_the_body_goes_on(engine):
    broken = _b64(b"PK\x03\x04" + os.urandom(2000))
    doc = LEAK + (json.dumps({"file": broken}) + "\n").encode() + LEAK
    r = scan_bytes(engine, doc)
    assert r.records == 300 and r.verdict == "trip"
    assert any(n.startswith("decode-error:base64") and "zip" in n for n in r.notes), r.notes


def test_base64_inside_a_zip_member_and_depth(engine):
    member = json.dumps({"file": B64_CSV}).encode()
    z = zip_bytes({"api/response.json": member})
    assert scan_bytes(engine, z).records == 300
    tap = _scan_as_a_tap(engine, z).to_json()
    inline = scan_bytes(engine, z).to_json()
    for x in (tap, inline):
        x.pop("seconds")
    assert tap == inline
    # a zip (1) holding JSON whose base64 (2) is a zip (3) of a CSV: over a depth limit of 2
    deep = zip_bytes({"r.json": json.dumps({"file": _b64(zip_bytes({"r.csv": LEAK}))}).encode()})
    assert scan_bytes(engine, deep, limits=DecodeLimits(max_depth=3)).records == 300
    r = scan_bytes(engine, deep, limits=DecodeLimits(max_depth=2))
    assert r.records < 300 and any(n.startswith("decode-limit:depth") for n in r.notes), r.notes


# -- base64 wrapped into lines (session 13): MIME, PEM and XML serialisers ---------------------------------

def _wrap(data: bytes, width: int, eol: str) -> str:
    b = base64.b64encode(data).decode()
    return eol.join(b[k:k + width] for k in range(0, len(b), width))


WRAPPED = {
    "xml element, 76 + CRLF": (f'<?xml version="1.0"?>\r\n<doc><file name="a.csv">\r\n{_wrap(LEAK, 76, chr(13) + chr(10))}'
                               f'\r\n</file></doc>\r\n'.encode(), "application/xml"),
    "data: URI, 64 + LF": (f'<html><a href="data:text/csv;base64,\n{_wrap(LEAK, 64, chr(10))}\n">x</a></html>'.encode(),
                           "text/html"),
    "xml, CR written as &#13;": (f"<doc><file>{_wrap(LEAK, 76, '&#13;' + chr(10))}</file></doc>".encode(), "application/xml"),
    "xlsx wrapped at 72 in a SOAP body": (
        f"<soap:Body><Report><Content>\n{_wrap(synth.xlsx(_ROWS), 72, chr(10))}\n</Content></Report></soap:Body>".encode(),
        "text/xml"),
    "pretty-printed XML, indented lines": (
        ('<?xml version="1.0"?>\n<Response>\n  <Document>\n    <Name>r.zip</Name>\n    <Content>\n      '
         + _wrap(zip_bytes({"r.csv": LEAK}), 76, "\n      ") + "\n    </Content>\n  </Document>\n</Response>\n").encode(),
        "application/xml"),
    "xmlns document, tab-indented, CRLF": (
        ('<env:Envelope xmlns:env="urn:x">\r\n\t<env:Body>\r\n\t\t<data>\r\n\t\t\t'
         + _wrap(LEAK, 64, "\r\n\t\t\t") + "\r\n\t\t</data>\r\n\t</env:Body>\r\n</env:Envelope>").encode(),
        "text/xml"),
    "multipart/mixed, MIME part after a text part": (
        ("--b1\r\nContent-Type: text/plain\r\n\r\nThe export you asked for is attached to this message, see below.\r\n"
         "--b1\r\nContent-Type: text/csv\r\nContent-Transfer-Encoding: base64\r\n\r\n"
         + _wrap(LEAK, 76, "\r\n") + "\r\n--b1--\r\n").encode(), "multipart/mixed; boundary=b1"),
}


@pytest.mark.parametrize("label", sorted(WRAPPED))
def test_wrapped_base64_is_joined_and_decoded(engine, label):
    data, ctype = WRAPPED[label]
    whole = scan_bytes(engine, data, content_type=ctype, chunk=len(data))
    assert whole.verdict == "trip" and whole.records == 300, (label, whole.notes)
    assert "base64:1 embedded document(s) decoded and scanned" in whole.notes
    for chunk in (1, 41, 77, MIN_RUN - 1, 4096):        # a line break cut from its next character, etc.
        r = scan_bytes(engine, data, content_type=ctype, chunk=chunk)
        assert (r.records, r.findings, r.notes) == (whole.records, whole.findings, whole.notes), (label, chunk)


def test_a_wrapped_run_after_a_long_quiet_stretch_is_found(engine):
    """The one-scan path for chunks without base64 keeps what a run starting at a chunk's end needs."""
    data, ctype = WRAPPED["data: URI, 64 + LF"]
    pad = ("<p>" + "lorem ipsum dolor sit amet " * 40 + "</p>\n") * 30
    for cut in (0, 1, 40, 63, 64, 65, 300):
        body = pad.encode() + data
        chunk = len(pad) + cut                                  # the boundary falls inside the run
        r = scan_bytes(engine, body, content_type=ctype, chunk=chunk)
        assert r.records == 300, (cut, r.notes)


def test_lines_that_only_look_wrapped_are_left_alone(engine):
    """Prose lines, short tokens one per line, hex digests one per line and PEM certificates decode
    nothing."""
    prose = "\n".join(["The quick brown fox jumps over the lazy dog again and again"] * 50)
    tokens = "\n".join(base64.b64encode(os.urandom(12)).decode() for _ in range(200))       # 16 chars each
    digests = "\n".join(os.urandom(32).hex() for _ in range(50))                            # hex: not base64
    der = b"\x30\x82\x05\x10" + LEAK[:1300]                    # a PEM certificate (DER inside): public by design
    pem = f"-----BEGIN CERTIFICATE-----\n{_wrap(der, 64, chr(10))}\n-----END CERTIFICATE-----\n"
    for text in (prose, tokens, digests, pem):
        r = scan_bytes(engine, text.encode(), content_type="text/plain")
        assert not any(n.startswith("base64") for n in r.notes), r.notes
