"""Scans off the event loop (issue 19 point 3): the loop stays free while a chunk is scanned in the
worker pool, concurrent exchanges give the verdicts and counts of sequential scans (per-thread
scratch, serialised stream closes), in memory and through the real proxy sidecar."""
from __future__ import annotations

import asyncio
import gzip
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import aiohttp
import pytest

from sensor import synth
from sensor.exchange import workers
from sensor.exchange.session import FORWARD, ExchangeSession
from sensor.runtime import Sensor
from tests.conftest import scan_bytes, zip_bytes
from tests.procs import Sidecar, Upstream
from tests.sensors import detector, sensor_fixture  # noqa: F401  (detector: a fixture)
from tests.test_proxy import _wait

K = 1 << 10
DENSE = synth.breach_csv(20_000)                 # ~2 MB of breach CSV: one chunk takes a while to scan

make = sensor_fixture(mode="monitor")     # every pool test scans in monitor unless it says so


def counts(r) -> dict:
    """What must not depend on threads or scheduling (not timings)."""
    j = r.to_json()
    return {k: j[k] for k in ("verdict", "records", "strong_records", "person_records", "findings", "notes")}


def session(s: Sensor, path: str = "/exports/x.csv") -> ExchangeSession:
    ses = ExchangeSession(s, tap="proxy", method="GET", scheme="http", host="site.example", target=path,
                          peer="10.0.0.1", headers={})
    ses.on_request()
    ses.on_response(200, {"Content-Type": "text/csv"})
    return ses


async def ticks_during(coro) -> tuple[object, int]:
    """(the coroutine's value, how many turns a ticker task got on the loop while it ran)."""
    ticks = 0
    stop = False

    async def ticker() -> None:
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0)

    t = asyncio.create_task(ticker())
    await asyncio.sleep(0)                          # the ticker is running
    before = ticks
    value = await coro
    during = ticks - before
    stop = True
    await t
    return value, during


# -- the loop is free while a chunk is scanned ----------------------------------------------------

async def test_the_loop_runs_other_tasks_while_a_dense_chunk_is_scanned(make):
    s = make()                                      # default: one scan thread per core
    assert s.config.scan_workers is None and workers.pool(None) is not None
    ses = session(s)
    assert (await ses.feed(DENSE)).action == FORWARD    # monitor: released now, scanned at the next call
    end, during = await ticks_during(ses.end())
    assert end.action == FORWARD and ses.result is not None and ses.result.verdict == "trip"
    assert during > 0                               # other tasks ran while the 2 MB were scanned
    ses.close(True)
    assert ses.result.records == 20_000


async def test_with_scan_workers_0_the_scan_holds_the_loop(make):
    """The old behaviour, kept behind ``scan_workers: 0``: the same scan gives no other task a turn."""
    s = make(scan_workers=0)
    assert workers.pool(0) is None
    ses = session(s)
    await ses.feed(DENSE)
    end, during = await ticks_during(ses.end())
    assert end.action == FORWARD and during == 0
    ses.close(True)
    assert ses.result.records == 20_000


async def test_enforce_trip_in_the_pool_commits_the_takedown_before_the_cut(make):
    s = make(mode="enforce")
    ses = session(s)
    body = synth.benign_web(200 * K)[: 200 * K] + DENSE
    step = None
    for i in range(0, len(body), 64 * K):
        step = await ses.feed(body[i:i + 64 * K])
        if step.stops:
            break
    assert step is not None and step.status == 451 and ses.ctx.takedown_id is not None
    assert s.registry.blocked(ses.resource) == ses.ctx.takedown_id
    ses.close(False)


async def test_a_handler_cancelled_mid_scan_is_accounted_after_the_job(make):
    """The client leaves while a chunk is in the pool: close() must not touch the scan until the job
    returns, and the exchange is still counted once, with every byte that left."""
    s = make()
    ses = session(s)
    await ses.feed(DENSE)
    task = asyncio.create_task(ses.feed(b"x"))          # scans DENSE in the pool
    await asyncio.sleep(0)
    while ses._busy is None:                            # the job is submitted
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    ses.close(False)
    assert not ses.accounted                            # the job still runs: accounting waits for it
    await asyncio.gather(ses._busy, return_exceptions=True)  # close's callback was added first: it has run
    # ... and handed the final verdict to the pool too (the loop does not finish a dense scan itself)
    assert ses.closing is not None and not ses.accounted
    await ses.closing
    assert ses.accounted and ses.result is not None and ses.result.records == 20_000


# -- concurrent exchanges give the counts of sequential scans ------------------------------------------

