"""The scan threads' CPU policy (``scan_sched``, issue 19): SCHED_IDLE or ``scan_nice`` steps, set on
every thread of the pool as it starts and read back from the kernel (``os.sched_getscheduler`` and
/proc/self/task/<tid>/stat), never on the event loop's thread; a bad value is refused naming the
key; a reload to another value gives new exchanges a new pool; an OS that refuses the call gets one
log line and scans at the loop's priority."""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Executor
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from sensor import config_reload, synth
from sensor.config import ConfigError, load_config, with_overrides
from sensor.exchange import workers
from sensor.exchange.session import FORWARD, ExchangeSession
from sensor.runtime import Sensor
from tests.sensors import detector, sensor_fixture  # noqa: F401  (detector: a fixture)

make = sensor_fixture(mode="monitor")
DENSE = synth.breach_csv(2_000)                 # past the inline size (16 KiB): scan jobs go to the pool


@pytest.fixture(autouse=True)
def own_pools(monkeypatch):
    """Pools of this module's own, shut down after each test: the process-wide table is not left
    with threads whose policy a test forced (or a fake refused)."""
    pools: dict = {}
    monkeypatch.setattr(workers, "_POOLS", pools)
    monkeypatch.setattr(workers, "_current", None)
    monkeypatch.setattr(workers, "_warned", False)
    yield pools
    for p in pools.values():
        p.shutdown(wait=True)


def thread_ids(p: Executor, n: int) -> list[int]:
    """The native ids of ``n`` distinct threads of ``p`` (each job waits until all ``n`` run)."""
    gate = threading.Barrier(n, timeout=20)

    def job() -> int:
        gate.wait()
        return threading.get_native_id()
    ids = [f.result(timeout=30) for f in [p.submit(job) for _ in range(n)]]
    assert len(set(ids)) == n
    return ids


def stat_policy(tid: int) -> int:
    """The scheduling policy of thread ``tid`` as /proc reports it (stat field 41)."""
    after_name = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(after_name[41 - 3])              # fields 3.. follow the ")" of the command name


