"""Memory benchmark: peak RSS of ``dlp-sensor scan -`` on dense breach CSV, by size.

Each size runs ``dlp-sensor scan --format json -`` in a fresh process, fed on stdin with the rows
of :func:`sensor.synth.dense_breach_stream` (generated here, a piece at a time: neither process
holds the file; every row a distinct person), and reads that process's own peak resident set
(VmHWM, which exec resets, written by the child at exit). The baseline in the same run is the
same scan with the distinct-count cap lifted (every keyed hash kept in a set, as the
scanner did before HyperLogLog); it is measured up to ``--exact-max-rows`` because it grows without
bound. The truth for records is the number of rows (every synthetic person is distinct).

    python bench/memory.py [--rows 200000,600000] [--gb 1] [--exact-max-rows 600000] [--json FILE]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson  # noqa: E402

from sensor import synth  # noqa: E402

BYTES_PER_ROW = sum(len(p) for p in synth.dense_breach_stream(10_000)) / 10_000
# the CLI, with the cap of the scanner's distinct counters set from argv[1] ("default" keeps it)
# and its own peak RSS (VmHWM, reset by exec) written to stderr at exit: the rusage of a child
# would start from the parent's RSS at fork, so a big parent (pytest) would inflate it
_RUNNER = ("import atexit, sys\n"
           "def _hwm():\n"
           "    for line in open('/proc/self/status'):\n"
           "        if line.startswith('VmHWM:'):\n"
           "            sys.stderr.write('VmHWM_KB ' + line.split()[1] + '\\n')\n"
           "atexit.register(_hwm)\n"
           "import sensor.detect.scanner as s\n"
           "cap = sys.argv.pop(1)\n"
           "if cap != 'default':\n"
           "    s.DISTINCT_CAP = int(cap)\n"
           "from sensor.cli.main import main\n"
           "main()\n")


def measure(rows: int, cap: str = "default", state_dir: str | None = None,
            cache_dir: str | None = None) -> dict:
    """Scan ``rows`` rows of dense breach CSV in a child process; its peak RSS and result.

    ``cache_dir`` (``DLP_SENSOR_CACHE``) should hold the compiled database already (see
    :func:`warm_cache`): compiling the pack peaks far above scanning, and a shared cache may have
    been pruned by another checkout's pack, which would make the peak measure the compiler."""
    cmd = [sys.executable, "-c", _RUNNER, cap, "scan", "--format", "json", "-"]
    if state_dir:
        cmd[-1:-1] = ["--state-dir", state_dir]
    env = dict(os.environ, DLP_SENSOR_CACHE=cache_dir) if cache_dir else None
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=Path(__file__).resolve().parents[1])
    sent = 0
    out_file = proc.stdout
    assert proc.stdin is not None and out_file is not None
    for piece in synth.dense_breach_stream(rows):
        proc.stdin.write(piece)
        sent += len(piece)
    proc.stdin.close()
    out = out_file.read()
    err = proc.stderr.read().decode(errors="replace")  # type: ignore[union-attr]
    _, status, _usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode not in (0, 1):             # 1 = something tripped (it should: it is a leak)
        raise SystemExit(f"scan of {rows} rows exited {proc.returncode}")
    hwm = [line.split()[1] for line in err.splitlines() if line.startswith("VmHWM_KB ")]
    if not hwm:
        raise SystemExit(f"scan of {rows} rows did not report its peak RSS: {err[-500:]}")
    result = orjson.loads(out.splitlines()[0])
    records = result["records"]
    return {"rows": rows, "bytes": sent, "cap": cap, "peak_rss_mb": int(hwm[-1]) / 1024,
            "records": records, "error_pct": 100.0 * (records - rows) / rows, "seconds": seconds,
            "mb_per_s": sent / 1e6 / seconds, "notes": result.get("notes", [])}


def warm_cache(cache_dir: str, state_dir: str | None = None) -> None:
    """Compile the pack into ``cache_dir`` once, so that measured runs load it."""
    measure(100, "default", state_dir, cache_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="200000,600000", help="comma-separated row counts")
    ap.add_argument("--gb", type=float, default=0.0, help="also scan this many GB (1e9 bytes) of rows")
    ap.add_argument("--exact-max-rows", type=int, default=600_000,
                    help="largest size also run with the cap lifted (the exact-set baseline)")
    ap.add_argument("--state-dir", help="passed to dlp-sensor scan (where its HMAC key lives)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    sizes = [int(x) for x in args.rows.split(",") if x]
    if args.gb:
        sizes.append(int(args.gb * 1e9 / BYTES_PER_ROW))
    cache = tempfile.mkdtemp(prefix="dlp-bench-cache-")
    warm_cache(cache, args.state_dir)
    runs = []
    for n in sizes:
        runs.append(measure(n, "default", args.state_dir, cache))
        if n <= args.exact_max_rows:
            runs.append(measure(n, str(1 << 62), args.state_dir, cache))
    print(f"{'rows':>10} {'bytes':>14} {'counting':>14} {'peak RSS MB':>12} {'records':>10} "
          f"{'truth':>10} {'error %':>8} {'MB/s':>6}")
    for r in runs:
        mode = "exact (no cap)" if r["cap"] != "default" else "capped+HLL"
        print(f"{r['rows']:>10} {r['bytes']:>14} {mode:>14} {r['peak_rss_mb']:>12.1f} {r['records']:>10} "
              f"{r['rows']:>10} {r['error_pct']:>8.2f} {r['mb_per_s']:>6.2f}")
    for r in runs:
        approx = [n for n in r["notes"] if n.startswith("approximate:")]
        if approx:
            print(f"note at {r['rows']} rows: {approx[0]}")
            break
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(runs, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
