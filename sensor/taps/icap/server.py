"""ICAP RESPMOD server: squid (or a secure web gateway) hands every response over for a verdict.

A thin tap: each RESPMOD becomes an Exchange plus body chunks for the shared Sensor (registry,
alerts, ledger, metrics). How a response is answered:

- taken down (resource or content fingerprint) or tripped before anything was returned:
  ``200`` carrying an encapsulated ``451`` block page;
- clean, and the client allows it (inside the preview with ``ieof``, or ``Allow: 204``): ``204``;
- clean, without ``Allow: 204``: ``200`` echoing the response, with the first ``holdback`` bytes
  held until scanned and every later chunk scanned before it is returned; a trip after the hold-back
  aborts the ICAP connection, so the proxy (``bypass=0``) fails the response instead of
  delivering a truncated file.

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
import uuid

from sensor import __version__
from sensor.alerts.schema import AlertContext
from sensor.enforce.resource import public_url, resource_of
from sensor.exchange.identity import client_address
from sensor.pipeline import BodyScan, Exchange
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
        host = req_h.get("host", "")
        path = "/" + target.split("://", 1)[1].split("/", 1)[1] if "://" in target and target.count("/") >= 3 \
            else target
        resource = resource_of(s.config, host, target)
        route = s.config.proxy.route(path.split("?", 1)[0])
        enforce = route.mode == "enforce"
        ctx = AlertContext(exchange_id=uuid.uuid4().hex, sensor_id=s.config.sensor_id, resource=resource,
                           url=public_url("http", host, target), method=method, status=status,
                           client_ip=client_address(s.config, req.headers.get("x-client-ip", ""), req_h), mode=route.mode,
                           action="cut_and_takedown" if enforce else "logged", partial=status == 206)
        has_body = req.body_kind == "res-body"
        if s.registry.blocked(resource) is not None:
            s.refused(resource, "resource")
            await self._drain(reader, req, has_body)
            await self._block(writer)
            return True
        if not has_body:
            writer.write(response(204, "No Content", {"ISTag": self.istag}))
            await self._flush(writer)
            return True
        ex = Exchange(url=f"http://{host}{target}" if not target.startswith("http") else target, method=method,
                      status=status, content_type=res_h.get("content-type", ""),
                      content_encoding=res_h.get("content-encoding", ""), client=ctx.client_ip, path=path)
        gate = _Gate(self, s.new_scan(ex, stop_on_trip=enforce), ctx, resource, enforce,
                     closed_on_limit=route.on_decode_limit == "closed")
        try:
            # the echo hold-back stays under squid's 64 KiB of unanswered body, where it stops sending
            return await self._body(req, reader, writer, gate, res_raw, min(route.holdback, s.config.icap.holdback))
        finally:
            gate.close()

    async def _body(self, req: IcapRequest, reader, writer, gate: "_Gate", res_raw: bytes, holdback: int) -> bool:
        preview = req.preview
        ieof = False
        previewed: list[bytes] = []                              # echoed back if it comes to that
        if preview is not None:                                  # the preview, then maybe 100 Continue
            while True:
                data, last, ieof = await reader.read()
                if last:
                    break
                previewed.append(data)
                gate.previewed += len(data)
                if gate.previewed > MAX_PREVIEW:
                    raise IcapError(400, f"preview longer than {MAX_PREVIEW} bytes")
                if (v := await gate.feed(data)) != "pass":
                    ieof = (await self._drain_chunks(reader))    # the rest of the preview is on its way
                    await self._block(writer, v)                 # then the client waits for this answer
                    return True
            if ieof:
                return await self._end(writer, gate)
            writer.write(b"ICAP/1.0 100 Continue\r\n\r\n")
            await self._flush(writer)
        if req.allow_204:                                        # the client keeps its copy: answer at the end
            while True:
                data, last, _ = await reader.read()
                if last:
                    return await self._end(writer, gate)
                if (v := await gate.feed(data)) != "pass":
                    await self._block(writer, v)
                    await self._drain_chunks(reader)
                    return True
        return await self._echo(reader, writer, gate, res_raw, holdback, previewed)

    async def _echo(self, reader, writer, gate: "_Gate", res_raw: bytes, holdback: int,
                    previewed: list[bytes]) -> bool:
        """No 204 allowed: return the body ourselves, held back and scanned before it goes."""
        held: list[bytes] = previewed
        held_n = sum(map(len, held))
        started = False
        lag: bytes | None = None
        while True:
            data, last, _ = await reader.read()
            if last:
                break
            if (v := await gate.feed(data)) != "pass":
                if not started:
                    await self._block(writer, v)
                    await self._drain_chunks(reader)
                    return True
                writer.transport.abort()                         # a failed response, never a short one
                return False
            if started:
                # one chunk stays behind until the next arrives: the last bytes leave only after
                # the final verdict (the last record may complete only at the end of the body)
                if lag is not None:
                    writer.write(chunk(lag))
                    gate.ctx.bytes_sent += len(lag)
                    await self._flush(writer)
                lag = data
                continue
            held.append(data)
            held_n += len(data)
            if held_n >= holdback and gate.enforce:
                started = True
                self._start_echo(writer, res_raw, held, gate)
                await self._flush(writer)
            elif not gate.enforce:
                started = True
                self._start_echo(writer, res_raw, held, gate)
        if (v := await gate.finish()) != "pass":
            if not started:
                await self._block(writer, v)
                return True
            writer.transport.abort()
            return False
        if not started:
            self._start_echo(writer, res_raw, held, gate)
        if lag is not None:
            writer.write(chunk(lag))
            gate.ctx.bytes_sent += len(lag)
        writer.write(LAST_CHUNK)
        await self._flush(writer)
        gate.completed = True
        return True

    def _start_echo(self, writer, res_raw: bytes, held: list[bytes], gate: "_Gate") -> None:
        writer.write(response(200, "OK", {"ISTag": self.istag}, f"res-hdr=0, res-body={len(res_raw)}") + res_raw)
        for c in held:
            writer.write(chunk(c))
            gate.ctx.bytes_sent += len(c)
        held.clear()

    async def _end(self, writer, gate: "_Gate") -> bool:
        if (v := await gate.finish()) != "pass":
            await self._block(writer, v)
            return True
        writer.write(response(204, "No Content", {"ISTag": self.istag}))
        await self._flush(writer)
        gate.ctx.bytes_sent = gate.received                     # the client sends its own copy
        gate.completed = True
        return True

    async def _block(self, writer, verdict: str = "block") -> None:
        """The encapsulated answer instead of the response: the 451 page for a leak or a takedown,
        a 503 for a body that could not be fully inspected (``refuse``)."""
        if verdict == "refuse":
            page = b"response could not be fully inspected\n"
            res = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                   b"Cache-Control: no-store\r\nContent-Length: %d\r\n\r\n" % len(page))
        else:
            page = self.sensor.block_page()
            res = (b"HTTP/1.1 451 Unavailable For Legal Reasons\r\nContent-Type: text/html\r\n"
                   b"Cache-Control: no-store\r\nContent-Length: %d\r\n\r\n" % len(page))
        writer.write(response(200, "OK", {"ISTag": self.istag}, f"res-hdr=0, res-body={len(res)}")
                     + res + chunk(page) + LAST_CHUNK)
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


class _Gate:
    """One exchange's scan, content fingerprint and accounting, in ICAP terms (``block`` or not)."""

    def __init__(self, server: IcapServer, scan: BodyScan, ctx: AlertContext, resource: str, enforce: bool,
                 closed_on_limit: bool = False):
        self.server, self.scan, self.ctx, self.resource, self.enforce = server, scan, ctx, resource, enforce
        self.closed_on_limit = closed_on_limit      # a body not fully inspected is refused (or the echo aborted)
        self.previewed = 0
        self.sensor = server.sensor
        self.head = bytearray()
        self.fingerprint: str | None = None
        self.received = 0
        self.tripped_at: float | None = None
        self.result = None
        self.completed = False
        self.scan_s = 0.0
        self.sensor.metrics.active_exchanges.inc()

    async def _trip(self) -> str:
        if self.tripped_at is None:
            self.tripped_at = time.perf_counter()
            if self.enforce:
                fp = self.fingerprint or (self.sensor.content_fingerprint(bytes(self.head)) if self.head else None)
                await self.sensor.take_down(self.ctx, fp, self.tripped_at)
                return "block"
        return "pass"

    async def feed(self, data: bytes) -> str:
        self.received += len(data)
        fp_bytes = self.sensor.config.fingerprint_bytes
        if len(self.head) < fp_bytes:
            self.head += data[: fp_bytes - len(self.head)]
            if len(self.head) >= fp_bytes:
                self.fingerprint = self.sensor.content_fingerprint(bytes(self.head))
                if self.enforce and self.sensor.registry.blocked_content(self.fingerprint) is not None:
                    self.sensor.refused(self.resource, "content")
                    return "block"
        t = time.perf_counter()
        verdict = self.scan.write(data)
        self.scan_s += time.perf_counter() - t
        if verdict == "trip":
            return await self._trip()
        return self._uninspected()

    def _uninspected(self) -> str:
        if self.closed_on_limit and self.scan.uninspected is not None:
            if self.ctx.action != "refused_uninspected":
                self.ctx.action = "refused_uninspected"
                log.warning("exchange %s not fully inspected (%s): refused, route fails closed",
                            self.ctx.exchange_id, self.scan.uninspected)
            return "refuse"
        return "pass"

    async def finish(self) -> str:
        """The final verdict. A PDF's text extraction runs in a thread (``finish_async``): seconds of
        pure-Python work must not stall the other ICAP connections on this loop."""
        t = time.perf_counter()
        self.result = await self.scan.finish_async()
        self.scan_s += time.perf_counter() - t
        if self.result.verdict == "trip":
            return await self._trip()
        if self._uninspected() != "pass":
            return "refuse"
        if self.enforce and self.head and self.fingerprint is None:
            fp = self.sensor.content_fingerprint(bytes(self.head))
            if self.sensor.registry.blocked_content(fp) is not None:
                self.sensor.refused(self.resource, "content")
                return "block"
        return "pass"

    def close(self) -> None:
        self.sensor.metrics.active_exchanges.dec()
        try:
            if self.result is None:
                self.result = self.scan.finish()
            self.sensor.finished(self.ctx, self.result, tap="icap", completed=self.completed, scan_seconds=self.scan_s)
        except Exception:               # accounting must never break the data path
            log.exception("accounting for exchange %s failed", self.ctx.exchange_id)


_REASONS = {400: "Bad Request", 404: "ICAP Service Not Found", 405: "Method Not Allowed For Service",
            501: "Method Not Implemented", 505: "ICAP Version Not Supported"}
