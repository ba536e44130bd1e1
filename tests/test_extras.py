"""The core install runs without the Kafka and Envoy extras, and says which extra a command needs.

A throwaway environment holds only the core: the distributions that the ``[project] dependencies``
of pyproject.toml pull in (their own requirements, transitively), linked from this venv into a
directory of their own and run with ``python -S`` (no site-packages). In it `dlp-sensor scan`
trips on a leak, `proxy` serves until ready, and `worker` / `extproc` exit 2 naming the extra.
"""
from __future__ import annotations

import os
import subprocess
import urllib.request
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from sensor import synth
from sensor.cli.extras import EXTRAS
from tests.procs import ROOT, free_port, stop, wait_http

EXTRA_MODULES = ("aiokafka", "faust", "grpc", "envoy", "xds", "mode")


def _core_distributions() -> set[str]:
    """Names of every distribution the core dependencies need, transitively (markers evaluated)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    todo = [Requirement(d) for d in deps]
    seen: dict[str, set[str]] = {}
    while todo:
        req = todo.pop()
        name = metadata.distribution(req.name).metadata["Name"].lower().replace("_", "-")
        extras = set(req.extras)
        if name in seen and extras <= seen[name]:
            continue
        seen.setdefault(name, set()).update(extras)
        for sub in metadata.distribution(req.name).requires or []:
            r = Requirement(sub)
            if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in (extras or {""})):
                todo.append(r)
    return set(seen)


@pytest.fixture(scope="module")
def core_env(tmp_path_factory) -> dict:
    """An environment for ``python -S`` whose path holds the repository and the core distributions only."""
    site = tmp_path_factory.mktemp("core-site")
    for name in _core_distributions():
        dist = metadata.distribution(name)
        base = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops - {"__pycache__"}:
            if not (site / top).exists() and (base / top).exists():
                (site / top).symlink_to(base / top)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DLP_KAFKA"))}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{site}"
    return env


def _cli(env: dict, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-S", "-m", "sensor.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=120, cwd=ROOT, **kw)


def test_the_core_environment_has_no_extra(core_env):
    for module in EXTRA_MODULES:
        r = subprocess.run([sys.executable, "-S", "-c", f"import {module}"], env=core_env, capture_output=True)
        assert r.returncode != 0, f"{module} is importable in the core environment"


def test_scan_and_proxy_work_on_the_core_install(core_env, tmp_path):
    leak = tmp_path / "roster.csv"
    leak.write_bytes(synth.breach_csv(200))
    r = _cli(core_env, "scan", "--state-dir", str(tmp_path / "state"), str(leak))
    assert r.returncode == 1 and "trip" in r.stdout, r.stdout + r.stderr
    for cmd in ("proxy", "icap", "report", "takedowns"):
        r = _cli(core_env, cmd, "--help")
        assert r.returncode == 0, r.stderr
    port, metrics, app = free_port(), free_port(), free_port()
    site = tmp_path / "site"
    site.mkdir()
    (site / "page.html").write_bytes(b"<p>hello from the app</p>")
    upstream = subprocess.Popen([sys.executable, "-m", "http.server", str(app), "--bind", "127.0.0.1",
                                 "--directory", str(site)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "proxy.log"
    proc = subprocess.Popen([sys.executable, "-S", "-m", "sensor.cli.main", "proxy", "--upstream",
                             f"http://127.0.0.1:{app}", "--listen", f"127.0.0.1:{port}", "--metrics",
                             f"127.0.0.1:{metrics}", "--admin", "off", "--state-dir", str(tmp_path / "state")],
                            env=core_env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    try:
        wait_http(f"http://127.0.0.1:{metrics}/readyz", timeout=60, proc=proc, log=log)   # ready: the app answers
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/page.html", timeout=10) as r:
            assert r.status == 200 and r.read() == b"<p>hello from the app</p>"
    finally:
        stop(proc)
        stop(upstream)


@pytest.mark.parametrize("args, extra", [
    (["worker", "--kafka", "127.0.0.1:9"], "kafka"),
    (["extproc", "--listen", "127.0.0.1:9", "--metrics", "off", "--admin", "off"], "extproc"),
    (["proxy", "--kafka", "127.0.0.1:9", "--upstream", "http://127.0.0.1:9", "--metrics", "off", "--admin", "off"],
     "kafka"),
    (["report", "--fleet", "--config", "{kafka_config}"], "kafka"),
])
def test_a_command_names_the_extra_it_needs(core_env, tmp_path, args, extra):
    cfg = tmp_path / "sensor.yaml"
    cfg.write_text("kafka: {bootstrap: '127.0.0.1:9'}\n")
    args = [a.replace("{kafka_config}", str(cfg)) for a in args]
    r = _cli(core_env, *args, "--state-dir", str(tmp_path / "state"))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"pip install 'dlp-sensor[{extra}]'" in lines[0] and f"'{extra}' extra" in lines[0]


def test_scan_imports_no_extra_even_when_installed(tmp_path):
    """In the full environment too: `scan` (and loading the CLI) never imports Kafka or gRPC."""
    leak = tmp_path / "roster.csv"
    leak.write_bytes(synth.breach_csv(50))
    code = ("import sys\nfrom sensor.cli.main import main\n"
            f"try:\n    main(['scan', '--state-dir', {str(tmp_path / 'state')!r}, {str(leak)!r}])\n"
            "except SystemExit:\n    pass\n"
            f"print('EXTRAS', sorted(m for m in sys.modules if m.split('.')[0] in {EXTRA_MODULES!r}))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert "EXTRAS []" in r.stdout, r.stdout + r.stderr


def test_every_extra_module_is_listed_in_pyproject():
    """The extras the CLI names exist in pyproject.toml, and `test` pulls `all` (so `make test` has them)."""
    opt = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS) <= set(opt) and opt["all"] == ["dlp-sensor[kafka,extproc]"]
    assert "dlp-sensor[all]" in opt["test"]
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in core if Requirement(d).name in ("aiokafka", "faust-streaming", "grpcio", "xds-protos")]
