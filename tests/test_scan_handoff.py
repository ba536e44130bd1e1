"""The per-chunk hand-off of scan work (issue 19, the sidecar's 100 MB download per core):

- :class:`~sensor.exchange.workers.LastIdlePool` gives a job to the thread that went idle last, so
  the chunks of one download are scanned on one thread, and still runs jobs side by side when one
  thread is busy; it behaves as an Executor (results, exceptions, shutdown after the backlog);
- :func:`~sensor.exchange.workers.submit` delivers a job's value (and its seconds) or its exception
  to an asyncio future, and a cancelled future does not stop the job;
- a monitored chunk's scan starts as it is released and its verdict is read on the next call: the
  counts are those of a scan on the loop; a failure there cuts the next chunk on a fail-closed
  route; a client that leaves while it runs is accounted after it, with every byte;
- the proxy reads a monitored body as received (``_received``): pieces of at most the chunk size,
  every byte in order, also from a chunked upstream whose chunks are larger than that.
"""
from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import aiohttp
import pytest
from aiohttp import web

from sensor import synth
from sensor.exchange import workers
from sensor.exchange.session import CUT, FORWARD, ExchangeSession
from sensor.runtime import Sensor
from sensor.taps.proxy.server import READ_CHUNK, _received
from tests.sensors import detector, sensor_fixture  # noqa: F401  (detector: a fixture)

K = 1 << 10
DENSE = synth.breach_csv(4_000)                  # past the inline size: its scan goes to the pool

make = sensor_fixture(mode="monitor")


@pytest.fixture
def pool():
    p = workers.LastIdlePool(2, thread_name_prefix="test-scan")
    yield p
    p.shutdown(wait=True)


# -- LastIdlePool ---------------------------------------------------------------------------------------

def test_jobs_one_after_another_run_on_the_thread_that_went_idle_last(pool):
    ids = [pool.submit(threading.get_ident).result(timeout=10) for _ in range(50)]
    assert len(set(ids[1:])) == 1                   # the first may find either thread idle


def test_a_job_submitted_while_a_thread_is_busy_runs_on_the_other(pool):
    started, release = threading.Event(), threading.Event()

    def hold() -> int:
        started.set()
        release.wait(10)
        return threading.get_ident()

    held = pool.submit(hold)
    assert started.wait(10)
    other = pool.submit(threading.get_ident).result(timeout=10)   # would deadlock on one thread
    release.set()
    assert held.result(timeout=10) != other


def test_exceptions_reach_the_future_and_the_thread_keeps_serving(pool):
    def boom() -> None:
        raise ValueError("x")

    with pytest.raises(ValueError):
        pool.submit(boom).result(timeout=10)
    assert pool.submit(lambda: 7).result(timeout=10) == 7


def test_shutdown_runs_the_backlog_first_then_refuses_new_jobs():
    p = workers.LastIdlePool(1)
    gate = threading.Event()
    first = p.submit(gate.wait, 10)
    rest = [p.submit(lambda i=i: i) for i in range(5)]   # queued behind the first
    gate.set()
    p.shutdown(wait=True)
    assert first.result(timeout=0) is True and [f.result(timeout=0) for f in rest] == list(range(5))
    with pytest.raises(RuntimeError):
        p.submit(lambda: None)


def test_shutdown_can_cancel_the_backlog():
    p = workers.LastIdlePool(1)
    gate = threading.Event()
    first = p.submit(gate.wait, 10)
    queued = p.submit(lambda: 1)
    p.shutdown(wait=False, cancel_futures=True)       # the queued job is cancelled, the running one is not
    gate.set()
    p.shutdown(wait=True)
    assert first.result(timeout=0) is True and queued.cancelled()


def test_the_process_pool_is_a_last_idle_pool():
    assert isinstance(workers.pool(2, 0, "nice"), workers.LastIdlePool)


# -- submit ---------------------------------------------------------------------------------------------

async def test_submit_gives_the_value_and_the_seconds_it_took_in_the_pool(pool):
    value, seconds = await workers.submit(pool, threading.get_ident)
    assert value != threading.get_ident() and seconds >= 0


async def test_submit_gives_the_exception(pool):
    def boom() -> None:
        raise KeyError("k")

    with pytest.raises(KeyError):
        await workers.submit(pool, boom)


async def test_a_cancelled_future_leaves_the_job_running_to_its_end(pool):
    gate, done = threading.Event(), threading.Event()

    def job() -> None:
        gate.wait(10)
        done.set()

    fut = workers.submit(pool, job)
    fut.cancel()
    gate.set()
    assert await asyncio.to_thread(done.wait, 10)
    assert (await workers.submit(pool, lambda: 3))[0] == 3   # the late result was dropped, not raised


