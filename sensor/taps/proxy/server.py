"""The inline reverse proxy: forwards every exchange to the upstream and relays its response.

What may leave and when — hold-back, the lookahead of a chunked body's latest chunk, the
Content-Length body's last read judged before it leaves, HTTP/1.0 unframed bodies (buffered and
sent with a Content-Length, or ``505`` past ``proxy.http10_buffer_mib``), decode limits and
scanner failures per route, admission caps, trips (takedown durable before the 451 or the cut) —
is decided by the exchange session (:mod:`sensor.exchange.session`). This module is HTTP: it
asks the upstream, turns each :class:`~sensor.exchange.session.Step` into aiohttp calls (prepare
the response, write chunks, answer a refusal page, or abort the connection so the client sees a
failed download, never a complete-looking truncated file), and keeps the session's clock: a
chunked body's held latest chunk leaves after ``LAST_CHUNK_PATIENCE`` without a next one (a slow
stream still flows).

Memory per exchange is bounded by the hold-back plus one chunk: reads and writes are paced by
aiohttp's flow control in both directions.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from sensor.exchange.session import CUT, REFUSE, ExchangeSession, Step
from sensor.runtime import Sensor

log = logging.getLogger("dlp_sensor.proxy")
CHUNK = 64 << 10              # a request body's reads, forwarded to the upstream
LAST_CHUNK_PATIENCE = 0.1    # s a chunked body's latest chunk waits for the next before it leaves anyway
# A response body's pieces, as received, at most this long: in every mode one scan job per piece.
# In enforce a piece leaves only once scanned clean, so a bigger piece lets no more out before a
# trip (the tripping piece is held whole); it cuts the per-piece costs (a hand-off and a wait per
# piece: 64 KiB reads cost 1.2x the CPU per byte of these, bench/proxy.py). The socket reads at
# most 256 KiB at a time anyway, and the parser buffers up to twice ``read_bufsize``.
READ_CHUNK = 256 << 10
HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer", "Trailers",
    "Transfer-Encoding", "Upgrade", "Proxy-Connection"))



def _forward_headers(headers, extra_drop: frozenset[str] = frozenset()) -> CIMultiDict:
    drop = HOP_BY_HOP | extra_drop
    conn = headers.get("Connection", "")
    drop |= {t.strip().lower() for t in conn.split(",") if t.strip()}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


class Cut(Exception):
    """The response must end now, without a proper end (abort the client connection)."""


class Proxy:
    def __init__(self, sensor: Sensor):
        self.sensor = sensor
        self.session: aiohttp.ClientSession | None = None
        self.websockets: set[web.WebSocketResponse] = set()

    @property
    def config(self):
        return self.sensor.config.proxy

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True),
            auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(), read_bufsize=READ_CHUNK)

    async def stop(self) -> None:
        for ws in list(self.websockets):
            await ws.close()
        if self.session:
            await self.session.close()

    @staticmethod
    def _answer(step: Step) -> web.Response:
        """The refusal a session answered (451 page, 503, 505), sent instead of the response."""
        return web.Response(status=step.status, body=step.body, headers=CIMultiDict(step.headers))

    # -- the handler ------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter()
        outcome = "error"
        try:
            resp, outcome = await self._handle(request)
            return resp
        finally:
            self.sensor.metrics.request_duration.labels(outcome=outcome).observe(time.perf_counter() - t0)

    async def _handle(self, request: web.Request) -> tuple[web.StreamResponse, str]:
        s = self.sensor
        cfg = self.config
        target = request.raw_path
        session = ExchangeSession(s, tap="proxy", method=request.method, scheme=request.scheme, host=request.host,
                                  target=target, peer=request.remote or "", headers=request.headers,
                                  http10=request.version < aiohttp.HttpVersion11)
        completed = False
        try:
            step = session.on_request()
            if step.action == REFUSE:
                return self._answer(step), step.reason
            if request.headers.get("Upgrade", "").lower() == "websocket":
                return await self._websocket(request), "websocket"

            headers = _forward_headers(request.headers, session.upstream_drop)   # a Range, until scanned whole
            xff = request.headers.get("X-Forwarded-For")
            headers["X-Forwarded-For"] = f"{xff}, {request.remote}" if xff else (request.remote or "")
            headers["X-Forwarded-Proto"] = request.scheme
            headers["X-Forwarded-Host"] = request.host
            body = request.content.iter_chunked(CHUNK) if request.body_exists else None
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=cfg.connect_timeout,
                                            sock_read=cfg.upstream_timeout)
            assert self.session is not None
            try:
                upstream = await self._ask(request.method, cfg.upstream + target, headers, body, timeout)
                if session.ask_whole(upstream.status, upstream.headers):   # a 206 of another version
                    upstream.release()
                    for h in session.upstream_drop:
                        headers.popall(h, None)
                    upstream = await self._ask(request.method, cfg.upstream + target, headers, body, timeout)
            except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
                s.metrics.upstream_errors.labels(kind="timeout").inc()
                return web.Response(status=504, text="upstream timed out\n"), "upstream_timeout"
            except (aiohttp.ClientError, OSError) as e:
                s.metrics.upstream_errors.labels(kind="down").inc()
                log.warning("upstream unavailable: %s", type(e).__name__)
                return web.Response(status=502, text="upstream unavailable\n"), "upstream_down"
            try:
                resp, outcome, completed = await self._relay(request, upstream, session)
                return resp, outcome
            finally:
                upstream.release()
        finally:
            session.close(completed)

    async def _ask(self, method: str, url: str, headers: CIMultiDict, body, timeout) -> aiohttp.ClientResponse:
        assert self.session is not None
        return await self.session.request(method, url, headers=headers, data=body, allow_redirects=False,
                                          timeout=timeout, skip_auto_headers=("User-Agent", "Accept-Encoding",
                                                                              "Content-Type"))

    async def _relay(self, request: web.Request, up: aiohttp.ClientResponse,
                     session: ExchangeSession) -> tuple[web.StreamResponse, str, bool]:
        """The response, relayed as the session's steps say; (response, outcome, completed)."""
        resp = web.StreamResponse(status=up.status, reason=up.reason,
                                  headers=_forward_headers(up.headers, frozenset({"content-length"})))
        if up.content_length is not None:
            resp.content_length = up.content_length
        has_body = request.method != "HEAD" and up.status not in (204, 304) and not 100 <= up.status < 200
        try:
            step = session.on_response(up.status, up.headers, content_length=up.content_length, has_body=has_body)
            if (answer := await self._apply(request, resp, step)) is not None:
                return answer, step.reason, False
            if not has_body:
                it = _empty()
            else:
                it = _received(up.content, READ_CHUNK)
            if session.lookahead:
                it = _with_ticks(it, LAST_CHUNK_PATIENCE)
            async for chunk in it:
                step = session.tick() if chunk is None else await session.feed(chunk)   # None: the next is late
                if (answer := await self._apply(request, resp, step)) is not None:
                    return answer, step.reason, False
            step = await session.end()          # the last record may only now be complete
            if (answer := await self._apply(request, resp, step)) is not None:
                return answer, step.reason, False
            await resp.write_eof()
            return resp, "ok", True
        except Cut as e:
            log.info("response cut (%s), exchange %s", e, session.ctx.exchange_id)
            self._abort(request, resp)
            return resp, "cut", False
        except (asyncio.TimeoutError, aiohttp.ClientPayloadError, aiohttp.ServerTimeoutError) as e:
            # upstream died or stalled mid-body: the client must see a failed download too
            self.sensor.metrics.upstream_errors.labels(
                kind="timeout" if isinstance(e, asyncio.TimeoutError) else "body").inc()
            if not resp.prepared:
                return web.Response(status=502 if not isinstance(e, asyncio.TimeoutError) else 504,
                                    text="upstream failed mid-body\n"), "upstream_body_error", False
            self._abort(request, resp)
            return resp, "upstream_body_error", False
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            return resp, "client_gone", False

    async def _apply(self, request: web.Request, resp: web.StreamResponse, step: Step) -> web.Response | None:
        """Carry out a step: the refusal to answer instead (REFUSE), or None once its bytes are written."""
        if step.action == REFUSE:
            return self._answer(step)
        if step.action == CUT:
            raise Cut(step.reason)
        if step.start:
            if step.length is not None:
                resp.content_length = step.length   # an HTTP/1.0 client can tell a cut from the end
            await resp.prepare(request)
        for c in step.send:
            await resp.write(c)
        return None

    @staticmethod
    def _abort(request: web.Request, resp: web.StreamResponse) -> None:
        if request.transport is not None:
            request.transport.abort()
        resp.force_close()

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        """WebSocket upgrades are relayed unscanned (counted): frames are not downloads."""
        s = self.sensor
        s.metrics.websockets.inc()
        assert self.session is not None
        headers = _forward_headers(request.headers, frozenset({"sec-websocket-key", "sec-websocket-version",
                                                              "sec-websocket-extensions", "host"}))
        try:
            upstream = await self.session.ws_connect(self.config.upstream + request.raw_path, headers=headers,
                                                     protocols=[p.strip() for p in request.headers.get(
                                                         "Sec-WebSocket-Protocol", "").split(",") if p.strip()])
        except (aiohttp.ClientError, OSError):
            s.metrics.upstream_errors.labels(kind="down").inc()
            return web.Response(status=502, text="upstream unavailable\n")
        ws = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else ())
        await ws.prepare(request)
        self.websockets.add(ws)

        async def pump(src, dst):
            async for msg in src:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await dst.send_str(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)
                else:
                    break
            await dst.close()

        try:
            await asyncio.gather(pump(ws, upstream), pump(upstream, ws))
        finally:
            self.websockets.discard(ws)
            await upstream.close()
        return ws


