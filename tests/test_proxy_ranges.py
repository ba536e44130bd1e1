"""Range requests through the real proxy with real clients (curl): on an enforce route a range is
served only of a body scanned whole and clean; otherwise the whole body is fetched, scanned, and
sent as a 200 (or refused 451). The upstream is the sample site (aiohttp's FileResponse: Range,
strong ETag, and a ``.gz`` sibling served with ``Content-Encoding: gzip``)."""
from __future__ import annotations

import gzip
from concurrent.futures import ThreadPoolExecutor

import pytest

from sensor import synth
from sensor.sample_site import build_site
from tests.procs import Sidecar, Upstream
from tests.test_proxy import curl

PIECE = 512


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Upstream:
    up = Upstream.start(build_site(tmp_path_factory.mktemp("site"), people=50))
    yield up
    up.stop()


@pytest.fixture(scope="module")
def sidecar(site, tmp_path_factory) -> Sidecar:
    sc = Sidecar.create(tmp_path_factory.mktemp("sidecar"), site.url, {"proxy": {"upstream_timeout": 5.0}}).start()
    yield sc
    sc.stop()


def leak_file(site: Upstream, name: str, *, gz: bool = False) -> tuple[str, bytes]:
    """A roster of 2,000 people under ``name`` (a unique first line: its own content print)."""
    data = f"# {name}\n".encode() + synth.breach_csv(2000)
    (site.root / name).write_bytes(data)
    if gz:
        (site.root / (name + ".gz")).write_bytes(gzip.compress(data))
    return "/" + name, data


def rows_in(body: bytes, data: bytes) -> int:
    """How many of the roster's data rows appear whole in ``body``."""
    return sum(1 for row in data.splitlines()[2:] if row and row in body)


def test_a_leak_fetched_in_512_byte_ranges_is_scanned_whole_and_refused(site, sidecar):
    path, data = leak_file(site, "ranges-leak.csv")
    answers = [curl("-r", f"{i}-{i + PIECE - 1}", sidecar.url + path) for i in range(0, 40 * PIECE, PIECE)]
    assert [st for _, st, _, _ in answers] == [451] * 40
    assert sum(rows_in(body, data) for _, _, body, _ in answers) == 0      # the leak is inside the hold-back
    assert sidecar.metric("dlp_partial_responses_total") == 0              # no range was ever served


def test_a_segmented_download_is_refused(site, sidecar):
    path, data = leak_file(site, "ranges-segmented.csv")
    seg = len(data) // 4 + 1
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: curl("-r", f"{i * seg}-{(i + 1) * seg - 1}", sidecar.url + path), range(4)))
    assert [st for _, st, _, _ in answers] == [451] * 4
    assert sum(rows_in(body, data) for _, _, body, _ in answers) == 0


def test_a_gzip_encoded_leak_fetched_by_ranges_is_refused(site, sidecar):
    path, data = leak_file(site, "ranges-gz.csv", gz=True)
    _, st, body, _ = curl("-H", "Accept-Encoding: gzip", "-r", "0-511", site.url + path)
    assert st == 206 and len(body) == 512 and body[:2] == b"\x1f\x8b"          # the upstream does encoded ranges
    for i in range(0, 10 * PIECE, PIECE):
        _, st, body, _ = curl("-H", "Accept-Encoding: gzip", "-r", f"{i}-{i + PIECE - 1}", sidecar.url + path)
        assert st == 451 and b"\x1f\x8b" not in body[:2]


def test_a_clean_file_in_ranges_is_whole_first_then_served_as_ranges(site, sidecar):
    want = (site.root / "stats-3.html").read_bytes()
    url = sidecar.url + "/stats-3.html"
    _, st, body, _ = curl("-r", "0-511", url)
    assert (st, body) == (200, want)                        # RFC 9110: Range ignored, the whole body scanned
    before = sidecar.metric("dlp_partial_responses_total")
    for i in range(PIECE, 6 * PIECE, PIECE):
        _, st, body, _ = curl("-r", f"{i}-{i + PIECE - 1}", url)
        assert (st, body) == (206, want[i:i + PIECE])
    assert sidecar.metric("dlp_partial_responses_total") == before + 5


def test_a_changed_file_is_scanned_whole_again(site, sidecar):
    name = "ranges-changing.csv"
    (site.root / name).write_bytes((site.root / "stats-4.html").read_bytes())
    url = sidecar.url + "/" + name
    assert curl("-r", "0-511", url)[1] == 200
    assert curl("-r", "0-511", url)[1] == 206
    leak = synth.breach_csv(2000)                          # the file becomes a leak: another ETag
    (site.root / name).write_bytes(leak)
    _, st, body, _ = curl("-r", "0-511", url)
    assert st == 451 and rows_in(body, leak) == 0
