"""Shared fixtures. Tests use the real Hyperscan engine and the real default pack."""
from __future__ import annotations

import io
import os
import shutil
import zipfile

import pytest

from sensor.detect.engine import Engine
from sensor.detect.pack import load_pack
from sensor.detect.policy import Policy
from sensor.pipeline import BodyScan, Exchange

KEY = bytes(range(32))
REPORT_TABLES: list[str] = []     # tables tests want shown at the end of the run (even under -q)


def pytest_terminal_summary(terminalreporter) -> None:
    """Print the tables tests registered (pytest -q swallows prints; the summary does not)."""
    for table in REPORT_TABLES:
        terminalreporter.write_line("")
        for line in table.splitlines():
            terminalreporter.write_line(line)


def require_tool(name: str) -> str:
    """Path of an external program; in CI its absence fails the test instead of skipping it."""
    path = shutil.which(name)
    if path:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} is required in CI (the Makefile installs it)")
    pytest.skip(f"{name} not installed (CI fails instead of skipping)")


@pytest.fixture(scope="session")
def engine() -> Engine:
    return Engine(load_pack())


def scan_bytes(engine: Engine, data: bytes, *, chunk: int = 65536, policy: Policy | None = None,
               content_type: str = "", content_encoding: str = "", path: str | None = None, **kw):
    body = BodyScan(engine, policy or Policy(), key=KEY, exchange=Exchange(
        content_type=content_type, content_encoding=content_encoding, path=path), **kw)
    for i in range(0, len(data), chunk):
        body.write(data[i:i + chunk])
    return body.finish()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A deflated zip of ``members`` (name -> bytes), made in memory."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()
