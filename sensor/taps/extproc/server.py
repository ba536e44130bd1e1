"""Envoy external processing (ext_proc) server: Envoy streams each exchange over gRPC.

A thin tap (grpcio, protos from ``xds-protos``). Per stream (one HTTP exchange):

- request headers: a taken-down resource is answered with an ``ImmediateResponse`` 451 before the
  upstream is asked;
- response headers: open a scan with the status, content type and encoding;
- response body, ``STREAMED`` with ``send_body_without_waiting_for_header_response``: in enforce
  mode the header answer is held until the route's hold-back (64 KiB) has been scanned, or 100 ms
  have passed (inside Envoy's 200 ms message timeout), so a small leak gets a clean 451 and never
  leaves. Holding starts with ``override_message_timeout`` (``HOLD_TIMEOUT_OVERRIDE``): on a
  starved CPU the scan of the hold-back outlasted the 200 ms and Envoy answered 504. After that one body message always stays unanswered until the next one arrives (or
  100 ms pass): Envoy often ends a body with an empty ``end_of_stream`` message, and a container
  (PDF, xlsx, zip) is only judged there, so answering each chunk at once let every data byte of a
  leaked file out before its verdict. On a trip the resource is taken down (durably, first) and
  the stream is answered with an ``ImmediateResponse`` 451; once the headers have left, Envoy
  resets the downstream stream: a failed download that lacks at least its last chunk.
- the end of the body may take seconds to judge (a container is read in a thread): the answer
  starts with ``override_message_timeout`` (``FINAL_VERDICT_TIMEOUT``), which Envoy honours up to
  its ``max_message_timeout`` (the shipped config allows it). Envoy 1.40 was seen not to time
  that message anyway; the override guards versions that do.

Envoy's ``failure_mode_allow`` decides what happens when this server is unreachable; the shipped
config (``deploy/envoy/envoy.yaml``) sets it to ``false`` (fail closed).
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import duration_pb2

from sensor.alerts.schema import AlertContext
from sensor.enforce.resource import public_url, resource_of
from sensor.exchange.identity import client_address, envoy_peer
from sensor.pipeline import Exchange
from sensor.runtime import Sensor

log = logging.getLogger("dlp_sensor.extproc")
HOLD_MAX_SECONDS = 0.1          # a slow body is released after this, well inside Envoy's 200 ms message timeout
FINAL_VERDICT_TIMEOUT = 30      # seconds; deploy/envoy/envoy.yaml's max_message_timeout must allow it
HOLD_TIMEOUT_OVERRIDE = 5       # seconds Envoy may wait for held response headers (CPU starvation guard)


def _headers(hm) -> dict[str, str]:
    return {h.key.lower(): (h.raw_value.decode("latin-1") if h.raw_value else h.value) for h in hm.headers}


class _Stream:
    """One exchange's state across the messages of its gRPC stream."""

    def __init__(self, sensor: Sensor, grpc_peer: str = ""):
        self.sensor = sensor
        self.grpc_peer = grpc_peer     # Envoy's address: the peer when Envoy sends no source.address
        self.ctx: AlertContext | None = None
        self.scan = None
        self.enforce = True
        self.closed_on_limit = False   # a body not fully inspected (decode limit) is refused / reset
        self.head = bytearray()
        self.result = None
        self.tripped = False
        self.scan_s = 0.0
        self.host = self.path = self.method = ""
        self.holdback = 0
        self.headers_held = False      # the response-headers answer waits for the hold-back
        self.release_at = 0.0          # ... and whatever is held goes at this loop time at the latest
        self.held_msgs = 0             # body messages not answered yet
        self.held_bytes = 0
        self.done = False
        self.completed = False

    async def feed(self, body: bytes, eos: bool) -> str:
        """Scan one chunk: ``trip``, ``refused`` (content taken down) or ``pass``. At the end of the
        body a PDF's text extraction runs in a thread, so other streams keep being answered."""
        s = self.sensor
        fp_bytes = s.config.fingerprint_bytes
        if len(self.head) < fp_bytes:
            self.head += body[: fp_bytes - len(self.head)]
            if (len(self.head) >= fp_bytes and self.enforce
                    and s.registry.blocked_content(s.content_fingerprint(bytes(self.head))) is not None):
                s.refused(self.ctx.resource, "content")
                return "refused"
        t = time.perf_counter()
        verdict = self.scan.write(body)
        if eos and verdict != "trip":
            self.result = await self.scan.finish_async()
            verdict = self.result.verdict
        self.scan_s += time.perf_counter() - t
        if verdict != "trip" and self.closed_on_limit and self.scan.uninspected is not None:
            s.metrics.failures.labels(reason="decode_limit", action="closed").inc()
            log.warning("exchange %s not fully inspected (%s): refused, route fails closed",
                        self.ctx.exchange_id, self.scan.uninspected)
            self.ctx.action = "refused_uninspected"
            return "uninspected"
        if verdict == "trip":
            self.tripped = True
            if self.enforce:
                await s.take_down(self.ctx, s.content_fingerprint(bytes(self.head)) if self.head else None,
                                  time.perf_counter())
        return verdict

    def slow_end(self, req) -> bool:
        """Whether ``req`` ends a body whose verdict is read from a container in a thread."""
        return (req.WhichOneof("request") == "response_body" and req.response_body.end_of_stream
                and self.scan is not None and not self.tripped and self.scan.needs_prepare)

    @property
    def holding(self) -> bool:
        return self.headers_held or self.held_msgs > 0

    def release(self, keep: int = 0) -> list:
        """Answer the held headers and the held body messages but the last ``keep``, in order."""
        out = [pb.ProcessingResponse(response_headers=pb.HeadersResponse())] if self.headers_held else []
        out += [_BODY_OK] * (self.held_msgs - keep)
        self.headers_held, self.held_msgs = False, keep
        return out

    def finish(self, completed: bool) -> None:
        if self.ctx is None:
            return
        try:
            if self.scan is not None and self.result is None:
                self.result = self.scan.finish()
            self.sensor.finished(self.ctx, self.result, tap="extproc", completed=completed, scan_seconds=self.scan_s)
        except Exception:
            log.exception("accounting failed")
        self.ctx = None


