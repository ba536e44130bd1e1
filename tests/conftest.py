"""Shared fixtures. Tests use the real Hyperscan engine and the real default pack."""
from __future__ import annotations

import io
import os
import shutil
import time
import zipfile

import pytest

from sensor.detect.engine import Engine
from sensor.detect.pack import load_pack
from sensor.detect.policy import Policy
from sensor.pipeline import BodyScan, Exchange
from tests.procs import OUTPUTS
from tests.releak import OutputWatch, fail_on, report_outputs, state_dirs

pytest_plugins = ["pytester"]      # tests/test_no_releak.py runs a pytest of its own

KEY = bytes(range(32))
REPORT_TABLES: list[str] = []     # tables tests want shown at the end of the run (even under -q)


# Modules whose real brokers, browsers and gigabyte downloads take the longest (measured with
# --durations), collected first: under pytest-xdist (`make test`: -n 2 --dist loadfile) whole modules
# go to the workers in collection order, and a long module handed out last would leave one worker
# running it alone at the end. Order only: every test still runs, and none depends on another's order.
LONG_MODULES = ("test_stream.py", "test_report_html.py", "test_acceptance.py", "test_memory.py",
                "test_proxy.py", "test_icap.py", "test_metrics_prom.py")


def pytest_collection_modifyitems(items) -> None:
    rank = {name: i for i, name in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: the rest keep their order


def pytest_configure(config) -> None:
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_WorkerTables(), "dlp-worker-tables")


class _WorkerTables:
    """Under pytest-xdist the tables are registered in the workers, whose terminal nobody sees: each
    worker hands its tables to the controller when it finishes, and the controller prints them all."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session) -> None:
        out = getattr(session.config, "workeroutput", None)     # set in a worker only
        if out is not None:
            out["dlp_report_tables"] = list(REPORT_TABLES)

    def pytest_testnodedown(self, node, error) -> None:
        REPORT_TABLES.extend(getattr(node, "workeroutput", {}).get("dlp_report_tables", []))


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


def require_built(module, name: str):
    """A compiled extension (``module`` as its package imported it, None if it is not built); in CI
    its absence fails the test instead of skipping it: the Makefile builds it."""
    if module is not None:
        return module
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} is not built: CI requires it (make .venv/.installed)")
    pytest.skip(f"{name} not built (CI fails instead of skipping)")


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


@pytest.fixture(scope="session", autouse=True)
def _no_releak_at_the_end():
    """Never re-leak, last of all whatever the order: once every module's processes have stopped
    (their last log lines written), sweep the outputs again and search each state dir's incident
    report. Autouse and session-scoped, so set up first and torn down after everything else."""
    watch = OutputWatch(OUTPUTS)
    yield watch
    leaks = watch.sweep()
    t0 = time.perf_counter()
    for d in state_dirs(OUTPUTS):
        for name, blob in report_outputs(d).items():
            leaks += watch.search(name, blob)
    watch.seconds += time.perf_counter() - t0
    REPORT_TABLES.append(watch.summary())
    fail_on(leaks)


@pytest.fixture(autouse=True)
def _no_releak(_no_releak_at_the_end):
    """Never re-leak, test by test: what the product wrote during this test (new or changed files
    among tests.procs.OUTPUTS) holds no raw personal value of the synthetic roster."""
    yield
    fail_on(_no_releak_at_the_end.sweep())
