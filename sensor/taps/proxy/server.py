"""The inline reverse proxy: forwards every exchange to the upstream and scans responses as they stream.

Per route:

- ``monitor``: each chunk is forwarded first and scanned after, so scanning never holds a byte
  back; a trip raises the alert and ledger entry but cuts nothing (taken-down resources are still
  refused: a takedown is an explicit decision).
- ``enforce``: the first ``holdback`` bytes are held until scanned, so a small leak never leaves
  (451 page); past that each chunk is scanned before it is forwarded and a trip aborts the
  connection — the client sees a failed download (short of Content-Length, or no terminating
  chunk), never a complete-looking truncated file. The takedown is durable before the cut.
  The end of a body is judged before its last bytes leave: with a Content-Length the last read
  is known; a chunked body keeps its latest chunk back until the next one arrives, or for
  ``LAST_CHUNK_PATIENCE`` (a slow stream still flows), because a container (PDF, xlsx) is only
  judged at the end.

Memory per exchange is bounded by the hold-back plus one chunk: reads and writes are paced by
aiohttp's flow control in both directions.

An HTTP/1.0 client cannot be told that a body without a Content-Length was cut: the end of such
a body is the end of the connection, so a cut looks like a complete file. On an enforce route
such a response (upstream chunked or length-less) is therefore buffered whole — in memory, then
in a temporary file — scanned, and sent with a Content-Length; past ``proxy.http10_buffer_mib``
it is refused with ``505`` before the first byte (the client should speak HTTP/1.1).

A body that could not be fully inspected (a decode limit) follows the route's
``on_decode_limit``: closed (the default on enforce routes) refuses it with ``503`` before the
first byte or cuts it after; open lets it through. Either way the exchange raises an alert.
"""
from __future__ import annotations

import asyncio
import logging
import tempfile
import time
import uuid

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from sensor.alerts.schema import AlertContext
from sensor.enforce.resource import public_url, resource_of
from sensor.exchange.identity import client_address
from sensor.pipeline import BodyScan, Exchange
from sensor.runtime import Sensor

log = logging.getLogger("dlp_sensor.proxy")
CHUNK = 64 << 10              # enforce: what may leave after the hold-back before a trip is seen
LAST_CHUNK_PATIENCE = 0.1    # s a chunked body's latest chunk waits for the next before it leaves anyway
MONITOR_CHUNK = 256 << 10     # monitor: nothing is held, so bigger reads (fewer per-chunk costs: +8 % MB/s)
UNFRAMED_MEMORY = 1 << 20     # an HTTP/1.0 client's unframed body: held in memory up to this, then on disk
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


class _Unframed:
    """A whole body kept for an HTTP/1.0 client (memory, then a temporary file), bounded."""

    def __init__(self, limit: int):
        self.limit = limit
        self.size = 0
        self.file = tempfile.SpooledTemporaryFile(max_size=UNFRAMED_MEMORY)

    def add(self, chunk: bytes) -> bool:
        """Keep ``chunk``; False when the body has grown past the limit."""
        self.size += len(chunk)
        if self.size > self.limit:
            return False
        self.file.write(chunk)
        return True

    def pieces(self, size: int = CHUNK):
        self.file.seek(0)
        while piece := self.file.read(size):
            yield piece

    def close(self) -> None:
        self.file.close()


