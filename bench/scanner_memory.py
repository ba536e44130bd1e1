"""What the scanner keeps per exchange in flight, without a proxy: a quick bisection probe.

``bench/exchange_memory.py`` measures the sidecar's resident set with N slow downloads open (2-3
minutes for three rounds, and everything an exchange holds: hold-back, sockets, session). This
probe isolates the detect side: N :class:`~sensor.pipeline.BodyScan` objects (the proxy's
per-exchange scanner) fed the same bodies as that bench (``clean`` benign web, ``leakish`` with a
work contact block every 16 KiB) a few small chunks each, interleaved as in-flight exchanges are;
then per exchange = VmRSS growth / N and the growth of glibc's allocated bytes (mallinfo2) / N.
Resident growth counts the pages an exchange touched; allocated counts what it asked for.

Each tree runs in a subprocess with PYTHONPATH set to it (``--trees DIR,...``: checkouts with their
compiled core built in place, e.g. ``git worktree add --detach /tmp/b_X X`` then ``python setup.py
build_ext --inplace``); this tree by default. It found issue 19's session-17 regression in a
minute per commit (docs/benchmarks.md, "Memory per in-flight exchange").

    python bench/scanner_memory.py [--trees .,/tmp/b_ab9bce6] [--n 200] [--chunks 16] [--chunk 4096]
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import subprocess
import sys
from pathlib import Path

CONTACT = ("\n<p>Front desk (916) 445-9555, fax (916) 445-9556, press@agency.ca.gov. "
           "1300 I Street, Sacramento, CA 95814.</p>\n").encode()     # as bench/exchange_memory.py's


class _MallInfo2(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _allocated() -> int:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    m = libc.mallinfo2()
    return m.uordblks + m.hblkhd


def probe(body: str, n: int, chunks: int, chunk: int) -> str:
    """One measurement in this process (the tree on sys.path)."""
    from sensor import synth
    from sensor.detect.engine import Engine
    from sensor.detect.pack import load_pack
    from sensor.detect.policy import Policy
    from sensor.pipeline import BodyScan, Exchange

    size = max(2 << 20, chunks * chunk * 2)
    text = synth.benign_web(size)[:size]
    if body == "leakish":
        step = 16 << 10
        text = b"".join(text[i:i + step] + CONTACT for i in range(0, size, step))
    engine = Engine(load_pack())
    try:
        from sensor.detect import core
        compiled = core.core_for(engine) is not None
    except ImportError:                       # a tree before the compiled core (ab9bce6)
        compiled = False
    policy = Policy()
    key = os.urandom(32)

    def one() -> BodyScan:
        return BodyScan(engine, policy, key=key, exchange=Exchange(url="http://origin/a.html",
                                                                   content_type="text/html"))
    warm = one()                              # the engine's tables, the scratch, the first chunk's objects
    warm.write(text[:256 << 10])
    del warm
    gc.collect()
    r0, a0 = _rss_kib(), _allocated()
    scans = [one() for _ in range(n)]
    for c in range(chunks):
        part = text[c * chunk:(c + 1) * chunk]
        for s in scans:
            s.write(part)
    gc.collect()
    r1, a1 = _rss_kib(), _allocated()
    return (f"{body}|{'compiled' if compiled else 'python'}|{(r1 - r0) / n:.1f}|"
            f"{(a1 - a0) / n / 1024:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trees", default=".", help="comma-separated checkouts (compiled core built in place)")
    ap.add_argument("--bodies", default="clean,leakish")
    ap.add_argument("--n", type=int, default=200, help="scanners in flight")
    ap.add_argument("--chunks", type=int, default=16, help="chunks fed to each")
    ap.add_argument("--chunk", type=int, default=4096, help="chunk size (bytes)")
    ap.add_argument("--one", help=argparse.SUPPRESS)           # body: measure in this process
    a = ap.parse_args()
    if a.one:
        print(probe(a.one, a.n, a.chunks, a.chunk))
        return
    here = Path(__file__).resolve()
    rows = []
    for tree in a.trees.split(","):
        d = Path(tree).resolve()
        for body in a.bodies.split(","):
            env = dict(os.environ, PYTHONPATH=str(d))
            out = subprocess.run([sys.executable, str(here), "--one", body, "--n", str(a.n),
                                  "--chunks", str(a.chunks), "--chunk", str(a.chunk)],
                                 env=env, cwd=d, capture_output=True, text=True)
            if out.returncode != 0:
                rows.append((str(d), body, "error", f"rc {out.returncode}", out.stderr.strip()[-80:]))
                continue
            b, core_name, rss, alloc = out.stdout.strip().splitlines()[-1].split("|")
            rows.append((str(d), b, core_name, rss, alloc))
    print(f"\n## Scanner memory per exchange in flight ({a.n} BodyScans, {a.chunks} chunks of {a.chunk} "
          f"bytes each, interleaved)\n")
    print("| tree | body | core | resident KiB / exchange | allocated KiB / exchange |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
