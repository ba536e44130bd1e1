"""The benches run and write what they say they write (their JSON shape); no figure is asserted:
speed is measured in bench/, never in tests."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_engine_bench_json(tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "engine.py"), "--benign-mb", "0.1", "--breach-rows", "40",
                        "--re-mb", "0.01", "--rounds", "1", "--cli-files", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads(out.read_text())
    ceiling = doc["ceiling"]
    assert "main + gated" in ceiling and "no callback" in ceiling
    assert set(doc["corpora"]) == {"benign web", "breach CSV", "real docs+src"}
    for name, c in doc["corpora"].items():
        assert c["bytes"] > 0, name
        assert set(c["MBps"]) == set(c["x_ceiling"])
        assert c["MBps"][ceiling] > 0 and c["x_ceiling"][ceiling] == 1.0
        full = next(k for k in c["MBps"] if k.startswith("full scanner"))
        assert c["MBps"][full] > 0 and c["x_ceiling"][full] > 0
    assert "verdict trip, records 40 of 40" in " ".join(doc["notes"])
    assert doc["trip_at_byte"] > 0
    # the CLI's figures are keyed by --jobs as a string (an int key is what broke --json)
    assert doc["cli_MBps_by_jobs"] and all(k.isdigit() and v > 0 for k, v in doc["cli_MBps_by_jobs"].items())
    assert doc["checks"] and all(set(c) == {"check", "pass", "figure"} and isinstance(c["pass"], bool)
                                 for c in doc["checks"])


def test_proxy_bench_reads_the_sidecars_own_quantiles_between_two_scrapes() -> None:
    """bench/proxy.py's latency is the sidecar's histogram, counted over one wrk run only: what
    was observed before the first scrape does not move the quantile."""
    sys.path.insert(0, str(ROOT))
    from bench.proxy import quantile
    inf = float("inf")
    before = {0.0005: 1000.0, 0.001: 1000.0, 0.0025: 1000.0, 0.005: 1000.0, inf: 1000.0}   # fast, earlier
    after = {0.0005: 1000.0, 0.001: 1090.0, 0.0025: 1099.0, 0.005: 1100.0, inf: 1100.0}   # 100 new ones
    p50, le50 = quantile(before, after, 0.5)
    p99, le99 = quantile(before, after, 0.99)
    assert le50 == 0.001 and 0.0005 < p50 < 0.001
    assert le99 == 0.0025 and 0.001 < p99 <= 0.0025


def test_proxy_bench_ceiling_is_what_the_sidecar_scans() -> None:
    """bench/proxy.py's like-for-like ceiling scans the gated database only when the file opens a
    part's gate: benign web never does (so the ceiling is the main database alone), a roster does."""
    sys.path.insert(0, str(ROOT))
    from bench.proxy import Ceilings, gate_hits
    from sensor import synth
    benign = synth.benign_web(1 << 20)
    c = Ceilings(benign)
    assert gate_hits(c.engine, benign) == 0 and not c.gate_opens
    assert gate_hits(c.engine, synth.breach_csv(20)) > 0
    figures = c.measure(benign[: 64 << 10])
    assert set(figures) == {"like", "main_gated", "wheel"} and all(v > 0 for v in figures.values())


def test_exchange_memory_bench_json(tmp_path: Path) -> None:
    """bench/exchange_memory.py: real sidecars behind a throttled nginx, N downloads in flight, a row
    per (mode, body, tree) with the idle RSS and KiB per exchange (a tiny run: no figure asserted)."""
    from tests.conftest import require_tool
    require_tool("nginx")
    out = tmp_path / "mem.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "exchange_memory.py"), "--base", "none", "--n", "3",
                        "--rounds", "1", "--bodies", "clean", "--mb", "1", "--sample-s", "0.3", "--json", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads(out.read_text())
    rows = {(r["mode"], r["body"], r["tree"]) for r in doc["table"]}
    assert rows == {(m, "clean", t) for m in ("monitor", "enforce")
                    for t in ("this tree, compiled core", "this tree, DLP_SENSOR_PYTHON_CORE=1")}
    for r in doc["table"]:
        assert r["idle_mb"] > 0 and len(r["3"]["rounds"]) == 1
        assert {"kb_per_exchange", "peak_kb_per_exchange"} <= set(r["3"])
    assert doc["verdicts"] == []                    # no base tree, no verdict


def test_openloop_counts_a_stall_for_every_request_due_during_it() -> None:
    """bench/openloop.py measures from each request's due time: a server that stalls once for
    0.5 s, with one connection allowed, delays every request due meanwhile (no coordinated
    omission); with connections to spare it opens another and the others go on."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    sys.path.insert(0, str(ROOT))
    from bench.openloop import run

    served = [0]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            with lock:
                served[0] += 1
                stall = served[0] == 10
            if stall:
                threading.Event().wait(0.5)         # the slow answer under test, not an ordering wait
            body = b"x" * 1024
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/page"
        one = run(url, rate=100, seconds=1.5, max_conns=1)
        assert one["requests"] == 150 and one["errors"] == 0 and one["conns"] == 1
        # ~50 requests fall due during the stall; those due in its first 0.4 s wait >= 0.1 s
        assert one["max"] >= 500 and one["p90"] >= 100
        served[0] = 0
        many = run(url, rate=100, seconds=1.5, max_conns=64)
        assert many["requests"] == 150 and many["errors"] == 0 and many["conns"] >= 2
        assert many["max"] >= 500
    finally:
        srv.shutdown()
        srv.server_close()


def test_scanner_memory_probe_prints_a_row_per_tree_and_body() -> None:
    """bench/scanner_memory.py: N scanners in flight, a row per (tree, body) with the resident and
    allocated growth per exchange (a tiny run: no figure asserted)."""
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "scanner_memory.py"), "--trees", str(ROOT),
                        "--n", "3", "--chunks", "2"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [line.split(" | ") for line in p.stdout.splitlines() if line.startswith(f"| {ROOT} |")]
    assert [r[1] for r in rows] == ["clean", "leakish"]
    for r in rows:
        assert r[2] in ("compiled", "python")
        for x in (r[3], r[4].rstrip(" |")):
            assert x.lstrip("-").replace(".", "", 1).isdigit(), r


def test_relay_floor_relays_an_http_exchange_byte_for_byte(tmp_path: Path) -> None:
    """bench/relay_floor.py, the proxy bench's floor, moves what the origin sends, unaltered, and
    keeps the connection usable for the next request (wrk reuses it)."""
    import http.server
    import socket
    import threading

    from tests.procs import free_port, wait_http

    body = bytes(range(256)) * 4096 + b"tail"
    (tmp_path / "f.bin").write_bytes(body)

    class H(http.server.SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(tmp_path), **k)

        def log_message(self, *a):
            pass

    origin = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    port = free_port()
    relay = subprocess.Popen([sys.executable, str(ROOT / "bench" / "relay_floor.py"), str(port),
                              str(origin.server_address[1])])
    try:
        wait_http(f"http://127.0.0.1:{port}/f.bin", proc=relay)
        with socket.create_connection(("127.0.0.1", port)) as s:
            f = s.makefile("rb")
            for _ in range(2):                              # two requests on one connection
                s.sendall(b"GET /f.bin HTTP/1.1\r\nHost: x\r\n\r\n")
                assert f.readline().startswith(b"HTTP/1.1 200")
                length = None
                while (line := f.readline()) != b"\r\n":
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                assert length == len(body)
                assert f.read(length) == body
    finally:
        relay.kill()
        relay.wait()
        origin.shutdown()
