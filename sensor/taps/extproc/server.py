"""Envoy external processing (ext_proc) server: Envoy streams each exchange over gRPC.

A thin tap (grpcio, protos from ``xds-protos``): each stream is one exchange session
(:mod:`sensor.exchange.session`), which decides; this module maps its steps to messages — each
chunk the session releases answers one held body message, in order; a refusal or cut is an
``ImmediateResponse``. Per stream:

- request headers: a taken-down resource is answered with an ``ImmediateResponse`` 451 before the
  upstream is asked. The client is the downstream peer Envoy reports (``source.address``, else
  Envoy itself: :func:`~sensor.exchange.identity.envoy_peer`); a forwarded header counts only
  from ``clients.trusted_proxies``;
- request headers with ``Range``/``If-Range`` on an enforce route without a clean verdict for the
  body (:mod:`sensor.exchange.ranges`): both are removed (``HeaderMutation.remove_headers``), so
  Envoy fetches the whole body, which is scanned as usual; a ``206`` the session cannot vouch for
  is answered 503 + ``Retry-After``;
- response headers: open the scan with the status, content type and encoding (or 503 +
  ``Retry-After`` past the admission caps);
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
- any other answer not ready within ``SLOW_ANSWER`` (80 ms) is preceded by an
  ``override_message_timeout`` too: a trip's durable commits (takedown, then alert and ledger
  incident, each fsynced) can outlast the 200 ms on a busy disk, and Envoy would answer 504 where
  the client must get the 451 (seen once in a full suite run before this guard).

Envoy's ``failure_mode_allow`` decides what happens when this server is unreachable; the shipped
config (``deploy/envoy/envoy.yaml``) sets it to ``false`` (fail closed).
"""
from __future__ import annotations

import asyncio
import logging

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import duration_pb2

from sensor.exchange.identity import envoy_peer
from sensor.exchange.session import ExchangeSession, Step
from sensor.runtime import Sensor

log = logging.getLogger("dlp_sensor.extproc")
HOLD_MAX_SECONDS = 0.1          # a slow body is released after this, well inside Envoy's 200 ms message timeout
FINAL_VERDICT_TIMEOUT = 30      # seconds; deploy/envoy/envoy.yaml's max_message_timeout must allow it
HOLD_TIMEOUT_OVERRIDE = 5       # seconds Envoy may wait for held response headers (CPU starvation guard)
SLOW_ANSWER = 0.08              # s: an answer not ready by then gets override_message_timeout first


def _headers(hm) -> dict[str, str]:
    return {h.key.lower(): (h.raw_value.decode("latin-1") if h.raw_value else h.value) for h in hm.headers}


class _Stream:
    """One exchange's protocol state across the messages of its gRPC stream."""

    def __init__(self, grpc_peer: str = "") -> None:
        self.grpc_peer = grpc_peer     # Envoy's address: the peer when Envoy sends no source.address
        self.session: ExchangeSession | None = None
        self.headers_held = False      # our answer to the response headers waits for the hold-back
        self.release_at = 0.0          # ... and whatever is held goes at this loop time at the latest
        self.done = False
        self.completed = False

    @property
    def holding(self) -> bool:
        return self.headers_held or (self.session is not None and self.session.started and self.session.holding)

    def slow_end(self, req) -> bool:
        """Whether ``req`` ends a body whose verdict is read from a container in a thread."""
        return (req.WhichOneof("request") == "response_body" and req.response_body.end_of_stream
                and self.session is not None and self.session.slow_end)


