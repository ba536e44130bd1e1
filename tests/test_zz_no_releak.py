"""Never re-leak: nothing the product wrote during this session holds a raw personal value.

Runs last (file name): every state dir (registry, ledger, alert spool, JSONL alerts), every log and
stdout of every sidecar the suite started, and each state dir's incident report are grepped for
the synthetic roster's licence numbers, dates of birth, street addresses and full names.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sensor import synth
from tests.procs import OUTPUTS


def _values() -> set[bytes]:
    out = set()
    for row in synth.breach_rows(3000):
        f = row.rstrip("\n").split(",")
        out.update(v.encode() for v in (f[4], f[7], f[11], f"{f[2]} {f[1]}", f"{f[1]},{f[2]}"))
    return out


def test_no_output_contains_a_raw_personal_value():
    values = _values()
    files: list[Path] = []
    for p in OUTPUTS:
        if p.is_dir():
            files.extend(f for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            files.append(p)
    blobs = {str(f): f.read_bytes() for f in files}
    exe = str(Path(sys.executable).parent / "dlp-sensor")
    for d in {p for p in OUTPUTS if p.is_dir()}:
        if (d / "ledger.db").exists():
            for fmt in ("text", "json"):
                r = subprocess.run([exe, "report", "--format", fmt, "--state-dir", str(d)], capture_output=True)
                blobs[f"report {fmt} {d}"] = r.stdout + r.stderr
    assert any(b'"dlp-trip"' in b for b in blobs.values()), "the suite produced no trip alert to check"
    assert len(blobs) >= 20
    leaks = [(name, v.decode()[:2] + "…") for name, blob in blobs.items() for v in values if v in blob]
    assert not leaks, f"raw values found in product output: {leaks[:10]}"
