"""The sidecar through real clients (curl, aiohttp) against a real upstream process."""
from __future__ import annotations

import asyncio
import gzip
import shutil
import socket
import subprocess
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor
import urllib.request
from pathlib import Path

import aiohttp
import orjson
import pytest

from sensor import synth
from sensor.sample_site import ROSTER, build_site
from tests.conftest import require_tool
from tests.procs import Sidecar, Upstream, disk_stalled

LEAK_AT = 640 << 10             # mixed.csv: benign text, then the roster from this offset: past the
                                # hold-back and the two reads (up to 256 KiB each) that may release it,
                                # so the trip comes after the head has left (else: a 451, nothing sent)
HOLDBACK = 64 << 10
CHUNK = 64 << 10


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Upstream:
    root = build_site(tmp_path_factory.mktemp("site"), people=3000)
    (root / "exports" / "mixed.csv").write_bytes(synth.benign_web(LEAK_AT)[:LEAK_AT] + synth.breach_csv(3000))
    up = Upstream.start(root)
    yield up
    up.stop()


@pytest.fixture(scope="module")
def sidecar(site, tmp_path_factory) -> Sidecar:
    sc = Sidecar.create(tmp_path_factory.mktemp("sidecar"), site.url, {
        "proxy": {"upstream_timeout": 1.0, "routes": [{"match": "/monitor/*", "mode": "monitor"}]},
    }).start()
    yield sc
    sc.stop()


def curl(*args: str) -> tuple[int, int, bytes, str]:
    """(exit code, HTTP status, body, stderr)."""
    exe = require_tool("curl")
    p = subprocess.run([exe, "-s", "-S", "-o", "-", "-w", "\n%{http_code}", *args], capture_output=True, timeout=60)
    body, _, code = p.stdout.rpartition(b"\n")
    return p.returncode, int(code or 0), body, p.stderr.decode()


def assert_byte_identical(direct: str, via: str, paths: tuple[str, ...]) -> None:
    """Each path fetched with curl directly and through a tap: same status 200, same bytes."""
    for path in paths:
        _, _, want, _ = curl("-m", "30", direct + path)
        rc, st, got, err = curl("-m", "30", via + path)
        assert (rc, st) == (0, 200), (path, err)
        assert got == want, path


def copy_to(site: Upstream, src: str, name: str) -> str:
    """A copy of ``src`` with a unique first line, so content fingerprints differ between tests."""
    (site.root / name).write_bytes(f"# {name}\n".encode() + (site.root / src).read_bytes())
    return "/" + name


# -- benign traffic is untouched ------------------------------------------------------------------

def test_benign_responses_byte_identical_with_curl(site, sidecar):
    assert_byte_identical(site.url, sidecar.url, ("/", "/stats-2.html", "/api/counties.json", "/contact.html",
                                                  "/big?mb=3"))


async def test_benign_byte_identical_with_aiohttp_keepalive_and_chunked(site, sidecar):
    conn = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=conn, auto_decompress=False) as s:
        for path in ["/stats-1.html", "/stream/stats-2.html", "/stream/api/counties.json", "/big?mb=1"]:
            async with s.get(site.url + path) as r:
                direct = await r.read()
            async with s.get(sidecar.url + path) as r:
                assert r.status == 200
                proxied = await r.read()
            assert proxied == direct, path
        # one connection to the sidecar carried every request (keep-alive)
        assert len(conn._conns) <= 2


def test_keepalive_reuses_the_connection(sidecar):
    rc, _, _, err = curl("-v", sidecar.url + "/stats-1.html", "-o", "/dev/null", sidecar.url + "/stats-2.html")
    assert rc == 0 and "Re-using existing connection" in err or "Reusing existing connection" in err


