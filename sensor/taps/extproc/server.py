"""Envoy external processing (ext_proc) server: Envoy streams each exchange over gRPC.

A thin tap (grpcio, protos from ``xds-protos``): each stream is one exchange session
(:mod:`sensor.exchange.session`), which decides; this module maps its steps to messages. The
response body is exchanged in ``FULL_DUPLEX_STREAMED`` mode: Envoy streams the body chunks as they
arrive, without waiting for answers, and forwards only the bytes this server sends back
(``StreamedBodyResponse``). So the session holds bytes, not Envoy's messages: the hold-back and the
lookahead chunk stay here while the next chunks are already on their way and being scanned. (The
``STREAMED`` mode this replaced answered each message before Envoy sent the next, so a held
lookahead chunk stalled the body until a 100 ms timer: enforce ran at 17 MB/s against 114-120 MB/s
in monitor mode.) Per stream:

- request headers: a taken-down resource is answered with an ``ImmediateResponse`` 451 before the
  upstream is asked. The client is the downstream peer Envoy reports (``source.address``, else
  Envoy itself: :func:`~sensor.exchange.identity.envoy_peer`); a forwarded header counts only
  from ``clients.trusted_proxies``. This answer is the only one Envoy times (``message_timeout``,
  1 s in the shipped config): one not ready within ``SLOW_ANSWER`` (80 ms) is preceded by
  ``override_message_timeout``;
- request headers with ``Range``/``If-Range`` on an enforce route without a clean verdict for the
  body (:mod:`sensor.exchange.ranges`): both are removed (``HeaderMutation.remove_headers``), so
  Envoy fetches the whole body, which is scanned as usual; a ``206`` the session cannot vouch for
  is answered 503 + ``Retry-After``;
- response headers: open the scan with the status, content type and encoding (or 503 +
  ``Retry-After`` past the admission caps). In enforce mode their answer waits until the route's
  hold-back (64 KiB) has been scanned, or the body has ended, and goes with the first body bytes
  released, so a leak in the first messages gets a clean 451 and never leaves. Envoy does not time response-side messages in ``FULL_DUPLEX_STREAMED`` mode, so
  this wait, a trip's durable commits and a container read at the end need no timeout override;
- response body: each chunk is scanned and what the session releases is sent back in order; the
  latest chunk of an enforce body stays here until the next one arrives (or ``LAST_CHUNK_PATIENCE``
  passes: a slow stream still flows), because the end of the body is known only from a later
  message (``end_of_stream``, or the trailers) and a container (PDF, xlsx, zip) is only judged
  there. On a trip the resource is taken down (durably, first) and the stream is answered with an
  ``ImmediateResponse`` 451; once the headers have left, Envoy resets the downstream stream: a
  failed download that lacks at least its last chunk (no byte past what the session released);
- the end of the body (``end_of_stream``, or response trailers): the final verdict, then the last
  bytes with ``end_of_stream`` (before the trailers' answer, when there are trailers).

Messages are read through a small bounded queue: when scanning is slower than the body arrives,
gRPC flow control slows Envoy down instead of this process buffering the body.

Envoy's ``failure_mode_allow`` decides what happens when this server is unreachable; the shipped
config (``deploy/envoy/envoy.yaml``) sets it to ``false`` (fail closed).
"""
from __future__ import annotations

import asyncio
import logging

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import duration_pb2

from sensor.exchange.identity import envoy_peer
from sensor.exchange.session import ExchangeSession, Step
from sensor.runtime import Sensor

log = logging.getLogger("dlp_sensor.extproc")
LAST_CHUNK_PATIENCE = 0.1       # s the latest chunk of an enforce body waits for the next before it leaves anyway
SLOW_ANSWER = 0.08              # s: a request-header answer not ready by then gets override_message_timeout first
REQUEST_TIMEOUT_OVERRIDE = 30   # s; deploy/envoy/envoy.yaml's max_message_timeout must allow it
QUEUE_MESSAGES = 2              # messages (up to 1 MiB each) read ahead of the scan; then gRPC flow control
                                # holds Envoy back
FULL_DUPLEX = ProcessingMode.FULL_DUPLEX_STREAMED


def _headers(hm) -> dict[str, str]:
    return {h.key.lower(): (h.raw_value.decode("latin-1") if h.raw_value else h.value) for h in hm.headers}


def _body(data: bytes, eos: bool) -> pb.ProcessingResponse:
    """Body bytes Envoy forwards (``FULL_DUPLEX_STREAMED``: only what this server sends leaves)."""
    return pb.ProcessingResponse(response_body=pb.BodyResponse(response=pb.CommonResponse(
        body_mutation=pb.BodyMutation(streamed_response=pb.StreamedBodyResponse(body=data, end_of_stream=eos)))))


class _Stream:
    """One exchange's protocol state across the messages of its gRPC stream."""

    def __init__(self, grpc_peer: str = "") -> None:
        self.grpc_peer = grpc_peer     # Envoy's address: the peer when Envoy sends no source.address
        self.session: ExchangeSession | None = None
        self.headers_held = False      # our answer to the response headers waits for the hold-back
        self.done = False
        self.completed = False

    @property
    def lookahead(self) -> bool:
        """The head has left and the session keeps the latest chunk until the next message."""
        s = self.session
        return s is not None and s.started and s.holding