def nice_of(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def test_idle_puts_every_pool_thread_on_sched_idle_and_leaves_the_loop_alone():
    p = workers.pool(3, 10, "idle")
    assert p is not None
    for tid in thread_ids(p, 3):
        assert os.sched_getscheduler(tid) == os.SCHED_IDLE
        assert stat_policy(tid) == os.SCHED_IDLE
    assert os.sched_getscheduler(0) == os.SCHED_OTHER        # this (the loop's) thread
    assert stat_policy(threading.get_native_id()) == os.SCHED_OTHER


@pytest.mark.parametrize("nice", [10, 3, 0])
def test_nice_lowers_every_pool_thread_by_scan_nice_steps(nice):
    here = nice_of(threading.get_native_id())
    p = workers.pool(3, nice, "nice")
    assert p is not None
    for tid in thread_ids(p, 3):
        assert os.sched_getscheduler(tid) == os.SCHED_OTHER
        assert stat_policy(tid) == os.SCHED_OTHER
        assert nice_of(tid) == min(19, here + nice)
    assert nice_of(threading.get_native_id()) == here


@pytest.mark.parametrize("sched, policy", [("idle", "SCHED_IDLE"), ("nice", "SCHED_OTHER")])
async def test_a_sessions_scan_jobs_run_under_the_configured_policy(make, sched, policy):
    """Through the exchange session, as every tap uses it: the job runs on a thread of that policy,
    and the scan's result is the same."""
    s = make()
    s.config = replace(s.config, scan_sched=sched)
    ses = ExchangeSession(s, tap="proxy", method="GET", scheme="http", host="site.example", target="/x.csv",
                          peer="10.0.0.1", headers={})
    ses.on_request()
    ses.on_response(200, {"Content-Type": "text/csv"})
    assert (await ses.feed(DENSE)).action == FORWARD
    assert await ses._off(os.sched_getscheduler, 0) == getattr(os, policy)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    end = await ses.end()
    assert end.action == FORWARD and ses.result is not None and ses.result.records == 2_000
    ses.close(True)


def test_the_default_is_auto(tmp_path):
    """Always SCHED_IDLE starves the scans, and the loop behind a scan thread holding the GIL, when
    other work keeps the cores busy; always nice costs other clients ~1 ms of p99 when the cores
    have room (docs/benchmarks.md): auto measures which case it is in (tests/test_workers_auto.py)."""
    f = tmp_path / "c.yaml"
    f.write_text("scan_workers: 2\n")
    assert load_config(f).scan_sched == "auto"


@pytest.mark.parametrize("bad", ["batch", "IDLE", "Auto", "5", "[idle]", "''"])
def test_a_bad_value_is_refused_naming_the_key(tmp_path, bad):
    f = tmp_path / "c.yaml"
    f.write_text(f"scan_sched: {bad}\n")
    with pytest.raises(ConfigError, match=r"scan_sched: must be one of auto, nice, idle"):
        load_config(f)


def test_a_bad_value_in_code_is_refused_before_a_pool_exists(own_pools):
    with pytest.raises(ValueError, match="scan_sched"):
        workers.pool(2, 10, "fifo")
    assert not own_pools


def test_scan_nice_does_not_matter_under_idle():
    """A reload that changes only ``scan_nice`` while the threads are on SCHED_IDLE keeps the pool."""
    assert workers.pool(2, 10, "idle") is workers.pool(2, 5, "idle")
    assert workers.pool(2, 10, "nice") is not workers.pool(2, 5, "nice")


async def test_a_reload_to_another_policy_gives_new_exchanges_a_new_pool(tmp_path):
    path = tmp_path / "sensor.yaml"
    conf = {"scan_sched": "nice", "scan_workers": 2, "alerts": {"sinks": []},
            "proxy": {"listen": "127.0.0.1:18000", "upstream": "http://127.0.0.1:9", "mode": "monitor"}}
    path.write_text(yaml.safe_dump(conf))
    s = Sensor(with_overrides(load_config(path), state_dir=str(tmp_path / "state")))

    def session() -> ExchangeSession:
        return ExchangeSession(s, tap="proxy", method="GET", scheme="http", host="h", target="/x", peer="10.0.0.1",
                               headers={})
    try:
        old = session()
        assert old.pool is not None and s.config.scan_sched == "nice"
        before = s.config
        path.write_text(yaml.safe_dump({**conf, "scan_sched": "idle"}))
        assert await s.reload()
        assert s.config.scan_sched == "idle"
        assert config_reload.changed(before, s.config) == ["scan_sched"]
        assert config_reload.restart_keys(before, s.config) == []
        new = session()
        assert new.pool is not None and new.pool is not old.pool
        assert all(os.sched_getscheduler(t) == os.SCHED_IDLE for t in thread_ids(new.pool, 2))
        assert all(os.sched_getscheduler(t) == os.SCHED_OTHER for t in thread_ids(old.pool, 2))
        old.close(True)
        new.close(True)
    finally:
        await s.dispatcher.stop()
        s.ledger.close()
        s.registry.close()
        s.spool.close()


@pytest.mark.parametrize("sched, call", [("idle", "sched_setscheduler"), ("nice", "setpriority")])
def test_a_refusal_is_logged_once_and_the_scans_run(monkeypatch, caplog, sched, call):
    """The OS refusing the call (a seccomp policy, a container without the right): one warning for
    the process, not one per thread or per pool, and the jobs still run, at the loop's priority."""
    def refused(*args: object) -> None:
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, call, refused)
    here = nice_of(threading.get_native_id())
    with caplog.at_level(logging.WARNING, logger="dlp_sensor.workers"):
        for n in (2, 3):                                        # two pools, five threads
            p = workers.pool(n, 10, sched)
            assert p is not None
            for tid in thread_ids(p, n):
                assert os.sched_getscheduler(tid) == os.SCHED_OTHER and nice_of(tid) == here
            assert p.submit(sum, [1, 2, 3]).result(timeout=10) == 6
    lines = [r.getMessage() for r in caplog.records if r.name == "dlp_sensor.workers"]
    assert lines == [f"scan threads run at the event loop's priority (scan_sched {sched} not applied: "
                     "PermissionError)"]
