"""Proxy benchmark: the sidecar against direct access and nginx as a plain reverse proxy, one run.

Origin: nginx serving static files (a 10 KiB page and a 100 MB download of benign web text), so
the origin is never the bottleneck. Measured with wrk on the same machine, same run:

- 10 KiB responses: requests/s at 10 connections, and latency p50/p99 at 1 connection (the
  added latency is "via - direct");
- 100 MB downloads: MB/s at 1 connection (one core's worth of proxying);
- the sidecar in monitor mode and in enforce mode; nginx (1 worker) as the reference proxy;
- trips: ≥ 100 leaks downloaded through the enforcing sidecar; trip -> takedown durable
  (server-side histogram), and the client-side time to the 451 of the next request.

    python bench/proxy.py [--seconds 8] [--trips 120] [--json FILE]
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

from sensor import synth  # noqa: E402
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


def wrk(url: str, seconds: int, conns: int) -> dict:
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", url],
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
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
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
            sc = Sidecar.create(d / mode, origin, {"proxy": {"mode": mode}, "alerts": {"sinks": []}}).start()
            sidecars.append(sc)
        targets = {"direct (nginx origin)": origin, "nginx reverse proxy": f"http://127.0.0.1:{pp}",
                   "sidecar monitor": sidecars[0].url, "sidecar enforce": sidecars[1].url}
        rows = {}
        for name, base in targets.items():
            tput = wrk(base + "/10k.html", a.seconds, 10)
            lat = wrk(base + "/10k.html", a.seconds, 1)
            big = wrk(base + "/big.html", a.seconds + 4, 1)
            rows[name] = {"rps_10k": tput["rps"], "p50_10k_ms": lat["p50"], "p99_10k_ms": lat["p99"],
                          "big_MBps": big["mbps"], "errors": tput["errors"] or lat["errors"] or big["errors"]}
            print(f"  measured {name}", file=sys.stderr)
        dr = rows["direct (nginx origin)"]
        ng = rows["nginx reverse proxy"]
        print(f"\n## Proxy (2-core VM, wrk, same run; {a.big_mb} MB downloads, 10 KiB pages)\n")
        print("| path | 10 KiB req/s (c=10) | p50 ms (c=1) | p99 ms (c=1) | added p50 / p99 ms | "
              f"{a.big_mb} MB download MB/s (Gbit/s) | × nginx |")
        print("|---|---|---|---|---|---|---|")
        for name, r in rows.items():
            added = "-" if name.startswith("direct") else \
                f"{r['p50_10k_ms'] - dr['p50_10k_ms']:.2f} / {r['p99_10k_ms'] - dr['p99_10k_ms']:.2f}"
            print(f"| {name} | {r['rps_10k']:,.0f} | {r['p50_10k_ms']:.2f} | {r['p99_10k_ms']:.2f} | {added} | "
                  f"{r['big_MBps']:,.0f} ({r['big_MBps'] * 8 * 1.048576 / 1000:.2f}) | "
                  f"{r['big_MBps'] / ng['big_MBps']:.2f} |" + (" errors!" if r["errors"] else ""))
        t = trips(sidecars[1], www, a.trips)
        print(f"\n## Trips ({t['n']} leaks through the enforcing sidecar)\n")
        print("| measure | p50 ms | p99 ms |\n|---|---|---|")
        print(f"| trip -> takedown durable (server histogram, interpolated) | {t['takedown_p50_ms']:.2f} | "
              f"{t['takedown_p99_ms']:.2f} |")
        print(f"| client: leak request -> 451 | {t['first_451_p50_ms']:.2f} | {t['first_451_p99_ms']:.2f} |")
        print(f"| client: next request -> 451 (takedown enforced) | {t['next_451_p50_ms']:.2f} | "
              f"{t['next_451_p99_ms']:.2f} |")
        mon = rows["sidecar monitor"]
        checks = [
            ("large downloads, monitor >= 1 Gbit/s", mon["big_MBps"] * 8 * 1.048576 >= 1000),
            ("large downloads, monitor >= 0.5x nginx", mon["big_MBps"] >= 0.5 * ng["big_MBps"]),
            ("10 KiB added p50 <= 1 ms", mon["p50_10k_ms"] - dr["p50_10k_ms"] <= 1.0),
            ("10 KiB added p99 <= 5 ms", mon["p99_10k_ms"] - dr["p99_10k_ms"] <= 5.0),
            ("trip -> takedown p99 <= 50 ms", t["takedown_p99_ms"] <= 50 and t["next_451_p99_ms"] <= 50),
        ]
        print()
        for what, ok in checks:
            print(f"{'PASS' if ok else 'MISS'}  {what}")
        if a.json:
            a.json.write_bytes(orjson.dumps({"rows": rows, "trips": t, "checks": dict(checks)},
                                            option=orjson.OPT_INDENT_2))
    finally:
        for sc in sidecars:
            sc.stop()
        for p in procs:
            p.send_signal(signal.SIGQUIT)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
