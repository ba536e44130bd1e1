"""``scan_sched: auto`` (sensor/exchange/autopool): scans on SCHED_IDLE threads while they get the
CPU, on nice threads while they wait for one most of a job's time, and back when the nice jobs say
the cores have room. The routing rules in memory (Router), the pool's threads and routing as the
kernel reports them, a real saturation by busy processes (the idle threads starve, the watchdog
moves the next job to a nice thread before the starved one ends), the session using it by default,
and the metrics."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from sensor.exchange import autopool, workers
from sensor.exchange.autopool import CALM, JUDGE_AFTER, MAX_WINDOW, ROOM_WINDOW, AutoPool, Router
from sensor.exchange.session import FORWARD, ExchangeSession
from sensor.metrics import Metrics, generate_latest
from tests.sensors import detector, sensor_fixture  # noqa: F401  (detector: a fixture)
from tests.test_workers_sched import DENSE, nice_of, own_pools, thread_ids  # noqa: F401  (own_pools: a fixture)

make = sensor_fixture(mode="monitor")


# --- the routing rules ---------------------------------------------------------------------------

def test_idle_jobs_that_got_the_cpu_keep_the_idle_threads():
    r = Router()
    for share in (0.0, 0.3, 0.63, 0.8):                # 0.63: the worst unsaturated job measured
        assert not r.idle_job(0.010, share * 0.010, now=1.0)
    assert not r.starved and r.switches == {"nice": 0, "idle": 0}


def test_an_idle_job_that_waited_for_a_cpu_most_of_its_time_switches_to_nice():
    r = Router()
    assert r.idle_job(0.050, 0.045, now=1.0)
    assert r.starved and r.switches == {"nice": 1, "idle": 0}
    assert not r.idle_job(0.050, 0.049, now=1.1)       # already there: one switch, counted once
    assert r.switches["nice"] == 1


def test_a_job_too_short_to_judge_says_nothing():
    r = Router()
    assert not r.idle_job(JUDGE_AFTER / 2, JUDGE_AFTER / 2, now=1.0)
    assert not r.starved


def test_one_uncontended_nice_job_does_not_switch_back_before_the_window():
    """Saturated, most nice jobs wait 67-94 % of their time, yet a short one may run between two of
    a busy process's slices and wait 0 %: alone it must not send the scans back to starve."""
    r = Router(starved=True)
    assert not r.nice_job(0.003, 0.0, now=1.0)
    assert r.starved
    for _ in range(int(ROOM_WINDOW / 0.010) + 1):        # a window of contended jobs: stays nice
        assert not r.nice_job(0.010, 0.008, now=1.5)
    assert r.starved and r.switches["idle"] == 0


def test_a_window_of_nice_jobs_with_room_switches_back_to_idle():
    r = Router(starved=True)
    switched = [r.nice_job(0.010, 0.001, now=2.0) for _ in range(int(ROOM_WINDOW / 0.010) + 1)]
    assert switched.count(True) == 1 and not r.starved and r.switches == {"nice": 0, "idle": 1}


def test_a_nice_job_that_ends_after_the_switch_back_decides_nothing():
    r = Router()
    assert not r.nice_job(1.0, 0.0, now=1.0)
    assert not r.starved and r.switches["idle"] == 0


def nice_window(r: Router, now: float) -> int:
    """Nice jobs with room until the router goes back to idle; how many it took."""
    n = 0
    while r.starved:
        n += 1
        r.nice_job(0.010, 0.0, now)
    return n


def test_starving_again_soon_after_a_return_doubles_the_window_and_a_calm_spell_resets_it():
    """A load that starves idle threads yet leaves nice ones room must not make the pool flap."""
    r = Router()
    now = 100.0
    r.idle_job(0.05, 0.05, now)
    first = nice_window(r, now)
    windows = []
    for _ in range(8):                      # starves again 1 s after each return
        now += 1.0
        r.idle_job(0.05, 0.05, now)
        windows.append(r.window)
        nice_window(r, now)
    assert windows[:3] == [2 * ROOM_WINDOW, 4 * ROOM_WINDOW, 8 * ROOM_WINDOW]
    assert max(windows) == windows[-1] == MAX_WINDOW
    now += CALM + 1.0                       # then idle held for longer than CALM
    r.idle_job(0.05, 0.05, now)
    assert r.window == ROOM_WINDOW and nice_window(r, now) == first


# --- the pool's threads ---------------------------------------------------------------------------