def bodies() -> dict[str, tuple[bytes, str, str]]:
    """name -> (body, content type, content encoding): dense, gated (dates of birth), containers."""
    roster = synth.breach_csv(3000)
    out = {f"leak-{n}.csv": (synth.breach_csv(n, seed=n), "text/csv", "") for n in (5, 12, 40, 400, 4000)}
    out["benign.html"] = (synth.benign_web(300 * K)[: 300 * K], "text/html", "")
    out["roster.csv.gz"] = (gzip.compress(roster), "text/csv", "gzip")
    out["roster.zip"] = (zip_bytes({"a.csv": roster, "b.csv": synth.breach_csv(50, seed=3)}), "application/zip", "")
    out["mixed.csv"] = (synth.benign_web(100 * K)[: 100 * K] + synth.breach_csv(700, seed=9), "text/csv", "")
    return out


def test_scans_in_threads_match_sequential_scans(engine):
    """Many scans at once in threads (each Hyperscan call with its thread's scratch, stream closes
    serialised) give exactly the sequential results, stream closes included."""
    items = list(bodies().items()) * 3
    want = {name: counts(scan_bytes(engine, b, content_type=ct, content_encoding=ce)) for name, (b, ct, ce) in items}

    def one(item):
        name, (b, ct, ce) = item
        return name, counts(scan_bytes(engine, b, chunk=16 * K, content_type=ct, content_encoding=ce))

    with ThreadPoolExecutor(8) as ex:
        got = list(ex.map(one, items))
    for name, c in got:
        assert c == want[name], name


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Upstream:
    root = tmp_path_factory.mktemp("site")
    (root / "mon").mkdir()
    (root / "enf").mkdir()
    for name, (b, _, _) in bodies().items():
        if name.endswith(".gz"):
            continue                                # sample_site serves files as they are: no Content-Encoding
        (root / "mon" / name).write_bytes(b)
        for i in range(3):
            (root / "enf" / f"{i}-{name}").write_bytes(f"# {i}\n".encode() + b if name.endswith(".csv") else b)
    up = Upstream.start(root)
    yield up
    up.stop()


async def test_parallel_exchanges_through_the_sidecar_match_sequential_scans(site, engine, tmp_path):
    """24 downloads at once through a real proxy sidecar (monitor route: every record counted;
    enforce route: the same trips) give the verdicts and record counts of sequential in-process scans."""
    sc = Sidecar.create(tmp_path / "sc", site.url, {
        "proxy": {"routes": [{"match": "/mon/*", "mode": "monitor"}]},
        "exposure": {"enabled": False}}).start()       # each response judged alone, as a sequential scan
    try:
        paths = {}
        for p in sorted(site.root.rglob("*")):
            if p.is_file():
                paths["/" + str(p.relative_to(site.root))] = p.read_bytes()
        ctype = {".csv": "text/csv", ".html": "text/html", ".zip": "application/zip"}
        want = {path: counts(scan_bytes(engine, b, content_type=ctype[path[path.rfind("."):]]))
                for path, b in paths.items()}
        async with aiohttp.ClientSession() as http:
            async def get(path: str) -> tuple[str, int | str, bytes]:
                async with http.get(sc.url + path) as r:
                    try:
                        return path, r.status, await r.read()
                    except aiohttp.ClientPayloadError:
                        return path, "cut", b""
            got = await asyncio.gather(*(get(p) for p in paths))
        for path, status, body in got:
            w = want[path]
            if path.startswith("/mon/"):
                assert (status, body) == (200, paths[path]), path       # monitor holds nothing back
            elif w["verdict"] == "trip":
                assert status in (451, "cut"), path
            else:
                assert (status, body) == (200, paths[path]), path
        alerted = {p for p, w in want.items() if w["verdict"] != "pass" and p.startswith("/mon/")}
        _wait(lambda: {a["url"]["path"] for a in sc.alerts()} >= alerted, timeout=60)
        by_path = {a["url"]["path"]: a["dlp"] for a in sc.alerts() if a["url"]["path"].startswith("/mon/")}
        assert set(by_path) == alerted                  # no alert for a clean body
        for path in alerted:                            # the whole body counted, as in one sequential scan
            a, w = by_path[path], want[path]
            assert (a["verdict"], a["records"], a["strong_records"], a["person_records"], a["findings"]) == (
                w["verdict"], w["records"], w["strong_records"], w["person_records"], w["findings"]), path
        assert "Traceback" not in sc.log() and "ScratchInUse" not in sc.log()
    finally:
        sc.stop()


def test_stream_closes_in_many_threads_lose_no_match(engine):
    """``Stream.close()`` uses the database's own scratch (it cannot be given one): closes in
    several threads at once must not collide (a collision is a Hyperscan error the scanner would
    swallow, losing the matches reported at the end of the data). Each body ends on a licence
    number that only the close reports; a short switch interval makes threads switch inside closes."""
    from sensor.detect.policy import Policy
    from sensor.detect.scanner import ExchangeScanner

    head = synth.breach_csv(5)
    lost: list[tuple[int, int]] = []

    def run(t: int) -> None:
        for i in range(250):
            sc = ExchangeScanner(engine, Policy(), key=b"k" * 32)
            sc.feed(head + b"100009,ROE,JO,R,01/17/1990,M,B,1 MAIN CT,REDDING,CA,93015,E%07d" % (t * 1000 + i))
            if sc.finish().findings.get("us-driver-licence") != 6:
                lost.append((t, i))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with ThreadPoolExecutor(6) as ex:
            list(ex.map(run, range(6)))
    finally:
        sys.setswitchinterval(old)
    assert lost == []


