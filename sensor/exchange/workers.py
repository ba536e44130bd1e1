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

Order: a session submits one job at a time and awaits it (see ExchangeSession._off), so the
chunks of one exchange are scanned in order, one at a time, possibly on different threads: every
Hyperscan call takes the calling thread's scratch (sensor.detect.scratch).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

# Seconds. 5 ms (CPython's default) lets a busy scan thread keep the loop waiting ~5 ms per socket
# call; bench/latency.py compares values in one run. Overridable for that bench only.
SCAN_SWITCH_INTERVAL = float(os.environ.get("DLP_SCAN_SWITCH_INTERVAL", "0.0002"))

# Bytes. A body no larger than this (as sent, not inflated) is scanned on the loop: handing it to a
# thread and back costs more than scanning it. bench/latency.py compares values in one run.
INLINE_BYTES = int(os.environ.get("DLP_SCAN_INLINE_BYTES", str(16 << 10)))

_POOLS: dict[int, ThreadPoolExecutor] = {}
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


def pool(setting: int | None) -> ThreadPoolExecutor | None:
    """The process's pool for ``scan_workers`` (shared by every exchange and tap), or None when
    scans run on the event loop. A reload to another size makes a new pool for new exchanges; the
    old one's threads stay idle."""
    n = size_of(setting)
    if n <= 0:
        return None
    with _LOCK:
        p = _POOLS.get(n)
        if p is None:
            p = _POOLS[n] = ThreadPoolExecutor(n, thread_name_prefix="dlp-scan")
        return p


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
