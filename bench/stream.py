"""Scale-out benchmark: exchanges through Kafka with 1 and 2 workers, and fleet-wide takedown latency.

Everything real and on this machine: a Tansu broker (``--broker noida`` for noida-db, whose empty
fetches return at once whatever the max wait, so idle consumers spin and cost the worker's core), ``dlp-sensor worker`` processes, two
sidecar processes, the sample site. Same run, same data:

1. **Baseline**: the same exchanges scanned in this process by one ``BodyScan`` each (one core,
   no Kafka) — what a worker could do at most. It runs on the worker's core (CPU 1).
2. **Throughput, one worker on a core of its own**: N exchanges (benign web text, 1 in 20 a breach
   CSV) published in the record format as fast as the producer goes; exchanges/s and MB/s from the
   first record sent to the last finding read. The worker process is started under ``taskset -c 1``;
   the broker under ``taskset -c 0``, and this process (producer, findings reader) moves itself to
   CPU 0 with ``sched_setaffinity`` after the baseline. Baseline and worker alternate ``--repeat``
   times in the same run; the table shows medians and the ratio of the medians. (Other processes on
   the machine are not pinned away: quote the load with the figures.) The worker's CPU seconds are
   read from ``/proc`` from the first record sent to the last finding read (the process started,
   imported, joined and warmed before); they are the load-independent figure. The wall clock of
   this row is set by whichever side is slower: the bench prints the share of it the worker was
   busy (its CPU / wall): well under 100% means the producer and broker on CPU 0 set the pace.
   Then the same exchanges as a backlog drained by a freshly started worker: wall and CPU seconds
   from its first batch of findings to its last (start-up and join left out).
3. Unless ``--worker-only`` (on a noida-db broker: the sidecars' mirror needs the idempotent producer): 2 workers (both unpinned; the machine has 2 cores shared by the broker, the
   producer and the workers, so the row says how the pool behaves, not how it scales), latency (one
   exchange every 50 ms, end record sent -> finding readable, p50/p99) and **fleet takedowns**:
   sidecars A (monitor, mirrored to the workers; ``/stream/*`` enforced
   locally) and B (monitor, only fleet takedowns make it refuse). Per trip, a distinct leaked file:
   ``mirrored`` = A finished serving the leak -> B's first 451; ``local`` = the request to A's
   enforced route sent (it trips there) -> B's first 451, B polled every 5 ms meanwhile (A
   announces the takedown before its own commit, so B may refuse before A answers). Plus B's server-side histogram (takedown record created -> enforced at B).

    python bench/stream.py [--exchanges 400] [--repeat 3] [--worker-only] [--broker tansu|noida] [--trips 50]
                           [--json FILE]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson  # noqa: E402

from sensor import synth  # noqa: E402
from sensor.detect.engine import Engine  # noqa: E402
from sensor.detect.pack import load_pack  # noqa: E402
from sensor.detect.policy import Policy  # noqa: E402
from sensor.pipeline import BodyScan, Exchange  # noqa: E402
from sensor.sample_site import ROSTER, build_site  # noqa: E402
from tests.kafka import HMAC_KEY, Broker, exchange_records, kafka_conf, start_workers, unique_prefix  # noqa: E402
from tests.procs import Sidecar, Upstream, read_metric  # noqa: E402

HOST = "dashboard.example.gov"
EXCHANGE_KIB = 256


def corpus(n: int) -> list[tuple[str, bytes, str]]:
    web = synth.benign_web(EXCHANGE_KIB << 10)
    breach = synth.breach_csv(2000)[: EXCHANGE_KIB << 10]
    return [(f"bench-{i:05d}", breach if i % 20 == 0 else web, "text/csv" if i % 20 == 0 else "text/html")
            for i in range(n)]


def baseline(items) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) to scan every exchange here."""
    engine, policy = Engine(load_pack()), Policy()
    t, c = time.perf_counter(), time.process_time()
    for _, body, ct in items:
        scan = BodyScan(engine, policy, key=bytes(32), exchange=Exchange(content_type=ct))
        for i in range(0, len(body), 64 << 10):
            scan.write(body[i:i + (64 << 10)])
        scan.finish()
    return time.perf_counter() - t, time.process_time() - c


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU time of a process, all its threads (``/proc/PID/stat``), or of its thread ``tid``."""
    stat = Path(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _run_through(broker: Broker, prefix: str, items, pace: float = 0.0) -> tuple[float, list[float]]:
    """Publish the exchanges; return (seconds until the last finding, per-exchange latencies)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from sensor.stream.records import decode
    cons = AIOKafkaConsumer(prefix + "findings", bootstrap_servers=broker.bootstrap, group_id=None,
                            auto_offset_reset="latest", fetch_max_wait_ms=10)
    await cons.start()
    await cons.getmany(timeout_ms=200)                          # settle the assignment at the end
    prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=2,
                            max_request_size=2 << 20)
    await prod.start()
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    t0 = time.perf_counter()

    async def publish() -> None:
        for xid, body, _ct in items:
            for key, value in exchange_records(xid, f"{HOST}/b/{xid}.html", body, client=f"c{hash(xid) % 97}",
                                               chunk=256 << 10):
                await prod.send(prefix + "exchanges", value, key=key)
            sent_at[xid] = time.perf_counter()
            if pace:
                await prod.flush()
                await asyncio.sleep(pace)
        await prod.flush()

    pub = asyncio.create_task(publish())
    seen: set[str] = set()
    while len(seen) < len(items):
        for msgs in (await cons.getmany(timeout_ms=100)).values():
            now = time.perf_counter()
            for m in msgs:
                xid = decode(m.value)["xid"]
                if xid not in seen and xid in sent_at:
                    seen.add(xid)
                    latencies.append(now - sent_at[xid])
    elapsed = time.perf_counter() - t0
    await pub
    await prod.stop()
    await cons.stop()
    return elapsed, latencies