def test_gzip_content_encoding_passes_through_untouched(site, sidecar):
    data = (site.root / "stats-2.html").read_bytes()
    (site.root / "gz.html").write_bytes(gzip.compress(data))
    # served as an encoded file; the client gets the encoded bytes exactly
    rc, st, body, _ = curl(sidecar.url + "/gz.html")
    assert rc == 0 and st == 200 and gzip.decompress(body) == data


def test_head_and_range(site, sidecar):
    rc, st, body, _ = curl("-I", sidecar.url + "/stats-2.html")
    size = (site.root / "stats-2.html").stat().st_size
    assert rc == 0 and st == 200 and f"content-length: {size}".encode() in body.lower()
    assert curl(sidecar.url + "/stats-2.html")[1] == 200      # scanned whole and clean: its ranges may go
    before = sidecar.metric("dlp_partial_responses_total")
    rc, st, body, _ = curl("-r", "100-1099", sidecar.url + "/stats-2.html")
    assert (rc, st) == (0, 206) and body == (site.root / "stats-2.html").read_bytes()[100:1100]
    assert sidecar.metric("dlp_partial_responses_total") == before + 1


def test_request_body_and_forwarded_headers(sidecar, tmp_path):
    payload = bytes(range(256)) * 4096           # 1 MiB
    (tmp_path / "body").write_bytes(payload)
    rc, st, body, _ = curl("--data-binary", f"@{tmp_path / 'body'}", "-H", "Content-Type: application/octet-stream",
                           "-D", str(tmp_path / "h"), sidecar.url + "/echo")
    assert (rc, st) == (0, 200) and body == payload
    assert "x-seen-forwarded-for: 127.0.0.1" in (tmp_path / "h").read_text().lower()


async def test_websocket_passes_through_unscanned_and_counted(sidecar):
    before = sidecar.metric("dlp_websocket_upgrades_total")
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(sidecar.url + "/ws") as ws:
            await ws.send_str("hello")
            msg = await ws.receive(timeout=5)
            assert msg.data == "hello"
    assert sidecar.metric("dlp_websocket_upgrades_total") == before + 1


# -- leaks ------------------------------------------------------------------------------------------

def test_small_leak_never_leaves_and_next_request_gets_451(site, sidecar):
    path = copy_to(site, ROSTER, "exports/small-leak.csv")
    rc, st, body, _ = curl(sidecar.url + path)
    assert st == 451 and b"withdrawn" in body and b"," not in body      # the block page, no row of the roster
    rc, st, _, _ = curl(sidecar.url + path)
    assert st == 451
    _wait(lambda: any(a["url"]["path"] == path for a in sidecar.alerts()))
    alerts = [a for a in sidecar.alerts() if a["url"]["path"] == path]
    assert alerts and alerts[0]["dlp"]["verdict"] == "trip" and alerts[0]["dlp"]["bytes_sent"] == 0
    assert alerts[0]["event"]["kind"] == "alert" and alerts[0]["dlp"]["takedown_id"]


def test_a_stalled_disk_holds_only_the_request_that_waits_for_it(site, sidecar):
    """Commits wait off the event loop. While another writer holds all three SQLite files (the
    registry, the alert spool, the ledger), the leak's 451 waits for its takedown to be on disk,
    but meanwhile the leaked URL is already refused and other pages, the metrics and the admin API
    answer. Before this, one stalled fsync froze the whole sidecar for seconds."""
    path = copy_to(site, ROSTER, "exports/stalled-disk.csv")
    dbs = [sidecar.state / n for n in ("takedowns.db", "alerts.db", "ledger.db")]
    with ThreadPoolExecutor(1) as pool:
        with disk_stalled(*dbs):
            tripping = pool.submit(curl, "-m", "30", sidecar.url + path)
            _wait(lambda: sidecar.metric("dlp_active_exchanges") == 1, timeout=5)    # it is in, and waits
            _wait(lambda: curl("-m", "2", sidecar.url + path)[1] == 451, timeout=6)
            assert curl("-m", "2", sidecar.url + "/contact.html")[1] == 200
            assert curl("-m", "2", sidecar.metrics + "/metrics")[1] == 200
            assert curl("-m", "2", "-H", f"Authorization: Bearer {sidecar.token}",
                        sidecar.admin + "/takedowns")[1] == 200
            assert not tripping.done(), tripping.result()  # still waiting for its takedown to be durable
        assert tripping.result()[1] == 451
    from sensor.enforce.registry import Registry
    reg = Registry(dbs[0])
    assert reg.blocked(f"*{path}") is not None       # on disk, not only in memory (no site.hosts: site "*")
    reg.close()
    _wait(lambda: any(a["url"]["path"] == path for a in sidecar.alerts()))