class Proxy:
    def __init__(self, sensor: Sensor):
        self.sensor = sensor
        self.session: aiohttp.ClientSession | None = None
        self.active_scans = 0
        self.websockets: set[web.WebSocketResponse] = set()

    @property
    def config(self):
        return self.sensor.config.proxy

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True),
            auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(), read_bufsize=MONITOR_CHUNK)

    async def stop(self) -> None:
        for ws in list(self.websockets):
            await ws.close()
        if self.session:
            await self.session.close()

    def _451(self) -> web.Response:
        return web.Response(status=451, body=self.sensor.block_page(), content_type="text/html",
                            headers={"Cache-Control": "no-store"})

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
        resource = resource_of(s.config, request.host, target)
        route = cfg.route(request.path)
        if s.registry.blocked(resource) is not None:
            s.refused(resource, "resource")
            return self._451(), "refused"
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request), "websocket"

        headers = _forward_headers(request.headers)
        xff = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{xff}, {request.remote}" if xff else (request.remote or "")
        headers["X-Forwarded-Proto"] = request.scheme
        headers["X-Forwarded-Host"] = request.host
        body = request.content.iter_chunked(CHUNK) if request.body_exists else None
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=cfg.connect_timeout, sock_read=cfg.upstream_timeout)
        assert self.session is not None
        try:
            upstream = await self.session.request(request.method, cfg.upstream + target, headers=headers, data=body,
                                                  allow_redirects=False, timeout=timeout, skip_auto_headers=("User-Agent",
                                                  "Accept-Encoding", "Content-Type"))
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            s.metrics.upstream_errors.labels(kind="timeout").inc()
            return web.Response(status=504, text="upstream timed out\n"), "upstream_timeout"
        except (aiohttp.ClientError, OSError) as e:
            s.metrics.upstream_errors.labels(kind="down").inc()
            log.warning("upstream unavailable: %s", type(e).__name__)
            return web.Response(status=502, text="upstream unavailable\n"), "upstream_down"
        try:
            return await self._relay(request, upstream, resource, route, t_start=time.perf_counter())
        finally:
            upstream.release()

    async def _relay(self, request: web.Request, up: aiohttp.ClientResponse, resource: str, route,
                     t_start: float) -> tuple[web.StreamResponse, str]:
        s = self.sensor
        enforce = route.mode == "enforce"
        exchange = Exchange(url=str(request.url), method=request.method, status=up.status,
                            content_type=up.headers.get("Content-Type", ""),
                            content_encoding=up.headers.get("Content-Encoding", ""),
                            client=client_address(s.config, request.remote or "", request.headers), path=request.path)
        ctx = AlertContext(exchange_id=uuid.uuid4().hex, sensor_id=s.config.sensor_id, resource=resource,
                           url=public_url(request.scheme, request.host, request.raw_path), method=request.method,
                           status=up.status, client_ip=exchange.client, mode=route.mode,
                           action="cut_and_takedown" if enforce else "logged", partial=up.status == 206)
        if ctx.partial:
            s.metrics.partial.inc()
        resp = web.StreamResponse(status=up.status, reason=up.reason,
                                  headers=_forward_headers(up.headers, frozenset({"content-length"})))
        if up.content_length is not None:
            resp.content_length = up.content_length
        has_body = request.method != "HEAD" and up.status not in (204, 304) and not 100 <= up.status < 200

        scan: BodyScan | None = None
        mirrored = None
        if has_body:
            if self.active_scans >= self.config.max_scans:
                s.metrics.failures.labels(reason="overload", action=route.on_error).inc()
                if route.on_error == "closed":
                    return web.Response(status=503, text="scanner overloaded\n",
                                        headers={"Retry-After": "1"}), "overload"
            elif not enforce and s.mirror is not None:
                mirrored = s.mirror.open(ctx, exchange)             # the workers scan it
                if mirrored is None and s.mirror.k.overflow == "local":
                    scan = s.new_scan(exchange)
            else:
                scan = s.new_scan(exchange, stop_on_trip=enforce)   # monitor: count every record that left
        if scan is not None:
            self.active_scans += 1
            s.metrics.active_exchanges.inc()
        fp_bytes = s.config.fingerprint_bytes
        head = bytearray()          # first fp_bytes of the body (the content fingerprint)
        fingerprint: str | None = None
        held: list[bytes] = []
        held_n = 0
        lookahead = enforce and has_body and up.content_length is None   # see LAST_CHUNK_PATIENCE
        pending: bytes | None = None                # lookahead: the latest chunk, not sent yet
        unframed: _Unframed | None = None           # HTTP/1.0 client, no length: sent whole with one
        if enforce and has_body and up.content_length is None and request.version < aiohttp.HttpVersion11:
            unframed = _Unframed(self.config.http10_buffer)
            lookahead = False
        decode_closed = route.on_decode_limit == "closed"
        finishing: asyncio.Future | None = None     # the final verdict being read (a container: in a thread)
        prepared = False
        completed = False
        scan_s = 0.0
        tripped_at: float | None = None
        result = None
        received = 0
        outcome = "ok"
        try:
            if not enforce or not has_body:
                await resp.prepare(request)
                prepared = True
            it = up.content.iter_chunked(CHUNK if enforce else MONITOR_CHUNK) if has_body else _empty()
            if lookahead:
                it = _with_ticks(it, LAST_CHUNK_PATIENCE)
            async for chunk in it:
                if chunk is None:                   # the next chunk is late: let the held one go
                    if pending is not None:
                        await resp.write(pending)
                        ctx.bytes_sent += len(pending)
                        pending = None
                    continue
                received += len(chunk)
                if len(head) < fp_bytes:
                    head += chunk[: fp_bytes - len(head)]
                    if len(head) >= fp_bytes:
                        fingerprint = s.content_fingerprint(bytes(head))
                        if enforce and s.registry.blocked_content(fingerprint) is not None:
                            s.refused(resource, "content")
                            if not prepared:
                                return self._451(), "refused"
                            raise Cut("content taken down")
                if not enforce:
                    await resp.write(chunk)
                    ctx.bytes_sent += len(chunk)
                    if mirrored is not None and not mirrored.write(chunk):
                        mirrored = None                     # the queue is full: overflow mid-body
                        if s.mirror.k.overflow == "local":
                            scan = s.new_scan(exchange)
                            scan.notes.append(f"mirror-overflow: scanned here from byte {received - len(chunk)}")
                            self.active_scans += 1
                            s.metrics.active_exchanges.inc()
                if scan is not None:
                    t = time.perf_counter()
                    try:
                        verdict = scan.write(chunk)
                    except Exception:
                        verdict = self._scan_failed(route, "internal")
                        scan = None
                        self.active_scans -= 1
                        s.metrics.active_exchanges.dec()
                    if (enforce and scan is not None and verdict != "trip" and up.content_length is not None
                            and received >= up.content_length):
                        # the last bytes of a Content-Length body: decide before they leave, or the
                        # client would hold a complete file when the final record trips
                        finishing = _finishing(scan)
                        result = await (asyncio.shield(finishing) if finishing else scan.finish_async())
                        verdict = result.verdict
                    scan_s += time.perf_counter() - t
                    if verdict != "trip" and decode_closed and scan is not None and scan.uninspected is not None:
                        return self._uninspected(ctx, scan, prepared), "uninspected"
                    if verdict == "trip" and tripped_at is None:
                        tripped_at = time.perf_counter()
                        if enforce:
                            return await self._take_down_and_stop(ctx, head, up, tripped_at, prepared), "tripped"
                    elif verdict == "fail-closed":
                        if not prepared:
                            return web.Response(status=503, text="scanner unavailable\n",
                                                headers={"Retry-After": "1"}), "scanner_error"
                        raise Cut("scanner failed")
                if enforce:
                    if unframed is not None:
                        if not unframed.add(chunk):
                            log.warning("exchange %s refused: an unframed body for an HTTP/1.0 client grew past "
                                        "%d bytes", ctx.exchange_id, unframed.limit)
                            return web.Response(status=505, text="this response needs HTTP/1.1\n",
                                                headers={"Cache-Control": "no-store"}), "http10_too_large"
                    elif not prepared:
                        held.append(chunk)
                        held_n += len(chunk)
                        if held_n >= route.holdback:
                            await resp.prepare(request)
                            prepared = True
                            if lookahead:
                                pending = held.pop()
                                held_n -= len(pending)
                            for c in held:
                                await resp.write(c)
                            ctx.bytes_sent += held_n
                            held.clear()
                            held_n = 0
                    elif lookahead:
                        if pending is not None:
                            await resp.write(pending)
                            ctx.bytes_sent += len(pending)
                        pending = chunk
                    else:
                        await resp.write(chunk)
                        ctx.bytes_sent += len(chunk)
            # end of body: the last record may only now be complete
            if scan is not None and result is None:
                t = time.perf_counter()
                finishing = _finishing(scan)
                result = await (asyncio.shield(finishing) if finishing else scan.finish_async())
                scan_s += time.perf_counter() - t
                if result.verdict == "trip" and tripped_at is None:
                    tripped_at = time.perf_counter()
                    if enforce:
                        return await self._take_down_and_stop(ctx, head, up, tripped_at, prepared), "tripped"
                if result.verdict != "trip" and decode_closed and scan.uninspected is not None:
                    return self._uninspected(ctx, scan, prepared), "uninspected"
            if has_body and fingerprint is None and head and enforce and not prepared:   # a body under 64 KiB
                fingerprint = s.content_fingerprint(bytes(head))
                if s.registry.blocked_content(fingerprint) is not None:
                    s.refused(resource, "content")
                    return self._451(), "refused"
            if not prepared and unframed is not None:
                resp.content_length = unframed.size     # the HTTP/1.0 client can tell a cut from the end
                await resp.prepare(request)
                prepared = True
                for piece in unframed.pieces():
                    await resp.write(piece)
                    ctx.bytes_sent += len(piece)
            if not prepared:
                await resp.prepare(request)
                prepared = True
                for c in held:
                    await resp.write(c)
                ctx.bytes_sent += held_n
            if pending is not None:
                await resp.write(pending)
                ctx.bytes_sent += len(pending)
            await resp.write_eof()
            completed = True
            return resp, outcome
        except Cut as e:
            outcome = "cut"
            log.info("response cut (%s), exchange %s", e, ctx.exchange_id)
            if request.transport is not None:
                request.transport.abort()
            resp.force_close()
            return resp, outcome
        except (asyncio.TimeoutError, aiohttp.ClientPayloadError, aiohttp.ServerTimeoutError) as e:
            # upstream died or stalled mid-body: the client must see a failed download too
            s.metrics.upstream_errors.labels(kind="timeout" if isinstance(e, asyncio.TimeoutError) else "body").inc()
            outcome = "upstream_body_error"
            if not prepared:
                return web.Response(status=502 if not isinstance(e, asyncio.TimeoutError) else 504,
                                    text="upstream failed mid-body\n"), outcome
            if request.transport is not None:
                request.transport.abort()
            resp.force_close()
            return resp, outcome
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            outcome = "client_gone"
            return resp, outcome
        finally:
            if unframed is not None:
                unframed.close()
            return_none = False                 # accounting deferred to the end of ``finishing``
            try:
                if mirrored is not None:
                    mirrored.end(completed=completed, sent=ctx.bytes_sent)
                if scan is not None:
                    self.active_scans -= 1
                    s.metrics.active_exchanges.dec()
                    if result is None and finishing is not None:
                        # the client left (the handler is cancelled) while the verdict was being read,
                        # typically right after the last byte: the verdict still counts, when it is in
                        finishing.add_done_callback(
                            lambda f, sent=scan_s, done=completed, sc=scan: self._account_late(ctx, f, sc, sent, done))
                        return_none = True
                    elif result is None:
                        t = time.perf_counter()
                        result = scan.finish()          # aborted exchanges: inline (no await in a finally)
                        scan_s += time.perf_counter() - t
                if not return_none:
                    s.finished(ctx, result, tap="proxy", completed=completed, scan_seconds=scan_s,
                               mirrored=mirrored is not None)
            except Exception:           # accounting must never break the data path
                log.exception("accounting for exchange %s failed", ctx.exchange_id)

    def _account_late(self, ctx: AlertContext, fut: asyncio.Future, scan: BodyScan, scan_s: float,
                      completed: bool) -> None:
        try:
            result = fut.result() if not fut.cancelled() and fut.exception() is None else scan.finish()
            self.sensor.finished(ctx, result, tap="proxy", completed=completed, scan_seconds=scan_s)
        except Exception:               # accounting must never break the data path
            log.exception("accounting for exchange %s failed", ctx.exchange_id)

    def _uninspected(self, ctx: AlertContext, scan: BodyScan, prepared: bool) -> web.Response:
        """The route fails closed on a body it could not fully inspect: 503 if nothing has left,
        else the cut. The alert (verdict ``alert``, note ``uninspected:``) comes with the accounting."""
        self.sensor.metrics.failures.labels(reason="decode_limit", action="closed").inc()
        log.warning("exchange %s not fully inspected (%s): %s, route fails closed", ctx.exchange_id,
                    scan.uninspected, "cut" if prepared else "refused")
        ctx.action = "cut_uninspected" if prepared else "refused_uninspected"
        if prepared:
            raise Cut("not fully inspected")
        return web.Response(status=503, text="response could not be fully inspected\n",
                            headers={"Cache-Control": "no-store"})

    def _scan_failed(self, route, reason: str) -> str:
        self.sensor.metrics.failures.labels(reason=reason, action=route.on_error).inc()
        log.exception("scanner failed; route says fail-%s", route.on_error)
        return "fail-closed" if route.on_error == "closed" else "pass"

    async def _take_down_and_stop(self, ctx: AlertContext, head: bytearray, up: aiohttp.ClientResponse,
                                  tripped_at: float, prepared: bool) -> web.Response:
        """An enforced trip: takedown first, then the 451 page if nothing has left, else the cut."""
        await self._trip(ctx, head, up, tripped_at)
        if not prepared:
            return self._451()
        raise Cut("tripped")

    async def _trip(self, ctx: AlertContext, head: bytearray, up: aiohttp.ClientResponse, tripped_at: float) -> None:
        """Fill the fingerprint head (without sending it), then take down — durably — before the cut."""
        fp_bytes = self.sensor.config.fingerprint_bytes
        try:
            while len(head) < fp_bytes:
                more = await asyncio.wait_for(up.content.read(fp_bytes - len(head)), 1.0)
                if not more:
                    break
                head += more
        except (asyncio.TimeoutError, aiohttp.ClientError):
            pass
        await self.sensor.take_down(ctx, self.sensor.content_fingerprint(bytes(head)) if head else None, tripped_at)

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


def _finishing(scan: BodyScan) -> asyncio.Future | None:
    """The final verdict of a container, read in a thread, as a task the handler awaits shielded: a
    client that leaves right after its last byte cancels the handler, and the verdict must still be
    read and counted (``Proxy._account_late``). None for text, which finishes without yielding."""
    return asyncio.ensure_future(scan.finish_async()) if scan.needs_prepare else None


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


async def _empty():
    return
    yield b""   # pragma: no cover
