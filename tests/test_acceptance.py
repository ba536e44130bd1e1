"""Issue acceptance on real and generated data: the leak trips in every wrapping; real content does not."""
from __future__ import annotations

import gzip
import io
import json

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from sensor import synth
from sensor.synth import breach_csv
from tests.conftest import scan_bytes

ROWS = 20_000
LEAK = breach_csv(ROWS, seed=99)


def test_breach_csv_without_ssn_trips_with_records_within_2_percent(engine):
    r = scan_bytes(engine, LEAK)
    assert r.verdict == "trip"
    assert "us-ssn" not in r.findings
    assert abs(r.records - ROWS) <= 0.02 * ROWS, r.records


@pytest.mark.parametrize("wrap", ["gzip", "zip", "xlsx"])
def test_breach_trips_gzipped_zipped_and_as_xlsx(engine, wrap):
    if wrap == "gzip":
        data = gzip.compress(LEAK)
    elif wrap == "zip":
        bio = io.BytesIO()
        with zipfile.ZipFile(bio, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("permits_2022.csv", LEAK)
        data = bio.getvalue()
    else:
        data = synth.xlsx([line.split(",") for line in LEAK.decode().splitlines()])
    r = scan_bytes(engine, data)
    assert r.verdict == "trip" and abs(r.records - ROWS) <= 0.02 * ROWS, (wrap, r.records, r.notes)


def _scan_dir(path: str, *extra: str) -> list[dict]:
    exe = Path(sys.executable).with_name("dlp-sensor")
    p = subprocess.run([str(exe), "scan", "--format", "json", *extra, path], capture_output=True, timeout=900)
    assert p.returncode in (0, 1), p.stderr[-2000:]
    return [json.loads(x) for x in p.stdout.decode().splitlines()]


@pytest.mark.parametrize("corpus", ["/usr/share/doc", "stdlib"])
def test_real_content_nobody_here_wrote_never_trips(corpus):
    if corpus == "stdlib":
        reports = _scan_dir(sysconfig.get_paths()["stdlib"], "--exclude", "site-packages")
    else:
        reports = _scan_dir(corpus)
    assert len(reports) > 500
    trips = [r["path"] for r in reports if r["verdict"] == "trip"]
    assert trips == []
    alerts = [(r["path"], r["findings"]) for r in reports if r["verdict"] == "alert"]
    print(f"\n{corpus}: {len(reports)} files, {len(alerts)} alerted")
    for a in alerts[:40]:
        print("  alert", a)