@pytest.mark.parametrize("prefix", ["", "/stream"])
def test_mid_stream_trip_cuts_the_download(site, sidecar, prefix):
    name = f"exports/mixed-cut{prefix.replace('/', '-')}.csv"
    path = prefix + copy_to(site, "exports/mixed.csv", name)
    total = (site.root / name).stat().st_size
    rc, st, body, err = curl(sidecar.url + path)
    assert st == 200 and rc == 18, err                 # curl: partial file — a failed download
    assert len(body) < total
    assert len(body) <= LEAK_AT + HOLDBACK + CHUNK
    assert curl(sidecar.url + path)[1] == 451


async def test_aiohttp_client_sees_a_failed_download(site, sidecar):
    path = copy_to(site, "exports/mixed.csv", "exports/mixed-aio.csv")
    async with aiohttp.ClientSession() as s:
        async with s.get(sidecar.url + "/stream" + path) as r:
            assert r.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
        async with s.get(sidecar.url + "/stream" + path) as r:
            assert r.status == 451


def assert_container_leak_cut_while_others_are_served(site, base: str, name: str, data: bytes,
                                                      path: str = "/exports/{}") -> dict[str, float]:
    """A container (PDF, xlsx, zip) is read whole at the end of its body, in a thread: downloading a leaked
    one through ``base`` fails, the next download gets 451, and requests that arrive during the reading are
    answered during it. Reading inline would hold the tap's event loop until it ends, so no request could be
    answered between the download's last byte and its end. Shared by every tap's tests."""
    import threading
    (site.root / "exports" / name).write_bytes(data)
    marks: dict[str, float] = {}

    def download() -> None:
        got = 0
        marks["last_byte"] = time.monotonic()
        try:
            with urllib.request.urlopen(base + path.format(name), timeout=120) as req:
                # read1: what has arrived, now (read(n) would wait for n bytes, and so hold the last
                # piece before a cut until the cut itself)
                while piece := req.read1(16 << 10):  # a cut Content-Length body just ends early here
                    got += len(piece)
                    marks["last_byte"] = time.monotonic()
        except urllib.error.HTTPError as e:         # the headers were still held: a clean refusal
            marks["status"] = e.code
        except Exception:                           # noqa: BLE001  IncompleteRead: no terminating chunk
            marks["failed"] = 1
        marks["end"] = time.monotonic()
        marks["got"] = got

    t = threading.Thread(target=download)
    t.start()
    answered: list[float] = []
    while t.is_alive():
        with urllib.request.urlopen(base + "/contact.html", timeout=120) as r:
            r.read()
        answered.append(time.monotonic())
        time.sleep(0.02)
    t.join()
    # a failed download, short of at least its last chunk (the end is judged before it leaves), or a
    # 451 when the tap still held the headers (Envoy may pass a fast body as one message)
    assert 0 < marks["got"] < len(data) or (marks["got"] == 0 and marks.get("status") == 451), (marks, len(data))
    during = [a for a in answered if marks["last_byte"] < a < marks["end"]]
    assert len(during) >= 3, (f"{len(during)} requests answered during the extraction", marks,
                              [round(a - marks["last_byte"], 3) for a in answered])
    assert curl("-m", "30", base + path.format(name))[1] == 451          # the tripped resource is taken down
    return marks