def test_the_switch_interval_the_process_set_is_restored_after_the_scans():
    """serve_forever sets 0.5 ms after the imports; the scans lower it while they run and must give
    back that one, not CPython's 5 ms read when workers was imported (the loop would then wait up to
    5 ms for the GIL per wake-up whenever another thread runs Python)."""
    old = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.0005)
        assert workers.timed(sys.getswitchinterval)[0] == pytest.approx(workers.SCAN_SWITCH_INTERVAL)
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    finally:
        sys.setswitchinterval(old)


# -- scan threads yield the CPU to the event loop (scan_nice) -------------------------------------------

def _nice_here() -> int:
    """The calling thread's nice value (Linux: per thread)."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


async def test_scan_threads_run_below_the_loops_priority(make):
    """With ``scan_sched: nice`` every scan thread runs ``scan_nice`` (10 by default) steps below the
    event loop's thread; the loop's own priority is untouched (SCHED_IDLE: tests/test_workers_sched.py)."""
    s = make()
    assert s.config.scan_nice == 10
    s.config = replace(s.config, scan_sched="nice")
    ses = session(s)
    loop_nice = _nice_here()
    await ses.feed(DENSE)                           # past the inline size: scan jobs go to the pool
    assert await ses._off(_nice_here) == min(19, loop_nice + 10)   # the thread a scan job runs on
    assert _nice_here() == loop_nice
    end = await ses.end()
    assert end.action == FORWARD and ses.result is not None and ses.result.records == 20_000
    ses.close(True)


async def test_scan_nice_0_keeps_the_loops_priority(make):
    s = make()
    s.config = replace(s.config, scan_sched="nice", scan_nice=0)
    ses = session(s)
    await ses.feed(DENSE)
    assert await ses._off(_nice_here) == _nice_here()
    ses.close(True)


def test_scan_nice_is_read_from_the_file_and_checked(tmp_path):
    from sensor.config import ConfigError, load_config
    f = tmp_path / "c.yaml"
    f.write_text("scan_nice: 5\n")
    assert load_config(f).scan_nice == 5
    for bad in ("scan_nice: 20\n", "scan_nice: -1\n", "scan_nice: 2.5\n"):
        f.write_text(bad)
        with pytest.raises(ConfigError, match=bad.split(":")[0]):
            load_config(f)


async def test_a_chunk_scanned_in_slices_finds_what_the_whole_chunk_does(make, monkeypatch):
    """A scan job writes its chunk in slices (``workers.SCAN_PIECE``: how long compiled code may
    keep the loop waiting for the GIL): records cut across slices are found and counted as in one
    call (monitor), and an enforce route trips and refuses the same (its counts are those up to the
    trip, where a scan that stops at a trip stops: chunking-dependent by design)."""
    body = synth.benign_web(40 * K)[: 40 * K] + synth.breach_csv(3000, seed=5) + b"tail,no newline"
    results = {}
    for mode in ("monitor", "enforce"):
        for piece in (1 << 30, 4999):
            monkeypatch.setattr(workers, "SCAN_PIECE", piece)
            ses = session(make(mode=mode))
            for i in range(0, len(body), 256 * K):
                if (await ses.feed(body[i:i + 256 * K])).stops:
                    break
            else:
                await ses.end()
            ses.close(True)
            assert ses.result is not None
            c = counts(ses.result)
            results[mode, piece] = (c if mode == "monitor" else c["verdict"], ses.ctx.bytes_sent,
                                    ses.stopped and ses.stopped.status)
        assert results[mode, 4999] == results[mode, 1 << 30]
    assert results["monitor", 4999][0]["verdict"] == "trip" and results["monitor", 4999][1] == len(body)
    assert results["enforce", 4999] == ("trip", 0, 451)


def test_in_pieces_calls_in_order_and_returns_the_last_value():
    seen: list[bytes] = []

    def write(b: bytes) -> int:
        seen.append(b)
        return len(seen)
    assert workers.in_pieces(write, b"abcdefghij", 4) == 3 and seen == [b"abcd", b"efgh", b"ij"]
    seen.clear()
    assert workers.in_pieces(write, b"abc", 4) == 1 and seen == [b"abc"]



def test_malloc_arenas_are_capped_unless_the_operator_set_them(monkeypatch):
    """glibc's arenas are capped at import (one: scan threads leave no memory in arenas of their
    own, bench/exchange_memory.py --smaps); an operator's MALLOC_ARENA_MAX, or 0, leaves them be."""
    if sys.platform.startswith("linux") and "MALLOC_ARENA_MAX" not in os.environ:
        assert workers.ARENAS_CAPPED
    assert not workers.cap_arenas(0)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert not workers.cap_arenas(1)