def test_auto_makes_an_idle_set_and_a_nice_set_and_the_loop_stays_as_it_is():
    here = nice_of(threading.get_native_id())
    p = workers.pool(2, 10, "auto")
    assert isinstance(p, AutoPool) and p is workers.pool(2, 10, "auto")
    for tid in thread_ids(p.idle, 2):
        assert os.sched_getscheduler(tid) == os.SCHED_IDLE
    for tid in thread_ids(p.nice, 2):
        assert os.sched_getscheduler(tid) == os.SCHED_OTHER and nice_of(tid) == min(19, here + 10)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER and nice_of(threading.get_native_id()) == here
    watchdog = p._watchdog.native_id        # it must not starve with the idle threads it watches
    assert watchdog is not None and os.sched_getscheduler(watchdog) == os.SCHED_OTHER and nice_of(watchdog) == here
    assert workers.auto_pools() == [p]


def policy_and_nice() -> tuple[int, int]:
    return os.sched_getscheduler(0), nice_of(threading.get_native_id())


def test_jobs_go_where_the_router_says():
    here = nice_of(threading.get_native_id())
    p = workers.pool(1, 10, "auto")
    p.router.starved = False
    assert p.submit(policy_and_nice).result(timeout=30)[0] == os.SCHED_IDLE
    p.router.starved = True
    assert p.submit(policy_and_nice).result(timeout=30) == (os.SCHED_OTHER, min(19, here + 10))


def test_without_schedstat_auto_is_nice(monkeypatch):
    """A kernel that does not report run delay (no CONFIG_SCHED_INFO): nothing to route by, so the
    scans run where they cannot starve."""
    monkeypatch.setattr(autopool, "run_delay", lambda tid: None)
    p = workers.pool(2, 10, "auto")
    assert p is not None and not isinstance(p, AutoPool)
    assert all(os.sched_getscheduler(t) == os.SCHED_OTHER for t in thread_ids(p, 2))


def test_the_kernel_is_read_per_tick_not_per_job(monkeypatch):
    """Hundreds of short idle jobs (a benign download's chunks): the run delay is read by the
    watchdog's ticks, at most once per thread per tick, not twice per job (that cost ~8 % of the
    sidecar's CPU per byte)."""
    reads = []
    real = autopool.run_delay
    monkeypatch.setattr(autopool, "run_delay", lambda tid: reads.append(tid) or real(tid))
    p = workers.pool(2, 10, "auto")
    t = time.perf_counter()
    for _ in range(500):
        assert p.submit(sum, [1, 2]).result(timeout=30) == 3
    ticks = (time.perf_counter() - t) / autopool.WATCH_EVERY + 2
    assert len(reads) <= 2 * ticks and not p.starved


def test_a_job_that_fails_still_reaches_its_caller():
    p = workers.pool(1, 10, "auto")
    with pytest.raises(ZeroDivisionError):
        p.submit(lambda: 1 / 0).result(timeout=30)
    assert p.submit(sum, [1, 2]).result(timeout=30) == 3


# --- a real saturation ----------------------------------------------------------------------------

@contextmanager
def busy(n: int) -> Iterator[None]:
    """``n`` processes spinning at nice 0 in this process's scheduling group, running when it yields."""
    procs = [subprocess.Popen([sys.executable, "-c", "print(1, flush=True)\nwhile 1: pass"], stdout=subprocess.PIPE)
             for _ in range(n)]
    try:
        for pr in procs:
            assert pr.stdout is not None and pr.stdout.readline().strip() == b"1"
        yield
    finally:
        for pr in procs:
            pr.kill()
            pr.wait()


def hashing(data: bytes) -> tuple[int, bytes]:
    """CPU work that lets the GIL go (hashlib does for large inputs), as a scan in the compiled core."""
    return os.sched_getscheduler(0), hashlib.sha256(data).digest()


def saturated_switch(p: AutoPool) -> tuple[int, "object"]:
    """Under a real saturation: an idle job that starves, the watchdog's switch while it runs, and
    the next job on a nice thread. The starved job's thread id and future."""
    data = os.urandom(1 << 20)
    assert p.submit(hashing, data).result(timeout=30)[0] == os.SCHED_IDLE        # the cores have room
    assert not p.starved
    tids: list[int] = []
    big = data * 64             # 64 MiB: ~0.15 CPU-s, for a starved thread seconds (made here: the job must
    with busy(workers.cores() + 1):     # not hold the GIL while starved, or this thread waits with it)
        starving = p.submit(lambda: tids.append(threading.get_native_id()) or hashing(big))
        with p._lock:                               # the watchdog's verdict, while the job still runs
            assert p._lock.wait_for(lambda: p.router.starved, timeout=60)
        assert not starving.done()
        assert p.submit(hashing, data).result(timeout=60)[0] == os.SCHED_OTHER
    assert starving.result(timeout=120)[1] == hashlib.sha256(big).digest()
    assert p.router.switches["nice"] == 1
    return tids[0], starving


