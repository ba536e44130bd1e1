"""Compiled scanning core vs the Python reference vs the raw Hyperscan stream scan, same bytes, same run.

Three rows per corpus, interleaved (raw, compiled, Python; three rounds; medians):
- raw: the same databases (main + gated, Debian libhs, the compiled core's own) through one
  stream each in 64 KiB calls, no callback: the engine ceiling;
- compiled: the full scanner (BodyScan: decoding, validators, context, records, verdict) on the
  compiled core (sensor/detect/_hscore.pyx);
- python: the same full scanner on the Python reference loop.
Corpora as in bench/engine.py: dense breach CSV, benign web, real docs and source from the machine.
Acceptance (issue 19): compiled >= 0.6x raw on dense CSV, >= 0.9x on benign web, >= 0.8x on docs+src.

    python bench/core.py [--benign-mb 20] [--breach-rows 40000] [--real-mb 20] [--runs 3]
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sensor import synth  # noqa: E402
from sensor.detect import core  # noqa: E402
from sensor.detect.engine import Engine  # noqa: E402
from sensor.detect.pack import load_pack  # noqa: E402
from sensor.detect.policy import Policy  # noqa: E402
from sensor.pipeline import BodyScan  # noqa: E402
from bench.engine import real_text  # noqa: E402

CHUNK = 64 << 10
KEY = os.urandom(32)


_CORES: dict[int, object] = {}


def full_scan(engine: Engine, data: bytes, compiled: bool):
    """The whole pipeline on ``data`` in 64 KiB writes, on the compiled core or the Python loop."""
    c = _CORES.setdefault(id(engine), core.core_for(engine))
    engine.__dict__["_core"] = c if compiled else None      # the selection is cached per engine
    try:
        body = BodyScan(engine, Policy(), key=KEY)
        assert (body.scanner._core is not None) == compiled
        for i in range(0, len(data), CHUNK):
            body.write(data[i:i + CHUNK])
        return body.finish()
    finally:
        engine.__dict__["_core"] = c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benign-mb", type=int, default=20)
    ap.add_argument("--breach-rows", type=int, default=40_000)
    ap.add_argument("--real-mb", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    if core._hscore is None:
        print("sensor.detect._hscore is not built: nothing to compare (make .venv/.installed)")
        return 1
    engine = Engine(load_pack())
    c = core.core_for(engine)
    if c is None:
        print(f"compiled core not in use: {core.status()}")
        return 1
    dbs = [d for d in (c.main, c.gated) if d is not None]
    corpora = {"dense breach CSV": synth.breach_csv(a.breach_rows), "benign web": synth.benign_web(a.benign_mb << 20),
               "real docs+src": real_text(a.real_mb << 20)}
    targets = {"dense breach CSV": 0.6, "benign web": 0.9, "real docs+src": 0.8}
    gc.collect()
    gc.freeze()
    table = []
    for name, data in corpora.items():
        mb = len(data) / 1e6
        same = full_scan(engine, data, True).to_json() | {"seconds": 0} == \
            full_scan(engine, data, False).to_json() | {"seconds": 0}
        runs = {
            "raw": lambda: [core._hscore.raw_stream_scan(db, data, CHUNK) for db in dbs],
            "compiled": lambda: full_scan(engine, data, True),
            "python": lambda: full_scan(engine, data, False),
        }
        wall: dict[str, list[float]] = {k: [] for k in runs}
        cpu: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(a.runs):                      # interleaved: load on the machine hits all three alike
            for k, fn in runs.items():
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                wall[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
        for clock, t in (("wall", wall), ("cpu", cpu)):
            table.append((clock, name, mb, {k: mb / statistics.median(v) for k, v in t.items()}, same))
    print(f"\nlibhs {core._hscore.version()}; {len(engine.signatures)} signatures; one core; "
          f"median of {a.runs} interleaved runs; MB/s by wall clock and by this process's CPU time "
          f"(the second is steadier on a machine shared with other work)\n")
    print(f"| {'clock':5} | {'corpus':18} | {'MB':>5} | {'raw stream':>10} | {'compiled':>9} | {'python':>8} | "
          f"{'compiled/raw':>12} | {'python/raw':>10} | {'compiled/python':>15} | {'target':>6} | same |")
    print("|" + "|".join("-" * n for n in (7, 20, 7, 12, 11, 10, 14, 12, 17, 8, 6)) + "|")
    for clock, name, mb, s, same in table:
        r = s["compiled"] / s["raw"]
        print(f"| {clock:5} | {name:18} | {mb:5.1f} | {s['raw']:10.1f} | {s['compiled']:9.1f} | {s['python']:8.1f} | "
              f"{r:11.2f}x | {s['python'] / s['raw']:9.2f}x | {s['compiled'] / s['python']:14.2f}x | "
              f"{targets[name]:5.1f}x | {'yes' if same else 'NO':>4} |")
    print()
    for clock, name, mb, s, _ in table:
        r = s["compiled"] / s["raw"]
        print(f"- {'MET ' if r >= targets[name] else 'MISS'} {name} ({clock}): compiled {r:.2f}x raw "
              f"(target {targets[name]}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
