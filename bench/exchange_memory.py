"""Memory per in-flight exchange: the proxy sidecar's resident set with N slow downloads open at once.

Issue 19 moved scans off the event loop (a scan pool, a compiled core) and asks that the memory
an exchange costs stay what it was. This bench measures it on real processes, in one run:

- origin: nginx serving the bodies at ``--rate`` KB/s per connection (``limit_rate``, 8 by
  default; ``--breach-rate`` for the dense body), so that every download stays in flight while
  the sidecar's resident set is sampled. Slow on purpose: N downloads must stay well within
  what the slowest tree scans on a loaded machine, or the figure is a backlog of bytes waiting
  in buffers, not the cost of an exchange (at 64 KB/s x 200 on the shared 2-core VM, every tree
  showed 150-260 KiB per exchange, growing with N: buffers);
- bodies: ``clean`` (benign web text), ``leakish`` (the same with a work contact block —
  phones, an e-mail, an office address — every 16 KiB: findings on every chunk, never a trip)
  and, in monitor only (enforce would cut it at once), ``breach`` (a dense roster CSV: the
  scanner's per-exchange record and distinct-value state at its fullest);
- trees: this tree with its compiled core, this tree with ``DLP_SENSOR_PYTHON_CORE=1`` (the
  Python reference scanner), and the tree before issue 19's work (``--base``, commit ab9bce6 by
  default, extracted with ``git archive`` into a temporary directory — or a checkout — and run
  from this venv with PYTHONPATH: its dependencies are the same);
- for each (mode, body) a fresh sidecar per tree, the trees back to back (load from elsewhere
  falls on all alike): its idle VmRSS after one warm-up download (256 KiB of that body), then for each N
  the N downloads are opened by one aiohttp client here; once the sidecar counts N exchanges in
  flight (``dlp_active_exchanges``) and every client has bytes, VmRSS is sampled every 0.1 s for
  ``--sample-s``; then the clients hang up and the sidecar drains before the next N.

Per exchange = (median in-flight VmRSS - idle VmRSS) / N; peak = (max sample - idle) / N.
Rounds repeat the whole grid (fresh sidecars); the table gives medians over rounds, the verdict
(at the largest N) the median over rounds of each round's ratio to the base. ``--smaps`` prints
where the growth is resident (glibc's main heap, thread arenas, other anonymous memory).

    python bench/exchange_memory.py [--base ab9bce6|DIR|none] [--n 50,200] [--rate 8] [--rounds 3]
        [--bodies clean,leakish,breach] [--trees compiled,python,base] [--json FILE]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
import orjson  # noqa: E402

from bench.proxy import nginx, stop_nginx  # noqa: E402
from sensor import synth  # noqa: E402
from tests.procs import Sidecar, free_port, read_metric, wait_http  # noqa: E402

BASE_COMMIT = "ab9bce6"
CONTACT = ("\n<p>Front desk (916) 445-9555, fax (916) 445-9556, press@agency.ca.gov. "
           "1300 I Street, Sacramento, CA 95814.</p>\n").encode()
BODIES = {"clean": ("monitor", "enforce"), "leakish": ("monitor", "enforce"), "breach": ("monitor",)}
# this tree's variants (--trees): name -> (label, environment over os.environ[, configuration over
# the sidecar's]): what an enforce exchange's memory depends on, measured in the same run.
THIS_TREES: dict[str, tuple] = {
    "compiled": ("this tree, compiled core", {"DLP_SENSOR_PYTHON_CORE": ""}),
    "python": ("this tree, DLP_SENSOR_PYTHON_CORE=1", {"DLP_SENSOR_PYTHON_CORE": "1"}),
    "arenas-default": ("this tree, compiled core, glibc's default arenas",
                       {"DLP_SENSOR_PYTHON_CORE": "", "DLP_MALLOC_ARENA_MAX": "0"}),
    "nice0": ("this tree, compiled core, scan_nice: 0", {"DLP_SENSOR_PYTHON_CORE": ""}, {"scan_nice": 0}),
    "loop": ("this tree, compiled core, scan_workers: 0 (scans on the loop)", {"DLP_SENSOR_PYTHON_CORE": ""},
             {"scan_workers": 0}),
}
VERDICT_SLACK = 1.10        # "unchanged": this tree's compiled core within 10 % of the base per exchange
SMAPS = False               # --smaps: print where the resident growth is, per (mode, body, tree, N)


@dataclass
class Tree:
    name: str
    env: dict[str, str]         # over os.environ for the sidecar
    conf: dict | None = None    # over the sidecar's configuration (top-level keys)


def write_bodies(www: Path, mb: int) -> None:
    size = mb << 20
    benign = synth.benign_web(size)[:size]
    (www / "clean.html").write_bytes(benign)
    step = 16 << 10
    (www / "leakish.html").write_bytes(b"".join(benign[i:i + step] + CONTACT for i in range(0, size, step)))
    breach = b""
    rows = 20_000
    while len(breach) < size:
        breach = synth.breach_csv(rows)
        rows *= 2
    (www / "breach.csv").write_bytes(breach[:size])
    for name in ("clean.html", "leakish.html", "breach.csv"):        # the warm-up: the same kind, 256 KiB
        (www / f"warm-{name}").write_bytes((www / name).read_bytes()[:256 << 10])


def vm_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def rss_by_kind(pid: int) -> dict[str, int]:
    """Resident KiB by kind of mapping (--smaps): glibc's main heap (``[heap]``), its thread arenas
    (anonymous mappings that start on a 64 MiB boundary: glibc aligns each arena heap to its
    maximum size), other anonymous memory (pymalloc's arenas, large mallocs, thread stacks) and
    files (code, databases read in)."""
    out = {"heap": 0, "thread-arenas": 0, "anon": 0, "file": 0}
    kind = "file"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        f = line.split()
        if not f:
            continue
        if "-" in f[0] and len(f) >= 5 and not f[0].endswith(":"):
            lo = int(f[0].split("-")[0], 16)
            name = f[5] if len(f) > 5 else ""
            kind = ("heap" if name == "[heap]" else "file" if name.startswith("/") else
                    "thread-arenas" if not name and lo % (64 << 20) == 0 else "anon")
        elif f[0] == "Rss:":
            out[kind] += int(f[1])
    return out


def start_sidecar(d: Path, origin: str, mode: str, tree: Tree) -> Sidecar:
    conf = {"proxy": {"mode": mode, "max_scans_per_client": 100_000, "max_scans": 100_000},
            "alerts": {"sinks": []}, **(tree.conf or {})}
    sc = Sidecar.create(d, origin, conf)
    saved = dict(os.environ)
    os.environ.update(tree.env)         # Sidecar.start passes this process's environment on
    try:
        sc.start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return sc


async def in_flight(sc: Sidecar, url: str, n: int, sample_s: float, timeout: float) -> dict:
    """Open ``n`` downloads of ``url``; sample the sidecar's VmRSS once all are in flight."""
    got = [0] * n
    statuses: list[int] = []
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None)) as http:

        async def one(i: int) -> None:
            async with http.get(url, headers={"Accept-Encoding": "identity"}) as r:
                statuses.append(r.status)
                async for chunk in r.content.iter_any():
                    got[i] += len(chunk)

        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        deadline = time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        while True:
            now = await loop.run_in_executor(None, active, sc) or 0
            done = [t for t in tasks if t.done()]
            if done:
                errs = [t.exception() for t in done if t.exception() is not None]
                raise SystemExit(f"{len(done)} downloads ended early (statuses {sorted(set(statuses))}): "
                                 f"{errs[:1]}; raise --mb or lower --rate")
            if now >= n and all(got):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"only {now:.0f} of {n} exchanges in flight, "
                                 f"{sum(1 for g in got if g)} with bytes, after {timeout}s")
            await asyncio.sleep(0.1)
        samples = []
        kinds = rss_by_kind(sc.proc.pid) if SMAPS else None
        end = time.monotonic() + sample_s
        while time.monotonic() < end:
            samples.append(vm_rss_kb(sc.proc.pid))
            await asyncio.sleep(0.1)
        still = sum(1 for t in tasks if not t.done())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if still < n:
        raise SystemExit(f"{n - still} downloads ended while sampling; raise --mb or lower --rate")
    return {"median_kb": statistics.median(samples), "max_kb": max(samples), "samples": len(samples), "kinds": kinds}


