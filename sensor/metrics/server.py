"""The metrics port: ``/metrics`` (Prometheus text format), ``/healthz`` (the loop answers) and
``/readyz`` (signatures loaded, state open and, for a proxy, the app behind it reachable: safe to
send traffic)."""
from __future__ import annotations

from aiohttp import web

from sensor.metrics import CONTENT_TYPE_LATEST
from sensor.metrics.readiness import UpstreamProbe


def metrics_app(sensor, *, upstream: str | None = None) -> web.Application:
    """``upstream``: the proxy's upstream URL; when given, ``/readyz`` is 503 while it cannot be
    reached (a sidecar whose app is down would only answer 502). The ICAP and ext_proc servers and
    the Kafka workers have no upstream of their own and pass none."""
    probe = UpstreamProbe.for_url(upstream) if upstream else None

    async def metrics(request: web.Request) -> web.Response:
        resp = web.Response(body=sensor.metrics.exposition())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        if not sensor.ready:
            return web.Response(status=503, text="not ready\n")
        if probe is not None:
            result = await probe.check()
            if not result.ok:
                return web.Response(status=503, text=f"not ready: {result.detail}\n")
        return web.Response(text=f"ready generation={sensor.detector.generation}\n")

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics), web.get("/healthz", healthz), web.get("/readyz", readyz)])
    return app
