"""ICAP RESPMOD server: squid (or a secure web gateway) hands every response over for a verdict.

A thin tap: each RESPMOD becomes an exchange session (:mod:`sensor.exchange.session`), which
decides; this module maps the session's steps to ICAP. How a response is answered:

- taken down (resource or content fingerprint) or tripped before anything was returned:
  ``200`` carrying an encapsulated ``451`` block page;
- clean, and the client allows it (inside the preview with ``ieof``, or ``Allow: 204``): ``204``;
- clean, without ``Allow: 204``: ``200`` echoing the response, with the first ``holdback`` bytes
  held until scanned (at most ``icap.holdback_kib``: squid stops sending at 64 KiB not yet
  answered) and every later chunk scanned before it is returned, the latest kept back until the
  next arrives (the end of the body is judged before its last bytes leave); a trip after the
  hold-back aborts the ICAP connection, so the proxy (``bypass=0``) fails the response instead of
  delivering a truncated file. During a preview nothing is returned yet: what the session releases
  is kept and echoed first if the answer turns out to be an echo.

A ``206`` on an enforce route is answered with an encapsulated ``503`` + ``Retry-After`` unless the
whole body of that version was scanned clean before (:mod:`sensor.exchange.ranges`): RESPMOD sees
only the part, which cannot be judged alone.

Malformed ICAP gets 400 (or 404/405/501/505) and the connection is closed; the server keeps
serving. No maintained Python ICAP library exists: the framing is in ``protocol.py``.

Limits: the ``Max-Connections`` advertised in OPTIONS is enforced (a connection past it is answered
``503`` and closed before anything is read); a connection waiting for its next request is closed
after ``idle_timeout``; a started request whose client stalls for ``read_timeout`` (heads, or any
piece of the body) is dropped; a body is read in pieces of at most 64 KiB whatever chunk size
the client declares. A body that could not be fully inspected (a decode limit) on a route whose
``on_decode_limit`` is closed is refused with an encapsulated ``503`` before anything is returned,
or the connection is aborted after.
"""
from __future__ import annotations

import asyncio
import logging
import time
from http import HTTPStatus

from sensor import __version__
from sensor.exchange.session import ExchangeSession, Step
from sensor.runtime import Sensor
from sensor.taps.connections import RateLimited, accept_backlog
from sensor.taps.icap.protocol import (LAST_CHUNK, MAX_HEAD, ChunkReader, IcapError, IcapRequest, IcapTimeout, chunk,
                                       http_head, parse_head, read_head, read_sections, response)

log = logging.getLogger("dlp_sensor.icap")
SERVICE_PATHS = ("/respmod", "/dlp")
MAX_PREVIEW = 1 << 20       # a preview longer than this is not a preview (we advertise a few KiB)
REFUSAL = b"ICAP/1.0 503 Service Unavailable\r\nConnection: close\r\nEncapsulated: null-body=0\r\n\r\n"