class ExtProc(pb_grpc.ExternalProcessorServicer):
    def __init__(self, sensor: Sensor):
        self.sensor = sensor
        self.warned_mode = False

    @staticmethod
    def _immediate(step: Step) -> pb.ProcessingResponse:
        """The session's refusal: a clean answer while the headers are held; else Envoy resets the stream."""
        return pb.ProcessingResponse(immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=step.status), body=step.body,
            headers=pb.HeaderMutation(set_headers=[
                base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k.lower(), raw_value=v.encode("latin-1")))
                for k, v in step.headers]),
            details=f"dlp-sensor: {step.reason}"))

    def _answer(self, st: _Stream, step: Step, *, eos: bool = False, ended: bool = False) -> list:
        """A step as messages: the immediate response, or the held headers then the released bytes
        (``eos``: they end the body; ``ended``: the body has ended, trailers follow).

        The headers' answer goes with the first body bytes, not before: once the hold-back is
        scanned the session lets the head go but keeps the latest chunk (lookahead), and with
        Envoy's ~1 MiB messages that chunk is the whole body so far. Held here, a trip in the next
        message is still a clean 451 (the session calls it a cut: ``ImmediateResponse`` is the
        same answer for both), instead of a reset stream after an empty 200."""
        if step.stops:
            st.done = True
            return [self._immediate(step)]
        out = []
        chunks = [c for c in step.send if c]
        if (st.headers_held and st.session is not None and st.session.started
                and (chunks or eos or ended)):
            st.headers_held = False
            out.append(pb.ProcessingResponse(response_headers=pb.HeadersResponse()))
        out += [_body(c, eos and i == len(chunks) - 1) for i, c in enumerate(chunks)]
        if eos and not chunks:
            out.append(_body(b"", True))
        return out

    async def Process(self, request_iterator, context):          # noqa: N802 (gRPC method name)
        """Messages come through a bounded queue, so that the lookahead can wait with a deadline."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=QUEUE_MESSAGES)
        ended = asyncio.Event()

        async def pump() -> None:
            try:
                async for r in request_iterator:
                    await queue.put(r)
            except (asyncio.CancelledError, grpc.RpcError):
                pass
            finally:
                ended.set()

        async def next_request(timeout: float | None):
            """The next message; None when the stream has ended (raises TimeoutError on ``timeout``)."""
            get = asyncio.ensure_future(queue.get())
            end = asyncio.ensure_future(ended.wait())
            try:
                done, _ = await asyncio.wait((get, end), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                end.cancel()
                if not get.done():
                    get.cancel()
            if get in done:
                return get.result()
            if end in done:
                return queue.get_nowait() if not queue.empty() else None
            raise asyncio.TimeoutError

        task = asyncio.create_task(pump())
        st = _Stream(context.peer())
        try:
            while not st.done:
                try:
                    req = await next_request(LAST_CHUNK_PATIENCE if st.lookahead else None)
                except asyncio.TimeoutError:
                    # a slow body: its latest chunk leaves without waiting longer for the next
                    for r in self._answer(st, st.session.tick()):
                        yield r
                    continue
                if req is None:
                    break
                if req.WhichOneof("request") == "request_headers":
                    # Envoy times this answer (message_timeout): a registry or ledger write on a busy
                    # disk could outlast it and turn our 451 into its 504, so ask it to wait
                    work = asyncio.ensure_future(self._handle(st, req))
                    try:
                        done, _ = await asyncio.wait((work,), timeout=SLOW_ANSWER)
                        if not done:
                            yield pb.ProcessingResponse(override_message_timeout=duration_pb2.Duration(
                                seconds=REQUEST_TIMEOUT_OVERRIDE))
                        out = await work
                    finally:
                        if not work.done():
                            work.cancel()
                else:
                    out = await self._handle(st, req)
                for r in out:
                    yield r
        finally:
            task.cancel()
            if st.session is not None:
                st.session.close(st.completed)

    def _check_mode(self, req) -> None:
        """The answers here are ``FULL_DUPLEX_STREAMED`` ones: say so once if Envoy is configured otherwise."""
        if req.HasField("protocol_config") and not self.warned_mode:
            mode = req.protocol_config.response_body_mode
            if mode != FULL_DUPLEX:
                self.warned_mode = True
                log.error("Envoy sends response bodies in mode %s: this server answers FULL_DUPLEX_STREAMED only; "
                          "use deploy/envoy/envoy.yaml's processing_mode", ProcessingMode.BodySendMode.Name(mode))

    async def _handle(self, st: _Stream, req) -> list:
        kind = req.WhichOneof("request")
        if kind == "request_headers":
            self._check_mode(req)
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
                st.headers_held = True                  # until the hold-back is scanned (Envoy does not time it)
                return []
            return [pb.ProcessingResponse(response_headers=pb.HeadersResponse())]
        if kind == "response_body":
            return await self._response_body(st, req.response_body.body, req.response_body.end_of_stream)
        if kind == "response_trailers":
            out = []
            s = st.session
            if s is not None and s.exchange is not None and not st.completed:
                st.completed = True                     # the body ended without end_of_stream: judge it now
                out = self._answer(st, await s.end(), ended=True)
                if st.done:
                    return out
            return out + [pb.ProcessingResponse(response_trailers=pb.TrailersResponse())]
        return [_passthrough(kind)]                     # request body and trailers (not asked for), anything newer

    async def _response_body(self, st: _Stream, body: bytes, eos: bool) -> list:
        session = st.session
        if session is None or session.exchange is None:
            return [_body(body, eos)]                   # nothing to judge: the bytes go back as they came
        out = self._answer(st, await session.feed(body, last=eos))
        if st.done or not eos:
            return out
        st.completed = True
        return out + self._answer(st, await session.end(), eos=True)


def _passthrough(kind: str | None) -> pb.ProcessingResponse:
    if kind == "request_body":
        return pb.ProcessingResponse(request_body=pb.BodyResponse(response=pb.CommonResponse()))
    if kind == "request_trailers":
        return pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
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
