"""Real processes for the tests: the sample upstream and dlp-sensor sidecars on free loopback ports.

Every process is started by PID and stopped by PID; every sidecar's state dir and logs are
recorded in OUTPUTS so the never-re-leak check (tests/releak.py) searches everything the product wrote.
"""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OUTPUTS: list[Path] = []            # files and directories the product wrote during the session


_PORTS = (10_000, 32_000)            # below the kernel's ephemeral range (32768-60999 here)
_next_port: list[int] = []


def _port_range() -> range:
    """This process's share of ``_PORTS``: under pytest-xdist each worker (``gw0``, ``gw1``…) has a
    range of its own, so two workers never hand out the same port; a run without xdist has it all."""
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    index = int((os.environ.get("PYTEST_XDIST_WORKER") or "gw0").removeprefix("gw") or 0)
    span = (_PORTS[1] - _PORTS[0]) // max(count, 1)
    return range(_PORTS[0] + index * span, _PORTS[0] + (index + 1) * span)


def free_port() -> int:
    """A loopback port nobody listens on, never the same twice in a session.

    Not ``bind(0)``: the kernel picks that from the ephemeral range, where every outgoing connection
    (curl, urllib, the brokers' clients) also takes its local port, and where a parallel worker may be
    handed the same port before our process binds it. Ports here come from a range below the ephemeral
    one, this worker's own, in order from a random start (two suites on one machine do not walk in
    lockstep), each checked free by binding it."""
    ports = _port_range()
    if not _next_port:
        import random
        _next_port.append(random.randrange(len(ports)))
    for _ in range(len(ports)):
        port = ports[_next_port[0] % len(ports)]
        _next_port[0] += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue                    # in use (or in TIME_WAIT from an earlier listener)
            return port
    raise RuntimeError(f"no free loopback port in {ports}")


def log_tail(log: Path | None, lines: int = 40) -> str:
    """The end of a process's log, for a failure message (the product's logs carry no personal values)."""
    if log is None or not log.exists():
        return ""
    return "\n--- last lines of " + str(log) + " ---\n" + "\n".join(
        log.read_text(errors="replace").splitlines()[-lines:])


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen | None = None,
              log: Path | None = None) -> None:
    """Poll until ``url`` answers below 500; on failure say why, with the tail of the process's ``log``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered" + log_tail(log))
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status < 500:
                    return
        except urllib.error.HTTPError as e:
            if e.code < 500:                # it answers, if only to say no
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s" + log_tail(log))


@contextmanager
def disk_stalled(*dbs: Path):
    """Hold the write lock of each SQLite file from this process, as another writer sharing the
    state dir (the CLI, a second sidecar) can, and as a stalled fsync does: the sidecar's commits
    to these files wait until the block ends (keep it under their 10 s busy timeout)."""
    cons = [sqlite3.connect(str(p), timeout=5, isolation_level=None) for p in dbs]
    try:
        for c in cons:
            c.execute("BEGIN IMMEDIATE")
        yield
    finally:
        for c in cons:
            if c.in_transaction:
                c.execute("ROLLBACK")
            c.close()


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class Upstream:
    root: Path
    port: int
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop(self.proc)

    @classmethod
    def start(cls, root: Path) -> "Upstream":
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "sensor.sample_site", "--root", str(root), "--port", str(port)],
                                cwd=ROOT)
        up = cls(root, port, proc)
        wait_http(up.url + "/contact.html", proc=proc)
        return up


@dataclass
class Sidecar:
    state: Path
    config: Path
    port: int
    metrics_port: int
    admin_port: int
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    command: str = "proxy"                  # or "icap": the same sensor, another tap

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def token(self) -> str:
        return (self.state / "admin.token").read_text().strip()

    @classmethod
    def create(cls, tmp: Path, upstream: str, conf: dict | None = None, *, state: Path | None = None,
               extra_args: list[str] | None = None, command: str = "proxy") -> "Sidecar":
        tmp.mkdir(parents=True, exist_ok=True)
        state = state or tmp / "state"
        conf = dict(conf or {})
        conf.setdefault("alerts", {"sinks": [{"type": "jsonl", "path": "alerts.jsonl"}]})
        conf.setdefault("sensor_id", "test-sidecar")
        proxy = dict(conf.get("proxy", {}))
        proxy.setdefault("upstream", upstream)
        conf["proxy"] = proxy
        cfg = tmp / "sensor.yaml"
        cfg.write_text(yaml.safe_dump(conf))
        sc = cls(state, cfg, free_port(), free_port(), free_port(), list(extra_args or []), command=command)
        OUTPUTS.extend([state, tmp / "stdout.log", tmp / "stderr.log"])
        return sc

    def start(self, wait: bool = True) -> "Sidecar":
        tmp = self.config.parent
        self.proc = subprocess.Popen(
            [str(BIN / "dlp-sensor"), self.command, "--config", str(self.config), "--state-dir", str(self.state),
             "--listen", f"127.0.0.1:{self.port}", "--metrics", f"127.0.0.1:{self.metrics_port}",
             "--admin", f"127.0.0.1:{self.admin_port}", *self.extra_args],
            stdout=open(tmp / "stdout.log", "ab"), stderr=open(tmp / "stderr.log", "ab"), cwd=ROOT,
            env={k: v for k, v in os.environ.items() if k != "DLP_KAFKA_BOOTSTRAP"})   # Kafka only when configured
        if wait:
            # /healthz: the metrics port opens once the sensor and its listeners are up; /readyz would
            # also wait for the upstream, which some tests keep down on purpose
            wait_http(self.metrics + "/healthz", timeout=40, proc=self.proc, log=tmp / "stderr.log")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop(self.proc, sig)

    def log(self) -> str:
        return (self.config.parent / "stderr.log").read_text(errors="replace")

    def alerts(self) -> list[dict]:
        import orjson
        p = self.state / "alerts.jsonl"
        return [orjson.loads(l) for l in p.read_bytes().splitlines()] if p.exists() else []

    def metric(self, name: str, **labels: str) -> float:
        """One sample, read once the exchanges in flight are accounted (up to 5 s): a monitor
        exchange's final scan runs in the scan pool after its last byte has reached the client, so
        a client's next request can be answered before its counters move."""
        if name != "dlp_active_exchanges":
            deadline = time.monotonic() + 5
            while read_metric(self.metrics, "dlp_active_exchanges") > 0 and time.monotonic() < deadline:
                time.sleep(0.02)
        return read_metric(self.metrics, name, **labels)


def read_metric(base: str, name: str, **labels: str) -> float:
    """The value of one sample from ``base``/metrics (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families
    text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def site_fixture(people: int):
    """A module-scoped fixture: the sample site with a roster of ``people``, served by its own process."""
    import pytest

    from sensor.sample_site import build_site

    @pytest.fixture(scope="module")
    def site(tmp_path_factory) -> Upstream:
        up = Upstream.start(build_site(tmp_path_factory.mktemp("site"), people=people))
        yield up
        up.stop()

    return site
