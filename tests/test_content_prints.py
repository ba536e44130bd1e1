"""Content prints in real processes: a clean body that shares a tripped file's first 64 KiB passes,
the tripped file under another URL is still refused (ICAP with c-icap-client, the proxy with curl).

The files: a benign 64 KiB head (a report's preamble) shared by both; the leak continues with the
permit roster, the clean file with 4 MiB of other benign content. A head-only print (the first
64 KiB) would refuse the clean file; a print of the tripped body up to the trip does not.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from sensor import synth
from sensor.sample_site import ROSTER
from tests.conftest import require_tool
from tests.procs import BIN, Sidecar, site_fixture
from tests.test_proxy import curl

site = site_fixture(2000)
HEAD = 64 << 10


def _files(root: Path, tag: str) -> tuple[bytes, bytes]:
    head = (f"# quarterly report {tag}\n".encode() + synth.benign_web(HEAD * 2, seed=11))[:HEAD]
    leak = head + (root / ROSTER).read_bytes()
    clean = head + synth.benign_web(4 << 20, seed=12)[:4 << 20]
    assert leak[:HEAD] == clean[:HEAD] and leak[HEAD:HEAD + 4096] != clean[HEAD:HEAD + 4096]
    return leak, clean


def _prints(sc: Sidecar) -> list[dict]:
    out = subprocess.run([str(BIN / "dlp-sensor"), "takedowns", "list", "--state-dir", str(sc.state),
                          "--format", "json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [t for t in json.loads(out.stdout) if t.get("fingerprint")]


@pytest.fixture(scope="module")
def icap(site, tmp_path_factory) -> Sidecar:
    sc = Sidecar.create(tmp_path_factory.mktemp("icap-prints"), site.url, command="icap").start()
    yield sc
    sc.stop()


def _c_icap(sc: Sidecar, body: Path, url: str, out: Path) -> str:
    exe = require_tool("c-icap-client")
    p = subprocess.run([exe, "-i", "127.0.0.1", "-p", str(sc.port), "-s", "respmod", "-v", "-f", str(body),
                        "-resp", url, "-nopreview", "-o", str(out)], capture_output=True, text=True, timeout=60)
    return p.stdout + p.stderr


def test_icap_clean_body_sharing_the_head_passes_and_the_copy_is_refused(site, icap, tmp_path):
    leak, clean = _files(site.root, "icap")
    (tmp_path / "leak.csv").write_bytes(leak)
    (tmp_path / "clean.csv").write_bytes(clean)
    out = _c_icap(icap, tmp_path / "leak.csv", "http://www.example.gov/exports/report.csv", tmp_path / "o1")
    assert b"withdrawn" in (tmp_path / "o1").read_bytes(), out              # tripped: 451 page, takedown
    [td] = _prints(icap)
    assert td["fingerprint_len"] > HEAD                                    # the print reaches past the head
    out = _c_icap(icap, tmp_path / "clean.csv", "http://www.example.gov/exports/clean.csv", tmp_path / "o2")
    echoed = (tmp_path / "o2").read_bytes() if (tmp_path / "o2").exists() else b""
    assert "204 No Content" in out or echoed == clean, out[-800:]          # passes (204, or echoed whole)
    assert b"withdrawn" not in echoed
    assert icap.metric("dlp_refusals_total", reason="content") == 0
    out = _c_icap(icap, tmp_path / "leak.csv", "http://www.example.gov/mirror/copy.csv", tmp_path / "o3")
    assert b"withdrawn" in (tmp_path / "o3").read_bytes(), out             # the same file, another URL
    assert icap.metric("dlp_refusals_total", reason="content") == 1        # refused by its content print


@pytest.fixture(scope="module")
def proxy(site, tmp_path_factory) -> Sidecar:
    sc = Sidecar.create(tmp_path_factory.mktemp("proxy-prints"), site.url).start()
    yield sc
    sc.stop()


def test_proxy_clean_body_sharing_the_head_passes_and_the_copy_is_refused(site, proxy):
    leak, clean = _files(site.root, "proxy")
    (site.root / "exports" / "report-p.csv").write_bytes(leak)
    (site.root / "exports" / "clean-p.csv").write_bytes(clean)
    (site.root / "exports" / "copy-p.csv").write_bytes(leak)
    rc, st, got, _ = curl("-m", "60", proxy.url + "/exports/report-p.csv")
    assert st == 451 or (rc != 0 and len(got) < len(leak))                  # tripped: 451, or cut
    [td] = _prints(proxy)
    assert td["fingerprint_len"] > HEAD
    rc, st, got, err = curl("-m", "60", proxy.url + "/exports/clean-p.csv")
    assert (rc, st) == (0, 200) and got == clean, err                      # passes, byte-identical
    rc, st, got, _ = curl("-m", "60", proxy.url + "/exports/copy-p.csv")
    assert st == 451 or (rc != 0 and len(got) < len(leak))                  # the copy is refused again
