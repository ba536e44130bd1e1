"""The metrics port: ``/metrics`` (Prometheus text format), ``/healthz`` (the loop answers) and
``/readyz`` (signatures loaded and state open: safe to send traffic)."""
from __future__ import annotations

from aiohttp import web

from sensor.metrics import CONTENT_TYPE_LATEST


def metrics_app(sensor) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        resp = web.Response(body=sensor.metrics.exposition())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        if sensor.ready:
            return web.Response(text=f"ready generation={sensor.detector.generation}\n")
        return web.Response(status=503, text="not ready\n")

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics), web.get("/healthz", healthz), web.get("/readyz", readyz)])
    return app
