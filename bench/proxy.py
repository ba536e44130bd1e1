"""Proxy benchmark: the sidecar against direct access and nginx as a plain reverse proxy, one run.

Origin: nginx serving static files (a 10 KiB page and a 100 MB download of benign web text), so
the origin is never the bottleneck. Measured with wrk on the same machine, same run:

- 10 KiB responses: requests/s at 10 connections, and latency p50/p99 at 1 connection as the
  client sees it; the sidecar's own time per exchange (first byte in to last byte out, its
  ``dlp_proxy_request_duration_seconds`` histogram, the buckets counted over that run only):
  the latency it adds, read from the sidecar itself, not a difference of two client runs (it
  includes the origin's answer, ~0.1 ms here, so it errs high);
- 100 MB downloads: MB/s at 1 connection (one core's worth of proxying), against the ceiling,
  like for like: the raw Hyperscan stream scan (no callback) of the same file, in this process,
  of the databases the sidecar scans it with (the compiled core's, Debian's libhs; the gated one
  only if the file opens a part's gate), alternated with the downloads; also printed: main +
  gated always (and with the wheel's libhs, the ceiling up to session 13), which flatter the
  sidecar when the gate stays shut. "Per core" divides the bytes by the sidecar's own CPU seconds
  (/proc/PID/stat) over the download. Beside it, in the same rounds, the floor of relaying: a bare
  TCP relay (``bench/relay_floor.py``: no HTTP, no scan) in front of the same origin, its CPU per
  100 MB; raw scan + floor is the best per-core figure a relay that reads what it scans can reach;
  and the enforcing sidecar (enforce is the default mode) against the same ceiling, same rounds;
- ``--reuse-port``: groups of N = 1 .. cores sidecar processes (monitor), each group on one
  port, each process with ``scan_workers: 1`` pinned to a core of its own (one process = one
  core's worth), 8 connections of 100 MB downloads, groups alternated round by round: aggregate
  MB/s, and how it scales with processes (cores);
- the sidecar in monitor mode and in enforce mode; nginx (1 worker) as the reference proxy;
- trips: ≥ 100 leaks downloaded through the enforcing sidecar; trip -> takedown durable
  (server-side histogram), and the client-side time to the 451 of the next request.

    python bench/proxy.py [--seconds 8] [--trips 120] [--rounds 3] [--procs 2] [--only download,reuse-port]
                          [--json FILE]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson  # noqa: E402

from bench.engine import scanner_dbs, stream_raw  # noqa: E402
from sensor import synth  # noqa: E402
from sensor.detect.engine import Engine  # noqa: E402
from sensor.detect.pack import load_pack  # noqa: E402
from tests.procs import Sidecar, free_port, wait_http  # noqa: E402

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {d}/nginx-{name}.pid;
error_log {d}/nginx-{name}.err warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp-{name}; proxy_temp_path {d}/ptmp-{name};
    fastcgi_temp_path {d}/f-{name}; uwsgi_temp_path {d}/u-{name}; scgi_temp_path {d}/s-{name};
    types {{ text/html html; text/csv csv; }}
    server {{
        listen 127.0.0.1:{port};
        {body}
    }}
}}
"""


def nginx(d: Path, name: str, port: int, body: str) -> subprocess.Popen:
    conf = d / f"nginx-{name}.conf"
    conf.write_text(NGINX_CONF.format(d=d, name=name, port=port, body=body))
    p = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(conf), "-p", str(d)],
                         stderr=subprocess.DEVNULL)
    return p


def stop_nginx(procs: list[subprocess.Popen]) -> None:
    """SIGQUIT (nginx's graceful stop), then kill what has not left within 5 s."""
    for p in procs:
        p.send_signal(signal.SIGQUIT)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()


def wrk(url: str, seconds: int, conns: int) -> dict:
    # --timeout: longer than any download (wrk's default 2 s would count a slow 100 MB as an error)
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "60s", "--latency", url],
                         capture_output=True, text=True, timeout=seconds + 60).stdout

    def num(pattern: str, scale: dict) -> float:
        m = re.search(pattern, out)
        if not m:
            return float("nan")
        return float(m.group(1)) * scale.get(m.group(2), 1.0)

    t = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    b = {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}
    return {"rps": num(r"Requests/sec:\s+([\d.]+)()", {}),
            "mbps": num(r"Transfer/sec:\s+([\d.]+)(\w+)", b),
            "read_mb": num(r"\s([\d.]+)(\w+) read", b),
            "p50": num(r"\s50%\s+([\d.]+)(\w+)", t), "p99": num(r"\s99%\s+([\d.]+)(\w+)", t),
            "errors": "Non-2xx" in out or "Socket errors" in out}