# -- the monitor read-ahead -----------------------------------------------------------------------------

def session(s: Sensor) -> ExchangeSession:
    ses = ExchangeSession(s, tap="proxy", method="GET", scheme="http", host="site.example",
                          target="/exports/x.csv", peer="10.0.0.1", headers={})
    ses.on_request()
    ses.on_response(200, {"Content-Type": "text/csv"})
    return ses


async def feed_all(ses: ExchangeSession, body: bytes, size: int = 64 * K) -> list:
    steps = []
    for i in range(0, len(body), size):
        steps.append(await ses.feed(body[i:i + size]))
    steps.append(await ses.end())
    return steps


async def test_a_released_chunks_scan_starts_as_it_leaves_and_counts_as_on_the_loop(make):
    body = synth.benign_web(64 * K)[: 64 * K] + DENSE
    pooled = session(make())
    step = await pooled.feed(body[: 64 * K])
    assert step.action == FORWARD and step.send == (body[: 64 * K],)
    assert pooled._ahead is not None                 # past the inline size: already in the pool
    for step in await feed_all(pooled, body[64 * K:]):
        assert step.action == FORWARD
    assert pooled._ahead is None
    here = session(make(scan_workers=0))
    await feed_all(here, body)
    pooled.close(True)
    here.close(True)
    assert pooled.result.to_json()["records"] == here.result.to_json()["records"] == 4_000
    assert pooled.result.verdict == here.result.verdict == "trip"
    assert pooled.ctx.bytes_sent == here.ctx.bytes_sent == len(body)


async def test_a_failure_in_a_released_chunks_scan_cuts_the_next_on_a_closed_route(make, monkeypatch):
    s = make()
    ses = session(s)
    ses.route = replace(ses.route, on_error="closed")
    await ses.feed(synth.benign_web(32 * K)[: 32 * K])           # inline: small so far

    def boom(data: bytes) -> str:
        raise RuntimeError("scanner broke")
    assert ses.scan is not None
    monkeypatch.setattr(ses.scan, "write", boom)
    step = await ses.feed(b"y" * (64 * K))                        # released; its scan fails in the pool
    assert step.action == FORWARD
    step = await ses.feed(b"z" * (64 * K))                        # the failure is read here: cut
    assert step.action == CUT and step.reason == "scanner_error"
    ses.close(False)


async def test_a_client_gone_during_a_released_chunks_scan_is_accounted_after_it(make):
    s = make()
    ses = session(s)
    await ses.feed(DENSE)                            # released, scanned ahead
    assert ses._ahead is not None
    ses.close(False)                                 # the client left while it ran
    assert not ses.accounted                         # the job is the scan's until it returns
    await asyncio.gather(ses._busy, return_exceptions=True)
    assert ses.closing is not None                   # then the final verdict goes to the pool too
    await ses.closing
    assert ses.accounted and ses.result is not None and ses.result.records == 4_000
    assert ses.ctx.bytes_sent == len(DENSE)


async def test_a_failure_nobody_read_is_handled_when_the_exchange_closes(make, monkeypatch):
    s = make()
    ses = session(s)
    await ses.feed(synth.benign_web(32 * K)[: 32 * K])

    def boom(data: bytes) -> str:
        raise RuntimeError("scanner broke")
    assert ses.scan is not None
    monkeypatch.setattr(ses.scan, "write", boom)
    await ses.feed(b"y" * (64 * K))
    await asyncio.gather(ses._ahead, return_exceptions=True)      # done, never read by a feed
    before = s.metrics.failures.labels(reason="internal", action=ses.route.on_error)._value.get()
    ses.close(False)
    assert ses._ahead is None and ses.scan is None and ses.accounted
    assert s.metrics.failures.labels(reason="internal", action=ses.route.on_error)._value.get() == before + 1


# -- the body as received ---------------------------------------------------------------------------------

@pytest.mark.parametrize("chunked", [False, True])
async def test_received_pieces_are_at_most_the_chunk_size_and_keep_every_byte(chunked):
    body = synth.benign_web(3 << 20)[: 3 << 20]

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        if chunked:
            resp.enable_chunked_encoding()          # HTTP chunks of 1 MiB: larger than a piece
        else:
            resp.content_length = len(body)
        await resp.prepare(request)
        for i in range(0, len(body), 1 << 20):
            await resp.write(body[i:i + (1 << 20)])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession(read_bufsize=READ_CHUNK) as cs:
            async with cs.get(f"http://127.0.0.1:{port}/") as up:
                pieces = [p async for p in _received(up.content, READ_CHUNK)]
    finally:
        await runner.cleanup()
    assert b"".join(pieces) == body
    assert pieces and all(0 < len(p) <= READ_CHUNK for p in pieces)