def test_a_pdf_leak_is_cut_and_the_proxy_serves_others_while_its_text_is_extracted(site, sidecar):
    assert_container_leak_cut_while_others_are_served(site, sidecar.url, "permits.pdf",
                                                      synth.pdf(synth.breach_rows(12000)))


def test_an_xlsx_leak_is_cut_and_the_proxy_serves_others_while_it_is_read(site, sidecar):
    rows = [r.split(",") for r in synth.breach_rows(30000)]
    assert_container_leak_cut_while_others_are_served(site, sidecar.url, "permits.xlsx", synth.xlsx(rows))


def test_a_gzip_encoded_xlsx_leak_is_cut_and_the_proxy_serves_others_while_it_is_read(site, sidecar):
    """Content-Encoding in front of the container: the decoder is drained into it in the worker thread."""
    rows = [r.split(",") for r in synth.breach_rows(30000, seed=11)]
    assert_container_leak_cut_while_others_are_served(site, sidecar.url, "permits-gz.xlsx",
                                                      gzip.compress(synth.xlsx(rows)),
                                                      path="/stream/exports/{}?encoding=gzip")


def test_a_slow_chunked_body_still_flows_while_its_latest_chunk_is_held(site, sidecar):
    """A chunked body's latest chunk waits for the next one (the end is judged before it leaves), but only
    for LAST_CHUNK_PATIENCE: a slow stream is not held a whole pause behind."""
    data = synth.benign_web(112 << 10)[: 112 << 10]          # 7 chunks of 16 KiB, sent 0.6 s apart
    (site.root / "slow-stats.html").write_bytes(data)
    arrivals: list[tuple[float, int]] = []
    got = 0
    with urllib.request.urlopen(sidecar.url + "/stream/slow-stats.html?pause=0.6", timeout=60) as r:
        while piece := r.read1(64 << 10):
            got += len(piece)
            arrivals.append((time.monotonic(), got))
    assert got == len(data)
    # the hold-back (64 KiB) ends with the 4th chunk: it must follow the first three within ~0.1 s, not
    # when the 5th arrives 0.6 s later
    first = arrivals[0][0]
    reached = next(t for t, n in arrivals if n >= 64 << 10)
    assert reached - first < 0.35, [(round(t - first, 2), n) for t, n in arrivals]


def test_same_content_under_another_url_is_refused(site, sidecar):
    a = copy_to(site, "exports/mixed.csv", "exports/orig.csv")
    assert curl(sidecar.url + a)[0] == 18
    b = "/exports/renamed-copy.csv"
    shutil.copy(site.root / a[1:], site.root / b[1:])
    before = sidecar.metric("dlp_refusals_total", reason="content") + sidecar.metric("dlp_trips_total",
                                                                                      mode="enforce")
    rc, st, body, _ = curl(sidecar.url + b)
    # refused by the print where the first download tripped (its L: 451 within the hold-back, else cut),
    # or by its own scan tripping first when the chunks fall otherwise
    assert st == 451 or rc == 18
    _wait(lambda: sidecar.metric("dlp_refusals_total", reason="content") + sidecar.metric(
        "dlp_trips_total", mode="enforce") == before + 1)


def test_monitor_mode_forwards_everything_and_alerts(site, sidecar):
    (site.root / "monitor").mkdir(exist_ok=True)
    path = copy_to(site, ROSTER, "monitor/roster.csv")
    rc, st, body, _ = curl(sidecar.url + path)
    assert (rc, st) == (0, 200) and body == (site.root / path[1:]).read_bytes()
    assert curl(sidecar.url + path)[1] == 200                 # no takedown in monitor mode
    _wait(lambda: len([a for a in sidecar.alerts() if a["url"]["path"] == path]) >= 2)
    al = [a for a in sidecar.alerts() if a["url"]["path"] == path]
    assert len(al) == 2 and {a["dlp"]["action"] for a in al} == {"logged"}
    assert al[0]["dlp"]["dedup_id"] != al[1]["dlp"]["dedup_id"]