async def _drain(broker: Broker, prefix: str, items, start_worker, cpu=None) -> tuple[int, float, float]:
    """Publish the exchanges while no worker runs, then start one: (exchanges, seconds, worker CPU seconds)
    from the first batch of findings to the last, the first batch left out (so neither the worker's
    start-up nor its join is counted; ``cpu()`` reads the worker's CPU time). The worker reads a backlog
    at its own speed, not at the producer's (which shares CPU 0 with the broker)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from sensor.stream.records import decode
    cons = AIOKafkaConsumer(prefix + "findings", bootstrap_servers=broker.bootstrap, group_id=None,
                            auto_offset_reset="latest", fetch_max_wait_ms=10)
    await cons.start()
    await cons.getmany(timeout_ms=200)
    prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=2, max_request_size=2 << 20)
    await prod.start()
    for xid, body, _ct in items:
        for key, value in exchange_records(xid, f"{HOST}/b/{xid}.html", body, client=f"c{hash(xid) % 97}",
                                           chunk=256 << 10):
            await prod.send(prefix + "exchanges", value, key=key)
    await prod.flush()
    await prod.stop()
    await asyncio.to_thread(start_worker)
    want = {xid for xid, _, _ in items}
    seen: set[str] = set()
    first_batch, t_first, t_last, c_first, c_last = 0, 0.0, 0.0, 0.0, 0.0
    while len(seen) < len(want):
        for msgs in (await cons.getmany(timeout_ms=100)).values():
            now = time.perf_counter()
            new = {x for x in (decode(m.value)["xid"] for m in msgs) if x in want and x not in seen}
            if new and not seen:
                first_batch, t_first = len(new), now
                c_first = cpu() if cpu else 0.0
            if new:
                seen |= new
                t_last = now
                c_last = cpu() if cpu else 0.0
    await cons.stop()
    return len(want) - first_batch, t_last - t_first, c_last - c_first


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Host": HOST}), timeout=10) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def until_451(url: str, timeout: float = 10.0) -> float:
    t = time.perf_counter()
    while time.perf_counter() - t < timeout:
        if get(url) == 451:
            return time.perf_counter()
        time.sleep(0.005)
    raise TimeoutError(url)


WORKER_CPU, OTHER_CPU = "1", "0"


def pin(cpu: str) -> None:
    """Move this process (the baseline's scan, or the producer and findings reader) to one CPU."""
    os.sched_setaffinity(0, {int(cpu)})


def one_worker(d: Path, broker: Broker, items, repeat: int, rows: list, out: dict) -> None:
    """Baseline on the worker's core, then the worker on it alone; ``repeat`` times, alternating."""
    mb = sum(len(b) for _, b, _ in items) / 1e6
    prefix = unique_prefix()
    k = kafka_conf(broker.bootstrap, prefix)
    ws = start_workers(d, k, [f"{prefix}w0"], cpus=WORKER_CPU)
    try:
        topic = prefix + "exchanges"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and ws[0].metric("dlp_kafka_assigned_partitions", topic=topic) < 8:
            time.sleep(0.2)
        asyncio.run(_run_through(broker, prefix, [(f"warm-{x}", b, c) for x, b, c in items[:20]]))
        pin(WORKER_CPU)
        baseline(items[:20])        # the baseline warmed like the worker (its first run was slower: 0.8x vs 0.65x)
        base, through, base_cpu, worker_cpu, drained, drain_cpu, busy = [], [], [], [], [], [], []
        other_threads: list[float] = []     # the worker's CPU outside its main thread (faust's consumer thread...)
        for r in range(repeat):
            pin(WORKER_CPU)
            wall, cpu = baseline(items)
            base.append(wall)
            base_cpu.append(cpu)
            pin(OTHER_CPU)
            c0 = cpu_seconds(ws[0].proc.pid)
            m0 = cpu_seconds(ws[0].proc.pid, ws[0].proc.pid)     # the main thread: the event loop and the scan
            secs, _ = asyncio.run(_run_through(broker, prefix, [(f"r{r}-{x}", b, c) for x, b, c in items]))
            worker_cpu.append(cpu_seconds(ws[0].proc.pid) - c0)
            other_threads.append(worker_cpu[-1] - (cpu_seconds(ws[0].proc.pid, ws[0].proc.pid) - m0))
            through.append(secs)
            ws[0].stop()
            busy.append(worker_cpu[-1] / secs)
            n, dsecs, dcpu = asyncio.run(_drain(broker, prefix, [(f"d{r}-{x}", b, c) for x, b, c in items],
                                                ws[0].start, cpu=lambda: cpu_seconds(ws[0].proc.pid)))
            drained.append(dsecs * len(items) / n)          # seconds for all of them at that rate
            drain_cpu.append(dcpu * len(items) / n)
            print(f"  run {r + 1}: baseline {mb / base[-1]:.1f} MB/s, 1 worker {mb / secs:.1f} MB/s "
                  f"({base[-1] / secs:.2f}x; the worker busy {busy[-1]:.0%} of that time), draining a backlog "
                  f"{mb / drained[-1]:.1f} MB/s ({base[-1] / drained[-1]:.2f}x); CPU s: baseline {cpu:.2f}, "
                  f"worker {worker_cpu[-1]:.2f} ({cpu / worker_cpu[-1]:.2f}x; {other_threads[-1]:.2f} of it outside the main "
                  f"thread), draining {drain_cpu[-1]:.2f} "
                  f"({cpu / drain_cpu[-1]:.2f}x)", flush=True)
        mb_s = lambda xs: mb / statistics.median(xs)  # noqa: E731
        ex_s = lambda xs: len(items) / statistics.median(xs)  # noqa: E731
        rows.append((f"baseline: in-process scan, CPU {WORKER_CPU} (median of {repeat})",
                     f"{ex_s(base):,.0f} exch/s", f"{mb_s(base):,.1f} MB/s"))
        rows.append((f"1 worker, taskset CPU {WORKER_CPU}; broker+producer CPU {OTHER_CPU} (median of {repeat})",
                     f"{ex_s(through):,.0f} exch/s", f"{mb_s(through):,.1f} MB/s"))
        out["baseline"] = {"exchanges_s": ex_s(base), "mb_s": mb_s(base), "runs_s": base}
        out["workers_1"] = {"exchanges_s": ex_s(through), "mb_s": mb_s(through), "runs_s": through}
        rows.append((f"1 worker draining a backlog (producer done first; median of {repeat})",
                     f"{ex_s(drained):,.0f} exch/s", f"{mb_s(drained):,.1f} MB/s"))
        out["drain_1"] = {"exchanges_s": ex_s(drained), "mb_s": mb_s(drained), "runs_s": drained}
        out["drain_ratio_1"] = mb_s(drained) / mb_s(base)
        out["drain_ratios"] = [b / t for b, t in zip(base, drained)]
        out["ratio_1"] = mb_s(through) / mb_s(base)
        out["ratios"] = [b / t for b, t in zip(base, through)]
        out["cpu_ratio_1"] = statistics.median(base_cpu) / statistics.median(worker_cpu)
        out["cpu_ratios"] = [b / t for b, t in zip(base_cpu, worker_cpu)]
        out["drain_cpu_ratio_1"] = statistics.median(base_cpu) / statistics.median(drain_cpu)
        out["drain_cpu_ratios"] = [b / t for b, t in zip(base_cpu, drain_cpu)]
        out["cpu_s"] = {"baseline": base_cpu, "worker": worker_cpu, "worker_draining": drain_cpu,
                        "worker_other_threads": other_threads}
        out["worker_busy"] = busy
        rows.append((f"1 worker, CPU time of the worker process (median of {repeat})",
                     f"{len(items) / statistics.median(worker_cpu):,.0f} exch/cpu-s",
                     f"{mb / statistics.median(worker_cpu):,.1f} MB/cpu-s"))
        rows.append((f"1 worker draining, CPU time of the worker process, first batch to last (median of {repeat})",
                     f"{len(items) / statistics.median(drain_cpu):,.0f} exch/cpu-s",
                     f"{mb / statistics.median(drain_cpu):,.1f} MB/cpu-s"))
        rows.append((f"baseline, CPU time (median of {repeat})",
                     f"{len(items) / statistics.median(base_cpu):,.0f} exch/cpu-s",
                     f"{mb / statistics.median(base_cpu):,.1f} MB/cpu-s"))
    finally:
        for w in ws:
            w.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exchanges", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--worker-only", action="store_true", help="only the one-worker comparison (no 2 workers, "
                                                                "latency or fleet takedowns)")
    ap.add_argument("--trips", type=int, default=50)
    ap.add_argument("--broker", choices=("tansu", "noida"), default="tansu",
                    help="tansu (default): noida-db 0.2.3 ignores a fetch's max wait and answers empty fetches at "
                         "once, so every idle consumer spins (measured: ~1,400 fetches/s, ~22%% of a core each)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="dlp-bench-stream-"))
    rows: list[tuple[str, str, str]] = []
    out: dict = {}
    cpus = os.sched_getaffinity(0)
    assert {0, 1} <= cpus, "this bench pins the worker to CPU 1 and the broker and producer to CPU 0"
    broker = Broker.start(d, kind=a.broker, cpus=OTHER_CPU)
    procs: list = []
    try:
        items = corpus(a.exchanges)
        mb = sum(len(b) for _, b, _ in items) / 1e6
        one_worker(d, broker, items, a.repeat, rows, out)
        os.sched_setaffinity(0, cpus)
        if not a.worker_only:       # the sidecars' mirror uses the idempotent producer, which Tansu refuses: noida-db
            fleet_broker = broker if a.broker == "noida" else Broker.start(d, kind="noida")
            procs.append(fleet_broker)
            fleet(d, fleet_broker, items, mb, a.trips, rows, out, procs)
    finally:
        for p in reversed(procs):
            if p is not broker:
                p.stop()
        broker.stop()
    w = max(len(r[0]) for r in rows)
    print(f"\n{'scale-out (bench/stream.py)':<{w}}  {'':>16}  {'':>16}")
    for r in rows:
        print(f"{r[0]:<{w}}  {r[1]:>16}  {r[2]:>16}")
    print(f"\n1 worker vs the in-process baseline: {out['ratio_1']:.2f}x wall clock (ratio of medians; per run "
          f"{', '.join(f'{x:.2f}' for x in out['ratios'])}); goal >= 0.7x")
    print(f"1 worker draining a backlog vs the baseline: {out['drain_ratio_1']:.2f}x (per run "
          f"{', '.join(f'{x:.2f}' for x in out['drain_ratios'])}); the producer is not in the way")
    print(f"the same in CPU seconds (baseline process vs worker process, load-independent): "
          f"{out['cpu_ratio_1']:.2f}x (per run {', '.join(f'{x:.2f}' for x in out['cpu_ratios'])}); "
          f"draining {out['drain_cpu_ratio_1']:.2f}x (per run {', '.join(f'{x:.2f}' for x in out['drain_cpu_ratios'])})")
    print(f"the worker was busy {', '.join(f'{x:.0%}' for x in out['worker_busy'])} of the through-Kafka runs' "
          f"wall time: well under 100%, that wall ratio is the producer's and broker's (CPU {OTHER_CPU}), not the worker's")
    if "fleet_ms" in out:
        print(f"2 workers vs the baseline: {out['workers_2']['mb_s'] / out['baseline']['mb_s']:.2f}x (2 cores "
              f"shared with the broker and producer)")
        print(f"goal p99 <= 1 s for fleet-wide enforcement: mirrored {out['fleet_ms']['mirrored']['p99']:.0f} ms, "
              f"local {out['fleet_ms']['local']['p99']:.0f} ms")
    if a.json:
        a.json.write_text(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    shutil.rmtree(d, ignore_errors=True)


def fleet(d: Path, broker: Broker, items, mb: float, trips: int, rows: list, out: dict, procs: list) -> None:
    """2 workers (unpinned), latency, and fleet takedowns through two sidecars."""
    prefix = unique_prefix()
    k = kafka_conf(broker.bootstrap, prefix)
    ws = start_workers(d, k, [f"{prefix}w{i}" for i in range(2)])
    procs += ws
    topic = prefix + "exchanges"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum(w.metric("dlp_kafka_assigned_partitions", topic=topic)
                                              for w in ws) < 8:
        time.sleep(0.2)
    secs, _ = asyncio.run(_run_through(broker, prefix, items))
    rows.append(("through Kafka, 2 workers (unpinned)", f"{len(items) / secs:,.0f} exch/s", f"{mb / secs:,.1f} MB/s"))
    out["workers_2"] = {"exchanges_s": len(items) / secs, "mb_s": mb / secs}
    _, lat = asyncio.run(_run_through(broker, prefix, [(f"lat-{x}", b, c) for x, b, c in items[:100]], pace=0.05))
    rows.append(("latency, 1 exch / 50 ms: end sent -> finding", f"p50 {pct(lat, 50) * 1e3:.1f} ms",
                 f"p99 {pct(lat, 99) * 1e3:.1f} ms"))
    out["latency_ms"] = {"p50": pct(lat, 50) * 1e3, "p99": pct(lat, 99) * 1e3}

    # fleet takedowns: two sidecars, the two workers still running
    site_root = build_site(d / "site", people=400)
    header, *people = (site_root / ROSTER).read_bytes().splitlines(keepends=True)
    for i in range(trips):
        shutil.copy(site_root / ROSTER, site_root / f"exports/leak-{i:03d}.csv")
        # the local trips need content of their own (the rows rotated): A refuses a body that starts like
        # one already taken down by its fingerprint, without a new trip (so no takedown of the path for B)
        rotated = people[i + 1:] + people[:i + 1]
        (site_root / f"exports/local-{i:03d}.csv").write_bytes(b"".join([header, *rotated]))
    site = Upstream.start(site_root)
    procs.append(site)
    conf = lambda name, kafka, **p: {"sensor_id": name, "hmac_key": HMAC_KEY, "kafka": kafka,  # noqa: E731
                                     "alerts": {"sinks": []}, "proxy": {"mode": "monitor", **p},
                                     "site": {"hosts": [HOST]}}      # resource keys name the public site
    sa = Sidecar.create(d / "sa", site.url, conf("a", {**k, "mirror": {"enabled": True}},
                                                  routes=[{"match": "/stream/*", "mode": "enforce"}])).start()
    sb = Sidecar.create(d / "sb", site.url, conf("b", k)).start()
    procs += [sa, sb]
    mirrored, local = [], []
    pool = ThreadPoolExecutor(1)
    for i in range(trips):
        path = f"/exports/leak-{i:03d}.csv"
        assert get(sa.url + path) == 200
        done = time.perf_counter()
        mirrored.append(until_451(sb.url + path) - done)
        t = time.perf_counter()                 # B is polled from the moment A's request is sent
        local_path = f"/stream/exports/local-{i:03d}.csv"
        trip = pool.submit(get, sa.url + local_path)
        local.append(until_451(sb.url + local_path) - t)
        assert trip.result() == 451
    pool.shutdown()
    for name, xs in (("mirrored: A served the leak -> B's 451", mirrored),
                     ("local: request to A (trips) -> B's 451", local)):
        rows.append((f"fleet takedown, {name} ({len(xs)} trips)", f"p50 {pct(xs, 50) * 1e3:.0f} ms",
                     f"p99 {pct(xs, 99) * 1e3:.0f} ms"))
    out["fleet_ms"] = {"mirrored": {"p50": pct(mirrored, 50) * 1e3, "p99": pct(mirrored, 99) * 1e3},
                       "local": {"p50": pct(local, 50) * 1e3, "p99": pct(local, 99) * 1e3}}
    n_lag = read_metric(sb.metrics, "dlp_fleet_takedown_lag_seconds_count")
    s_lag = read_metric(sb.metrics, "dlp_fleet_takedown_lag_seconds_sum")
    rows.append(("B server-side: record created -> enforced", f"mean {s_lag / max(n_lag, 1) * 1e3:.0f} ms",
                 f"{n_lag:.0f} takedowns"))


if __name__ == "__main__":
    main()
