"""``scan_sched: auto``: scans on SCHED_IDLE threads while they get the CPU, on nice threads while
they do not.

Why two policies (bench/latency.py, docs/benchmarks.md latency): with CPU to spare, SCHED_IDLE scan
threads cost other clients' 10 KiB requests the least (p99 4.4-4.6 ms during a dense leak, against
5.6-5.8 ms with the scans ``scan_nice`` 10 steps down): a core that runs only SCHED_IDLE work counts
as idle for a waking thread, which is placed there and pre-empts the scan at once. A nice level, or
a shorter EEVDF slice for the scans (sched_setattr's ``sched_runtime``, 100 us: 6.4 ms) does not do
that. But when other processes of the sidecar's scheduling group saturate the cores, SCHED_IDLE
threads get almost nothing (weight 3 against 1024): scanned downloads crawl (0.16 against 5.1 MB/s)
and a starved scan thread that holds the GIL keeps the loop waiting (p99 111 against 26 ms).

Why two sets of threads rather than one that changes policy: leaving SCHED_IDLE needs a privilege
(CAP_SYS_NICE, or an RLIMIT_NICE that containers do not grant), so a thread cannot be put back
once idle. Jobs are routed instead: to the idle threads unless the scans are starved, then to the
nice ones until the cores have room again.

How "starved" is measured: the share of a thread's busy time it spent runnable but waiting for a
CPU (``run_delay`` in /proc/self/task/<tid>/schedstat). Waiting for the GIL or for I/O is sleeping,
not runnable, so a busy event loop does not count as a starved core. A watchdog thread looks at the
idle threads every :data:`WATCH_EVERY` seconds while idle jobs come: one busy with the same job at
two looks in a row whose run-delay share between them passes :data:`STARVED` switches the pool to
the nice threads (a starved job may not end for seconds; the next jobs must not follow it). The
nice threads tally their jobs' time and read their run delay at most every :data:`WATCH_EVERY`; a
share under :data:`ROOM` over at least :data:`ROOM_WINDOW` seconds of nice jobs (a short job often
runs uncontended between two of a busy process's slices) switches the pool back; a return that
starves again within :data:`CALM` seconds doubles that window (up to :data:`MAX_WINDOW`), so a load
that starves idle threads but leaves nice ones some room does not make the pool flap.

The job already running on a starved idle thread cannot move to another thread; where the OS lets
a thread leave SCHED_IDLE (CAP_SYS_NICE), the thread itself is moved to the nice policy at the
switch and back to SCHED_IDLE at its next idle job; elsewhere that one chunk of the exchange ends
at the idle pace (see :meth:`AutoPool._promote`).

Without schedstat (no CONFIG_SCHED_INFO, another OS), nothing can be judged and jobs stay on the
idle threads: :func:`sensor.exchange.workers.pool` then gives ``nice`` threads instead.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sensor.exchange.workers import LastIdlePool, lower_priority

log = logging.getLogger("dlp_sensor.workers")

# Measured with bench/latency.py (unsaturated, during the dense leak, 2,333 idle jobs): the run-delay
# share of idle jobs p50 0.02, p99 0.24, max 0.63; saturated by two busy processes: 0.83-0.99, and
# 0.67-0.94 for most nice jobs, yet some short ones 0.00.
STARVED = 0.8           # run-delay share of an idle job's wall time past which the scans are starved
ROOM = 0.25             # run-delay share of the nice jobs' wall time under which the cores have room
ROOM_WINDOW = 0.25      # seconds of nice jobs' wall time summed before they are judged
MAX_WINDOW = 8.0        # seconds: the longest that window grows to (see CALM)
CALM = 10.0             # seconds: starving again sooner than this after a return doubles the window
JUDGE_AFTER = 0.002     # seconds: a shorter idle job is too short to say anything
WATCH_EVERY = 0.02      # seconds between the watchdog's looks at idle jobs in flight
PARK_AFTER = 1.0        # seconds without a new idle job after which the watchdog stops looking


def run_delay(tid: int) -> int | None:
    """Nanoseconds thread ``tid`` of this process has spent runnable, waiting for a CPU; None when the
    kernel does not say (no schedstat)."""
    try:
        return int(Path(f"/proc/self/task/{tid}/schedstat").read_bytes().split()[1])
    except (OSError, IndexError, ValueError):
        return None


def judgeable() -> bool:
    """Whether this kernel reports the run delay that :class:`AutoPool` routes by."""
    return run_delay(threading.get_native_id()) is not None


@dataclass
class Router:
    """Which threads the next job goes to, from what the jobs measured (seconds of wall time, of
    which seconds waiting for a CPU). Not thread-safe: :class:`AutoPool` holds its lock."""
    starved: bool = False
    window: float = ROOM_WINDOW
    switches: dict[str, int] = field(default_factory=lambda: {"nice": 0, "idle": 0})
    _wall: float = 0.0
    _delay: float = 0.0
    _back_at: float = -math.inf

    def idle_job(self, wall: float, delay: float, now: float) -> bool:
        """An idle job that ended, or is still running; True when it switches the pool to nice."""
        if self.starved or wall < JUDGE_AFTER or delay <= STARVED * wall:
            return False
        self.starved = True
        self.switches["nice"] += 1
        self._wall = self._delay = 0.0
        self.window = min(2 * self.window, MAX_WINDOW) if now - self._back_at < CALM else ROOM_WINDOW
        return True

    def nice_job(self, wall: float, delay: float, now: float) -> bool:
        """A nice job that ended; True when the nice jobs since the switch say the cores have room."""
        if not self.starved:
            return False                # submitted before a switch back to idle: nothing to decide
        self._wall += wall
        self._delay += delay
        if self._wall < self.window:
            return False
        room = self._delay < ROOM * self._wall
        self._wall = self._delay = 0.0
        if room:
            self.starved = False
            self.switches["idle"] += 1
            self._back_at = now
        return room


class AutoPool(Executor):
    """An executor of two thread sets, ``idle`` (SCHED_IDLE) and ``nice`` (``nice`` steps down),
    each job going where :class:`Router` says (see the module's docstring).

    What it costs a job: two clock reads and a dict entry. The kernel's counters are read by the
    watchdog (the idle threads' jobs in flight, every :data:`WATCH_EVERY` while jobs come) and, on
    the nice threads, at most every :data:`WATCH_EVERY` per thread at a job's end: reading them
    twice per job, and waking the watchdog per job, cost ~8 % of the sidecar's CPU per byte on a
    100 MB benign download (hundreds of jobs; bench/proxy.py --sched)."""

    def __init__(self, n: int, nice: int) -> None:
        self.idle = LastIdlePool(n, thread_name_prefix="dlp-scan-idle", initializer=lower_priority,
                                 initargs=(0, "idle"))
        self.nice = LastIdlePool(n, thread_name_prefix="dlp-scan", initializer=lower_priority,
                                 initargs=(nice, "nice"))
        self.router = Router()
        self._lock = threading.Condition()
        self._seq = itertools.count()
        self._busy: dict[int, int] = {}         # idle thread's tid -> its job's number, while it runs one
        self._last_job = -math.inf              # when an idle job last started (the watchdog parks after PARK_AFTER)
        self._parked = False
        self._marks: dict[int, tuple[float, float, int]] = {}   # nice tid -> (job wall since, mark time, run delay)
        self._nice_steps = nice
        self._promoted: set[int] = set()        # idle threads moved to the nice policy by _promote
        self._may_promote = True                # until the OS refuses once
        self._closed = False
        # started here, by the thread that makes the pool (the loop's), not by a scan thread: a thread
        # inherits its creator's policy, and a SCHED_IDLE watchdog would starve with what it watches
        self._watchdog = threading.Thread(target=self._watch, name="dlp-scan-watchdog", daemon=True)
        self._watchdog.start()

    @property
    def starved(self) -> bool:
        return self.router.starved

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        if self.router.starved:
            return self.nice.submit(self._run_nice, fn, *args, **kwargs)
        return self.idle.submit(self._run_idle, fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self.idle.shutdown(wait, cancel_futures=cancel_futures)
        self.nice.shutdown(wait, cancel_futures=cancel_futures)

    def _run_idle(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        tid = threading.get_native_id()
        if tid in self._promoted:               # moved up while starved (_promote): back to SCHED_IDLE
            self._promoted.discard(tid)
            lower_priority(0, "idle")
        self._busy[tid] = next(self._seq)
        self._last_job = time.perf_counter()
        if self._parked:                        # read after _busy is set: see _watch
            with self._lock:
                self._lock.notify_all()
        try:
            return fn(*args, **kwargs)
        finally:
            del self._busy[tid]

    def _run_nice(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self._nice_done(threading.get_native_id(), start, time.perf_counter())

    def _nice_done(self, tid: int, start: float, now: float) -> None:
        """Add a nice job's wall time to its thread's tally; past WATCH_EVERY since the thread's last
        mark, read its run delay and hand the tally to the router."""
        wall, at, delay = self._marks.get(tid, (0.0, -math.inf, -1))
        wall += now - start
        if now - at < WATCH_EVERY and delay >= 0:
            self._marks[tid] = (wall, at, delay)
            return
        later = run_delay(tid)
        if later is None:
            return
        self._marks[tid] = (0.0, now, later)
        if delay >= 0:                          # the first mark only starts the tally
            with self._lock:
                self._judge(False, wall, (later - delay) / 1e9, now)

    def _judge(self, on_idle: bool, wall: float, delay: float, now: float) -> None:
        """One measurement to the router (the lock held)."""
        if (self.router.idle_job if on_idle else self.router.nice_job)(wall, delay, now):
            self._lock.notify_all()
            if self.router.starved:
                self._promote()
            log.debug("scan jobs go to the %s threads (a job waited for a CPU %.0f%% of %.1f ms)",
                      "nice" if self.router.starved else "idle", 100 * delay / wall, 1e3 * wall)

    def _promote(self) -> None:
        """Move the idle threads busy now to the nice threads' policy, so that the jobs they are
        stuck in end at the nice pace, not the idle one. Leaving SCHED_IDLE needs CAP_SYS_NICE (or
        an RLIMIT_NICE that allows the nice level): without it the OS refuses, once, and those jobs
        end at the idle pace (measured: the one slow chunk of an exchange per onset of saturation).
        A promoted thread goes back to SCHED_IDLE at its next idle job."""
        if not self._may_promote:
            return
        for tid in list(self._busy):
            try:
                # the nice level first: an RLIMIT_NICE may allow leaving SCHED_IDLE at it, not above
                os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + self._nice_steps))
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
            except PermissionError:
                self._may_promote = False
                log.debug("a starved scan thread cannot leave SCHED_IDLE here (no CAP_SYS_NICE)")
                return
            except (OSError, AttributeError):   # the thread ended meanwhile; no such call here
                continue
            self._promoted.add(tid)

    def _watch(self) -> None:
        """Every WATCH_EVERY while idle jobs come: an idle thread busy with the same job at two looks
        in a row is judged by the run delay between them. Parks when the pool is starved (no idle
        jobs then) or no idle job started for PARK_AFTER; a job that starts while it is parked wakes
        it (``_parked`` is set before ``_busy`` is read, and a job sets ``_busy`` before it reads
        ``_parked``, so one of the two sees the other)."""
        last: dict[int, tuple[int, float, int]] = {}        # tid -> (job number, when, run delay)
        with self._lock:
            while not self._closed:
                if self.router.starved or (not self._busy and time.perf_counter() - self._last_job > PARK_AFTER):
                    self._parked = True
                    if self.router.starved or not self._busy:
                        self._lock.wait()
                    self._parked = False
                    last.clear()
                    continue
                self._lock.wait(WATCH_EVERY)
                now, seen = time.perf_counter(), {}
                for tid, job in list(self._busy.items()):
                    delay = run_delay(tid)
                    if delay is None:
                        continue
                    seen[tid] = (job, now, delay)
                    before = last.get(tid)
                    if before is not None and before[0] == job:
                        self._judge(True, now - before[1], (delay - before[2]) / 1e9, now)
                last = seen
