"""Engine benchmark: MB/s per core on benign web content, a dense breach CSV and real docs/source.

The ceiling is the raw Hyperscan *stream* scan of the very databases the scanner uses (the main
database and the gated one, in the same 64 KiB chunks, no callback): what the scanner would do if
its per-match work cost nothing. Ceiling and full scanner are timed alternately, round after round
on the same bytes, and the ratio is taken per round (then the median): on a shared machine both
sides of a ratio see the same load. Times are the process's CPU time (the scan is one thread).
Other rows, same bytes: the block-mode scan of all expressions, a counting Python callback, SOM
(the design the scanner does not use), Python ``re`` with the same expressions, and Presidio's
regex recognizers when ``presidio-analyzer`` is importable (its NLP model is never loaded). Also
measured: the time from the first byte of the leak to the trip.

    python bench/engine.py [--benign-mb 50] [--breach-rows 200000] [--re-mb 4] [--rounds 3] [--json FILE]
"""
from __future__ import annotations

import argparse
import gc
import os
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hyperscan as hs  # noqa: E402
import orjson  # noqa: E402

from sensor import synth  # noqa: E402
from sensor.detect.engine import Engine  # noqa: E402
from sensor.detect.pack import load_pack  # noqa: E402
from sensor.detect.policy import Policy  # noqa: E402
from sensor.detect.scanner import open_stream  # noqa: E402
from sensor.pipeline import BodyScan  # noqa: E402

CHUNK = 64 << 10
KEY = os.urandom(32)


def timed(fn, runs: int = 3) -> float:
    """Median CPU time of ``runs`` calls (CPU, not wall: preemption by other work on a shared
    machine is not the code's cost; every scan here runs on this one thread)."""
    times = []
    for _ in range(runs):
        t = time.thread_time()
        fn()
        times.append(time.thread_time() - t)
    return statistics.median(times)


def real_text(size: int) -> bytes:
    """Text nobody here wrote: /usr/share/doc (gunzipped) and the standard library's sources."""
    import gzip
    import sysconfig

    parts, total = [], 0
    roots = [Path("/usr/share/doc"), Path(sysconfig.get_paths()["stdlib"])]
    for root in roots:
        for f in sorted(root.rglob("*")):
            if total >= size:
                break
            if "site-packages" in f.parts or not f.is_file() or f.is_symlink():
                continue
            try:
                if f.suffix == ".gz":
                    data = gzip.decompress(f.read_bytes())
                elif f.suffix in (".py", ".txt", ".md", ".rst", ".html", "") or f.name in ("copyright", "changelog"):
                    data = f.read_bytes()
                else:
                    continue
            except (OSError, EOFError, gzip.BadGzipFile):
                continue
            parts.append(data)
            total += len(data)
    return b"".join(parts)[:size]


def ceiling_db(engine: Engine) -> hs.Database:
    ex, fl = engine.expressions, engine.expression_flags
    db = hs.Database(mode=hs.HS_MODE_BLOCK)
    db.compile(expressions=ex, ids=list(range(len(ex))), elements=len(ex), flags=fl)
    return db


def som_db(engine: Engine) -> hs.Database:
    """The alternative design: Hyperscan reports start offsets for variable-width patterns."""
    ex, fl = engine.expressions, engine.expression_flags
    # Hyperscan refuses SOM on the wordlist expressions ("Pattern is too large"): those stay without
    som = {i for i, p in enumerate(engine.patterns) if p.width <= 0 and len(ex[i]) < 1000}
    fl = [f | (hs.HS_FLAG_SOM_LEFTMOST if i in som else 0) for i, f in enumerate(fl)]
    db = hs.Database(mode=hs.HS_MODE_STREAM | hs.HS_MODE_SOM_HORIZON_SMALL)
    db.compile(expressions=ex, ids=list(range(len(ex))), elements=len(ex), flags=fl)
    return db


def _ignore(i, s, e, f, c) -> None:
    return None


