"""Issue 18, points 1 and 3: state files and disk faults, each reproduced with the real sidecar process.

Every test here failed before the fix: an empty admin token opened the admin API to
``Bearer \\xc2\\xa0``; a 0-byte HMAC key was used; the state dir was 0755 and its files 0644; a
world-writable or foreign state dir was used; a full disk answered a trip 500 and logged alerts as
lost; a 0-byte registry started empty and a corrupt ledger exited 1 with a traceback.

The full disk is a small tmpfs mounted under the test's directory (root required, as in CI).
"""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import stat
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from sensor.sample_site import ROSTER
from tests.conftest import require_tool
from tests.procs import Sidecar, Upstream, site_fixture
from tests.test_proxy import curl

site = site_fixture(400)
IN_CI = os.environ.get("CI") == "true"
NOBODY = 65534


def _leak(site: Upstream, name: str) -> str:
    (site.root / name).write_bytes(f"# {name}\n".encode() + (site.root / ROSTER).read_bytes())
    return "/" + name


def _refused_start(sc: Sidecar, *, timeout: float = 40.0) -> str:
    """Start the sidecar expecting it to refuse: exit 2 with a clear, traceback-free error; its stderr."""
    sc.start(wait=False)
    assert sc.proc is not None
    try:
        rc = sc.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        sc.stop()
        pytest.fail("the sidecar started although its state should have been refused:\n" + sc.log()[-2000:])
    err = sc.log()
    assert rc == 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    return err


def _need_root(why: str) -> None:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail(f"{why} needs root (CI runs the suite as root)")
        pytest.skip(f"{why} needs root (CI fails instead of skipping)")


