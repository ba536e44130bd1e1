"""Scan work off the event loop: one thread pool per process, sized to the cores.

Why threads: each exchange's scanner is a stateful object (open Hyperscan streams, records in
progress) that cannot be handed to another process per chunk; a thread can run it while the loop
keeps moving other clients' bytes. Hyperscan releases the GIL while it scans, and the compiled
core (issue 19, point 1) releases it for the whole chunk, so the pool is where that work lands.

What the GIL still costs: the hyperscan 0.9.1 wheel calls back into Python on every match and the
per-match work of the Python scanner is interpreted, so a dense scan in a thread holds the GIL
most of the time. The loop then waits up to the interpreter's switch interval (5 ms by default)
each time it wants the GIL back, i.e. after every socket call: a 10 KiB proxied request makes a
dozen of those. While scans run, the switch interval is lowered to :data:`SCAN_SWITCH_INTERVAL`
(bench/latency.py measures the effect) and restored when the last one ends.

What the scheduler costs: on a host with two cores a dense scan keeps one core busy, and the event
loop shares the other with the load balancer, the upstream and the clients. At equal priority a
woken loop thread can wait a scheduler slice (milliseconds) behind a running scan thread: with a
scan that holds no GIL at all, other clients' 10 KiB p99 stayed near 8 ms (bench/latency.py's
stand-in). Scan threads therefore run below the loop, set on each pool thread as it starts (Linux
scheduling attributes are per thread), in one of three ways (``scan_sched``):

- ``auto`` (the default): an idle set and a nice set of threads, each job routed to the idle set
  unless the idle threads were measured starved (:mod:`sensor.exchange.autopool`): the latency of
  ``idle`` while the cores have room, the progress of ``nice`` when they do not.
- ``nice``: ``scan_nice`` steps below the loop (10: a scheduler weight of 110 against the loop's
  1024). The scheduler still weighs a scan against a woken loop, so the loop may wait a little.
- ``idle``: SCHED_IDLE (weight 3, and a woken normal thread pre-empts it at once): the scans get
  the CPU nobody else wants. The catch is the GIL: a scan thread that holds it and is then
  starved, because other processes of its scheduling group keep the cores busy, keeps the loop
  waiting for as long as it is starved: a priority inversion. Measured (docs/benchmarks.md, latency)
  with two busy processes beside the sidecar: other clients' 10 KiB p99 ~1.2 s under ``idle``
  against 0.16-0.50 s under ``nice`` while the scan held the GIL for up to ~8 ms at a time; with
  the holds cut to ~1 ms (session 16: bench/latency.py --holds) 58-111 ms against 24-26 ms, and
  the downloads 6-30x slower under ``idle``. With CPU to spare ``idle`` wins ~1.5 ms of p99 (4.4-4.8
  against 5.6-6.1 ms: the 5 ms target). Hence ``auto``.

The price, by design: when the cores are saturated, scans get what is left, so a monitored or an
enforced download (which moves at its scan's pace) slows down but still moves (bench/latency.py
--saturate prints its MB/s), while the loop, which serves every other client, comes first. Both
policies rank a thread only against the threads of its own scheduling group: with autogroup (a
session) or a container's cgroup, a busy process in another group takes its group's share, not
the scans'.

What compiled code costs: code that holds the GIL without running Python never reaches the
interpreter's switch check, so the switch interval does not bound it. The compiled core therefore
lets the GIL go itself (the libhs scan and the per-match walk run without it; the records the walk
could not finish are finished in one batch with it: sensor/detect/_hscore.pyx process), and chunks
go to the scanner whole. Slicing them
(:data:`SCAN_PIECE`) is kept as a bench knob: it cost ~2.5 % of benign throughput.

Order: a session has one job at a time in flight and awaits it before the next (see
ExchangeSession._off and its monitor read-ahead), so the chunks of one exchange are scanned in
order, one at a time, on the thread that went idle last (:class:`LastIdlePool`: the same thread,
chunk after chunk, unless it is busy with another exchange's): every Hyperscan call takes the
calling thread's scratch (sensor.detect.scratch).
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("dlp_sensor.workers")

# Seconds. 5 ms (CPython's default) lets a busy scan thread keep the loop waiting ~5 ms per socket
# call; bench/latency.py compares values in one run. Overridable for that bench only.
SCAN_SWITCH_INTERVAL = float(os.environ.get("DLP_SCAN_SWITCH_INTERVAL", "0.0002"))

# Bytes. A body no larger than this (as sent, not inflated) is scanned on the loop: handing it to a
# thread and back costs more than scanning it. bench/latency.py compares values in one run.
INLINE_BYTES = int(os.environ.get("DLP_SCAN_INLINE_BYTES", str(16 << 10)))

# ``scan_sched`` values: how the scan threads run below the event loop (see lower_priority).
SCHEDS = ("auto", "nice", "idle")

# Bytes. A chunk handed to a scan job is written to the scanner in slices of at most this size.
# Compiled code that holds the GIL never reaches the interpreter's switch check; between two slices
# the thread runs Python again, where a waiting event loop gets the GIL within the switch interval.
# The slice bounds how long one call can keep the loop waiting. bench/latency.py --lag-only compares.
# 0 (the default): whole chunks, since the compiled core lets the GIL go on its own.
SCAN_PIECE = int(os.environ.get("DLP_SCAN_PIECE_BYTES", "0"))

# glibc malloc arenas the process may have (0: glibc's default, 8 per core). See cap_arenas.
MALLOC_ARENA_MAX = int(os.environ.get("DLP_MALLOC_ARENA_MAX", "1"))
M_ARENA_MAX = -8                # glibc's mallopt parameter number (malloc.h)

_POOLS: dict[tuple[int, int, str], Executor] = {}
_LOCK = threading.Lock()
_running = 0
_default_switch = sys.getswitchinterval()    # the process's, as it was when the first scan started


def cores() -> int:
    """The CPUs this process may run on (taskset and cpusets count; not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def size_of(setting: int | None) -> int:
    """``scan_workers`` as configured: None = one thread per core, 0 = scans run on the loop."""
    return cores() if setting is None else setting


def lower_priority(nice: int, sched: str = "nice") -> None:
    """Put the calling thread below the event loop: SCHED_IDLE for ``sched`` "idle", else ``nice``
    steps down (Linux: both are per thread). Runs once in each pool thread as it starts. Undoing
    either needs a privilege (or RLIMIT_NICE), so a pool keeps its threads' policy for life: a
    reload to another value makes a new pool (see :func:`pool`).
    A refusal (no such call on this platform, a seccomp policy) is logged once: the scans then
    run at the loop's priority, which is slower for the loop but not wrong."""
    if sched == "nice" and nice <= 0:
        return
    try:
        tid = threading.get_native_id()
        if sched == "idle":
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except (AttributeError, OSError) as e:
        global _warned
        if not _warned:
            _warned = True
            log.warning("scan threads run at the event loop's priority (scan_sched %s not applied: %s)",
                        sched, type(e).__name__)


_warned = False


def cap_arenas(limit: int = MALLOC_ARENA_MAX) -> bool:
    """Cap glibc's malloc arenas; True when applied. Called when this module is imported, i.e. as
    the sidecar starts, before the scan threads (or most others) have allocated anything.

    Why: glibc gives each new thread an arena of its own (up to 8 per core), and a scan thread
    allocates as it scans (Hyperscan stream state, the compiled core's hit array, the scanner's
    records), so each exchange left memory in a scan thread's arena besides the loop's heap. With
    200 slow enforce downloads in flight that was +35 KiB resident per exchange in the thread
    arenas (bench/exchange_memory.py --smaps; 169 KiB per exchange against 129 with one arena and
    130 with scans on the loop, one round, loaded machine). One arena: the scan threads share the
    loop's. What it may cost: contention on that arena's lock; the scan threads spend their time in
    Hyperscan and the compiled core, which do not allocate per match, and Python objects come from
    pymalloc under the GIL. An operator's own ``MALLOC_ARENA_MAX`` (read by glibc at start) wins:
    nothing is changed then; ``DLP_MALLOC_ARENA_MAX=0`` keeps glibc's default. Not glibc: no-op.
    A cap set after a thread got its own arena does not take that arena back (glibc reuses the
    existing ones): hence at import, not when the pool starts."""
    if limit <= 0 or "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        return bool(ctypes.CDLL(None).mallopt(M_ARENA_MAX, limit))
    except (OSError, AttributeError):                   # no mallopt in this libc (musl)
        return False


ARENAS_CAPPED = cap_arenas()


def pool(setting: int | None, nice: int = 0, sched: str = "nice") -> Executor | None:
    """The process's pool for ``scan_workers`` (shared by every exchange and tap), its threads
    below the loop's priority as ``sched`` and ``nice`` say (:func:`lower_priority`; ``auto``: an
    :class:`~sensor.exchange.autopool.AutoPool` of idle and ``nice`` threads, or ``nice`` threads
    where the kernel cannot tell a starved thread), or None when scans run on the event loop. A
    reload to another size or policy makes a new pool for new exchanges; the old one's threads
    stay idle."""
    if sched not in SCHEDS:         # the config refuses it first; a bad value here is a caller's bug
        raise ValueError(f"scan_sched must be one of {', '.join(SCHEDS)}, not {sched!r}")
    n = size_of(setting)
    if n <= 0:
        return None
    if sched == "idle":
        nice = 0                        # not used under SCHED_IDLE: a change of scan_nice keeps the pool
    if sched == "auto":
        from sensor.exchange import autopool
        if not autopool.judgeable():
            sched = "nice"
    key = (n, nice, sched)
    with _LOCK:
        p = _POOLS.get(key)
        if p is None:
            if sched == "auto":
                p = autopool.AutoPool(n, nice)
            else:
                p = LastIdlePool(n, thread_name_prefix="dlp-scan", initializer=lower_priority,
                                 initargs=(nice, sched))
            _POOLS[key] = p
        global _current
        _current = p
        return p


_current: Executor | None = None        # the pool pool() returned last: the configuration's now


def auto_pools() -> list[Any]:
    """The ``scan_sched: auto`` pools of this process (for the metrics: their switches add up)."""
    from sensor.exchange.autopool import AutoPool
    with _LOCK:
        return [p for p in _POOLS.values() if isinstance(p, AutoPool)]


def scans_starved() -> bool:
    """Whether the scans run now on a starved auto pool's nice threads. Only the configuration's
    pool counts: a pool left behind by a reload keeps its last state and gets no more jobs."""
    from sensor.exchange.autopool import AutoPool
    p = _current
    return isinstance(p, AutoPool) and p.starved


_STOP = object()


class LastIdlePool(Executor):
    """A fixed pool of ``n`` threads that hands each job to the thread that went idle last.

    Why not ``ThreadPoolExecutor``: its idle threads all wait on one queue, and a job wakes any of
    them, so the consecutive chunks of one download were scanned on alternate threads (and CPUs):
    the exchange's Hyperscan stream state, the scanner's records and the thread's scratch changed
    caches on every chunk. Here the thread that just scanned chunk N is the one chunk N+1 goes to
    whenever it is idle (it is, for one download: one job at a time per exchange), and another idle
    thread takes a job only when that one is busy. Measured (100 MB monitor download, MB per
    sidecar CPU-second, 7-8 alternated rounds, loaded 2-core VM): ``scan_workers: 1`` was 1.04-1.05x
    two ThreadPoolExecutor threads, and this pool with two threads 1.034x: one thread's cost per
    chunk, and still both threads for concurrent exchanges.

    Threads start with the pool (``initializer`` runs in each, as it starts: lower_priority), and
    are joined at interpreter exit as ``ThreadPoolExecutor``'s are (non-daemon, after the jobs
    already submitted)."""

    def __init__(self, n: int, thread_name_prefix: str = "pool", initializer: Callable[..., Any] | None = None,
                 initargs: tuple = ()):
        if n <= 0:
            raise ValueError("a pool needs at least one thread")
        self._lock = threading.Lock()
        self._idle: list[_Slot] = []            # parked threads, the one idle last at the end
        self._backlog: deque = deque()          # jobs submitted while every thread was busy
        self._shut = False
        self._threads: list[threading.Thread] = []
        _register_atexit(self._at_exit)         # first: parked threads nobody joins would hang the exit
        for i in range(n):
            slot = _Slot()
            t = threading.Thread(target=self._work, args=(slot, initializer, initargs),
                                 name=f"{thread_name_prefix}_{i}")
            self._threads.append(t)
            t.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> "Future[T]":
        f: Future[T] = Future()
        self._hand((f, fn, args, kwargs))
        return f

    def _hand(self, item: object) -> None:
        with self._lock:
            if self._shut and item is not _STOP:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._idle:
                slot = self._idle.pop()
                slot.item = item
                slot.wake.release()
            else:
                self._backlog.append(item)

    def _work(self, slot: "_Slot", initializer: Callable[..., Any] | None, initargs: tuple) -> None:
        if initializer is not None:
            try:
                initializer(*initargs)
            except Exception:                   # the thread still serves (lower_priority logs its own refusals)
                log.exception("scan pool thread initializer failed")
        with self._lock:
            self._idle.insert(0, slot)          # not yet the "last idle" of anyone
            item = self._backlog.popleft() if self._backlog else None
            if item is not None:
                self._idle.remove(slot)
        while True:
            if item is None:
                slot.wake.acquire()             # parked until _hand gives it a job
                item, slot.item = slot.item, None
            if item is _STOP:
                return
            f, fn, args, kwargs = item          # type: ignore[misc]
            del item
            if f.set_running_or_notify_cancel():
                try:
                    value = fn(*args, **kwargs)
                except BaseException as e:      # noqa: BLE001 - the future carries it
                    f.set_exception(e)
                else:
                    f.set_result(value)
            del f, fn, args, kwargs
            with self._lock:
                if self._backlog:
                    item = self._backlog.popleft()
                else:
                    item = None
                    self._idle.append(slot)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._shut:
                stop = False
            else:
                self._shut = stop = True
                if cancel_futures:
                    while self._backlog:
                        item = self._backlog.popleft()
                        if item is not _STOP:
                            item[0].cancel()
        if stop:
            for _ in self._threads:
                self._hand(_STOP)               # after the jobs already submitted
        if wait:
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join()

    def _at_exit(self) -> None:
        self.shutdown(wait=True)


class _Slot:
    """One thread's mailbox: ``wake`` is held while it is parked and released to hand it ``item``."""
    __slots__ = ("wake", "item")

    def __init__(self) -> None:
        self.wake = threading.Lock()
        self.wake.acquire()
        self.item: object = None


def _register_atexit(fn: Callable[[], None]) -> None:
    """Join the pool before the interpreter finalizes, as concurrent.futures does for its pools
    (threading's hook runs before non-daemon threads are joined; atexit would run after)."""
    hook = getattr(threading, "_register_atexit", None)
    if hook is not None:
        try:
            hook(fn)
        except RuntimeError as e:               # the interpreter is already shutting down
            raise RuntimeError("cannot start a scan pool after interpreter shutdown") from e
        return
    import atexit
    atexit.register(fn)


def in_pieces(write: Callable[[bytes], T], data: bytes, piece: int = 0) -> T:
    """``write(data)`` as consecutive slices of at most ``piece`` bytes (:data:`SCAN_PIECE` by
    default); the value of the last call. A scanner keeps its state across writes (streams, records
    in progress), so slicing changes nothing it finds; its verdict after the last slice is the one
    after the whole chunk."""
    piece = piece or SCAN_PIECE
    if len(data) <= piece or piece <= 0:
        return write(data)
    value = write(data[:piece])
    for i in range(piece, len(data), piece):
        value = write(data[i:i + piece])
    return value


def submit(executor: Executor, fn: Callable[..., T], *args: Any) -> "asyncio.Future[tuple[T, float]]":
    """``timed(fn, *args)`` in ``executor``, as an asyncio future of the running loop: (its value,
    the seconds it took there). Call on the event loop.

    Why not ``loop.run_in_executor``: that chains two futures (the pool's and the loop's) with a
    done-callback on each, and the pool's future takes its condition lock on every state change;
    a scan job is submitted per 256 KiB chunk (400 per 100 MB), so the job here sets the loop's
    future itself, with one ``call_soon_threadsafe`` (the same single wake-up of the loop), and
    the pool's own future is left unobserved. Cancelling the returned future does not stop the job
    (callers shield it anyway: a scan, once started, is the job's until it returns)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[tuple[T, float]] = loop.create_future()

    def job() -> None:
        try:
            value = timed(fn, *args)
        except BaseException as e:      # noqa: BLE001 - handed to the awaiting coroutine, on the loop
            _settle(loop, fut, None, e)
        else:
            _settle(loop, fut, value, None)

    executor.submit(job)
    return fut


def _settle(loop: asyncio.AbstractEventLoop, fut: asyncio.Future, value: Any, error: BaseException | None) -> None:
    """From a pool thread: the job's outcome onto ``fut``, on its loop (dropped if the loop is closed:
    nobody is left to read it)."""
    try:
        loop.call_soon_threadsafe(_set, fut, value, error)
    except RuntimeError:                # the loop closed while the job ran (shutdown)
        pass


def _set(fut: asyncio.Future, value: Any, error: BaseException | None) -> None:
    if fut.done():                      # cancelled meanwhile (callers shield, but a bare await may not)
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


def timed(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    """Run ``fn(*args)`` in a worker: (its value, the seconds it took there, not queued). The switch
    interval is lowered while any scan runs."""
    global _running, _default_switch
    with _LOCK:
        _running += 1
        if _running == 1 and SCAN_SWITCH_INTERVAL > 0:
            # read now, not at import: serve_forever sets its own (0.5 ms) after the imports, and
            # restoring CPython's 5 ms would undo it after the first scan
            _default_switch = sys.getswitchinterval()
            sys.setswitchinterval(SCAN_SWITCH_INTERVAL)
    t = time.perf_counter()
    try:
        return fn(*args), time.perf_counter() - t
    finally:
        with _LOCK:
            _running -= 1
            if _running == 0 and SCAN_SWITCH_INTERVAL > 0:
                sys.setswitchinterval(_default_switch)