def stream_raw(dbs: list[hs.Database], data: bytes) -> None:
    """The ceiling: the scanner's own stream databases, same chunks, no callback during the scan
    (Hyperscan finds every match and reports none). ``close`` gets a handler (the binding needs
    one when a match lands at the very end)."""
    for db in dbs:
        st = open_stream(db, None)
        for i in range(0, len(data), CHUNK):
            st.scan(data[i:i + CHUNK])
        st.close(match_event_handler=_ignore)


def scanner_dbs(engine: Engine) -> list[hs.Database]:
    """The databases an ExchangeScanner runs: main, and the gated one (opened by the scanner only
    once a body shows a strong identifier; the ceiling scans it always, so it errs high)."""
    return [db for db in (engine.db, engine.gated_db) if db is not None]


def interleaved(engine: Engine, data: bytes, rounds: int) -> dict[str, float]:
    """Ceiling and full scanner timed alternately; MB/s medians and the median per-round ratio."""
    dbs = scanner_dbs(engine)
    mb = len(data) / 1e6
    ceil, full, ratio = [], [], []
    for _ in range(rounds):
        c = mb / timed(lambda: stream_raw(dbs, data), runs=1)
        f = mb / timed(lambda: full_scan(engine, data), runs=1)
        ceil.append(c)
        full.append(f)
        ratio.append(f / c)
    return {"ceiling": statistics.median(ceil), "full": statistics.median(full), "ratio": statistics.median(ratio)}


def stream_count(dbs: list[hs.Database], data: bytes) -> int:
    n = [0]

    def cb(i, s, e, f, c):
        n[0] += 1

    ctx = object()
    for db in dbs:
        st = open_stream(db, cb, ctx)      # not `with`: see open_stream for the binding's refcount bug
        for i in range(0, len(data), CHUNK):
            st.scan(data[i:i + CHUNK], match_event_handler=cb, context=ctx)
        st.close(match_event_handler=cb, context=ctx)
    return n[0]


def full_scan(engine: Engine, data: bytes, stop_on_trip: bool = False):
    body = BodyScan(engine, Policy(), key=KEY, stop_on_trip=stop_on_trip)
    for i in range(0, len(data), CHUNK):
        if body.write(data[i:i + CHUNK]) == "trip" and stop_on_trip:
            break
    return body.finish()


def python_re(engine: Engine) -> "re.Pattern[bytes]":
    parts = [p.expr for sig in engine.signatures for p in sig.patterns]
    return re.compile("|".join(f"(?:{p})" for p in parts).encode())


def presidio_recognizers():
    try:
        from presidio_analyzer.predefined_recognizers import (CreditCardRecognizer, EmailRecognizer,
                                                              IbanRecognizer,
                                                              UsBankRecognizer, UsLicenseRecognizer,
                                                              UsPassportRecognizer, UsSsnRecognizer)
    except Exception:   # not installed: the row says so
        return None
    recs = [UsSsnRecognizer(), CreditCardRecognizer(), UsLicenseRecognizer(), UsPassportRecognizer(),
            EmailRecognizer(), IbanRecognizer(), UsBankRecognizer()]
    return recs


def presidio_scan(recs, text: str) -> int:
    n = 0
    for r in recs:
        n += len(r.analyze(text, entities=r.supported_entities, nlp_artifacts=None))
    return n


def cli_directory(files: int, rows: int) -> dict[int, float]:
    """``dlp-sensor scan`` over a directory of breach CSVs, one process against one per core (MB/s, wall)."""
    import subprocess
    import tempfile
    exe = Path(sys.executable).with_name("dlp-sensor")
    with tempfile.TemporaryDirectory(prefix="dlp-bench-cli-") as d:
        total = 0
        for i in range(files):
            data = synth.breach_csv(rows, seed=i)
            (Path(d) / f"part-{i}.csv").write_bytes(data)
            total += len(data)
        out = {}
        for jobs in sorted({1, os.cpu_count() or 1}):
            t = time.perf_counter()
            p = subprocess.run([str(exe), "scan", "--format", "json", "--jobs", str(jobs), "--state-dir",
                                str(Path(d) / "state"), d], capture_output=True)
            if p.returncode not in (0, 1):     # 1: something tripped (a full-size run), 0: nothing did
                raise SystemExit(f"dlp-sensor scan exited {p.returncode}: {p.stderr.decode()[-500:]}")
            out[jobs] = total / 1e6 / (time.perf_counter() - t)
    return out


