"""The admin API (its own port, default 127.0.0.1:9103; bearer token on every call).

    GET  /takedowns[?all=1]            list (active, or all with lifted ones)
    POST /takedowns                    {"url" | "resource", "reason", "actor"}  -> 201
    POST /takedowns/{id}/lift          {"reason", "actor"}                        (audited)
    GET  /audit                        every add and lift, oldest first
    GET  /report                       the exposure report (JSON)
"""
from __future__ import annotations

import hmac

import orjson
from aiohttp import web

from sensor.enforce.registry import DISK_ERRORS, TakedownNotDurable, disk_fault
from sensor.enforce.report import build_report
from sensor.enforce.resource import rekey, resource_of_url
from sensor.enforce.parts import AdminState


def _json(data, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, option=orjson.OPT_INDENT_2), status=status,
                        content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def authorized(header: str, token: str) -> bool:
    """Whether an Authorization header carries exactly ``token`` as a bearer token.

    The scheme is case-insensitive (RFC 9110), the separator is one or more ASCII spaces, and the
    rest is compared byte for byte in constant time: nothing is stripped, so a trailing
    non-breaking space (which ``str.strip`` removes) is part of the presented token. An empty
    configured token authenticates nobody."""
    scheme, sep, presented = header.partition(" ")
    if not token or not sep or scheme.lower() != "bearer":
        return False
    presented = presented.lstrip(" ")
    return hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), token.encode("utf-8"))


def _disk_refused(e: BaseException) -> web.Response:
    return _error(503, f"the takedown registry could not be written ({type(e).__name__}: {e}); try again")


def admin_app(sensor: AdminState) -> web.Application:
    @web.middleware
    async def auth(request: web.Request, handler):
        if not authorized(request.headers.get("Authorization", ""), sensor.token):
            return _error(401, "missing or wrong bearer token")
        return await handler(request)

    async def body(request: web.Request, required: tuple[str, ...]) -> dict:
        try:
            data = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise web.HTTPBadRequest(text='{"error": "body must be JSON"}', content_type="application/json")
        if not isinstance(data, dict):
            raise web.HTTPBadRequest(text='{"error": "body must be a JSON object"}', content_type="application/json")
        missing = [k for k in required if not isinstance(data.get(k), str) or not data[k].strip()]
        if missing:
            raise web.HTTPBadRequest(text=orjson.dumps({"error": f"missing {', '.join(missing)}"}).decode(),
                                     content_type="application/json")
        return data

    async def list_(request: web.Request) -> web.Response:
        return _json([t.to_json() for t in sensor.registry.list(include_lifted=request.query.get("all") == "1")])

    async def add(request: web.Request) -> web.Response:
        data = await body(request, ("reason", "actor"))
        if data.get("resource"):
            resource = rekey(sensor.config, str(data["resource"]))   # the key requests here get
        elif data.get("url"):
            resource = resource_of_url(sensor.config, str(data["url"]))
        else:
            return _error(400, "give 'url' or 'resource'")
        try:
            td = await sensor.registry.add_async(resource, actor=data["actor"], reason=data["reason"])
        except TakedownNotDurable as e:         # refused from memory now; on disk once the disk takes it
            sensor.metrics.takedowns.labels(source="admin").inc()
            sensor.ledger.mark(resource, "taken_down")
            return _json({**e.takedown.to_json(), "durable": False, "error": str(e)}, 202)
        sensor.metrics.takedowns.labels(source="admin").inc()
        sensor.ledger.mark(resource, "taken_down")
        return _json(td.to_json(), 201)

    async def lift(request: web.Request) -> web.Response:
        data = await body(request, ("reason", "actor"))
        try:
            tid = int(request.match_info["id"])
        except ValueError:
            return _error(400, "takedown id must be a number")
        try:
            td = await sensor.registry.lift_async(tid, actor=data["actor"], reason=data["reason"])
        except DISK_ERRORS as e:
            if not disk_fault(e):
                raise
            return _disk_refused(e)
        if td is None:
            return _error(404, f"no active takedown {tid}")
        return _json(td.to_json())

    async def audit(request: web.Request) -> web.Response:
        return _json(sensor.registry.audit())

    async def report(request: web.Request) -> web.Response:
        await sensor.ledger.flush_async()
        return _json(build_report(sensor.ledger, sensor.registry))

    app = web.Application(middlewares=[auth], client_max_size=64 << 10)
    app.add_routes([web.get("/takedowns", list_), web.post("/takedowns", add),
                    web.post("/takedowns/{id}/lift", lift), web.get("/audit", audit), web.get("/report", report)])
    return app