async def _with_ticks(it, patience: float):
    """The chunks of ``it``, with ``None`` each time the next one is more than ``patience`` s away."""
    ait = it.__aiter__()
    nxt = None
    try:
        while True:
            if nxt is None:
                nxt = asyncio.ensure_future(ait.__anext__())
            done, _ = await asyncio.wait((nxt,), timeout=patience)
            if not done:
                yield None
                continue
            fut, nxt = nxt, None
            try:
                chunk = fut.result()
            except StopAsyncIteration:
                return
            yield chunk
    finally:
        if nxt is not None:
            nxt.cancel()


async def _received(content: aiohttp.StreamReader, size: int) -> AsyncIterator[bytes]:
    """The body as the socket delivered it: each piece the response parser buffered, as is, cut
    only if longer than ``size``; a small piece (under ``size // 4``) is topped up with what else is
    buffered, up to ``size``, so a body that arrives in small reads is not scanned in as many jobs.

    Why not ``iter_chunked(size)``: its reads of exactly ``size`` bytes straddle the parser's
    pieces (the first one is shorter by the response head), so each 256 KiB chunk was a slice of
    two pieces plus their join: ~3 copies of every byte on the event loop. The bound is the same:
    no piece is longer than ``size`` (the transport reads at most 256 KiB at a time anyway)."""
    while True:
        piece, _ = await content.readchunk()
        if not piece:
            if content.at_eof():
                return
            continue                            # an HTTP chunk's end (chunked upstream): no bytes
        if len(piece) < size >> 2 and not content.at_eof():
            more = content.read_nowait(size - len(piece))
            if more:
                piece += more
        if len(piece) <= size:
            yield piece
        else:
            for i in range(0, len(piece), size):
                yield piece[i:i + size]


async def _empty():
    return
    yield b""   # pragma: no cover
