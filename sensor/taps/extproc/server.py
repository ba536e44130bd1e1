"""Envoy external processing (ext_proc) server: Envoy streams each exchange over gRPC.

A thin tap (grpcio, protos from ``xds-protos``). Per stream (one HTTP exchange):

- request headers: a taken-down resource is answered with an ``ImmediateResponse`` 451 before the
  upstream is asked;
- response headers: open a scan with the status, content type and encoding;
- response body, ``STREAMED``: each chunk is scanned and answered at once (a 64 KiB chunk takes
  well under a millisecond, far inside Envoy's 200 ms message timeout); on a trip the resource is
  taken down (durably, first) and the stream is answered with an ``ImmediateResponse`` 451:
  Envoy resets the downstream stream when the headers have already left, so the client sees a
  failed download, never a complete-looking file.

Envoy's ``failure_mode_allow`` decides what happens when this server is unreachable; the shipped
config (``deploy/envoy/envoy.yaml``) sets it to ``false`` (fail closed).
"""
from __future__ import annotations

import logging
import time
import uuid

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2

from sensor.alerts.schema import AlertContext
from sensor.enforce.resource import normalize, public_url
from sensor.pipeline import Exchange
from sensor.runtime import Sensor

log = logging.getLogger("dlp_sensor.extproc")


def _headers(hm) -> dict[str, str]:
    return {h.key.lower(): (h.raw_value.decode("latin-1") if h.raw_value else h.value) for h in hm.headers}


class _Stream:
    """One exchange's state across the messages of its gRPC stream."""

    def __init__(self, sensor: Sensor):
        self.sensor = sensor
        self.ctx: AlertContext | None = None
        self.scan = None
        self.enforce = True
        self.head = bytearray()
        self.result = None
        self.tripped = False
        self.scan_s = 0.0
        self.host = self.path = self.method = ""

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

    async def Process(self, request_iterator, context):          # noqa: N802 (gRPC method name)
        s = self.sensor
        st = _Stream(s)
        completed = False
        try:
            async for req in request_iterator:
                kind = req.WhichOneof("request")
                if kind == "request_headers":
                    h = _headers(req.request_headers.headers)
                    st.host, st.path, st.method = h.get(":authority", ""), h.get(":path", "/"), h.get(":method", "GET")
                    resource = normalize(st.host, st.path, s.config.query)
                    if s.registry.blocked(resource) is not None:
                        s.refused(resource, "resource")
                        yield self._block()
                        return
                    route = s.config.proxy.route(st.path.split("?", 1)[0])
                    st.enforce = route.mode == "enforce"
                    st.ctx = AlertContext(exchange_id=uuid.uuid4().hex, sensor_id=s.config.sensor_id,
                                          resource=resource, url=public_url(h.get(":scheme", "http"), st.host, st.path),
                                          method=st.method, status=0, client_ip=h.get("x-forwarded-for", "").split(",")[0].strip(),
                                          mode=route.mode, action="cut_and_takedown" if st.enforce else "logged")
                    yield pb.ProcessingResponse(request_headers=pb.HeadersResponse())
                elif kind == "response_headers":
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
                        completed = True
                    yield pb.ProcessingResponse(response_headers=pb.HeadersResponse())
                elif kind == "response_body":
                    body = req.response_body.body
                    verdict = "pass"
                    if st.scan is not None and not st.tripped:
                        fp_bytes = s.config.fingerprint_bytes
                        if len(st.head) < fp_bytes:
                            st.head += body[: fp_bytes - len(st.head)]
                            if (len(st.head) >= fp_bytes and st.enforce
                                    and s.registry.blocked_content(s.content_fingerprint(bytes(st.head))) is not None):
                                s.refused(st.ctx.resource, "content")
                                yield self._block()
                                return
                        t = time.perf_counter()
                        verdict = st.scan.write(body)
                        if req.response_body.end_of_stream and verdict != "trip":
                            st.result = st.scan.finish()
                            verdict = st.result.verdict
                        st.scan_s += time.perf_counter() - t
                    if verdict == "trip" and not st.tripped:
                        st.tripped = True
                        if st.enforce:
                            fp = s.content_fingerprint(bytes(st.head)) if st.head else None
                            s.take_down(st.ctx, fp, time.perf_counter())
                            yield self._block()
                            return
                    st.ctx.bytes_sent += len(body) if st.ctx else 0
                    if req.response_body.end_of_stream:
                        completed = True
                    yield pb.ProcessingResponse(response_body=pb.BodyResponse(response=pb.CommonResponse()))
                else:                               # trailers and anything newer: continue unchanged
                    yield _passthrough(kind)
        finally:
            if st.scan is not None:
                s.metrics.active_exchanges.dec()
            st.finish(completed)


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