class ExtProc(pb_grpc.ExternalProcessorServicer):
    def __init__(self, sensor: Sensor):
        self.sensor = sensor

    @staticmethod
    def _immediate(step: Step) -> pb.ProcessingResponse:
        """The session's refusal: a clean answer while the headers are held; else Envoy resets the stream."""
        return pb.ProcessingResponse(immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=step.status), body=step.body,
            headers=pb.HeaderMutation(set_headers=[
                base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k.lower(), raw_value=v.encode("latin-1")))
                for k, v in step.headers]),
            details=f"dlp-sensor: {step.reason}"))

    def _answer(self, st: _Stream, step: Step) -> list:
        """A step as messages: the immediate response, or the held headers then one answer per
        released chunk (each chunk is one body message)."""
        if step.stops:
            st.done = True
            return [self._immediate(step)]
        out = []
        if step.start and st.headers_held:
            st.headers_held = False
            out.append(pb.ProcessingResponse(response_headers=pb.HeadersResponse()))
        out += [_BODY_OK] * len(tuple(step.send))
        return out

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
        st = _Stream(context.peer())
        loop = asyncio.get_running_loop()
        try:
            while not st.done:
                try:
                    if st.holding:
                        req = await asyncio.wait_for(queue.get(), max(0.0, st.release_at - loop.time()))
                    else:
                        req = await queue.get()
                except asyncio.TimeoutError:
                    # slow body: answer inside Envoy's timeout, the hold-back included
                    for r in self._answer(st, st.session.tick(holdback_too=True)):
                        yield r
                    continue
                if req is None:
                    break
                overridden = st.slow_end(req)
                if overridden:
                    # judging the end may take seconds: ask Envoy to wait (it honours this once per message)
                    yield pb.ProcessingResponse(override_message_timeout=duration_pb2.Duration(
                        seconds=FINAL_VERDICT_TIMEOUT))
                work = asyncio.ensure_future(self._handle(st, req))
                try:
                    if not overridden:
                        done, _ = await asyncio.wait((work,), timeout=SLOW_ANSWER)
                        if not done:
                            # a trip's durable commits (or a starved CPU) outlast Envoy's 200 ms message
                            # timeout, which would answer the client 504 instead of our 451: ask it to wait
                            yield pb.ProcessingResponse(override_message_timeout=duration_pb2.Duration(
                                seconds=FINAL_VERDICT_TIMEOUT))
                    out = await work
                finally:
                    if not work.done():
                        work.cancel()
                for r in out:
                    yield r
        finally:
            task.cancel()
            if st.session is not None:
                st.session.close(st.completed)

    async def _handle(self, st: _Stream, req) -> list:
        kind = req.WhichOneof("request")
        if kind == "request_headers":
            h = _headers(req.request_headers.headers)
            st.session = ExchangeSession(self.sensor, tap="extproc", method=h.get(":method", "GET"),
                                         scheme=h.get(":scheme", "http"), host=h.get(":authority", ""),
                                         target=h.get(":path", "/"), peer=envoy_peer(req, st.grpc_peer), headers=h)
            step = st.session.on_request()
            if step.stops:
                return self._answer(st, step)
            if drop := st.session.upstream_drop:        # a range of a body not yet scanned whole: ask for all of it
                return [pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=pb.CommonResponse(
                    header_mutation=pb.HeaderMutation(remove_headers=sorted(drop)))))]
            return [pb.ProcessingResponse(request_headers=pb.HeadersResponse())]
        if kind == "response_headers":
            if st.session is None:
                return [pb.ProcessingResponse(response_headers=pb.HeadersResponse())]
            h = _headers(req.response_headers.headers)
            eos = req.response_headers.end_of_stream
            step = st.session.on_response(int(h.get(":status", "200") or 200), h, has_body=not eos)
            st.completed = eos
            if step.stops:
                return self._answer(st, step)
            if not step.start:
                # hold the headers (Envoy sends the body meanwhile: send_body_without_waiting_for_header_response);
                # the scan of the hold-back can outlast Envoy's 200 ms message timeout on a starved CPU
                # (a 504), so ask it to wait for this answer
                st.headers_held = True
                st.release_at = asyncio.get_running_loop().time() + HOLD_MAX_SECONDS
                return [pb.ProcessingResponse(override_message_timeout=duration_pb2.Duration(
                    seconds=HOLD_TIMEOUT_OVERRIDE))]
            return [pb.ProcessingResponse(response_headers=pb.HeadersResponse())]
        if kind == "response_body":
            return await self._body(st, req.response_body.body, req.response_body.end_of_stream)
        out = []
        if st.session is not None and st.session.exchange is not None:
            out = self._answer(st, await st.session.end())   # trailers: the body has ended without end_of_stream
        return out + [_passthrough(kind)]                     # trailers and anything newer: unchanged

    async def _body(self, st: _Stream, body: bytes, eos: bool) -> list:
        session = st.session
        if session is None or session.exchange is None:
            return [_BODY_OK]
        out = self._answer(st, await session.feed(body, last=eos))
        if st.done:
            return out
        if eos:
            st.completed = True
            return out + self._answer(st, await session.end())
        if session.started:
            # one message stays behind until the next says whether the body has ended
            st.release_at = asyncio.get_running_loop().time() + HOLD_MAX_SECONDS
        return out


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