class IcapServer:
    def __init__(self, sensor: Sensor, *, max_connections: int = 512, options_ttl: int = 300,
                 idle_timeout: float = 60.0, read_timeout: float = 30.0):
        self.sensor = sensor
        self.max_connections = max_connections
        self.options_ttl = options_ttl
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.connections = 0
        self.refused = 0
        self._log = RateLimited(log)

    @property
    def istag(self) -> str:
        return f'"{self.sensor.detector.generation}"'     # changes with the pack or the policy

    async def start(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self.handle, host, port, limit=MAX_HEAD,
                                          backlog=accept_backlog(self.max_connections))

    # -- connection ---------------------------------------------------------------------------------
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= self.max_connections:
            self.refused += 1
            self._log.warn("refused", f"ICAP Max-Connections {self.max_connections} reached: refusing with 503")
            writer.write(REFUSAL)
            writer.close()
            return
        self.connections += 1
        try:
            while True:
                try:
                    try:
                        async with asyncio.timeout(self.idle_timeout):
                            head = await read_head(reader)
                    except TimeoutError:
                        return                                   # idle (or a head that never ends)
                    if head is None:
                        return
                    req = parse_head(head)
                    keep = await self._dispatch(req, reader, writer)
                except IcapTimeout as e:
                    self.sensor.metrics.icap_errors.labels(status="408").inc()
                    self._log.warn("timeout", f"ICAP client dropped: {e.reason}")
                    writer.transport.abort()
                    return
                except IcapError as e:
                    self.sensor.metrics.icap_errors.labels(status=str(e.status)).inc()
                    self._log.warn(f"error:{e.status}:{e.reason}", f"ICAP {e.status}: {e.reason}")
                    writer.write(response(e.status, _REASONS.get(e.status, "Error"),
                                          {"ISTag": self.istag, "Connection": "close"}))
                    await self._flush(writer)
                    return
                if not keep:
                    return
        except IcapTimeout:                 # the client stopped reading our answer
            writer.transport.abort()
            return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.connections -= 1
            writer.close()

    async def _flush(self, writer: asyncio.StreamWriter) -> None:
        """Wait for the client to take what was written, for ``read_timeout`` at most: a client that
        stops reading must not hold a connection (and its scan) for ever."""
        try:
            async with asyncio.timeout(self.read_timeout):
                await writer.drain()
        except TimeoutError:
            raise IcapTimeout("the client stopped reading") from None

    async def _dispatch(self, req: IcapRequest, reader, writer) -> bool:
        path = "/" + req.uri.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0] if "://" in req.uri else req.uri
        if req.method == "OPTIONS":
            writer.write(response(200, "OK", {
                "Methods": "RESPMOD", "Service": f"dlp-sensor/{__version__}", "ISTag": self.istag,
                "Max-Connections": str(self.max_connections), "Options-TTL": str(self.options_ttl),
                "Allow": "204", "Preview": str(self.sensor.config.icap.preview), "Transfer-Preview": "*",
                "Service-ID": "dlp"}))
            await self._flush(writer)
            return True
        if req.method in ("REQMOD",):
            raise IcapError(405, "this service does RESPMOD only")
        if req.method != "RESPMOD":
            raise IcapError(501, "method not implemented")
        if path not in SERVICE_PATHS:
            raise IcapError(404, "no such ICAP service (use /respmod)")
        await read_sections(reader, req, self.read_timeout)
        return await self._respmod(req, ChunkReader(reader, self.read_timeout), writer)

    # -- RESPMOD ------------------------------------------------------------------------------------
    async def _respmod(self, req: IcapRequest, reader, writer) -> bool:
        s = self.sensor
        req_line, req_h = http_head(req.sections["req-hdr"]) if "req-hdr" in req.sections else ("GET / HTTP/1.1", {})
        parts = req_line.split(" ")
        if len(parts) != 3:
            raise IcapError(400, "malformed encapsulated request line")
        method, target = parts[0], parts[1]
        res_raw = req.sections.get("res-hdr", b"HTTP/1.1 200 OK\r\n\r\n")
        status_line, res_h = http_head(res_raw)
        try:
            status = int(status_line.split(" ")[1])
        except (IndexError, ValueError):
            raise IcapError(400, "malformed encapsulated status line") from None
        # the client's address is the one the proxy reports for it (X-Client-IP)
        session = ExchangeSession(s, tap="icap", method=method, scheme="http", host=req_h.get("host", ""),
                                  target=target, peer=req.headers.get("x-client-ip", ""), headers=req_h)
        has_body = req.body_kind == "res-body"
        completed = False
        try:
            step = session.on_request()
            if step.stops:
                await self._drain(reader, req, has_body)
                await self._block(writer, step)
                return True
            if not has_body:
                writer.write(response(204, "No Content", {"ISTag": self.istag}))
                await self._flush(writer)
                return True
            # the echo hold-back stays under squid's 64 KiB of unanswered body, where it stops sending
            step = session.on_response(status, res_h, holdback_cap=s.config.icap.holdback)
            if step.stops:
                await self._drain(reader, req, has_body)
                await self._block(writer, step)
                return True
            keep, completed = await self._body(req, reader, writer, session, res_raw)
            return keep
        finally:
            session.close(completed)

    async def _body(self, req: IcapRequest, reader, writer, session: ExchangeSession,
                    res_raw: bytes) -> tuple[bool, bool]:
        """(keep the connection, the response completed)."""
        echo = _Echo(self, writer, res_raw)
        if req.preview is not None:                              # the preview, then maybe 100 Continue
            previewed = 0
            while True:
                data, last, ieof = await reader.read()
                if last:
                    break
                previewed += len(data)
                if previewed > MAX_PREVIEW:
                    raise IcapError(400, f"preview longer than {MAX_PREVIEW} bytes")
                step = await session.feed(data)
                if step.stops:
                    await self._drain_chunks(reader)             # the rest of the preview is on its way
                    await self._block(writer, step)              # then the client waits for this answer
                    return True, False
                echo.keep(step)                                  # nothing may be returned yet
            if ieof:
                return await self._end(writer, session)
            writer.write(b"ICAP/1.0 100 Continue\r\n\r\n")
            await self._flush(writer)
        if req.allow_204:                                        # the client keeps its copy: answer at the end
            session.keep_nothing()
            while True:
                data, last, _ = await reader.read()
                if last:
                    return await self._end(writer, session)
                step = await session.feed(data)
                if step.stops:
                    await self._block(writer, step)
                    await self._drain_chunks(reader)
                    return True, False
        return await self._echo(reader, writer, session, echo)

    async def _echo(self, reader, writer, session: ExchangeSession, echo: "_Echo") -> tuple[bool, bool]:
        """No 204 allowed: return the body ourselves, as the session releases it."""
        if session.started:
            echo.write(Step("forward"))                          # released during the preview
        while True:
            data, last, _ = await reader.read()
            if last:
                break
            step = await session.feed(data)
            if step.stops:
                if not echo.started:
                    await self._block(writer, step)
                    await self._drain_chunks(reader)
                    return True, False
                writer.transport.abort()                         # a failed response, never a short one
                return False, False
            if echo.write(step):
                await self._flush(writer)
        step = await session.end()
        if step.stops:
            if not echo.started:
                await self._block(writer, step)
                return True, False
            writer.transport.abort()
            return False, False
        echo.write(step, start=True)
        writer.write(LAST_CHUNK)
        await self._flush(writer)
        return True, True

    async def _end(self, writer, session: ExchangeSession) -> tuple[bool, bool]:
        """The client kept its own copy (preview with ieof, or 204 allowed): 204, or the refusal."""
        session.keep_nothing()
        step = await session.end()
        if step.stops:
            await self._block(writer, step)
            return True, False
        writer.write(response(204, "No Content", {"ISTag": self.istag}))
        await self._flush(writer)
        return True, True

    async def _block(self, writer, step: Step) -> None:
        """The encapsulated answer instead of the response: the session's refusal (the 451 page for
        a leak or a takedown, a 503 for a body that could not be fully inspected or a full scanner)."""
        head = [f"HTTP/1.1 {step.status} {HTTPStatus(step.status).phrase}"]
        head += [f"{k}: {v}" for k, v in step.headers]
        head.append(f"Content-Length: {len(step.body)}")
        res = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        writer.write(response(200, "OK", {"ISTag": self.istag}, f"res-hdr=0, res-body={len(res)}")
                     + res + chunk(step.body) + LAST_CHUNK)
        await self._flush(writer)

    async def _drain(self, reader, req: IcapRequest, has_body: bool) -> None:
        """Discard a body we answer without reading (a preview ends at its own last chunk)."""
        if not has_body:
            return
        await self._drain_chunks(reader)        # a preview ends at its own last chunk

    async def _drain_chunks(self, reader) -> bool:
        """Discard chunks up to the last one; True when it carried ``ieof``."""
        deadline = time.monotonic() + 30
        while True:
            _, last, ieof = await reader.read()
            if last:
                return ieof
            if time.monotonic() > deadline:
                raise ConnectionError("client kept sending a body we already answered")


class _Echo:
    """The ``200`` echo of one response: the ICAP head and the encapsulated HTTP head once, then
    each chunk the session releases. Chunks released during a preview are kept until it starts."""

    def __init__(self, server: IcapServer, writer, res_raw: bytes):
        self.server, self.writer, self.res_raw = server, writer, res_raw
        self.kept: list[bytes] = []
        self.started = False

    def keep(self, step: Step) -> None:
        self.kept.extend(step.send)

    def write(self, step: Step, *, start: bool = False) -> bool:
        """Write what ``step`` releases (the heads first); True when anything was written."""
        send = [c for c in (*self.kept, *step.send) if c]       # an empty chunk would end the body
        self.kept.clear()
        if not self.started and (send or step.start or start):
            self.started = True
            self.writer.write(response(200, "OK", {"ISTag": self.server.istag},
                                       f"res-hdr=0, res-body={len(self.res_raw)}") + self.res_raw)
        for c in send:
            self.writer.write(chunk(c))
        return bool(send)


_REASONS = {400: "Bad Request", 404: "ICAP Service Not Found", 405: "Method Not Allowed For Service",
            501: "Method Not Implemented", 505: "ICAP Version Not Supported"}