# -- failures -----------------------------------------------------------------------------------------

def test_upstream_timeout_is_504_and_counted(sidecar):
    before = sidecar.metric("dlp_upstream_errors_total", kind="timeout")
    assert curl(sidecar.url + "/slow?s=3")[1] == 504
    assert sidecar.metric("dlp_upstream_errors_total", kind="timeout") == before + 1


def test_upstream_down_is_502_and_counted(tmp_path):
    from tests.procs import free_port
    sc = Sidecar.create(tmp_path, f"http://127.0.0.1:{free_port()}").start()
    try:
        assert curl(sc.url + "/x")[1] == 502
        assert sc.metric("dlp_upstream_errors_total", kind="down") == 1
    finally:
        sc.stop()


def _raw(port: int, data: bytes, close_write: bool = False) -> bytes:
    """Send raw bytes, read the answer until the peer closes or 5 s pass."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except socket.timeout:
            pass
        return out


def test_malformed_and_oversized_requests_get_4xx_and_the_proxy_keeps_serving(sidecar):
    assert _raw(sidecar.port, b"GARBAGE\r\n\r\n")[8:12] == b" 400"
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (64 << 10) + b"\r\n\r\n"
    assert _raw(sidecar.port, big)[8:12] in (b" 400", b" 431")
    assert _raw(sidecar.port, b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n")[8:12] == b" 400"
    assert curl(sidecar.url + "/contact.html")[1] == 200


def test_corrupt_gzip_from_upstream_is_forwarded_and_noted(site, sidecar):
    (site.root / "corrupt.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"\x00garbage" * 100)
    before = sidecar.metric("dlp_decode_limits_total", reason="decode-error:gzip")
    rc, st, body, _ = curl(sidecar.url + "/corrupt.gz")
    assert (rc, st) == (0, 200) and body == (site.root / "corrupt.gz").read_bytes()
    assert sidecar.metric("dlp_decode_limits_total", reason="decode-error:gzip") == before + 1


# -- the registry is shared, administered and reloaded ---------------------------------------------------

def _admin(sc: Sidecar, method: str, path: str, body: dict | None = None, token: str | None = None):
    req = urllib.request.Request(sc.admin + path, method=method, data=orjson.dumps(body) if body else None,
                                 headers={"Authorization": f"Bearer {token if token is not None else sc.token}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


def test_admin_api_needs_the_token_and_audits(sidecar):
    assert _admin(sidecar, "GET", "/takedowns", token="wrong")[0] == 401
    assert _admin(sidecar, "POST", "/takedowns", {"url": sidecar.url + "/stats-3.html"})[0] == 400   # no reason
    st, td = _admin(sidecar, "POST", "/takedowns", {"url": sidecar.url + "/stats-3.html", "reason": "court order",
                                                     "actor": "alice"})
    assert st == 201
    assert curl(sidecar.url + "/stats-3.html")[1] == 451
    assert _admin(sidecar, "POST", f"/takedowns/{td['id']}/lift", {"reason": "false positive"})[0] == 400
    st, lifted = _admin(sidecar, "POST", f"/takedowns/{td['id']}/lift", {"reason": "order lifted", "actor": "bob"})
    assert st == 200 and lifted["lifted_by"] == "bob"
    assert curl(sidecar.url + "/stats-3.html")[1] == 200
    audit = [a for a in _admin(sidecar, "GET", "/audit")[1] if a["takedown_id"] == td["id"]]
    assert [(a["action"], a["actor"]) for a in audit] == [("add", "alice"), ("lift", "bob")]


def test_cli_takedowns_are_obeyed_by_the_running_sidecar(sidecar):
    exe = str(Path(__import__("sys").executable).parent / "dlp-sensor")
    p = subprocess.run([exe, "takedowns", "add", f"127.0.0.1:{sidecar.port}/stats-4.html", "--reason", "test",
                        "--state-dir", str(sidecar.state)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert curl(sidecar.url + "/stats-4.html")[1] == 451
    p = subprocess.run([exe, "takedowns", "list", "--state-dir", str(sidecar.state)], capture_output=True, text=True)
    assert "/stats-4.html" in p.stdout
    p = subprocess.run([exe, "takedowns", "lift", f"127.0.0.1:{sidecar.port}/stats-4.html", "--reason", "done",
                        "--state-dir", str(sidecar.state)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert curl(sidecar.url + "/stats-4.html")[1] == 200


def test_two_sidecar_processes_share_the_registry(site, tmp_path):
    a = Sidecar.create(tmp_path / "a", site.url, state=tmp_path / "shared").start()
    b = Sidecar.create(tmp_path / "b", site.url, state=tmp_path / "shared").start()
    try:
        path = copy_to(site, ROSTER, "exports/shared.csv")
        host = ("-H", "Host: permits.example.gov")          # both sidecars serve one site
        assert curl(*host, a.url + path)[1] == 451          # tripped on A
        assert curl(*host, b.url + path)[1] == 451          # refused by B without scanning
        assert b.metric("dlp_refusals_total", reason="resource") == 1
    finally:
        a.stop()
        b.stop()


def test_reload_refuses_a_bad_pack_and_applies_a_good_one(site, tmp_path):
    pack = tmp_path / "extra.yaml"
    pack.write_text(GOOD_PACK.replace("EMP", "XXX"))
    sc = Sidecar.create(tmp_path, site.url, {"signatures": [str(pack)], "default_signatures": False,
                                             "policy": {"alert": {"strong_values": 1}}}).start()
    try:
        (site.root / "emp.txt").write_text("badge EMP-884213 issued\n")
        assert curl(sc.url + "/emp.txt")[1] == 200 and not sc.alerts()
        pack.write_text("signatures: [{id: broken")               # bad YAML: refused, old pack serves
        _wait(lambda: "reload refused" in sc.log())
        assert curl(sc.url + "/contact.html")[1] == 200
        pack.write_text(GOOD_PACK)
        _wait(lambda: sc.metric("dlp_reloads_total", result="ok") >= 1)
        assert curl(sc.url + "/emp.txt")[1] == 200
        _wait(lambda: any(a["dlp"]["findings"].get("employee-badge") for a in sc.alerts()))
        import signal
        sc.proc.send_signal(signal.SIGHUP)
        _wait(lambda: sc.metric("dlp_reloads_total", result="ok") >= 2)
    finally:
        sc.stop()


GOOD_PACK = """
signatures:
  - id: employee-badge
    name: Employee badge number
    severity: high
    category: strong
    kind: employee-id
    patterns:
      - expr: 'EMP-[0-9]{6}'
    examples: ['badge EMP-123456']
    negative_examples: ['EMP-12']