CEIL = "hyperscan stream, scanner's databases (main + gated), no callback (ceiling)"
FULL = "full scanner (validators, context, records, verdict)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benign-mb", type=float, default=50)
    ap.add_argument("--breach-rows", type=int, default=200_000)
    ap.add_argument("--re-mb", type=float, default=4, help="sample size for the slow Python baselines")
    ap.add_argument("--rounds", type=int, default=3, help="alternating ceiling / scanner rounds per corpus")
    ap.add_argument("--cli-files", type=int, default=8,
                    help="breach CSVs in the directory scanned by the CLI (0: skip that measurement)")
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args(argv)

    engine = Engine(load_pack())
    size = int(a.benign_mb * (1 << 20))
    corpora = {"benign web": synth.benign_web(size)[:size], "breach CSV": synth.breach_csv(a.breach_rows),
               "real docs+src": real_text(size)}
    truth = {"breach CSV": a.breach_rows}
    rows: dict[str, dict[str, float | None]] = {CEIL: {}, FULL: {}}
    full_ratio: dict[str, float] = {}
    block = ceiling_db(engine)
    somdb = som_db(engine)
    rx = python_re(engine)
    recs = presidio_recognizers()
    # Start-up objects (spaCy's, the huge Python regex) go to the permanent generation: otherwise
    # every full GC pass walks them, and the allocation-heavy scanner pays for it (seen: -27 %).
    gc.collect()
    gc.freeze()
    notes = []
    for name, data in corpora.items():
        mb = len(data) / 1e6
        small = data[: int(a.re_mb * 1e6)]
        res = full_scan(engine, data)
        if name in truth:
            err = abs(res.records - truth[name]) / truth[name]
            notes.append(f"{name}: verdict {res.verdict}, records {res.records} of {truth[name]} true "
                         f"({err:.2%} off)")
        else:
            notes.append(f"{name}: verdict {res.verdict}, records {res.records}")
        il = interleaved(engine, data, a.rounds)
        rows[CEIL][name] = il["ceiling"]
        rows[FULL][name] = il["full"]
        full_ratio[name] = il["ratio"]
        rows.setdefault("hyperscan block, all expressions in one database, no callback", {})[name] = \
            mb / timed(lambda: block.scan(data))
        rows.setdefault("hyperscan stream (main + gated), counting callback", {})[name] = \
            mb / timed(lambda: stream_count(scanner_dbs(engine), data))
        rows.setdefault("hyperscan stream + SOM on variable-width, counting callback", {})[name] = \
            mb / timed(lambda: stream_count([somdb], data))
        rows.setdefault("python re, same expressions (one alternation)", {})[name] = \
            (len(small) / 1e6) / timed(lambda: sum(1 for _ in rx.finditer(small)), runs=1)
        if recs is not None:
            text = small.decode("utf-8", "replace")
            rows.setdefault("presidio regex recognizers (no NLP)", {})[name] = \
                (len(small) / 1e6) / timed(lambda: presidio_scan(recs, text), runs=1)
        else:
            rows.setdefault("presidio regex recognizers (no NLP)", {})[name] = None

    # time to trip: first byte of the breach CSV -> trip verdict
    breach = corpora["breach CSV"]
    t = time.perf_counter()
    r = full_scan(engine, breach, stop_on_trip=True)
    trip_ms = (time.perf_counter() - t) * 1000

    names = list(corpora)
    web, dense, real = names
    ceiling = rows[CEIL]
    full = rows[FULL]
    pyre = rows["python re, same expressions (one alternation)"]

    def x_ceiling(k: str, n: str) -> float | None:
        if k == FULL:
            return full_ratio[n]             # the median of the per-round ratios, not a ratio of medians
        v = rows[k][n]
        return v / ceiling[n] if v and ceiling[n] else None

    w = max(len(k) for k in rows)
    print(f"\n{len(engine.signatures)} signatures, {engine.n_values} expressions (+{len(engine.hot_sig)} hotword sets); "
          f"one core, CPU time; ceiling and full scanner alternated, {a.rounds} rounds, medians; other rows median "
          f"of 3 (Python baselines: one run on {a.re_mb:g} MB)\n")
    print(f"| {'engine':{w}} | " + " | ".join(f"{n:>13}" for n in names) + " | " +
          " | ".join(f"{'x ceiling':>9}" for _ in names) + " |")
    print(f"|{'-' * (w + 2)}|" + "|".join("-" * 15 for _ in names) + "|" + "|".join("-" * 11 for _ in names) + "|")
    for k, vals in rows.items():
        cells = " | ".join(f"{vals[n]:>8.1f} MB/s" if vals[n] else f"{'n/a':>13}" for n in names)
        ratios = " | ".join(f"{x:>8.2f}x" if (x := x_ceiling(k, n)) is not None else f"{'':>9}" for n in names)
        print(f"| {k:{w}} | {cells} | {ratios} |")
    print()
    for n in notes:
        print(f"- {n}")
    print(f"- time to trip on the breach CSV: {trip_ms:.1f} ms after {r.trip_at_byte:,} bytes "
          f"({r.trip_at_byte / len(breach):.2%} of the file)")
    cli: dict[str, float] = {}
    if a.cli_files > 0:
        cli = {str(j): v for j, v in cli_directory(a.cli_files, max(1, a.breach_rows // 8)).items()}
        print(f"- dlp-sensor scan, a directory of {a.cli_files} breach CSVs ({a.breach_rows // 8:,} rows each), wall "
              "clock incl. start-up: " + ", ".join(f"--jobs {j}: {v:.1f} MB/s" for j, v in cli.items()) +
              (f" ({cli[max(cli, key=int)] / cli['1']:.2f}x)" if len(cli) > 1 else ""))
    checks = [
        ("full >= 0.9x ceiling on benign web", full_ratio[web] >= 0.9, f"{full_ratio[web]:.2f}x"),
        ("full >= 0.6x ceiling on the dense breach CSV", full_ratio[dense] >= 0.6, f"{full_ratio[dense]:.2f}x"),
        ("full >= 0.8x ceiling on real docs+src", full_ratio[real] >= 0.8, f"{full_ratio[real]:.2f}x"),
        ("full >= 125 MB/s (1 Gbit/s) on benign web", full[web] >= 125, f"{full[web]:.0f} MB/s"),
        ("full >= 20x python re (benign)", full[web] >= 20 * pyre[web], f"{full[web] / pyre[web]:.0f}x"),
        ("full >= 20x python re (breach)", full[dense] >= 20 * pyre[dense], f"{full[dense] / pyre[dense]:.0f}x"),
        ("dense breach CSV >= 40 MB/s", full[dense] >= 40, f"{full[dense]:.1f} MB/s"),
    ]
    print()
    for label, ok, fig in checks:
        print(f"- {'PASS' if ok else 'MISS'} {label}: {fig}")
    if a.json:
        doc = {
            "ceiling": CEIL, "rounds": a.rounds,
            "corpora": {n: {"bytes": len(corpora[n]), "MBps": {k: rows[k][n] for k in rows},
                            "x_ceiling": {k: x_ceiling(k, n) for k in rows}} for n in names},
            "notes": notes, "trip_ms": trip_ms, "trip_at_byte": r.trip_at_byte, "cli_MBps_by_jobs": cli,
            "checks": [{"check": label, "pass": ok, "figure": fig} for label, ok, fig in checks],
        }
        Path(a.json).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
