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


def full_scan(engine: Engine, data: bytes, compiled: bool):
    engine.__dict__["_core"] = core.core_for(engine) if compiled else None
    saved = engine.__dict__["_core"]
    try:
        body = BodyScan(engine, Policy(), key=KEY)
        for i in range(0, len(data), CHUNK):
            body.write(data[i:i + CHUNK])
        return body.finish()
    finally:
        engine.__dict__["_core"] = saved


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
        t: dict[str, list[float]] = {"raw": [], "compiled": [], "python": []}
        for _ in range(a.runs):                      # interleaved: load on the machine hits all three alike
            t0 = time.perf_counter()
            for db in dbs:
                core._hscore.raw_stream_scan(db, data, CHUNK)
            t["raw"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            full_scan(engine, data, True)
            t["compiled"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            full_scan(engine, data, False)
            t["python"].append(time.perf_counter() - t0)
        speed = {k: mb / statistics.median(v) for k, v in t.items()}
        table.append((name, mb, speed, same))
    print(f"\nlibhs {core._hscore.version()}; {len(engine.signatures)} signatures; one core; "
          f"median of {a.runs} interleaved runs; MB/s\n")
    print(f"| {'corpus':18} | {'MB':>5} | {'raw stream':>10} | {'compiled':>9} | {'python':>8} | "
          f"{'compiled/raw':>12} | {'python/raw':>10} | {'compiled/python':>15} | {'target':>6} | same |")
    print("|" + "|".join("-" * n for n in (20, 7, 12, 11, 10, 14, 12, 17, 8, 6)) + "|")
    for name, mb, s, same in table:
        r = s["compiled"] / s["raw"]
        print(f"| {name:18} | {mb:5.1f} | {s['raw']:10.1f} | {s['compiled']:9.1f} | {s['python']:8.1f} | "
              f"{r:11.2f}x | {s['python'] / s['raw']:9.2f}x | {s['compiled'] / s['python']:14.2f}x | "
              f"{targets[name]:5.1f}x | {'yes' if same else 'NO':>4} |")
    print()
    for name, mb, s, _ in table:
        r = s["compiled"] / s["raw"]
        print(f"- {'MET ' if r >= targets[name] else 'MISS'} {name}: compiled {r:.2f}x raw (target {targets[name]}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