"""


def _wait(cond, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_promtool_accepts_the_metrics(site, sidecar):
    exe = require_tool("promtool")
    assert curl(sidecar.url + copy_to(site, ROSTER, "exports/promtool-leak.csv"))[1] == 451   # a trip: its series exist
    assert curl(sidecar.url + "/contact.html")[1] == 200                                         # a proxied request
    text = urllib.request.urlopen(sidecar.metrics + "/metrics", timeout=5).read()
    p = subprocess.run([exe, "check", "metrics"], input=text, capture_output=True)
    assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()
    assert b"dlp_trips_total" in text and b"dlp_proxy_request_duration_seconds_bucket" in text
    for path in ("/healthz", "/readyz"):
        assert urllib.request.urlopen(sidecar.metrics + path, timeout=5).status == 200


def test_report_counts_the_exposure(site, sidecar):
    (site.root / "monitor").mkdir(exist_ok=True)
    small = copy_to(site, ROSTER, "exports/report-leak.csv")
    mon = copy_to(site, ROSTER, "monitor/report-roster.csv")
    assert curl(sidecar.url + small)[1] == 451
    assert curl(sidecar.url + small)[1] == 451
    for _ in range(2):
        assert curl(sidecar.url + mon)[1] == 200
    exe = str(Path(__import__("sys").executable).parent / "dlp-sensor")
    p = subprocess.run([exe, "report", "--format", "json", "--state-dir", str(sidecar.state)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    by = {"/" + i["resource"].split("/", 1)[1]: i for i in orjson.loads(p.stdout)["incidents"]}
    s = by[small]
    assert s["status"] == "taken down" and s["served"] == 0 and s["served_before_detection"] == 0
    assert s["refused_after_takedown"] == 1 and s["max_records_in_one_response"] >= 10 and s["tripped_at"]
    m = by[mon]
    assert m["served"] == 2 and m["completed_downloads"] == 2 and m["unique_clients"] == 1
    assert m["taken_down_at"] is None and m["trips"] == 2 and m["served_before_detection"] == 1
    assert m["max_records_in_one_response"] == 3000
    p = subprocess.run([exe, "report", "--state-dir", str(sidecar.state)], capture_output=True, text=True)
    assert "report-leak.csv  [taken down]" in p.stdout


def test_tls_listener(site, tmp_path):
    openssl = require_tool("openssl")
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    sc = Sidecar.create(tmp_path, site.url, {"proxy": {"tls": {"cert": str(cert), "key": str(key)}}}).start()
    try:
        url = f"https://127.0.0.1:{sc.port}"
        rc, st, body, err = curl("--cacert", str(cert), url + "/stats-2.html")
        assert (rc, st) == (0, 200), err
        assert body == (site.root / "stats-2.html").read_bytes()
        path = copy_to(site, ROSTER, "exports/tls-leak.csv")
        assert curl("--cacert", str(cert), url + path)[1] == 451
        _wait(lambda: len(sc.alerts()) == 1)
        assert [a["url"]["scheme"] for a in sc.alerts()] == ["https"]
    finally:
        sc.stop()


def test_overload_follows_the_routes_fail_choice(site, tmp_path):
    sc = Sidecar.create(tmp_path, site.url, {"proxy": {"max_scans": 1, "routes": [
        {"match": "/stream/exports/*", "on_error": "closed"}, {"match": "/stream/*", "on_error": "open"}]}}).start()
    try:
        slow = subprocess.Popen([require_tool("curl"), "-s", "-o", "/dev/null",
                                 sc.url + "/stream/stats-2.html?pause=0.5"])
        _wait(lambda: sc.metric("dlp_active_exchanges") >= 1)   # the slow download holds the only scan slot
        rc, st, body, _ = curl(sc.url + "/stream/exports/permits_2022.csv")
        assert st == 503                                    # fail-closed: refused, not sent unscanned
        rc, st, body, _ = curl(sc.url + "/stream/stats-3.html")
        assert (rc, st) == (0, 200) and body == (site.root / "stats-3.html").read_bytes()   # fail-open
        slow.wait(30)
        assert sc.metric("dlp_scan_failures_total", reason="overload", action="closed") == 1
        assert sc.metric("dlp_scan_failures_total", reason="overload", action="open") == 1
        assert sc.metric("dlp_exchanges_total", tap="proxy", verdict="unscanned") == 1
        # the bytes that left unscanned are an alert, not only a metric: the SOC hears scanning was saturated
        # and so are the refusals (clients turned away while the route fails closed)
        _wait(lambda: sum(x["rule"]["id"] == "dlp.unscanned" for x in sc.alerts()) == 2)
        sat = {x["dlp"]["unscanned"]["reason"]: x["dlp"]["action"] for x in sc.alerts()
               if x["rule"]["id"] == "dlp.unscanned"}
        assert sat == {"overload": "forwarded_unscanned", "overload-refused": "refused_unscanned"}
    finally:
        sc.stop()


def test_a_leak_decided_only_at_the_last_byte_never_arrives_complete(site, tmp_path):
    """Content-Length body whose 10th record is its last line: the verdict comes before those bytes leave."""
    rows = synth.breach_rows(10)
    body = synth.benign_web(200 << 10)[: 200 << 10] + b"\n" + synth.BREACH_HEADER.encode() + "".join(rows).encode()
    body = body[:-1]                                     # the last record ends without a newline: finish() decides
    (site.root / "exports" / "tail-leak.csv").write_bytes(body)
    sc = Sidecar.create(tmp_path, site.url).start()
    try:
        rc, st, got, _ = curl(sc.url + "/exports/tail-leak.csv")
        assert st == 200 and rc == 18 and len(got) < len(body)
        assert curl(sc.url + "/exports/tail-leak.csv")[1] == 451
    finally:
        sc.stop()


async def test_520_slow_downloads_and_a_leak_at_the_default_caps(site, tmp_path):
    """Saturation with the shipped defaults (512 scans at once, 64 per client, enforce routes fail
    closed): 520 slow downloads from ten client addresses fill every scan slot, and the leak that
    comes next is refused, not sent unscanned; the SOC gets an alert saying scanning was saturated."""
    sidecar = await asyncio.to_thread(lambda: Sidecar.create(tmp_path, site.url).start())   # the defaults
    try:
        await _saturate(site, sidecar)
    finally:
        await asyncio.to_thread(sidecar.stop)


async def _saturate(site: Upstream, sidecar: Sidecar) -> None:
    slow = synth.benign_web(256 << 10)[: 256 << 10]                 # 16 chunks, 0.5 s apart: 8 s
    (site.root / "exports" / "slow-520.html").write_bytes(slow)
    url = sidecar.url + "/stream/exports/slow-520.html?pause=0.5"
    refused_before = sidecar.metric("dlp_scan_failures_total", reason="overload", action="closed")
    timeout = aiohttp.ClientTimeout(total=120)
    connectors = [aiohttp.TCPConnector(limit=0, local_addr=(f"127.0.0.{10 + k}", 0)) for k in range(10)]
    sessions = [aiohttp.ClientSession(connector=c, timeout=timeout) for c in connectors]

    async def fetch(s: aiohttp.ClientSession) -> tuple[int, bytes]:
        async with s.get(url) as r:
            return r.status, await r.read()

    try:
        jobs = [asyncio.ensure_future(fetch(sessions[i % 10])) for i in range(520)]
        deadline = time.monotonic() + 60
        while sidecar.metric("dlp_active_exchanges") < 512:      # every slot is taken by a slow download
            assert time.monotonic() < deadline and not any(j.done() and j.exception() for j in jobs)
            await asyncio.sleep(0.05)
        rc, st, body, _ = await asyncio.to_thread(curl, "-m", "60", "--interface", "127.0.0.60",
                                                  sidecar.url + "/exports/permits_2022.csv")
        assert st == 503                                         # refused, not forwarded unscanned
        got = await asyncio.gather(*jobs)
    finally:
        for s in sessions:
            await s.close()
    served = [b for st, b in got if st == 200]
    refused = sum(st == 503 for st, _ in got)
    assert served and all(b == slow for b in served) and len(served) + refused == 520
    assert refused >= 1                                          # past the 512th, slow ones were refused too
    assert (sidecar.metric("dlp_scan_failures_total", reason="overload", action="closed")
            == refused_before + refused + 1)
    _wait(lambda: any(a["rule"]["id"] == "dlp.unscanned" and a["dlp"]["unscanned"]["reason"] == "overload-refused"
                      for a in sidecar.alerts()))