@contextmanager
def small_disk(path: Path, size: str = "8m"):
    """A tmpfs of ``size`` at ``path``: a disk that can really be filled. CI fails if it cannot mount."""
    require_tool("mount")
    path.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if p.returncode != 0:
        why = f"cannot mount a tmpfs at {path}: {p.stderr.decode().strip()}"
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why + " (CI fails instead of skipping)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(disk: Path) -> Path:
    """Write a filler file until the disk refuses another byte; remove it to free the disk again."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for chunk in (1 << 20, 4096, 1):
            try:
                while True:
                    fh.write(b"\0" * chunk)
            except OSError:
                pass
    return filler


def _admin(sc: Sidecar, authorization: bytes) -> int:
    """GET /takedowns on the admin port with this exact Authorization header value; the status."""
    with socket.create_connection(("127.0.0.1", sc.admin_port), timeout=10) as s:
        s.sendall(b"GET /takedowns HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: " + authorization
                  + b"\r\n\r\n")
        head = s.recv(4096)
    return int(head.split(b" ", 2)[1])


# -- 1. state files --------------------------------------------------------------------------------------
def test_empty_admin_token_file_refuses_start_instead_of_opening_the_admin_api(site, tmp_path):
    """Before: an empty ``admin.token`` made the token "", and ``Bearer \\xc2\\xa0`` (stripped) matched it."""
    sc = Sidecar.create(tmp_path, site.url)
    sc.state.mkdir(mode=0o700)
    (sc.state / "admin.token").write_bytes(b"")
    os.chmod(sc.state / "admin.token", 0o600)
    err = _refused_start(sc)
    assert str(sc.state / "admin.token") in err and "shorter than 16" in err


def test_admin_bearer_token_is_compared_exactly(site, tmp_path):
    sc = Sidecar.create(tmp_path, site.url).start()
    try:
        tok = sc.token.encode()
        assert _admin(sc, b"Bearer " + tok) == 200
        for bad in (b"Bearer " + tok + b"\xc2\xa0",                 # a non-breaking space is not stripped
                    b"Bearer \xc2\xa0" + tok, b"Bearer \xc2\xa0", b"Bearer ", b"Bearer", b"Basic " + tok,
                    b"Bearer " + tok[:-1], b"Bearer " + tok + b"x", b"Bearer" + tok, tok):
            assert _admin(sc, bad) == 401, bad
        assert _admin(sc, b"bearer " + tok) == 200                  # the scheme is case-insensitive
        assert _admin(sc, b"BEARER  " + tok) == 200
    finally:
        sc.stop()


def test_zero_byte_hmac_key_refuses_start(site, tmp_path):
    """Before: a 0-byte ``hmac.key`` (a first start on a full disk) was used as the empty key."""
    sc = Sidecar.create(tmp_path, site.url)
    sc.state.mkdir(mode=0o700)
    (sc.state / "hmac.key").write_bytes(b"")
    os.chmod(sc.state / "hmac.key", 0o600)
    err = _refused_start(sc)
    assert str(sc.state / "hmac.key") in err and "shorter than 16" in err
    assert (sc.state / "hmac.key").read_bytes() == b""              # left for the operator, not replaced


def test_state_dir_is_0700_and_every_file_in_it_0600(site, tmp_path):
    sc = Sidecar.create(tmp_path, site.url, {"alerts": {"sinks": [{"type": "jsonl", "path": "alerts.jsonl"}]}}).start()
    try:
        assert curl(sc.url + _leak(site, "exports/modes.csv"))[1] == 451
        deadline = time.monotonic() + 20
        while not sc.alerts() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sc.alerts()
        assert stat.S_IMODE(sc.state.stat().st_mode) == 0o700
        names = {p.name for p in sc.state.iterdir()}
        for must in ("takedowns.db", "takedowns.db-wal", "takedowns.db-shm", "ledger.db", "ledger.db-wal",
                     "alerts.db", "alerts.db-wal", "alerts.jsonl", "hmac.key", "admin.token"):
            assert must in names, sorted(names)
        modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in sc.state.iterdir()}
        assert set(modes.values()) == {"0o600"}, modes
    finally:
        sc.stop()


def test_group_or_world_writable_state_dir_refuses_start(site, tmp_path):
    sc = Sidecar.create(tmp_path, site.url)
    sc.state.mkdir()
    os.chmod(sc.state, 0o777)
    err = _refused_start(sc)
    assert str(sc.state) in err and "writable by group or others" in err
    os.chmod(sc.state, 0o770)
    assert "writable by group or others" in _refused_start(sc)


def test_secret_planted_by_another_user_refuses_start(site, tmp_path):
    _need_root("chown to another user")
    sc = Sidecar.create(tmp_path, site.url)
    sc.state.mkdir(mode=0o700)
    planted = sc.state / "admin.token"
    planted.write_text("planted-by-someone-else-0123456789\n")
    os.chmod(planted, 0o600)
    os.chown(planted, NOBODY, NOBODY)
    err = _refused_start(sc)
    assert str(planted) in err and "owned by uid" in err
    os.chown(planted, 0, 0)
    os.chmod(planted, 0o622)                                        # others may write it: as bad
    err = _refused_start(sc)
    assert str(planted) in err and "writable by group or others" in err


def test_state_dir_owned_by_another_user_refuses_start(site, tmp_path):
    _need_root("chown to another user")
    sc = Sidecar.create(tmp_path, site.url)
    sc.state.mkdir(mode=0o700)
    os.chown(sc.state, NOBODY, NOBODY)
    err = _refused_start(sc)
    assert str(sc.state) in err and "owned by uid" in err


def test_first_start_on_a_full_disk_leaves_no_empty_secret_behind(site, tmp_path):
    """Before: the key file was created, then its write failed: the next start used a 0-byte key."""
    with small_disk(tmp_path / "disk", "1m") as disk:
        sc = Sidecar.create(tmp_path / "sc", site.url, state=disk / "state")
        filler = fill(disk)
        sc.start(wait=False)
        assert sc.proc is not None and sc.proc.wait(40) == 2
        assert not (sc.state / "hmac.key").exists()                 # before: a 0-byte key, used next time
        assert str(sc.state / "hmac.key") in sc.log() and "cannot write" in sc.log()
        assert "Traceback" not in sc.log()
        assert not [p for p in sc.state.iterdir() if p.name.endswith(".tmp")]
        filler.unlink()
        sc.start()
        try:
            assert len(bytes.fromhex((sc.state / "hmac.key").read_text())) == 32
            assert len(sc.token) >= 32
        finally:
            sc.stop()


# -- 3. disk faults --------------------------------------------------------------------------------------
def _takedowns(state: Path) -> list[str]:
    db = sqlite3.connect(f"file:{state / 'takedowns.db'}?mode=ro", uri=True, timeout=5)
    try:
        return [r[0] for r in db.execute("SELECT resource FROM takedowns WHERE lifted IS NULL")]
    finally:
        db.close()


def _stdout_alerts(sc: Sidecar) -> list[dict]:
    out = sc.config.parent / "stdout.log"
    return [orjson.loads(line) for line in out.read_bytes().splitlines() if line.startswith(b"{")]


def test_full_disk_trip_still_refused_451_from_memory_and_committed_when_space_returns(site, tmp_path):
    with small_disk(tmp_path / "disk", "16m") as disk:
        sc = Sidecar.create(tmp_path / "sc", site.url, {"alerts": {
            "retry_initial": 0.2, "retry_max": 1,
            "sinks": [{"type": "stdout"}, {"type": "jsonl", "path": "alerts.jsonl"}]}},
            state=disk / "state").start()
        try:
            paths = [_leak(site, f"exports/full-{i}.csv") for i in range(5)]
            filler = fill(disk)
            for p in paths:                                         # before: 500, no takedown, 5 "lost"
                assert curl(sc.url + p)[1] == 451
                assert curl(sc.url + p)[1] == 451                   # refused from memory meanwhile
            deadline = time.monotonic() + 20                        # told through the sink that needs no disk
            while len(_stdout_alerts(sc)) < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            alerts = _stdout_alerts(sc)
            assert {a["url"]["path"] for a in alerts} == set(paths)
            assert all(any(n.startswith("takedown-not-durable") for n in a["dlp"]["notes"]) for a in alerts)
            assert _takedowns(sc.state) == []                       # really not on the disk yet
            log = sc.log()
            assert "lost" not in log and "Traceback" not in log, log[-3000:]
            filler.unlink()                                         # space again: the commits land
            deadline = time.monotonic() + 30
            while len(_takedowns(sc.state)) < 5 and time.monotonic() < deadline:
                time.sleep(0.1)
            got = _takedowns(sc.state)
            assert len(got) == 5 and all(any(r.endswith(p) for r in got) for p in paths), got
            while len(sc.alerts()) < 5 and time.monotonic() < deadline:   # the file sink catches up
                time.sleep(0.1)
            assert {a["url"]["path"] for a in sc.alerts()} == set(paths)
        finally:
            sc.stop()
        sc.start()                                                  # durable now: a restart still refuses
        try:
            for p in paths:
                assert curl(sc.url + p)[1] == 451
        finally:
            sc.stop()


def _with_one_takedown(site: Upstream, tmp_path: Path) -> tuple[Sidecar, str]:
    sc = Sidecar.create(tmp_path, site.url).start()
    try:
        path = _leak(site, f"exports/{tmp_path.name}.csv")
        assert curl(sc.url + path)[1] == 451
    finally:
        sc.stop()                                                   # a clean stop checkpoints the WAL
    return sc, path


def test_zero_byte_takedowns_db_refuses_start_unless_start_empty(site, tmp_path):
    """Before: a 0-byte ``takedowns.db`` started silently with an empty registry."""
    sc, path = _with_one_takedown(site, tmp_path)
    db = sc.state / "takedowns.db"
    db.write_bytes(b"")
    for side in ("-wal", "-shm"):
        Path(f"{db}{side}").unlink(missing_ok=True)
    err = _refused_start(sc)
    assert str(db) in err and "0 bytes" in err and "--start-empty" in err
    assert len([line for line in err.splitlines() if line.startswith("Error:")]) == 1
    sc.extra_args = ["--start-empty"]
    sc.start()
    try:
        moved = [p for p in sc.state.iterdir() if p.name.startswith("takedowns.db.bad-")]
        assert len(moved) == 1 and moved[0].stat().st_size == 0
        assert "moved aside" in sc.log()
        assert curl(sc.url + "/contact.html")[1] == 200             # serving, empty registry
    finally:
        sc.stop()


def test_corrupt_ledger_refuses_start_with_the_file_named_and_no_traceback(site, tmp_path):
    """Before: exit 1 and a bare ``sqlite3.DatabaseError`` traceback that did not name the file."""
    sc, _ = _with_one_takedown(site, tmp_path)
    db = sc.state / "ledger.db"
    db.write_bytes(os.urandom(8192))
    err = _refused_start(sc)
    assert str(db) in err and "--start-empty" in err


def test_start_empty_config_key_moves_a_corrupt_registry_aside(site, tmp_path):
    sc, path = _with_one_takedown(site, tmp_path)
    db = sc.state / "takedowns.db"
    db.write_bytes(b"SQLite format 3\0" + os.urandom(4096))
    assert "--start-empty" in _refused_start(sc)
    conf = sc.config.read_text() + "start_empty: true\n"
    sc.config.write_text(conf)
    sc.start()
    try:
        assert [p.name for p in sc.state.iterdir() if p.name.startswith("takedowns.db.bad-")]
        assert curl(sc.url + path)[1] == 451                        # re-detected, taken down again
    finally:
        sc.stop(signal.SIGTERM)