class ExtProc(pb_grpc.ExternalProcessorServicer):
    def __init__(self, sensor: Sensor):
        self.sensor = sensor

    def _block(self) -> pb.ProcessingResponse:
        return pb.ProcessingResponse(immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=451), body=self.sensor.block_page(),
            headers=pb.HeaderMutation(set_headers=[
                base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="content-type", raw_value=b"text/html")),
                base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="cache-control", raw_value=b"no-store"))]),
            details="dlp-sensor: taken down"))

    def _refuse(self) -> pb.ProcessingResponse:
        """A body that could not be fully inspected, on a route that fails closed."""
        return pb.ProcessingResponse(immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=503), body=b"response could not be fully inspected\n",
            headers=pb.HeaderMutation(set_headers=[
                base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="content-type", raw_value=b"text/plain")),
                base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="cache-control", raw_value=b"no-store"))]),
            details="dlp-sensor: not fully inspected"))

    async def Process(self, request_iterator, context):          # noqa: N802 (gRPC method name)
        """Messages come through a queue so that the hold-back can wait with a deadline."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump() -> None:
            try:
                async for r in request_iterator:
                    await queue.put(r)
            except (asyncio.CancelledError, grpc.RpcError):
                pass
            finally:
                queue.put_nowait(None)

        task = asyncio.create_task(pump())
        st = _Stream(self.sensor, context.peer())
        loop = asyncio.get_running_loop()
        try:
            while not st.done:
                try:
                    if st.holding:
                        req = await asyncio.wait_for(queue.get(), max(0.0, st.release_at - loop.time()))
                    else:
                        req = await queue.get()
                except asyncio.TimeoutError:
                    for r in st.release():                       # slow body: answer inside Envoy's timeout
                        yield r
                    continue
                if req is None:
                    break
                if st.slow_end(req):
                    # judging the end may take seconds: ask Envoy to wait (it honours this once per message)
                    yield pb.ProcessingResponse(override_message_timeout=duration_pb2.Duration(
                        seconds=FINAL_VERDICT_TIMEOUT))
                held = st.headers_held
                out = await self._handle(st, req)
                if st.headers_held and not held:
                    # the headers wait for the hold-back's scan: on a starved CPU that can outlast
                    # Envoy's 200 ms message timeout (a 504), so ask it to wait for this answer
                    yield pb.ProcessingResponse(override_message_timeout=duration_pb2.Duration(
                        seconds=HOLD_TIMEOUT_OVERRIDE))
                for r in out:
                    yield r
        finally:
            task.cancel()
            if st.scan is not None:
                self.sensor.metrics.active_exchanges.dec()
            st.finish(st.completed)

    async def _handle(self, st: "_Stream", req) -> list:
        s = self.sensor
        kind = req.WhichOneof("request")
        if kind == "request_headers":
            h = _headers(req.request_headers.headers)
            st.host, st.path, st.method = h.get(":authority", ""), h.get(":path", "/"), h.get(":method", "GET")
            resource = resource_of(s.config, st.host, st.path)
            if s.registry.blocked(resource) is not None:
                s.refused(resource, "resource")
                st.done = True
                return [self._block()]
            route = s.config.proxy.route(st.path.split("?", 1)[0])
            st.enforce, st.holdback = route.mode == "enforce", route.holdback
            st.closed_on_limit = route.on_decode_limit == "closed"
            st.ctx = AlertContext(exchange_id=uuid.uuid4().hex, sensor_id=s.config.sensor_id, resource=resource,
                                  url=public_url(h.get(":scheme", "http"), st.host, st.path), method=st.method,
                                  status=0, client_ip=client_address(s.config, envoy_peer(req, st.grpc_peer), h),
                                  mode=route.mode, action="cut_and_takedown" if st.enforce else "logged")
            return [pb.ProcessingResponse(request_headers=pb.HeadersResponse())]
        if kind == "response_headers":
            h = _headers(req.response_headers.headers)
            if st.ctx is not None:
                st.ctx.status = int(h.get(":status", "200") or 200)
                st.ctx.partial = st.ctx.status == 206
                st.scan = s.new_scan(Exchange(
                    url=st.ctx.url.get("original", ""), method=st.method, status=st.ctx.status,
                    content_type=h.get("content-type", ""), content_encoding=h.get("content-encoding", ""),
                    client=st.ctx.client_ip, path=st.path.split("?", 1)[0]), stop_on_trip=st.enforce)
                s.metrics.active_exchanges.inc()
            if req.response_headers.end_of_stream:
                st.completed = True
            elif st.enforce and st.holdback > 0:
                # hold the headers (Envoy sends the body meanwhile: send_body_without_waiting_for_header_response)
                st.headers_held = True
                st.release_at = asyncio.get_running_loop().time() + HOLD_MAX_SECONDS
                return []
            return [pb.ProcessingResponse(response_headers=pb.HeadersResponse())]
        if kind == "response_body":
            return await self._body(st, req.response_body.body, req.response_body.end_of_stream)
        out = st.release()                          # trailers: the body has ended without end_of_stream
        return out + [_passthrough(kind)]           # trailers and anything newer: unchanged

    async def _body(self, st: "_Stream", body: bytes, eos: bool) -> list:
        if st.scan is not None and not st.tripped:
            verdict = await st.feed(body, eos)
            if verdict == "refused" or (verdict == "trip" and st.enforce):
                st.done = True
                return [self._block()]              # a clean 451 while held; else Envoy resets the stream
            if verdict == "uninspected":
                st.done = True
                return [self._refuse()]             # a clean 503 while held; else Envoy resets the stream
        if st.ctx is not None:
            st.ctx.bytes_sent += len(body)
        st.completed = st.completed or eos
        if not st.enforce or st.tripped:
            return [_BODY_OK]
        st.held_msgs += 1
        st.held_bytes += len(body)
        if eos:
            return st.release()
        if st.headers_held and st.held_bytes < st.holdback:
            return []                               # still inside the hold-back
        # one message stays behind until the next says whether the body has ended
        st.release_at = asyncio.get_running_loop().time() + HOLD_MAX_SECONDS
        return st.release(keep=1)


_BODY_OK = pb.ProcessingResponse(response_body=pb.BodyResponse(response=pb.CommonResponse()))


def _passthrough(kind: str | None) -> pb.ProcessingResponse:
    if kind == "request_body":
        return pb.ProcessingResponse(request_body=pb.BodyResponse(response=pb.CommonResponse()))
    if kind == "request_trailers":
        return pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
    if kind == "response_trailers":
        return pb.ProcessingResponse(response_trailers=pb.TrailersResponse())
    return pb.ProcessingResponse()


async def start_extproc(sensor: Sensor, listen: str) -> grpc.aio.Server:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 8 << 20)])
    pb_grpc.add_ExternalProcessorServicer_to_server(ExtProc(sensor), server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    server.bound_port = port            # type: ignore[attr-defined]
    return server
