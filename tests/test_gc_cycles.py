"""An exchange's objects are freed by reference counting when it ends, not left as cycles (issue 19).

A reference cycle left by each exchange (sniffer -> text route -> base64 finder -> sniffer, a
scanner and its structure shadow, a body and its stop callback) is only reclaimed by a cyclic GC
pass, which runs on whichever thread allocates next — often the event loop, for 1 to 27 ms during
a dense leak. These tests run exchanges with the collector off and then count what a collection
finds: nothing, for bodies of every route (text, base64 inside JSON, zip, gzip file, gzip
Content-Encoding) and for whole sessions on the loop and in the scan pool.
"""
from __future__ import annotations

import base64
import gc
import gzip
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from sensor import synth
from sensor.detect.policy import Policy
from sensor.pipeline import BodyScan, Exchange
from tests.conftest import KEY, zip_bytes
from tests.sensors import detector, sensor_fixture  # noqa: F401  (detector: a fixture)
from tests.test_session import open_session, pieces, run

LEAK = synth.breach_csv(120)
BENIGN = synth.benign_web(96 << 10)[: 96 << 10]
ZIP = zip_bytes({"a.csv": LEAK, "b.html": BENIGN})

make = sensor_fixture()


@contextmanager
def collector_off() -> Iterator[Callable[[], Counter]]:
    """The collector off inside; the returned function collects and says what it found, by type."""
    gc.collect()
    gc.disable()
    try:
        def found() -> Counter:
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                gc.collect()
                return Counter(type(o).__qualname__ for o in gc.garbage)
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
        yield found
    finally:
        gc.enable()


BODIES = {
    "csv leak": (LEAK, "text/csv", ""),
    "html": (BENIGN, "text/html", ""),
    "json with base64 zip": (b'{"doc":"' + base64.b64encode(ZIP) + b'"}', "application/json", ""),
    "zip": (ZIP, "application/zip", ""),
    "gzip file": (gzip.compress(LEAK), "application/gzip", ""),
    "gzip encoding": (gzip.compress(LEAK), "text/csv", "gzip"),
}


@pytest.mark.parametrize("stop_on_trip", [False, True])
@pytest.mark.parametrize("name", list(BODIES))
def test_a_body_scan_leaves_no_cycle(engine, name, stop_on_trip):
    data, ct, ce = BODIES[name]

    def scan() -> str:
        body = BodyScan(engine, Policy(), key=KEY, stop_on_trip=stop_on_trip,
                        exchange=Exchange(content_type=ct, content_encoding=ce))
        for p in pieces(data):
            body.write(p)
        return body.finish_all().verdict
    scan()                                          # one-off caches (compiled regexes, pools) first
    with collector_off() as found:
        verdicts = {scan() for _ in range(3)}
        assert found() == Counter()
    assert verdicts <= {"pass", "alert", "trip"}


@pytest.mark.parametrize("scan_workers", [0, 1])
async def test_a_session_leaves_no_cycle(make, scan_workers):
    s = make(scan_workers=scan_workers, mode="monitor")

    async def exchange(path: str, body: bytes, ct: str) -> None:
        ses = open_session(s, path)
        ses.on_request()
        ses.on_response(200, {"Content-Type": ct}, content_length=len(body))
        _, step = await run(ses, pieces(body))
        ses.close(not step.stops)

    async def three() -> None:
        await exchange("/p/a.html", BENIGN, "text/html")
        await exchange("/exports/x.csv", LEAK, "text/csv")
        await exchange("/p/b.json", BENIGN, "application/json")
    await three()
    with collector_off() as found:
        for _ in range(2):
            await three()
        assert found() == Counter()
