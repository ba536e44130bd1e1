"""The incident as a page: `dlp-sensor report --format html` after real trips through a real sidecar.

The page is opened in headless Chromium (Debian `chromium`) through the DevTools protocol: no
console message of level error or warning, and no network request but the page's own file:// URL.
A control page (the same file without its CSP, plus an image on loopback and a console.error) shows
that the harness does see requests and errors. A screenshot of the timeline must contain the trip's
red and the takedown's purple. No raw value of the synthetic roster is anywhere in the page.
"""
from __future__ import annotations

import asyncio
import html
import http.client
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import aiohttp
import pytest

from sensor import synth
from sensor.enforce.report_html import COLOURS, CSP
from sensor.sample_site import ROSTER, build_site
from tests.conftest import require_tool
from tests.procs import OUTPUTS, Sidecar, Upstream, free_port, stop

EXE = str(Path(sys.executable).parent / "dlp-sensor")
LATE = "exports/annual-report-2022.csv"             # the roster after 400 KiB of benign text: cut mid-way


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, http.client.HTTPException):     # the cut download
        return -1


@pytest.fixture(scope="module")
def incidents(tmp_path_factory):
    """A sidecar that tripped twice (roster: 451 at once; annual report: cut mid-stream) and refused
    twice afterwards; the HTML pages written by `dlp-sensor report --format html --out`."""
    tmp = tmp_path_factory.mktemp("report-html")
    root = build_site(tmp / "site", people=2000)
    (root / LATE).write_bytes(synth.benign_web(400 << 10)[: 400 << 10] + (root / ROSTER).read_bytes())
    up = Upstream.start(root)
    sc = Sidecar.create(tmp / "sc", up.url).start()
    try:
        assert _get(sc.url + "/contact.html") == 200
        assert _get(sc.url + "/" + ROSTER) == 451
        assert _get(sc.url + "/" + LATE) == -1
        assert _get(sc.url + "/" + ROSTER) == 451
        assert _get(sc.url + "/" + LATE) == 451
        deadline = time.monotonic() + 20            # the alerts (and their evidence) land after the response
        while len([a for a in sc.alerts() if a["dlp"]["verdict"] == "trip"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sc.stop()
        up.stop()
    out = tmp / "pages"
    OUTPUTS.append(out)
    r = subprocess.run([EXE, "report", "--format", "html", "--out", str(out), "--config", str(sc.config),
                        "--state-dir", str(sc.state)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    pages = sorted(out.glob("incident-*.html"))
    return sc, out, pages


def test_one_self_contained_page_per_incident(incidents):
    sc, out, pages = incidents
    assert len(pages) == 2
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in pages)
    texts = {p: p.read_text() for p in pages}
    roster = next(t for t in texts.values() if ROSTER in t)
    late = next(t for t in texts.values() if LATE in t)
    for t in texts.values():
        assert f'<meta http-equiv="Content-Security-Policy" content="{CSP}">' in t
        assert not re.search(r"<(script|link|img|iframe|object|embed|base)\b", t, re.I)
        assert not re.search(r"\b(src|href|srcset|action|poster|formaction)\s*=", t, re.I)
        assert "url(" not in t and "@import" not in t and "@font-face" not in t
        assert "<svg" in t and COLOURS["trip"] in t and COLOURS["takedown"] in t
        assert "dlp-sensor takedowns lift 1 " in t or "dlp-sensor takedowns lift 2 " in t
        assert "us-driver-licence" in t                     # records by signature
    # the roster: blocked in the hold-back (nothing served), then refused
    assert "takedown #" in roster and "refused (451)" in roster
    # the annual report: bytes left before the cut, so its client's keyed hash is listed
    # ... as the alerts' dlp.client.hash
    assert re.search(r"<td><code>hmac-sha256:[0-9a-f]{24}</code></td><td>[0-9TZ:.-]+</td>", late)
    m = re.search(r"<dt>Refused afterwards</dt><dd>([0-9,]+)</dd>", late)
    assert m and int(m.group(1)) >= 1


def test_incident_selection_and_stdout(incidents):
    sc, out, pages = incidents
    iid = pages[0].name.removeprefix("incident-").removesuffix(".html")
    base = [EXE, "report", "--config", str(sc.config), "--state-dir", str(sc.state)]
    r = subprocess.run([*base, "--format", "html", "--incident", iid[:10]], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == pages[0].read_text().replace(_generated(pages[0].read_text()),
                                                                          _generated(r.stdout))
    r = subprocess.run([*base, "--format", "html"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--out DIR" in r.stderr           # two incidents, no --out: say how
    r = subprocess.run([*base, "--format", "json", "--incident", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and '"takedown_id": 1' in r.stdout and r.stdout.count('"resource"') == 1
    r = subprocess.run([*base, "--format", "html", "--incident", "nope"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--incident nope" in r.stderr


def _generated(page: str) -> str:
    return re.search(r"Generated [^ ]+", page).group(0)


def test_no_raw_personal_value_in_the_pages(incidents):
    _, _, pages = incidents
    values = set()
    for row in synth.breach_rows(3000):
        f = row.rstrip("\n").split(",")
        values.update((f[4], f[7], f[11], f"{f[2]} {f[1]}", f"{f[1]},{f[2]}"))
    for p in pages:
        text = p.read_text()
        for blob in (text, html.unescape(text)):
            found = [v[:2] + "…" for v in values if v in blob]
            assert not found, f"{p.name}: raw values {found[:5]}"


def test_escaping():
    """A resource is a request path: whatever it holds is text on the page, never markup."""
    from sensor.enforce.registry import Takedown
    from sensor.enforce.report_html import render_incident
    evil = "site/<script>alert(1)</script>\"'&<img src=x>"
    inc = {"resource": evil, "status": "taken down", "takedown_id": 1, "first_served": "2026-01-01T00:00:00.000Z",
           "first_alert": None, "tripped_at": "2026-01-01T00:00:01.000Z", "taken_down_at": "2026-01-01T00:00:01.001Z",
           "exposed_seconds": 1.001, "served": 3, "completed_downloads": 2, "partial_responses": 1,
           "served_before_detection": 2, "served_before_takedown": 3, "unique_clients": 2,
           "unique_clients_before_detection": 2, "unique_clients_before_takedown": 2, "refused_after_takedown": 5,
           "bytes_sent": 10, "max_records_in_one_response": 40, "alerts": 0, "trips": 1}
    td = Takedown(1, evil, None, 1767225601.0, "<b>actor</b>", "<i>reason</i>")
    ev = [(1767225601.0, {"verdict": "trip", "action": "<x>", "findings": {"<sig>": 3},
                          "samples": {"<sig>": [{"redacted": "<***>", "fingerprint": "\"fp\""}]}, "client": "<c>"})]
    page = render_incident(inc, incident="ab" * 16, evidence=ev, clients=[("<c>", 1767225600.5)], takedowns=[td],
                           state_dir=Path("/tmp/a dir"), admin="127.0.0.1:9103")
    for raw in ("<script>", "<img", "<b>actor", "<i>reason", "<sig>", "<***>", "<x>", "<c>"):
        assert raw not in page
    assert "&lt;script&gt;" in page and "&lt;sig&gt;" in page
    assert "--state-dir &#x27;/tmp/a dir&#x27;" in page          # shell-quoted, then escaped


# -- Chromium ------------------------------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars"]


class Chromium:
    """Headless Chromium with the DevTools protocol on a free loopback port, stopped by PID."""

    def __init__(self, profile: Path):
        exe = require_tool("chromium")
        self.port = free_port()
        self.log = profile.parent / "chromium.log"
        self.proc = subprocess.Popen(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--remote-debugging-port={self.port}",
             "--remote-debugging-address=127.0.0.1", "--remote-allow-origins=*", "--window-size=1200,1400",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"))

    async def page_ws(self, session: aiohttp.ClientSession) -> str:
        deadline = time.monotonic() + 30
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{self.port}/json/list") as r:
                    targets = await r.json()
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            except aiohttp.ClientError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium's DevTools did not answer:\n" + self.log.read_text(errors="replace")[-2000:])
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        stop(self.proc)


class DevTools:
    """A tiny CDP client: commands by id, and every event kept."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws, self.n, self.events = ws, 0, []

    async def call(self, method: str, **params):
        self.n += 1
        mine = self.n
        await self.ws.send_json({"id": mine, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), 30)
            if msg.get("id") == mine:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    async def until(self, method: str, timeout: float = 30):
        """Read events until one ``method`` event is among them (they are cleared at each page)."""
        deadline = time.monotonic() + timeout
        while not any(e["method"] == method for e in self.events):
            msg = await asyncio.wait_for(self.ws.receive_json(), max(0.1, deadline - time.monotonic()))
            if "method" in msg:
                self.events.append(msg)

    async def open(self, url: str) -> dict:
        """Load ``url``; returns its requests, console problems and a PNG of the timeline strip."""
        self.events.clear()
        await self.call("Page.navigate", url=url)
        await self.until("Page.loadEventFired")
        # A round trip through the renderer after load: anything the page started is reported by now.
        state = await self.call("Runtime.evaluate", expression="document.readyState", returnByValue=True)
        assert state["result"]["value"] == "complete"
        requests = [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]
        failed = [e["params"] for e in self.events if e["method"] == "Network.loadingFailed"]
        console = [e["params"]["entry"] for e in self.events if e["method"] == "Log.entryAdded"
                   if e["params"]["entry"]["level"] in ("error", "warning")]
        console += [e["params"] for e in self.events if e["method"] == "Runtime.consoleAPICalled"
                    if e["params"]["type"] in ("error", "warning", "assert")]
        console += [e["params"] for e in self.events if e["method"] == "Runtime.exceptionThrown"]
        box = await self.call("Runtime.evaluate", returnByValue=True, expression=(
            "(() => { const s = document.querySelector('svg.strip'); if (!s) return null;"
            " s.scrollIntoView(); const r = s.getBoundingClientRect();"
            " return {x: r.x + scrollX, y: r.y + scrollY, width: r.width, height: r.height}; })()"))
        png = None
        if box["result"].get("value"):
            shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                                   clip={**box["result"]["value"], "scale": 1})
            import base64
            png = base64.b64decode(shot["data"])
        return {"requests": requests, "failed": failed, "console": console, "png": png}


async def _visit(profile: Path, urls: list[str]) -> list[dict]:
    chrome = Chromium(profile)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(await chrome.page_ws(session), max_msg_size=0) as ws:
                cdp = DevTools(ws)
                for domain in ("Page", "Network", "Log", "Runtime"):
                    await cdp.call(f"{domain}.enable")
                return [await cdp.open(u) for u in urls]
    finally:
        chrome.stop()


def _control_page(page: Path, dest: Path, port: int) -> Path:
    """The same page without its CSP, plus what a careless edit could add: an image and a console error."""
    text = page.read_text().replace(f'<meta http-equiv="Content-Security-Policy" content="{CSP}">', "")
    text = text.replace("</body>", f'<img src="http://127.0.0.1:{port}/pixel.png">'
                                   "<script>console.error('control')</script></body>")
    dest.write_text(text)
    return dest


def test_page_opens_in_chromium_without_errors_or_requests(incidents, tmp_path):
    _, _, pages = incidents
    page = pages[0]
    with socket.socket() as closed:             # nothing listens there: the control's request fails
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    control = _control_page(page, tmp_path / "control.html", port)
    real, ctl = asyncio.run(_visit(tmp_path / "profile", [page.as_uri(), control.as_uri()]))
    # the harness sees what it must not see on the real page
    assert any(u.startswith(f"http://127.0.0.1:{port}/") for u in ctl["requests"]), ctl["requests"]
    assert ctl["console"], "the control page's console.error was not seen"
    # the real page: only its own document, no console problem, and the timeline drawn
    assert real["requests"] == [page.as_uri()], real["requests"]
    assert not real["failed"] and not real["console"], (real["failed"], real["console"])
    assert real["png"] is not None
    counts = _colour_counts(real["png"], [COLOURS["trip"], COLOURS["takedown"], COLOURS["before"], COLOURS["refused"]])
    assert counts[COLOURS["trip"]] > 300 and counts[COLOURS["takedown"]] > 300, counts
    assert counts[COLOURS["refused"]] > 300, counts


def test_screenshot_shows_the_timeline(incidents, tmp_path):
    """Chromium's own --screenshot of the whole page (no DevTools): the timeline's colours are in it."""
    exe = require_tool("chromium")
    _, _, pages = incidents
    shot = tmp_path / "page.png"
    r = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,900",
                        f"--screenshot={shot}", pages[0].as_uri()], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000, r.stderr[-2000:]
    counts = _colour_counts(shot.read_bytes(), [COLOURS["trip"], COLOURS["takedown"]])
    assert counts[COLOURS["trip"]] > 300 and counts[COLOURS["takedown"]] > 300, counts


# -- PNG (zlib; no imaging library needed) -------------------------------------------------------

def _png_pixels(data: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, bytes per pixel, unfiltered pixel rows concatenated) of an 8-bit RGB(A) PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0, (depth, ctype, interlace)
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = w * bpp
    out = bytearray()
    prev = bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif f == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev))
        elif f == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif f == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out += line
        prev = line
    return w, h, bpp, bytes(out)


def _colour_counts(png: bytes, colours: list[str], tolerance: int = 6) -> dict[str, int]:
    """How many pixels are within ``tolerance`` (per channel) of each ``#rrggbb`` colour."""
    w, h, bpp, px = _png_pixels(png)
    want = {c: tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in colours}
    counts = dict.fromkeys(colours, 0)
    for i in range(0, len(px), bpp):
        r, g, b = px[i], px[i + 1], px[i + 2]
        for c, (cr, cg, cb) in want.items():
            if abs(r - cr) <= tolerance and abs(g - cg) <= tolerance and abs(b - cb) <= tolerance:
                counts[c] += 1
    return counts


def test_evidence_keeps_no_client_hash_past_the_retention(tmp_path):
    """The page's per-response evidence forgets client hashes like the ledger's clients table does."""
    from sensor.enforce.ledger import Ledger
    led = Ledger(tmp_path / "ledger.db", client_retention_days=1)
    now = time.time()
    led.note_evidence("site/x", {"verdict": "alert", "client": "0123456789abcdef", "records": 3}, now - 2 * 86400)
    led.note_evidence("site/x", {"verdict": "trip", "client": "fedcba9876543210", "records": 40}, now)
    rows = led.evidence("site/x")
    assert [(d["verdict"], d["client"]) for _, d in rows] == [("alert", None), ("trip", "fedcba9876543210")]
    stored = led.db.execute("SELECT client FROM evidence ORDER BY at").fetchall()
    assert stored == [(None,), ("fedcba9876543210",)]
    led.close()