def test_starved_idle_threads_send_the_next_job_to_a_nice_thread_before_the_starved_one_ends():
    p = workers.pool(1, 10, "auto")
    tid, _ = saturated_switch(p)
    if os.geteuid() == 0:               # CAP_SYS_NICE: the starved thread itself was moved up meanwhile
        assert tid in p._promoted and os.sched_getscheduler(tid) == os.SCHED_OTHER
        assert nice_of(tid) == min(19, nice_of(threading.get_native_id()) + 10)
    p.router.starved = False            # as a window of nice jobs with room would say
    assert p.submit(hashing, b"x").result(timeout=30)[0] == os.SCHED_IDLE        # demoted again, at its next job
    assert os.sched_getscheduler(tid) == os.SCHED_IDLE and not p._promoted


def test_without_the_privilege_the_starved_job_stays_idle_and_the_next_ones_move(monkeypatch):
    """An OS that refuses to take a thread off SCHED_IDLE (no CAP_SYS_NICE, the usual container):
    the switch still happens; only the job already running ends at the idle pace."""
    real = os.sched_setscheduler

    def refuse_leaving_idle(tid: int, policy: int, param: os.sched_param) -> None:
        if policy != os.SCHED_IDLE:
            raise PermissionError(1, "Operation not permitted")
        real(tid, policy, param)
    monkeypatch.setattr(os, "sched_setscheduler", refuse_leaving_idle)
    p = workers.pool(1, 10, "auto")
    tid, _ = saturated_switch(p)
    assert not p._promoted and not p._may_promote and os.sched_getscheduler(tid) == os.SCHED_IDLE


# --- through the session, and the metrics ----------------------------------------------------------

async def test_a_session_scans_on_the_auto_pool_by_default(make):
    s = make()
    assert s.config.scan_sched == "auto"
    ses = ExchangeSession(s, tap="proxy", method="GET", scheme="http", host="site.example", target="/x.csv",
                          peer="10.0.0.1", headers={})
    assert isinstance(ses.pool, AutoPool)
    ses.on_request()
    ses.on_response(200, {"Content-Type": "text/csv"})
    assert (await ses.feed(DENSE)).action == FORWARD
    # idle threads unless the (possibly busy) test machine starved one of this test's jobs
    assert await ses._off(os.sched_getscheduler, 0) in (os.SCHED_IDLE, os.SCHED_OTHER)
    end = await ses.end()
    assert end.action == FORWARD and ses.result is not None and ses.result.records == 2_000
    ses.close(True)


def scrape(m: Metrics) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in generate_latest(m.registry).decode().splitlines()
            if line.startswith(("dlp_scan_threads_starved", "dlp_scan_sched_switches"))}


def test_the_metrics_say_where_the_scans_run_and_how_often_that_changed():
    m = Metrics()
    assert scrape(m) == {"dlp_scan_threads_starved": 0.0, 'dlp_scan_sched_switches_total{to="nice"}': 0.0,
                         'dlp_scan_sched_switches_total{to="idle"}': 0.0}
    p = workers.pool(1, 10, "auto")
    with p._lock:
        p.router.idle_job(0.05, 0.05, now=1.0)
    assert scrape(m) == {"dlp_scan_threads_starved": 1.0, 'dlp_scan_sched_switches_total{to="nice"}': 1.0,
                         'dlp_scan_sched_switches_total{to="idle"}': 0.0}
    with p._lock:
        nice_window(p.router, now=2.0)
    assert scrape(m) == {"dlp_scan_threads_starved": 0.0, 'dlp_scan_sched_switches_total{to="nice"}': 1.0,
                         'dlp_scan_sched_switches_total{to="idle"}': 1.0}
    with p._lock:
        p.router.idle_job(0.05, 0.05, now=3.0)
    assert scrape(m)["dlp_scan_threads_starved"] == 1.0
    # a reload to another policy: the pool left behind keeps its state, the gauge follows the new one;
    # the switches of both still add up (a counter never goes down)
    workers.pool(1, 10, "nice")
    assert scrape(m) == {"dlp_scan_threads_starved": 0.0, 'dlp_scan_sched_switches_total{to="nice"}': 2.0,
                         'dlp_scan_sched_switches_total{to="idle"}': 1.0}