def active(sc: Sidecar) -> float | None:
    """The sidecar's exchanges in flight; None while it does not answer (a tree that scans on its
    event loop cannot serve /metrics while a backlog of dense chunks is scanned)."""
    try:
        return read_metric(sc.metrics, "dlp_active_exchanges")
    except OSError:
        return None


def drain(sc: Sidecar, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while active(sc) != 0:
        if time.monotonic() > deadline:
            raise SystemExit("the sidecar did not drain its exchanges")
        time.sleep(0.1)


def warm(url: str) -> None:
    """One short download: first-use imports, buffers and the scan pool's threads count as idle (a
    whole dense body would leave the allocator holding its peak, which later exchanges reuse)."""
    async def go() -> None:
        async with aiohttp.ClientSession() as http:
            async with http.get(url, headers={"Accept-Encoding": "identity"}) as r:
                async for _ in r.content.iter_any():
                    pass
    asyncio.run(go())


def measure(d: Path, origin: str, mode: str, body: str, tree: Tree, ns: list[int],
            sample_s: float, timeout: float) -> dict:
    sc = start_sidecar(d, origin, mode, tree)
    try:
        path = {"clean": "/clean.html", "leakish": "/leakish.html", "breach": "/breach.csv"}[body]
        warm(sc.url + "/fast/warm-" + path[1:])     # unthrottled, 256 KiB of the same kind
        drain(sc)
        idle_samples = []
        for _ in range(5):
            time.sleep(0.2)
            idle_samples.append(vm_rss_kb(sc.proc.pid))
        idle = statistics.median(idle_samples)
        out = {"idle_mb": idle / 1024}
        idle_kinds = rss_by_kind(sc.proc.pid) if SMAPS else None
        for n in ns:
            r = asyncio.run(in_flight(sc, sc.url + path, n, sample_s, timeout))
            out[n] = {"kb_per_exchange": (r["median_kb"] - idle) / n, "peak_kb_per_exchange": (r["max_kb"] - idle) / n,
                      "rss_mb": r["median_kb"] / 1024}
            if SMAPS:
                print(f"    {mode} {body} {tree.name} N={n}: KiB per exchange by kind: " + ", ".join(
                    f"{k} {(r['kinds'][k] - idle_kinds[k]) / n:.0f}" for k in idle_kinds), file=sys.stderr)
            drain(sc)
        return out
    finally:
        sc.stop()


def checkout(base: str) -> Path | None:
    """``--base`` as a directory holding the ``sensor`` package: as given, or extracted from a commit."""
    if base == "none":
        return None
    if Path(base).is_dir():
        d = Path(base).resolve()
    else:
        root = Path(__file__).resolve().parents[1]
        d = Path(tempfile.mkdtemp(prefix="dlp-bench-base-"))
        arch = subprocess.run(["git", "-C", str(root), "archive", base], capture_output=True)
        if arch.returncode != 0:
            print(f"(--base {base}: not in this repository, the tree before issue 19 is not measured: "
                  f"{arch.stderr.decode(errors='replace').strip()[:200]})", file=sys.stderr)
            return None
        subprocess.run(["tar", "-x", "-C", str(d)], input=arch.stdout, check=True)
    if not (d / "sensor" / "__init__.py").exists():
        raise SystemExit(f"--base {base}: no sensor package in {d}")
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default=BASE_COMMIT,
                    help=f"the tree before issue 19's work: a checkout (directory), or a commit that this repository "
                         f"has (extracted with git archive into a temporary directory); default {BASE_COMMIT}; "
                         "'none' to measure this tree only")
    ap.add_argument("--n", default="50,200", help="concurrent downloads, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=int, default=8, help="KB/s per download at the origin")
    ap.add_argument("--breach-rate", type=int, default=8,
                    help="KB/s per breach download (N of them must stay within the slowest tree's scan rate)")
    ap.add_argument("--mb", type=int, default=8, help="body size (must outlast ramp-up and sampling at --rate)")
    ap.add_argument("--sample-s", type=float, default=2.0)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds for N downloads to be in flight")
    ap.add_argument("--modes", default="monitor,enforce")
    ap.add_argument("--bodies", default=",".join(BODIES), help="comma-separated: " + ", ".join(BODIES))
    ap.add_argument("--trees", default="compiled,python,base",
                    help="comma-separated, this tree's first: " + ", ".join(f"{k} ({v[0]})" for k, v in THIS_TREES.items())
                         + ", base (the tree before issue 19, see --base)")
    ap.add_argument("--smaps", action="store_true", help="print each measurement's resident growth by kind of mapping")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    global SMAPS
    SMAPS = a.smaps
    ns = [int(x) for x in a.n.split(",") if x]
    if not shutil.which("nginx") and not Path("/usr/sbin/nginx").exists():
        raise SystemExit("nginx is required (make bench installs it)")
    picked = [t for t in a.trees.split(",") if t]
    unknown = set(picked) - set(THIS_TREES) - {"base"}
    if unknown:
        raise SystemExit(f"--trees: unknown {sorted(unknown)}; known: {', '.join([*THIS_TREES, 'base'])}")
    trees = [Tree(*THIS_TREES[t]) for t in picked if t in THIS_TREES]
    if not trees:
        raise SystemExit("--trees: name at least one of this tree's variants (the verdict compares the first)")
    base = checkout(a.base) if "base" in picked else None
    if base is not None:
        trees.append(Tree(f"before issue 19 ({a.base if not Path(a.base).is_dir() else base.name})",
                          {"PYTHONPATH": str(base), "DLP_SENSOR_PYTHON_CORE": ""}))
        probe = subprocess.run([sys.executable, "-c", "import sensor, sensor.cli.main; print(sensor.__file__)"],
                               env={**os.environ, "PYTHONPATH": str(base)}, capture_output=True, text=True,
                               cwd="/")
        if not probe.stdout.strip().startswith(str(base)):
            raise SystemExit(f"--base does not import from {base}: {probe.stdout} {probe.stderr[-500:]}")
    else:
        print("(no --base: the tree before issue 19 is not measured; see --help)", file=sys.stderr)
    d = Path(tempfile.mkdtemp(prefix="dlp-bench-mem-"))
    os.chmod(d, 0o755)                  # nginx workers run as nobody when started by root
    www = d / "www"
    www.mkdir()
    write_bodies(www, a.mb)
    procs: list[subprocess.Popen] = []
    results: dict[tuple[str, str, str], list[dict]] = {}
    try:
        op = free_port()
        procs.append(nginx(d, "origin", op, f"root {www}; sendfile on; location /fast/ {{ alias {www}/; }} "
                                            f"location / {{ limit_rate {a.rate}k; }} "
                                            f"location = /breach.csv {{ limit_rate {a.breach_rate}k; }}"))
        origin = f"http://127.0.0.1:{op}"
        wait_http(origin + "/fast/clean.html")
        k = 0
        for rnd in range(a.rounds):
            for body, modes in BODIES.items():
                if body not in a.bodies.split(","):
                    continue
                for mode in (m for m in modes if m in a.modes.split(",")):
                    for tree in trees:
                        k += 1
                        print(f"  round {rnd + 1}: {mode} {body} {tree.name}", file=sys.stderr)
                        r = measure(d / f"sc{k}", origin, mode, body, tree, ns, a.sample_s, a.timeout)
                        results.setdefault((mode, body, tree.name), []).append(r)
    finally:
        if base is not None and not Path(a.base).is_dir():
            shutil.rmtree(base, ignore_errors=True)
        stop_nginx(procs)
        shutil.rmtree(d, ignore_errors=True)
    med = statistics.median
    print(f"\n## Memory per in-flight exchange (proxy sidecar, {a.mb} MB bodies at {a.rate} KB/s each "
          f"(breach {a.breach_rate} KB/s), "
          f"{a.rounds} rounds, medians; 2-core VM, other work running)\n")
    head = "| mode | body | tree | idle RSS MB | " + " | ".join(
        f"N={n}: KiB per exchange (peak)" for n in ns) + " |"
    print(head)
    print("|" + "---|" * (4 + len(ns)))
    table = {}
    for (mode, body, tname), rs in results.items():
        row = {"idle_mb": med(r["idle_mb"] for r in rs)}
        cells = []
        for n in ns:
            per = med(r[n]["kb_per_exchange"] for r in rs)
            peak = med(r[n]["peak_kb_per_exchange"] for r in rs)
            row[n] = {"kb_per_exchange": per, "peak_kb_per_exchange": peak, "rounds": [r[n] for r in rs]}
            cells.append(f"{per:.0f} ({peak:.0f})")
        table[(mode, body, tname)] = row
        print(f"| {mode} | {body} | {tname} | {row['idle_mb']:.1f} | " + " | ".join(cells) + " |")
    verdicts = []
    if base is not None:
        base_name = trees[-1].name
        print()
        for (mode, body, tname), row in table.items():
            if tname != trees[0].name:
                continue
            b = table[(mode, body, base_name)]
            n = max(ns)
            # the verdict: the median over rounds of this round's ratio (the trees ran back to back in
            # a round, under the same load from elsewhere), less swayed than a ratio of medians
            paired = [t["kb_per_exchange"] / o["kb_per_exchange"] if o["kb_per_exchange"] > 0 else float("nan")
                      for t, o in zip(row[n]["rounds"], b[n]["rounds"])]
            ratio = med(paired)
            ok = ratio <= VERDICT_SLACK
            verdicts.append({"mode": mode, "body": body, "ratio": ratio, "rounds": paired, "ok": ok})
            print(f"{'PASS' if ok else 'MISS'}  {mode} {body}, N={n}: compiled core {row[n]['kb_per_exchange']:.0f} KiB "
                  f"per exchange vs {b[n]['kb_per_exchange']:.0f} before issue 19 ({ratio:.2f}x, median of the "
                  f"rounds' {', '.join(f'{x:.2f}' for x in paired)}; "
                  f"unchanged = within {VERDICT_SLACK:.2f}x)")
    if a.json:
        a.json.write_bytes(orjson.dumps({"args": {k: str(v) for k, v in vars(a).items()},
                                         "table": [{"mode": m, "body": b, "tree": t, **{str(k): v for k, v in row.items()}}
                                                   for (m, b, t), row in table.items()],
                                         "verdicts": verdicts}, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
