"""`--log-format json` / `log_format: json`: one JSON object per line, no personal value, on a real sidecar."""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from sensor import synth
from sensor.config import ConfigError, parse_config
from sensor.sample_site import ROSTER
from tests.procs import Sidecar, site_fixture

site = site_fixture(2000)


def _roster_values() -> set[str]:
    out = set()
    for row in synth.breach_rows(2000):
        f = row.rstrip("\n").split(",")
        out.update((f[4], f[7], f[11], f"{f[2]} {f[1]}"))
    return out


@pytest.mark.parametrize("how", ["flag", "config"])
def test_json_log_lines(site, tmp_path, how):
    conf = {"log_format": "json"} if how == "config" else {}
    sc = Sidecar.create(tmp_path / "sc", site.url, conf,
                        extra_args=["--log-format", "json"] if how == "flag" else [])
    sc.start()
    try:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(sc.url + "/" + ROSTER, timeout=30).read()
        assert e.value.code == 451
        deadline = time.monotonic() + 20
        while not sc.alerts() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sc.stop()
    lines = [l for l in sc.log().splitlines() if l.strip()]
    assert lines, "the sidecar logged nothing"
    docs = [orjson.loads(l) for l in lines]                 # every line is one JSON object
    for d in docs:
        assert {"time", "level", "logger", "message"} <= set(d), d
        assert d["time"].endswith("Z") and d["level"] in ("debug", "info", "warning", "error", "critical")
    text = sc.log()
    assert not [v for v in _roster_values() if v in text]


def test_log_format_in_the_config_file():
    assert parse_config({"log_format": "json"}).log_format == "json"
    assert parse_config({}).log_format == "text"
    with pytest.raises(ConfigError, match=r"config\.log_format"):
        parse_config({"log_format": "xml"})


def test_log_format_flag_is_checked():
    exe = str(Path(sys.executable).parent / "dlp-sensor")
    r = subprocess.run([exe, "proxy", "--log-format", "xml", "--upstream", "http://127.0.0.1:9"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--log-format" in r.stderr
