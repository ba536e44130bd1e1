"""Tap benchmark: squid alone vs squid + the ICAP tap, Envoy alone vs Envoy + the ext_proc tap.

Same run, same origin (nginx, static files). wrk measures requests/s for 10 KiB pages (10
connections), latency at 1 connection, and MB/s for a 100 MB download (1 connection), through
squid as a reverse proxy without ICAP and with ``respmod_precache bypass=0`` to
``dlp-sensor icap``, and through Envoy with the shipped ``deploy/envoy/envoy.yaml`` with and
without its ext_proc filter (``dlp-sensor extproc``); the table gives the ratios. wrk's socket
timeout is set longer than the download takes (its default, 2 s, cut a slow 100 MB download short
and counted only the bytes read until then).

Then ext_proc in monitor vs enforce mode, same Envoy, same sensor process (``/monitor/*`` is a
monitor route, the rest enforce): the 100 MB body downloaded with curl, the two modes alternated,
``--repeats`` times each, medians and their ratio (issue 19 asks enforce >= 0.8x monitor).

    python bench/taps.py [--seconds 8] [--big-mb 100] [--repeats 3] [--only-extproc] [--json FILE]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson  # noqa: E402

from bench.proxy import nginx, wrk  # noqa: E402
from sensor import synth  # noqa: E402
from tests.procs import Sidecar, free_port, stop, wait_http  # noqa: E402

SQUID = """
http_port 127.0.0.1:{port} accel defaultsite=bench.example no-vhost
cache_peer 127.0.0.1 parent {origin} 0 no-query no-digest originserver name=origin
acl all_src src all
http_access allow all_src
cache_peer_access origin allow all_src
cache deny all
{icap}
pid_filename {d}/squid-{name}.pid
access_log none
cache_log {d}/cache-{name}.log
coredump_dir {d}
shutdown_lifetime 1 seconds
"""
ICAP = """icap_enable on
icap_service dlp respmod_precache bypass=0 icap://127.0.0.1:{port}/respmod
adaptation_access dlp allow all_src"""


def squid(d: Path, name: str, origin: int, icap_port: int | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    conf = d / f"squid-{name}.conf"
    conf.write_text(SQUID.format(port=port, origin=origin, d=d, name=name,
                                 icap=ICAP.format(port=icap_port) if icap_port else ""))
    exe = shutil.which("squid") or "/usr/sbin/squid"
    p = subprocess.Popen([exe, "-N", "-f", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/10k.html", timeout=30, proc=p)
    return p, url


def envoy(d: Path, name: str, origin: int, extproc_port: int | None) -> tuple[subprocess.Popen, str]:
    """The shipped config, its ports changed; without the ext_proc filter for the baseline."""
    conf = (Path(__file__).resolve().parents[1] / "deploy" / "envoy" / "envoy.yaml").read_text()
    if extproc_port is None:
        start = conf.index("                  - name: envoy.filters.http.ext_proc")
        end = conf.index("                  - name: envoy.filters.http.router")
        conf = conf[:start] + conf[end:]
    port, admin = free_port(), free_port()
    for old, new in (("port_value: 10000", port), ("port_value: 8080", origin),
                     ("port_value: 50051", extproc_port or 1), ("port_value: 9901", admin)):
        conf = conf.replace(old, f"port_value: {new}")
    (d / f"envoy-{name}.yaml").write_text(conf)
    p = subprocess.Popen([str(Path(sys.executable).parent / "envoy"), "-c", str(d / f"envoy-{name}.yaml"),
                          "--log-level", "error", "--base-id", str(port), "--concurrency", "1"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/10k.html", timeout=30, proc=p)
    return p, url


def wrk_download(url: str, seconds: int, big_mb: int) -> dict:
    """wrk at one connection with a socket timeout longer than one download (assumes >= 1 MB/s)."""
    timeout = big_mb + 30
    out = subprocess.run(["wrk", "-t1", "-c1", f"-d{seconds}s", f"--timeout={timeout}s", url],
                         capture_output=True, text=True, timeout=seconds + timeout + 60).stdout
    m = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    scale = {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}
    return {"mbps": float(m.group(1)) * scale.get(m.group(2), 1.0) if m else float("nan"),
            "errors": "Non-2xx" in out or "Socket errors" in out}


def curl_mbps(url: str, size: int) -> float | None:
    """One download with curl: MB/s, or None when it failed (a cut, short or non-200 body is not a figure)."""
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}",
                          "--max-time", "600", url], capture_output=True, text=True, timeout=660)
    code, got, secs = out.stdout.split()
    if out.returncode or code != "200" or int(got) != size:
        print(f"  download of {url} failed: curl {out.returncode}, HTTP {code}, {got} of {size} bytes", file=sys.stderr)
        return None
    return size / 2**20 / float(secs)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc): what a download cost the sensor, whatever the load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def extproc_modes(d: Path, origin: int, ep: Sidecar, size: int, repeats: int) -> dict:
    """ext_proc monitor vs enforce on the same body, through one Envoy and one sensor, alternated;
    MB/s (wall clock: disturbed by whatever else runs) and the sensor's CPU seconds per download."""
    p, url = envoy(d, "modes", origin, ep.port)
    assert ep.proc is not None
    runs: dict[str, list[float]] = {"monitor": [], "enforce": []}
    cpu: dict[str, list[float]] = {"monitor": [], "enforce": []}
    failed = {"monitor": 0, "enforce": 0}
    try:
        for _ in range(repeats):
            for mode, path in (("monitor", "/monitor/big.html"), ("enforce", "/big.html")):
                before = cpu_seconds(ep.proc.pid)
                mbps = curl_mbps(url + path, size)
                if mbps is None:
                    failed[mode] += 1
                else:
                    runs[mode].append(mbps)
                    cpu[mode].append(cpu_seconds(ep.proc.pid) - before)
    finally:
        stop(p)
    med = {k: statistics.median(v) if v else float("nan") for k, v in runs.items()}
    cpu_med = {k: statistics.median(v) if v else float("nan") for k, v in cpu.items()}
    return {"runs": runs, "failed": failed, "median": med, "ratio": med["enforce"] / med["monitor"],
            "cpu_s": cpu, "cpu_median": cpu_med}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--big-mb", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only-extproc", action="store_true", help="only ext_proc monitor vs enforce")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="dlp-bench-taps-", dir="/tmp"))
    os.chmod(d, 0o777)                  # squid and nginx workers run as their own users
    www = d / "www"
    www.mkdir()
    os.chmod(www, 0o755)
    (www / "10k.html").write_bytes(synth.benign_web(10 << 10)[: 10 << 10])
    block = synth.benign_web(1 << 20)[: 1 << 20]
    with open(www / "big.html", "wb") as fh:
        for _ in range(a.big_mb):
            fh.write(block)
    (www / "monitor").mkdir()
    os.chmod(www / "monitor", 0o755)
    os.link(www / "big.html", www / "monitor" / "big.html")
    size = (www / "big.html").stat().st_size
    procs: list[subprocess.Popen] = []
    sc = ep = None
    try:
        op = free_port()
        procs.append(nginx(d, "origin", op, f"root {www}; sendfile on;"))
        wait_http(f"http://127.0.0.1:{op}/10k.html")
        sc = Sidecar.create(d / "icap", f"http://127.0.0.1:{op}", {"alerts": {"sinks": []}}, command="icap").start()
        monitor_route = {"match": "/monitor/*", "mode": "monitor"}
        ep = Sidecar.create(d / "extproc", f"http://127.0.0.1:{op}",
                            {"alerts": {"sinks": []}, "proxy": {"routes": [monitor_route]}}, command="extproc").start()
        modes = extproc_modes(d, op, ep, size, a.repeats)
        print(f"\n## ext_proc, {a.big_mb} MB benign download (curl, modes alternated, median of {a.repeats})\n")
        print("| mode | MB/s (median) | runs (MB/s) | sensor CPU s per download (median) |")
        print("|---|---|---|---|")
        for k in ("monitor", "enforce"):
            print(f"| {k} | {modes['median'][k]:,.0f} | {', '.join(f'{x:,.0f}' for x in modes['runs'][k])}"
                  + (f" ({modes['failed'][k]} failed)" if modes['failed'][k] else "")
                  + f" | {modes['cpu_median'][k]:.2f} |")
        print(f"\nenforce / monitor: {modes['ratio']:.2f}x MB/s, "
              f"{modes['cpu_median']['enforce'] / modes['cpu_median']['monitor']:.2f}x sensor CPU")
        rows: dict = {"extproc_modes": modes}
        if a.only_extproc:
            if a.json:
                a.json.write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
            return
        paths = (("squid alone", lambda: squid(d, "alone", op, None)),
                 ("squid + ICAP tap", lambda: squid(d, "icap", op, sc.port)),
                 ("Envoy alone", lambda: envoy(d, "alone", op, None)),
                 ("Envoy + ext_proc tap", lambda: envoy(d, "extproc", op, ep.port)))
        for name, launch in paths:
            p, url = launch()
            procs.append(p)
            small = wrk(url + "/10k.html", a.seconds, 10)
            lat = wrk(url + "/10k.html", a.seconds, 1)
            big = wrk_download(url + "/big.html", a.seconds + 4, a.big_mb)
            rows[name] = {"rps_10k": small["rps"], "p50_ms": lat["p50"], "p99_ms": lat["p99"], "big_MBps": big["mbps"],
                          "errors": small["errors"] or big["errors"]}
            stop(p)
            print(f"  measured {name}", file=sys.stderr)
        bases = {"squid": rows["squid alone"], "Envoy": rows["Envoy alone"]}
        print(f"\n## Taps (2-core VM, wrk, same run; {a.big_mb} MB download, 10 KiB pages)\n")
        print("| path | 10 KiB req/s (c=10) | × alone | p50 / p99 ms (c=1) | "
              f"{a.big_mb} MB download MB/s | × alone |")
        print("|---|---|---|---|---|---|")
        for name, r in rows.items():
            if name == "extproc_modes":
                continue
            base = bases[name.split()[0]]
            print(f"| {name} | {r['rps_10k']:,.0f} | {r['rps_10k'] / base['rps_10k']:.2f} | "
                  f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} | {r['big_MBps']:,.0f} | "
                  f"{r['big_MBps'] / base['big_MBps']:.2f} |" + (" errors!" if r["errors"] else ""))
        if a.json:
            a.json.write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
    finally:
        for x in (sc, ep):
            if x:
                x.stop()
        for p in procs:
            stop(p)
        time.sleep(0.5)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
