"""Constant memory per exchange: a 1 GB download through the sidecar keeps its RSS under 200 MB."""
from __future__ import annotations

from pathlib import Path

import pytest

from sensor.sample_site import build_site
from tests.procs import Sidecar, Upstream
from tests.test_proxy import curl


def _hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("mode", ["monitor", "enforce"])
def test_1gb_download_rss_stays_under_200mb(tmp_path, mode):
    up = Upstream.start(build_site(tmp_path / "site", people=10))
    sc = Sidecar.create(tmp_path / "sc", up.url, {"proxy": {"mode": mode}}).start()
    try:
        rc, st, _, err = curl("-o", "/dev/null", sc.url + "/big?mb=1024")
        assert (rc, st) == (0, 200), err
        assert sc.metric("dlp_bytes_scanned_total", tap="proxy") >= 1 << 30
        peak = _hwm_mb(sc.proc.pid)
        print(f"{mode}: peak RSS {peak:.0f} MB for a 1 GiB download")
        assert peak <= 200
    finally:
        sc.stop()
        up.stop()