def histogram_quantile(text: str, name: str, q: float) -> float:
    buckets = []
    for line in text.splitlines():
        m = re.match(rf'{name}_bucket{{le="([^"]+)"}} ([\d.e+]+)', line)
        if m:
            buckets.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), float(m.group(2))))
    total = buckets[-1][1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= q * total:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((q * total - prev_c) / max(c - prev_c, 1e-9))
        prev_le, prev_c = le, c
    return float("nan")


def buckets(base: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts of a histogram on ``base``/metrics, summed over its labels."""
    from prometheus_client.parser import text_string_to_metric_families
    text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    out: dict[float, float] = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.name == name + "_bucket":
                le = float(smp.labels["le"])
                out[le] = out.get(le, 0.0) + smp.value
    return out


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> tuple[float, float]:
    """The q-quantile of the observations made between two scrapes: (interpolated, bucket bound)."""
    les = sorted(after)
    counts = [after[le] - before.get(le, 0.0) for le in les]
    total = counts[-1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in zip(les, counts):
        if c >= q * total:
            if le == float("inf"):
                return prev_le, le
            return prev_le + (le - prev_le) * ((q * total - prev_c) / max(c - prev_c, 1e-9)), le
        prev_le, prev_c = le, c
    return float("nan"), float("nan")


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process and all its threads so far."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(f[11]) / tick, int(f[12]) / tick


def thread_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds so far of ``pid``'s main thread (the event loop) and of all its other threads
    (the scan pool, mostly), from /proc/PID/task/*/schedstat (nanoseconds, not clock ticks)."""
    main = rest = 0.0
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            ns = int((t / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue                    # a thread that just ended
        if t.name == str(pid):
            main += ns / 1e9
        else:
            rest += ns / 1e9
    return main, rest


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


def own_latency(sc: Sidecar, url: str, seconds: int) -> dict:
    """Client-side latency at c=1, and the sidecar's own per-exchange time over the same run."""
    name = "dlp_proxy_request_duration_seconds"
    b0 = buckets(sc.metrics, name)
    lat = wrk(url, seconds, 1)
    b1 = buckets(sc.metrics, name)
    p50, _ = quantile(b0, b1, 0.5)
    p99, p99_le = quantile(b0, b1, 0.99)
    return {**lat, "own_p50_ms": p50 * 1000, "own_p99_ms": p99 * 1000, "own_p99_le_ms": p99_le * 1000,
            "own_n": b1[float("inf")] - b0.get(float("inf"), 0.0)}


class Ceilings:
    """The raw stream scans the sidecar's download is compared with, each timed alone (CPU time of
    this thread, no callback, 64 KiB calls, one stream per database).

    - **like for like** (the acceptance): the databases the sidecar itself scans these bytes with.
      It scans with the compiled core's databases (Debian's libhs, :mod:`sensor.detect.core`): the
      main one always, the gated one only once a part shows a hit that opens its gate. Whether this
      file opens the gate is found once, up front (any hit of ``engine.gate_ids`` in the main
      database); when it does not (benign web), the like-for-like ceiling is the main database alone.
    - main + gated (core): the gated database scanned from the first byte as well. It is lower than
      the like-for-like one whenever the gate stays shut, so a ratio against it flatters the sidecar.
    - main + gated (PyPI wheel's libhs): this bench's ceiling up to session 13, kept for continuity.
    Without the compiled core the sidecar scans with the wheel's databases: then those are like for like.
    """

    def __init__(self, big: bytes):
        from sensor.detect import core as _core
        self.engine = Engine(load_pack())
        self.core = _core.core_for(self.engine)
        self.wheel = scanner_dbs(self.engine)
        self.gate_opens = gate_hits(self.engine, big) > 0
        self.libhs = _core._hscore.version() if self.core is not None else "the PyPI wheel's"

    def measure(self, big: bytes) -> dict[str, float]:
        """MB/s of each ceiling, one scan of ``big`` per database."""
        mb = len(big) / 1e6

        def secs(fn) -> float:
            t = time.thread_time()
            fn()
            return time.thread_time() - t

        w = secs(lambda: stream_raw(self.wheel, big))
        if self.core is None:
            return {"like": mb / w, "main_gated": mb / w, "wheel": mb / w}
        raw = _raw_core_scan()
        m = secs(lambda: raw(self.core.main, big, CEIL_CHUNK))
        g = secs(lambda: raw(self.core.gated, big, CEIL_CHUNK)) if self.core.gated is not None else 0.0
        return {"like": mb / (m + g if self.gate_opens else m), "main_gated": mb / (m + g), "wheel": mb / w}


CEIL_CHUNK = 64 << 10


def _raw_core_scan():
    from sensor.detect import _hscore
    return _hscore.raw_stream_scan


def gate_hits(engine: Engine, data: bytes) -> int:
    """Hits of the ids that open a part's gate (engine.gate_ids) in the main database, over ``data``."""
    from sensor.detect.scanner import open_stream
    gate = engine.gate_ids
    n = [0]

    def cb(i, s, e, f, c):
        if i in gate:
            n[0] += 1

    ctx = object()
    st = open_stream(engine.db, cb, ctx)
    for i in range(0, len(data), CEIL_CHUNK):
        st.scan(data[i:i + CEIL_CHUNK], match_event_handler=cb, context=ctx)
    st.close(match_event_handler=cb, context=ctx)
    return n[0]


def download_vs_ceiling(sc: Sidecar, url: str, big: bytes, seconds: int, rounds: int,
                        floor: tuple[int, str] | None = None, enforcing: Sidecar | None = None) -> dict:
    """100 MB downloads through the sidecar against the raw stream scans of the same bytes
    (:class:`Ceilings`), alternated round by round; medians of the per-round ratios. ``floor``:
    (pid, url) of ``bench/relay_floor.py`` in front of the same origin, downloaded in each round
    too: its CPU per 100 MB is what moving the bytes alone costs. ``enforcing``: a sidecar in
    enforce mode (the default), downloaded in each round too, against the same ceiling."""
    ceil = Ceilings(big)
    rows: dict[str, list[float]] = {k: [] for k in ("like", "main_gated", "wheel", "wall", "core", "sys",
                                                     "r_wall", "r_like", "r_main_gated", "r_wheel",
                                                     "loop_s", "threads_s", "libhs_s", "floor_s",
                                                     "enf_core", "r_enf", "enf_loop_s", "enf_threads_s")}
    for _ in range(rounds):
        if floor is not None:
            f0 = cpu_seconds(floor[0])
            fd = wrk(floor[1], seconds, 1)
            if fd["read_mb"] > 0:
                rows["floor_s"].append((cpu_seconds(floor[0]) - f0) * 100.0 / (fd["read_mb"] * 1.048576))
        c = ceil.measure(big)
        u0, s0 = cpu_times(sc.proc.pid)
        m0, t0 = thread_seconds(sc.proc.pid)
        d = wrk(url, seconds, 1)
        u1, s1 = cpu_times(sc.proc.pid)
        m1, t1 = thread_seconds(sc.proc.pid)
        per100 = 100.0 / (d["read_mb"] * 1.048576) if d["read_mb"] > 0 else float("nan")
        rows["loop_s"].append((m1 - m0) * per100)
        rows["threads_s"].append((t1 - t0) * per100)
        rows["libhs_s"].append(100.0 / c["like"])
        cpu = (u1 - u0) + (s1 - s0)
        mbps = d["mbps"] * 1.048576                  # wrk's MiB/s -> MB/s, like the ceiling
        core = d["read_mb"] * 1.048576 / cpu if cpu > 0 else float("nan")
        for k in ("like", "main_gated", "wheel"):
            rows[k].append(c[k])
            rows["r_" + k].append(core / c[k])
        rows["wall"].append(mbps)
        rows["core"].append(core)
        rows["sys"].append((s1 - s0) / cpu if cpu > 0 else float("nan"))
        rows["r_wall"].append(mbps / c["like"])
        if enforcing is not None:
            pid = enforcing.proc.pid
            e0, (em0, et0) = cpu_seconds(pid), thread_seconds(pid)
            ed = wrk(enforcing.url + url[len(sc.url):], seconds, 1)
            e1, (em1, et1) = cpu_seconds(pid), thread_seconds(pid)
            if ed["read_mb"] > 0 and e1 > e0:
                eper = 100.0 / (ed["read_mb"] * 1.048576)
                rows["enf_core"].append(ed["read_mb"] * 1.048576 / (e1 - e0))
                rows["r_enf"].append(rows["enf_core"][-1] / c["like"])
                rows["enf_loop_s"].append((em1 - em0) * eper)
                rows["enf_threads_s"].append((et1 - et0) * eper)
    med = statistics.median
    return {"ceiling_MBps": med(rows["like"]), "ceiling_main_gated_MBps": med(rows["main_gated"]),
            "ceiling_wheel_MBps": med(rows["wheel"]), "gate_opens": ceil.gate_opens, "libhs": ceil.libhs,
            "compiled_core": ceil.core is not None,
            "sidecar_MBps": med(rows["wall"]), "sidecar_MB_per_cpu_s": med(rows["core"]),
            "x_ceiling_wall": med(rows["r_wall"]), "x_ceiling_per_core": med(rows["r_like"]),
            "x_main_gated_per_core": med(rows["r_main_gated"]), "x_wheel_per_core": med(rows["r_wheel"]),
            "rounds": rounds, "kernel_share_of_cpu": med(rows["sys"]),
            "loop_s_per_100MB": med(rows["loop_s"]), "threads_s_per_100MB": med(rows["threads_s"]),
            "ceiling_s_per_100MB": med(rows["libhs_s"]),
            "floor_s_per_100MB": med(rows["floor_s"]) if rows["floor_s"] else None,
            "enforce": {"sidecar_MB_per_cpu_s": med(rows["enf_core"]), "x_ceiling_per_core": med(rows["r_enf"]),
                        "loop_s_per_100MB": med(rows["enf_loop_s"]),
                        "threads_s_per_100MB": med(rows["enf_threads_s"])} if rows["enf_core"] else None,
            "per_round": {k: [round(x, 3) for x in v] for k, v in rows.items()}}


SECTIONS = ("paths", "download", "reuse-port", "trips")


def pin(pid: int, cpu: int) -> None:
    """Every thread of ``pid`` on CPU ``cpu`` (threads it starts later inherit it)."""
    subprocess.run(["taskset", "-a", "-cp", str(cpu), str(pid)], check=True, capture_output=True)


def reuse_port(d: Path, origin: str, url_path: str, seconds: int, procs: int, rounds: int) -> dict:
    """Groups of N = 1 .. procs sidecar processes, each group sharing one port (--reuse-port, one
    state dir), all started up front; 8 concurrent 100 MB downloads against each group in turn,
    round after round (so load from elsewhere falls on every N alike).

    What is isolated: one process is one core's worth. Each process has ``scan_workers: 1`` and
    all its threads are pinned (taskset) to a core of its own (process i on CPU i), so N processes
    can use N cores and never more; without this one process's scan pool already spreads over
    every core and N processes cannot add throughput. wrk and the nginx origin are not pinned:
    they share the same cores (on a 2-core machine no core is left for them). Per N: aggregate
    MB/s (median), its ratio to N = 1 per round (median), each process's CPU seconds and its busy
    share of its core over the download (connections are spread by the kernel's hash: an idle
    process shows 0), and MB per CPU-second of the sidecars (the per-core cost, which should stay
    flat as N grows when the scaling is real)."""
    groups: dict[int, list[Sidecar]] = {}
    out: dict[int, dict] = {}
    ncpu = os.cpu_count() or 1
    conf = {"proxy": {"mode": "monitor"}, "alerts": {"sinks": []}, "scan_workers": 1}
    try:
        for n in range(1, procs + 1):
            base = Sidecar.create(d / f"reuse-{n}", origin, conf, extra_args=["--reuse-port"])
            groups[n] = [base] + [Sidecar(base.state, base.config, base.port, free_port(), free_port(), ["--reuse-port"])
                                  for _ in range(n - 1)]
            for i, sc in enumerate(groups[n]):
                sc.start()
                pin(sc.proc.pid, i % ncpu)
        runs: dict[int, list[dict]] = {n: [] for n in groups}
        for _ in range(rounds):
            for n, group in groups.items():
                cpu0 = [cpu_seconds(sc.proc.pid) for sc in group]
                t0 = time.perf_counter()
                r = wrk(group[0].url + url_path, seconds, 8)
                wall = time.perf_counter() - t0
                cpu = [cpu_seconds(sc.proc.pid) - c for sc, c in zip(group, cpu0)]
                runs[n].append({"MBps": r["mbps"] * 1.048576, "cpu_s": cpu, "errors": r["errors"],
                                "busy": [c / wall for c in cpu],
                                "MB_per_cpu_s": r["read_mb"] * 1.048576 / sum(cpu) if sum(cpu) > 0 else float("nan")})
        med = statistics.median
        for n, rs in runs.items():
            mid = sorted(rs, key=lambda x: x["MBps"])[len(rs) // 2]
            out[n] = {"MBps": med(x["MBps"] for x in rs),
                      "x_one": med(x["MBps"] / y["MBps"] for x, y in zip(rs, runs[1])),
                      "MB_per_cpu_s": med(x["MB_per_cpu_s"] for x in rs),
                      "cpu_s": [round(c, 2) for c in mid["cpu_s"]], "busy": [round(b, 2) for b in mid["busy"]],
                      "rounds": rs, "errors": any(x["errors"] for x in rs)}
    finally:
        for group in groups.values():
            for sc in group:
                sc.stop()
    return out


def trips(sc: Sidecar, root: Path, n: int) -> dict:
    roster = synth.breach_csv(800)
    first, again = [], []
    for i in range(n):
        (root / f"leak-{i}.csv").write_bytes(f"# {i}\n".encode() + roster)
        url = f"{sc.url}/leak-{i}.csv"
        for bucket in (first, again):
            t = time.perf_counter()
            try:
                urllib.request.urlopen(url, timeout=10).read()
                raise SystemExit(f"{url} was not refused")
            except urllib.error.HTTPError as e:
                assert e.code == 451, e.code
            bucket.append((time.perf_counter() - t) * 1000)
    text = urllib.request.urlopen(sc.metrics + "/metrics").read().decode()
    return {"n": n,
            "takedown_p50_ms": histogram_quantile(text, "dlp_detection_to_takedown_seconds", 0.5) * 1000,
            "takedown_p99_ms": histogram_quantile(text, "dlp_detection_to_takedown_seconds", 0.99) * 1000,
            "first_451_p50_ms": statistics.median(first), "first_451_p99_ms": _p99(first),
            "next_451_p50_ms": statistics.median(again), "next_451_p99_ms": _p99(again)}


def _p99(v: list[float]) -> float:
    return sorted(v)[min(len(v) - 1, int(round(0.99 * (len(v) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--trips", type=int, default=120)
    ap.add_argument("--big-mb", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3, help="download / ceiling rounds")
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 1, help="--reuse-port: up to this many processes")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections to run (default all): {', '.join(SECTIONS)}")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--sched", choices=("auto", "nice", "idle"), help="the sidecars' scan_sched (default: the "
                                                                       "config's default)")
    a = ap.parse_args()
    only = set(a.only.split(","))
    if only - set(SECTIONS):
        raise SystemExit(f"--only: unknown section(s) {sorted(only - set(SECTIONS))}; known: {', '.join(SECTIONS)}")
    rows: dict = {}
    dl: dict = {}
    rp: dict = {}
    t: dict = {}
    checks: list[tuple[str, bool]] = []
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"{tool} is required (make bench installs it)")
    d = Path(tempfile.mkdtemp(prefix="dlp-bench-"))
    os.chmod(d, 0o755)                  # nginx workers run as nobody when started by root
    www = d / "www"
    www.mkdir()
    (www / "10k.html").write_bytes(synth.benign_web(10 << 10)[: 10 << 10])
    block = synth.benign_web(1 << 20)
    with open(www / "big.html", "wb") as fh:
        for _ in range(a.big_mb):
            fh.write(block[: 1 << 20])
    procs: list[subprocess.Popen] = []
    sidecars: list[Sidecar] = []
    try:
        op, pp = free_port(), free_port()
        procs.append(nginx(d, "origin", op, f"root {www}; sendfile on;"))
        procs.append(nginx(d, "proxy", pp, f"location / {{ proxy_pass http://127.0.0.1:{op}; "
                                           'proxy_http_version 1.1; proxy_set_header Connection ""; }'))
        origin = f"http://127.0.0.1:{op}"
        wait_http(origin + "/10k.html")
        wait_http(f"http://127.0.0.1:{pp}/10k.html")
        for mode in ("monitor", "enforce"):
            sc = Sidecar.create(d / mode, origin, {"proxy": {"mode": mode}, "alerts": {"sinks": []},
                                                   **({"scan_sched": a.sched} if a.sched else {})}).start()
            sidecars.append(sc)
        targets = {"direct (nginx origin)": origin, "nginx reverse proxy": f"http://127.0.0.1:{pp}",
                   "sidecar monitor": sidecars[0].url, "sidecar enforce": sidecars[1].url} if "paths" in only else {}
        for name, base in targets.items():
            sc = sidecars[0] if name == "sidecar monitor" else sidecars[1] if name == "sidecar enforce" else None
            tput = wrk(base + "/10k.html", a.seconds, 10)
            lat = own_latency(sc, base + "/10k.html", a.seconds) if sc else wrk(base + "/10k.html", a.seconds, 1)
            big = wrk(base + "/big.html", a.seconds + 4, 1)
            rows[name] = {"rps_10k": tput["rps"], "p50_10k_ms": lat["p50"], "p99_10k_ms": lat["p99"],
                          "big_MBps": big["mbps"], "errors": tput["errors"] or lat["errors"] or big["errors"]}
            if sc:
                rows[name].update({k: lat[k] for k in ("own_p50_ms", "own_p99_ms", "own_p99_le_ms", "own_n")})
            print(f"  measured {name}", file=sys.stderr)
        if rows:
            print_paths(rows, a.big_mb)
            mon, ng = rows["sidecar monitor"], rows["nginx reverse proxy"]
            checks += [("large downloads, monitor >= 1 Gbit/s", mon["big_MBps"] * 8 * 1.048576 >= 1000),
                       ("large downloads, monitor >= 0.5x nginx", mon["big_MBps"] >= 0.5 * ng["big_MBps"]),
                       ("10 KiB: the sidecar's own p50 <= 1 ms", mon["own_p50_ms"] <= 1.0),
                       ("10 KiB: the sidecar's own p99 <= 5 ms", mon["own_p99_ms"] <= 5.0)]
        if "download" in only:
            dl = download_section(sidecars[0], sidecars[1], www, op, a)
            checks.append((f"{a.big_mb} MB benign download >= 0.8x the raw stream ceiling per core: main + gated "
                           "(the scanner's databases, as bench/engine.py and bench/core.py define the ceiling; "
                           f"{dl['x_main_gated_per_core']:.2f}x)", dl["x_main_gated_per_core"] >= 0.8))
            checks.append((f"{a.big_mb} MB benign download >= 0.8x the raw stream ceiling per core, like for like: "
                           "only the databases the sidecar scans this file with "
                           f"({dl['x_ceiling_per_core']:.2f}x)", dl["x_ceiling_per_core"] >= 0.8))
        if "reuse-port" in only:
            rp = reuse_port_section(d, origin, a)
            top = max(rp)
            checks.append((f"--reuse-port: {top} processes (one core each) >= 0.8 x {top} x one process",
                           rp[top]["x_one"] >= 0.8 * top))
        if "trips" in only:
            t = trips_section(sidecars[1], www, a.trips)
            checks.append(("trip -> takedown p99 <= 50 ms", t["takedown_p99_ms"] <= 50 and t["next_451_p99_ms"] <= 50))
        print()
        for what, ok in checks:
            print(f"{'PASS' if ok else 'MISS'}  {what}")
        if a.json:
            a.json.write_bytes(orjson.dumps({"rows": rows, "download_vs_ceiling": dl,
                                             "reuse_port": {str(n): r for n, r in rp.items()}, "trips": t,
                                             "checks": dict(checks)},
                                            option=orjson.OPT_INDENT_2))
    finally:
        for sc in sidecars:
            sc.stop()
        stop_nginx(procs)
        shutil.rmtree(d, ignore_errors=True)


def print_paths(rows: dict, big_mb: int) -> None:
    ng = rows["nginx reverse proxy"]
    print(f"\n## Proxy (2-core VM, wrk, same run; {big_mb} MB downloads, 10 KiB pages)\n")
    print("| path | 10 KiB req/s (c=10) | client p50 / p99 ms (c=1) | sidecar's own p50 / p99 ms (its histogram) | "
          f"{big_mb} MB download MB/s (Gbit/s) | × nginx |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        own = "-" if "own_p99_ms" not in r else \
            f"{r['own_p50_ms']:.2f} / {r['own_p99_ms']:.2f} (p99 bucket ≤ {r['own_p99_le_ms']:g}; n={r['own_n']:,.0f})"
        print(f"| {name} | {r['rps_10k']:,.0f} | {r['p50_10k_ms']:.2f} / {r['p99_10k_ms']:.2f} | {own} | "
              f"{r['big_MBps']:,.0f} ({r['big_MBps'] * 8 * 1.048576 / 1000:.2f}) | "
              f"{r['big_MBps'] / ng['big_MBps']:.2f} |" + (" errors!" if r["errors"] else ""))


def download_section(sc: Sidecar, enforcing: Sidecar, www: Path, origin_port: int, a: argparse.Namespace) -> dict:
    print(f"  measuring {a.big_mb} MB downloads against the raw stream ceilings", file=sys.stderr)
    fport = free_port()
    relay = subprocess.Popen([sys.executable, str(Path(__file__).with_name("relay_floor.py")), str(fport),
                              str(origin_port)])
    try:
        wait_http(f"http://127.0.0.1:{fport}/10k.html", proc=relay)
        dl = download_vs_ceiling(sc, sc.url + "/big.html", (www / "big.html").read_bytes(), a.seconds + 4,
                                 a.rounds, floor=(relay.pid, f"http://127.0.0.1:{fport}/big.html"),
                                 enforcing=enforcing)
    finally:
        relay.kill()
        relay.wait()
    load = os.getloadavg()
    print(f"\n## {a.big_mb} MB benign download, sidecar (monitor) against the raw stream ceilings "
          f"({dl['rounds']} alternated rounds, medians; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
          f"on {os.cpu_count()} cores)\n")
    gate = "opens" if dl["gate_opens"] else "stays shut"
    lib = f"compiled core, libhs {dl['libhs']}" if dl["compiled_core"] else "PyPI wheel (no compiled core)"
    like = "main + gated" if dl["gate_opens"] else "main only"
    print(f"Ceiling, like for like: the raw Hyperscan stream scan (no callback, CPU time of this process, "
          f"64 KiB calls) of the databases the sidecar scans this file with: {lib}; the gate {gate} on this "
          f"file (a hit of a gate-opening id in the main database), so the gated database "
          f"{'is' if dl['gate_opens'] else 'is not'} in it. The other two ceilings scan the gated database "
          "from the first byte as well (lower when the gate stays shut: a ratio against them flatters the "
          "sidecar); the wheel's is this bench's ceiling up to session 13.\n")
    print("| ceiling | MB/s | sidecar MB per CPU-second | × ceiling per core |\n|---|---|---|---|")
    print(f"| **like for like: {like} ({lib})** | {dl['ceiling_MBps']:.1f} | {dl['sidecar_MB_per_cpu_s']:.1f} "
          f"({dl['kernel_share_of_cpu']:.0%} system time) | **{dl['x_ceiling_per_core']:.2f}x** |")
    if dl["compiled_core"]:
        print(f"| main + gated ({lib}) | {dl['ceiling_main_gated_MBps']:.1f} | ″ | {dl['x_main_gated_per_core']:.2f}x |")
    print(f"| main + gated (PyPI wheel's libhs; the former ceiling) | {dl['ceiling_wheel_MBps']:.1f} | ″ | "
          f"{dl['x_wheel_per_core']:.2f}x |")
    if (enf := dl["enforce"]) is not None:
        print(f"| like for like, the sidecar in enforce mode (the default: each piece scanned before it leaves) | "
              f"{dl['ceiling_MBps']:.1f} | {enf['sidecar_MB_per_cpu_s']:.1f} | {enf['x_ceiling_per_core']:.2f}x |")
    print(f"\nPer 100 MB, CPU seconds (schedstat, medians): the event loop thread {dl['loop_s_per_100MB']:.3f}, "
          f"the other threads (the scan pool) {dl['threads_s_per_100MB']:.3f}; the like-for-like ceiling's raw scan "
          f"{dl['ceiling_s_per_100MB']:.3f} (0.8x of it is {dl['ceiling_s_per_100MB'] / 0.8:.3f} in all)."
          + (f" Enforce: loop {dl['enforce']['loop_s_per_100MB']:.3f}, other threads "
             f"{dl['enforce']['threads_s_per_100MB']:.3f}." if dl["enforce"] else ""))
    if dl["floor_s_per_100MB"] is not None:
        fl, raw = dl["floor_s_per_100MB"], dl["ceiling_s_per_100MB"]
        print(f"\nThe floor of relaying (bench/relay_floor.py: a bare TCP relay in front of the same origin, "
              f"no HTTP, no scan, blocking recv and send of 256 KiB, downloaded in the same rounds): "
              f"{fl:.3f} CPU-s per 100 MB. Reading the bytes it scans, no relay can do better than "
              f"raw scan + floor = {raw + fl:.3f} s, i.e. {raw / (raw + fl):.2f}x the like-for-like ceiling per "
              f"core; 0.8x leaves {raw / 0.8 - raw - fl:.3f} s per 100 MB for HTTP, the scan hand-off and the "
              f"scanner's own work, against {dl['loop_s_per_100MB'] + dl['threads_s_per_100MB'] - raw - fl:.3f} s "
              "spent on them here.")
    print(f"\nSidecar wall (c=1): {dl['sidecar_MBps']:.1f} MB/s = {dl['x_ceiling_wall']:.2f}x the like-for-like "
          f"ceiling. Per round, sidecar MB per CPU-second: {dl['per_round']['core']}; like-for-like ratio: "
          f"{dl['per_round']['r_like']}.")
    return dl


def reuse_port_section(d: Path, origin: str, a: argparse.Namespace) -> dict:
    print(f"  measuring --reuse-port with 1..{a.procs} processes", file=sys.stderr)
    rp = reuse_port(d, origin, "/big.html", a.seconds + 4, a.procs, a.rounds)
    print(f"\n## --reuse-port: N sidecar processes (monitor) on one port, 8 connections of {a.big_mb} MB downloads "
          f"({a.rounds} alternated rounds, medians)\n")
    print("Each process has `scan_workers: 1` and is pinned to a core of its own (taskset), so one process "
          "is one core's worth and N processes may use N cores; wrk and the nginx origin are not pinned and "
          f"share those cores ({os.cpu_count()} on this machine).\n")
    print("| N | aggregate MB/s | × N=1 | sidecar CPU s per process (busy share of its core), median round | "
          "MB per sidecar CPU-second |\n|---|---|---|---|---|")
    for n, r in rp.items():
        print(f"| {n} | {r['MBps']:.1f} | {r['x_one']:.2f} | "
              + ", ".join(f"{c:.1f} ({b:.0%})" for c, b in zip(r["cpu_s"], r["busy"]))
              + f" | {r['MB_per_cpu_s']:.1f} |" + (" errors!" if r["errors"] else ""))
    one = rp[1]["busy"][0]
    if one < 0.8:
        print(f"\nOne process kept its core only {one:.0%} busy: something else (other work on the machine, or "
              "wrk and nginx on the same cores) held the CPU, so this run cannot show scaling with cores; "
              "read the MB per CPU-second column (flat = nothing shared throttles the processes).")
    return rp


def trips_section(sc: Sidecar, www: Path, n: int) -> dict:
    t = trips(sc, www, n)
    print(f"\n## Trips ({t['n']} leaks through the enforcing sidecar)\n")
    print("| measure | p50 ms | p99 ms |\n|---|---|---|")
    print(f"| trip -> takedown durable (server histogram, interpolated) | {t['takedown_p50_ms']:.2f} | "
          f"{t['takedown_p99_ms']:.2f} |")
    print(f"| client: leak request -> 451 | {t['first_451_p50_ms']:.2f} | {t['first_451_p99_ms']:.2f} |")
    print(f"| client: next request -> 451 (takedown enforced) | {t['next_451_p50_ms']:.2f} | "
          f"{t['next_451_p99_ms']:.2f} |")
    return t


if __name__ == "__main__":
    main()
