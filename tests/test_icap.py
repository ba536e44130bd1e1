"""The ICAP tap against real clients: Debian's c-icap-client and squid as a reverse proxy."""
from __future__ import annotations

import os
import socket
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from sensor import synth
from sensor.sample_site import ROSTER
from tests.conftest import require_tool
from tests.procs import Sidecar, free_port, site_fixture, stop
from tests.test_proxy import _raw, _wait, assert_byte_identical, curl

site = site_fixture(3000)


@pytest.fixture(scope="module")
def icap(site, tmp_path_factory) -> Sidecar:
    policy = tmp_path_factory.mktemp("policy") / "policy.yaml"
    policy.write_text("trip: {strong_records: 10}\n")
    sc = Sidecar.create(tmp_path_factory.mktemp("icap"), site.url, {"policy": str(policy)}, command="icap").start()
    sc.policy = policy
    yield sc
    sc.stop()


def c_icap(icap: Sidecar, *args: str, out: Path | None = None) -> str:
    exe = require_tool("c-icap-client")
    cmd = [exe, "-i", "127.0.0.1", "-p", str(icap.port), "-s", "respmod", "-v", *args]
    if out is not None:
        cmd += ["-o", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    return p.stdout + p.stderr


def test_options(icap):
    out = c_icap(icap)
    for line in ("Methods: RESPMOD", "Allow: 204", "Preview: 4096", "Transfer-Preview: *", "Max-Connections:",
                 "Options-TTL:", "ISTag: \""):
        assert line in out, line


def test_istag_changes_with_the_policy(icap):
    before = [l for l in c_icap(icap).splitlines() if "ISTag" in l]
    icap.policy.write_text("trip: {strong_records: 12}\n")
    _wait(lambda: [l for l in c_icap(icap).splitlines() if "ISTag" in l] != before)


def test_clean_response_204_or_identical_echo(site, icap, tmp_path):
    page = site.root / "stats-2.html"
    assert "204 No Content" in c_icap(icap, "-f", str(page), "-resp", "http://www.example.gov/stats-2.html")
    out = c_icap(icap, "-f", str(page), "-resp", "http://www.example.gov/stats-2.html", "-no204", "-nopreview",
                 out=tmp_path / "echo")
    assert "ICAP/1.0 200 OK" in out and (tmp_path / "echo").read_bytes() == page.read_bytes()


@pytest.mark.parametrize("opts", [["-nopreview"], ["-nopreview", "-no204"], ["-w", "1024"]])
def test_leak_gets_an_encapsulated_451(site, icap, tmp_path, opts):
    url = f"http://www.example.gov/exports/{'-'.join(opts)}.csv"
    leak = tmp_path / "leak.csv"        # a leak of its own: the same file again is refused by its content print
    leak.write_bytes(f"# {' '.join(opts)}\n".encode() + (site.root / ROSTER).read_bytes())
    out = c_icap(icap, "-f", str(leak), "-resp", url, *opts, out=tmp_path / "o")
    assert "ICAP/1.0 200 OK" in out
    assert b"withdrawn" in (tmp_path / "o").read_bytes() and b"permit_id" not in (tmp_path / "o").read_bytes()
    (tmp_path / "o").unlink()
    # taken down: refused whatever the body (c-icap-client does not print a final answer to a
    # preview, which is what this refusal is when it previews; squid's tests cover that path)
    c_icap(icap, "-f", str(site.root / "stats-1.html"), "-resp", url, "-nopreview", out=tmp_path / "o")
    assert b"withdrawn" in (tmp_path / "o").read_bytes()



def test_pdf_leak_cut_while_the_icap_server_answers_others(site, icap, tmp_path):
    """A PDF is read whole at the end of its body, in a thread: the echo is cut (no last chunk), and OPTIONS
    requests sent during the extraction are answered during it (inline, the loop would hold them all).
    Raw ICAP, not squid: squid holds the echo's last bytes, so its client cannot see when the body ended."""
    import socket
    import threading
    url = "/exports/icap-permits.pdf"
    data = synth.pdf(synth.breach_rows(12000))
    hdrs = b"GET " + url.encode() + b" HTTP/1.1\r\nHost: www.example.gov\r\n\r\n"
    res = b"HTTP/1.1 200 OK\r\nContent-Type: application/pdf\r\n\r\n"
    body = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + 65536]), data[i:i + 65536]) for i in range(0, len(data), 65536))
    req = (b"RESPMOD icap://127.0.0.1/respmod ICAP/1.0\r\nHost: x\r\nEncapsulated: req-hdr=0, res-hdr=%d, "
           b"res-body=%d\r\n\r\n" % (len(hdrs), len(hdrs) + len(res))) + hdrs + res + body + b"0\r\n\r\n"
    marks: dict[str, float] = {}
    echo = bytearray()
    conn = socket.create_connection(("127.0.0.1", icap.port), timeout=60)

    def send() -> None:
        conn.sendall(req)
        marks["sent"] = time.monotonic()

    def receive() -> None:
        try:
            while piece := conn.recv(65536):
                echo.extend(piece)
        except OSError:                     # reset: the cut
            pass
        marks["end"] = time.monotonic()

    threads = [threading.Thread(target=send), threading.Thread(target=receive)]
    for t in threads:
        t.start()
    answered: list[float] = []
    while threads[1].is_alive():
        with socket.create_connection(("127.0.0.1", icap.port), timeout=60) as s:
            s.sendall(b"OPTIONS icap://127.0.0.1/respmod ICAP/1.0\r\nHost: x\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head and (piece := s.recv(4096)):
                head += piece
        assert b"Methods: RESPMOD" in head
        answered.append(time.monotonic())
        time.sleep(0.02)
    for t in threads:
        t.join()
    conn.close()
    assert echo.startswith(b"ICAP/1.0 200 OK") and not echo.endswith(b"\r\n0\r\n\r\n")     # cut, not completed
    during = [a for a in answered if marks["sent"] < a < marks["end"]]
    assert len(during) >= 3, (f"{len(during)} OPTIONS answered during the extraction",
                              [round(a - marks["sent"], 3) for a in answered], round(marks["end"] - marks["sent"], 3))
    out = c_icap(icap, "-f", str(site.root / "stats-1.html"), "-resp", "http://www.example.gov" + url, "-nopreview",
                 out=tmp_path / "o")
    assert b"withdrawn" in (tmp_path / "o").read_bytes(), out                   # taken down

# -- squid ------------------------------------------------------------------------------------------

SQUID_CONF = """
http_port 127.0.0.1:{port} accel defaultsite=www.example.gov no-vhost
cache_peer 127.0.0.1 parent {upstream} 0 no-query no-digest originserver name=origin
acl all_src src all
http_access allow all_src
cache_peer_access origin allow all_src
cache deny all
icap_enable on
icap_send_client_ip on
icap_service dlp respmod_precache bypass=0 icap://127.0.0.1:{icap}/respmod
adaptation_access dlp allow all_src
pid_filename {d}/squid.pid
access_log none
cache_log {d}/cache.log
coredump_dir {d}
shutdown_lifetime 1 seconds
"""


@pytest.fixture(scope="module")
def squid(site, icap):
    exe = shutil.which("squid") or ("/usr/sbin/squid" if os.path.exists("/usr/sbin/squid") else None)
    if exe is None:
        require_tool("squid")
    d = Path(tempfile.mkdtemp(prefix="dlp-squid-", dir="/tmp"))
    os.chmod(d, 0o777)                    # squid drops to its own user for logs and pid
    port = free_port()
    (d / "squid.conf").write_text(SQUID_CONF.format(port=port, upstream=site.port, icap=icap.port, d=d))
    proc = subprocess.Popen([exe, "-N", "-f", str(d / "squid.conf")], stdout=subprocess.DEVNULL,
                            stderr=open(d / "stderr", "wb"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("squid exited: " + (d / "stderr").read_text()[-500:])
        if curl("-m", "2", f"http://127.0.0.1:{port}/contact.html")[1] == 200:
            break
        time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    stop(proc)
    shutil.rmtree(d, ignore_errors=True)


def test_squid_benign_responses_are_byte_identical(site, squid):
    assert_byte_identical(site.url, squid, ("/stats-2.html", "/api/counties.json", "/big?mb=5"))


def test_squid_breach_csv_blocked_and_taken_down(site, squid, icap):
    (site.root / "exports" / "squid-roster.csv").write_bytes(b"# squid\n" + (site.root / ROSTER).read_bytes())
    rc, st, body, _ = curl("-m", "30", squid + "/exports/squid-roster.csv")
    assert st == 451 and b"withdrawn" in body and b"permit_id" not in body
    assert curl("-m", "30", squid + "/exports/squid-roster.csv")[1] == 451
    assert icap.metric("dlp_refusals_total", reason="resource") >= 1
    _wait(lambda: any(a["url"]["path"] == "/exports/squid-roster.csv" for a in icap.alerts()))


def test_squid_leak_after_the_holdback_fails_the_download(site, squid):
    data = b"# late\n" + synth.benign_web(300 << 10)[: 300 << 10] + (site.root / ROSTER).read_bytes()
    (site.root / "exports" / "squid-late.csv").write_bytes(data)
    rc, st, body, _ = curl("-m", "30", squid + "/exports/squid-late.csv")
    assert rc != 0 and len(body) < len(data)            # a failed download, never a complete-looking one
    assert curl("-m", "30", squid + "/exports/squid-late.csv")[1] == 451



# -- bad input ----------------------------------------------------------------------------------------

HDRS = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"
RES = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"


def _respmod(body: bytes, enc: bytes | None = None, extra: bytes = b"", uri: bytes = b"/respmod") -> bytes:
    enc = enc or b"req-hdr=0, res-hdr=%d, res-body=%d" % (len(HDRS), len(HDRS) + len(RES))
    return (b"RESPMOD icap://127.0.0.1" + uri + b" ICAP/1.0\r\nHost: x\r\n" + extra + b"Encapsulated: " + enc
            + b"\r\n\r\n" + HDRS + RES + body)


@pytest.mark.parametrize("name, data, status", [
    ("garbage request line", b"HELLO\r\n\r\n", b"400"),
    ("unknown method", b"PATCH icap://h/respmod ICAP/1.0\r\nHost: x\r\n\r\n", b"501"),
    ("reqmod", b"REQMOD icap://h/respmod ICAP/1.0\r\nHost: x\r\nEncapsulated: null-body=0\r\n\r\n", b"405"),
    ("wrong service", _respmod(b"0\r\n\r\n", uri=b"/nope"), b"404"),
    ("wrong version", b"OPTIONS icap://h/respmod ICAP/2.0\r\n\r\n", b"505"),
    ("bad Encapsulated", _respmod(b"0\r\n\r\n", enc=b"res-hdr=zz"), b"400"),
    ("missing Encapsulated", b"RESPMOD icap://h/respmod ICAP/1.0\r\nHost: x\r\n\r\n", b"400"),
    ("chunk size not hex", _respmod(b"zz\r\nabc\r\n0\r\n\r\n"), b"400"),
    ("chunk longer than its size", _respmod(b"3\r\nabcdef\r\n0\r\n\r\n"), b"400"),
    ("giant header", b"OPTIONS icap://h/respmod ICAP/1.0\r\nX-Big: " + b"a" * (100 << 10) + b"\r\n\r\n", b"400"),
])
def test_malformed_icap_gets_an_error_and_the_server_keeps_serving(icap, name, data, status):
    out = _raw(icap.port, data)
    assert out.startswith(b"ICAP/1.0 " + status), (name, out[:80])
    assert "Methods: RESPMOD" in c_icap(icap)


@pytest.mark.parametrize("data", [
    b"OPTIONS icap://h/respmod ICAP/1.0\r\nHost",                              # truncated head
    _respmod(b"ffff\r\nonly a little"),                                        # body ends inside a chunk
])
def test_truncated_input_is_survived(icap, data):
    _raw(icap.port, data, close_write=True)
    assert "Methods: RESPMOD" in c_icap(icap)


def test_run_starts_several_taps_from_one_config(site, tmp_path):
    """`dlp-sensor run`: the proxy and the ICAP tap in one process share one registry."""
    proxy_port, icap_port, metrics = free_port(), free_port(), free_port()
    cfg = tmp_path / "sensor.yaml"
    cfg.write_text(f"proxy: {{listen: '127.0.0.1:{proxy_port}', upstream: '{site.url}'}}\n"
                   f"icap: {{listen: '127.0.0.1:{icap_port}'}}\nmetrics: '127.0.0.1:{metrics}'\nadmin: null\n"
                   f"alerts: {{sinks: []}}\n")
    from tests.procs import BIN, wait_http
    proc = subprocess.Popen([str(BIN / "dlp-sensor"), "run", "--config", str(cfg), "--state-dir", str(tmp_path / "st")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{metrics}/readyz", proc=proc)
        (site.root / "exports" / "run-roster.csv").write_bytes(b"# run\n" + (site.root / ROSTER).read_bytes())
        assert curl(f"http://127.0.0.1:{proxy_port}/exports/run-roster.csv")[1] == 451      # tripped via the proxy
        out = subprocess.run([require_tool("c-icap-client"), "-i", "127.0.0.1", "-p", str(icap_port), "-s", "respmod",
                              "-f", str(site.root / "stats-1.html"), "-nopreview", "-resp",
                              f"http://127.0.0.1:{proxy_port}/exports/run-roster.csv", "-o", str(tmp_path / "o")],
                             capture_output=True, timeout=30)
        assert b"withdrawn" in (tmp_path / "o").read_bytes(), out      # refused via ICAP: one registry
    finally:
        stop(proc)


# -- ranges (206) on enforce routes: served only of a body scanned whole and clean --------------------

def _respmod_of(path: str, status: bytes, res_headers: bytes, body: bytes) -> bytes:
    """One RESPMOD (no preview, 204 allowed) of ``path`` answered ``status`` with ``body``."""
    req = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: www.example.gov\r\n\r\n"
    res = b"HTTP/1.1 " + status + b"\r\n" + res_headers + b"Content-Length: %d\r\n\r\n" % len(body)
    chunks = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    return (b"RESPMOD icap://127.0.0.1/respmod ICAP/1.0\r\nHost: x\r\nAllow: 204\r\nEncapsulated: req-hdr=0, "
            b"res-hdr=%d, res-body=%d\r\n\r\n" % (len(req), len(req) + len(res)) + req + res + chunks)


def _answer(port: int, data: bytes) -> bytes:
    """Send one ICAP request; its answer (a 204 head, or a 200 up to its last chunk)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while not (out.startswith(b"ICAP/1.0 204") and out.endswith(b"\r\n\r\n")) and not out.endswith(b"\r\n0\r\n\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def test_a_206_is_refused_until_the_whole_body_was_scanned_clean(site, icap):
    page = (site.root / "stats-3.html").read_bytes()
    etag = b'ETag: "icap-v1"\r\nContent-Type: text/html\r\n'
    part = etag + b"Content-Range: bytes 0-511/%d\r\n" % len(page)
    out = _answer(icap.port, _respmod_of("/icap-range.html", b"206 Partial Content", part, page[:512]))
    assert out.startswith(b"ICAP/1.0 200") and b"HTTP/1.1 503" in out and b"Retry-After: 1" in out
    assert page[:512] not in out
    # the whole body, scanned clean: later ranges of that version pass (scanned as partial)
    assert _answer(icap.port, _respmod_of("/icap-range.html", b"200 OK", etag, page)).startswith(b"ICAP/1.0 204")
    assert _answer(icap.port, _respmod_of("/icap-range.html", b"206 Partial Content", part,
                                          page[:512])).startswith(b"ICAP/1.0 204")
    other = b'ETag: "icap-v2"\r\nContent-Range: bytes 0-511/%d\r\n' % len(page)     # another version
    assert b"HTTP/1.1 503" in _answer(icap.port, _respmod_of("/icap-range.html", b"206 Partial Content", other,
                                                             page[:512]))
    assert icap.metric("dlp_scan_failures_total", reason="unverified_range", action="closed") == 2
