"""A sample public dashboard (synthetic data) to put the sidecar in front of: the demo and the tests.

Static pages, a JSON API and a contact page that are fine to publish — and, by accident, the
permit-holder roster export. Served by aiohttp from a generated directory (Range, HEAD and
Content-Length for free), plus dynamic endpoints: ``/stream/<file>`` sends a file chunked with a
pause between chunks (a slow download; ``?encoding=gzip`` labels a file that holds gzip bytes
with that Content-Encoding), ``/big?mb=N`` streams N MB of benign text, ``/echo``
returns the request body, ``/ws`` echoes WebSocket messages.
"""
from __future__ import annotations

import argparse
import asyncio
import gzip
import random
from pathlib import Path

from aiohttp import web

from sensor import synth

ROSTER = "exports/permits_2022.csv"


def build_site(root: Path, people: int = 2000) -> Path:
    (root / "api").mkdir(parents=True, exist_ok=True)
    (root / "exports").mkdir(exist_ok=True)
    web_text = synth.benign_web(1 << 20).decode()
    pages = [p for p in web_text.split("<!doctype html>") if p.strip()][:10]
    for i, page in enumerate(pages):
        (root / f"stats-{i}.html").write_text("<!doctype html>" + page)
    (root / "index.html").write_text("<!doctype html>" + pages[0])
    (root / "api" / "counties.json").write_text(synth._json_api(random.Random(1)))
    (root / "contact.html").write_text(
        "<html><h1>Contact</h1><p>Front desk (916) 445-9555, fax (916) 445-9556, "
        "press@agency.ca.gov. 1300 I Street, Sacramento, CA 95814.</p></html>")
    leak = synth.breach_csv(people)
    (root / ROSTER).write_bytes(leak)
    (root / (ROSTER + ".gz")).write_bytes(gzip.compress(leak))
    return root


def site_app(root: Path, *, chunk: int = 16 << 10, pause: float = 0.0) -> web.Application:
    root = Path(root)

    async def stream(request: web.Request) -> web.StreamResponse:
        path = (root / request.match_info["name"]).resolve()
        if root.resolve() not in path.parents or not path.is_file():
            raise web.HTTPNotFound()
        delay = float(request.query.get("pause", pause))
        headers = {"Content-Type": "text/csv" if path.suffix == ".csv" else "application/octet-stream"}
        if request.query.get("encoding"):            # the file holds bytes already so encoded
            headers["Content-Encoding"] = request.query["encoding"]
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        with open(path, "rb") as fh:
            while data := fh.read(chunk):
                await resp.write(data)
                if delay:
                    await asyncio.sleep(delay)
        await resp.write_eof()
        return resp

    async def big(request: web.Request) -> web.StreamResponse:
        mb = float(request.query.get("mb", "10"))
        total = int(mb * (1 << 20))
        block = synth.benign_web(1 << 20)
        resp = web.StreamResponse(headers={"Content-Type": "text/html"})
        resp.content_length = total
        await resp.prepare(request)
        sent = 0
        while sent < total:
            n = min(len(block), total - sent)
            await resp.write(block[:n])
            sent += n
        await resp.write_eof()
        return resp

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read(), content_type="application/octet-stream",
                            headers={"X-Seen-Forwarded-For": request.headers.get("X-Forwarded-For", "")})

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            await sock.send_str(msg.data)
        return sock

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(root / "index.html")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "5")))
        return web.Response(text="late\n")

    app = web.Application(client_max_size=1 << 30)
    app.add_routes([web.get("/", index), web.get("/stream/{name:.+}", stream), web.get("/big", big),
                    web.post("/echo", echo), web.get("/ws", ws), web.get("/slow", slow),
                    web.static("/", root, show_index=False)])
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, type=Path)
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--people", type=int, default=2000)
    ap.add_argument("--build", action="store_true", help="Generate the site into --root first.")
    a = ap.parse_args()
    if a.build:
        build_site(a.root, a.people)
    web.run_app(site_app(a.root), host="127.0.0.1", port=a.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
