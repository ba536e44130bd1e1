"""Tap benchmark: squid alone vs squid + the ICAP tap, Envoy alone vs Envoy + the ext_proc tap.

Same run, same origin (nginx, static files). wrk measures requests/s for 10 KiB pages (10
connections), latency at 1 connection, and MB/s for a 100 MB download (1 connection), through
squid as a reverse proxy without ICAP and with ``respmod_precache bypass=0`` to
``dlp-sensor icap``, and through Envoy with the shipped ``deploy/envoy/envoy.yaml`` with and
without its ext_proc filter (``dlp-sensor extproc``); the table gives the ratios.

    python bench/taps.py [--seconds 8] [--big-mb 100] [--json FILE]
"""
from __future__ import annotations

import argparse
import os
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--big-mb", type=int, default=100)
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
    procs: list[subprocess.Popen] = []
    sc = ep = None
    try:
        op = free_port()
        procs.append(nginx(d, "origin", op, f"root {www}; sendfile on;"))
        wait_http(f"http://127.0.0.1:{op}/10k.html")
        sc = Sidecar.create(d / "icap", f"http://127.0.0.1:{op}", {"alerts": {"sinks": []}}, command="icap").start()
        ep = Sidecar.create(d / "extproc", f"http://127.0.0.1:{op}", {"alerts": {"sinks": []}},
                            command="extproc").start()
        rows = {}
        paths = (("squid alone", lambda: squid(d, "alone", op, None)),
                 ("squid + ICAP tap", lambda: squid(d, "icap", op, sc.port)),
                 ("Envoy alone", lambda: envoy(d, "alone", op, None)),
                 ("Envoy + ext_proc tap", lambda: envoy(d, "extproc", op, ep.port)))
        for name, launch in paths:
            p, url = launch()
            procs.append(p)
            small = wrk(url + "/10k.html", a.seconds, 10)
            lat = wrk(url + "/10k.html", a.seconds, 1)
            big = wrk(url + "/big.html", a.seconds + 4, 1)
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
