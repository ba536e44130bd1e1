"""Range requests in memory: the clean-verdict cache (sensor.exchange.ranges) and the session's
decisions on enforce and monitor routes, with a real Sensor (real engine, registry, ledger)."""
from __future__ import annotations

from sensor.exchange import ranges
from sensor.exchange.ranges import RANGED, WHOLE, AS_ASKED, CleanVerdicts, validator_of
from sensor.exchange.session import FORWARD, REFUSE, ExchangeSession
from tests.test_session import BENIGN, HOST, LEAK, count, detector, make, pieces, run  # noqa: F401 (fixtures)

ETAG = '"v1"'
RANGE = {"Range": "bytes=0-511"}


def _session(sensor, headers=None, path="/exports/x.csv", method="GET") -> ExchangeSession:
    return ExchangeSession(sensor, tap="proxy", method=method, scheme="http", host=HOST, target=path,
                           peer="10.0.0.1", headers=headers or {})


def _full(body: bytes, etag: str = ETAG, **extra: str) -> dict[str, str]:
    return {"ETag": etag, "Content-Length": str(len(body)), "Content-Type": "text/csv", **extra}


def _part(total: int, etag: str = ETAG, **extra: str) -> dict[str, str]:
    return {"ETag": etag, "Content-Range": f"bytes 0-511/{total}", "Content-Length": "512", **extra}


async def _serve_whole(sensor, body: bytes, headers=None, etag: str = ETAG):
    ses = _session(sensor, headers)
    ses.on_request()
    ses.on_response(200, _full(body, etag), content_length=len(body))
    steps, last = await run(ses, pieces(body))
    ses.close(completed=not last.stops)
    return ses, last


# -- the cache ------------------------------------------------------------------------------------

def test_validator_prefers_a_strong_etag_and_includes_the_coding():
    assert validator_of(200, {"ETag": '"a"'}) == validator_of(206, {"etag": '"a"', "Content-Range": "bytes 0-1/9"})
    assert validator_of(200, {"ETag": '"a"'}) != validator_of(200, {"ETag": '"a"', "Content-Encoding": "gzip"})
    assert validator_of(200, {"ETag": 'W/"a"'}) is None                     # weak: not byte-identical
    lm = "Wed, 02 Dec 2026 09:00:00 GMT"
    assert validator_of(200, {"Last-Modified": lm, "Content-Length": "900"}) == \
        validator_of(206, {"Last-Modified": lm, "Content-Range": "bytes 0-511/900"})
    assert validator_of(206, {"Last-Modified": lm, "Content-Range": "bytes 0-511/*"}) is None
    assert validator_of(200, {"Last-Modified": lm}) is None                 # no length


def test_cache_is_bounded_lru_and_forgets_a_resource_whole():
    c = CleanVerdicts(limit=2)
    c.remember("r1", "/a", "v")
    c.remember("r1", "/b", "v")
    assert c.clean("r1", "/a", "v")                         # /a is now the most recent
    c.remember("r2", "/c", "v")                             # evicts /b
    assert c.known("r1", "/a") and not c.known("r1", "/b") and c.known("r2", "/c")
    assert not c.clean("r1", "/a", "other") and not c.clean("r1", "/a", None)
    c.forget("r1")
    assert not c.known("r1", "/a") and c.known("r2", "/c") and len(c) == 1


def test_plan():
    c = CleanVerdicts()
    assert ranges.plan(c, enforce=True, resource="r", target="/a", headers={}) == AS_ASKED
    assert ranges.plan(c, enforce=False, resource="r", target="/a", headers=RANGE) == AS_ASKED
    assert ranges.plan(c, enforce=True, resource="r", target="/a", headers={"If-Range": ETAG}) == WHOLE
    c.remember("r", "/a", "v")
    assert ranges.plan(c, enforce=True, resource="r", target="/a", headers=RANGE) == RANGED


# -- the session ----------------------------------------------------------------------------------

async def test_a_range_without_a_clean_verdict_is_asked_whole_then_ranges_pass(make):
    s = make()
    ses = _session(s, RANGE)
    assert ses.upstream_drop == {"range", "if-range"}
    ses.close(False)
    _, last = await _serve_whole(s, BENIGN, RANGE)
    assert last.action == FORWARD
    ses = _session(s, RANGE)
    assert ses.range_plan == RANGED and ses.upstream_drop == frozenset()
    assert not ses.ask_whole(206, _part(len(BENIGN)))       # same version: served as a range
    step = ses.on_response(206, _part(len(BENIGN)), content_length=512)
    assert not step.stops and ses.ctx.partial
    ses.close(False)


async def test_a_leak_fetched_whole_for_a_range_trips_and_is_never_remembered(make):
    s = make()
    ses, last = await _serve_whole(s, LEAK, RANGE)
    assert last.action == REFUSE and last.status == 451
    assert not s.clean.known(ses.resource, "/exports/x.csv")


async def test_an_unasked_206_on_an_enforce_route_fails_closed_with_an_unscanned_alert(make):
    s = make()
    ses = _session(s)                                       # no Range asked (or an ICAP RESPMOD)
    sent: list[dict] = []
    s.dispatcher.submit = sent.append
    step = ses.on_response(206, _part(len(LEAK)), content_length=512)
    assert step.action == REFUSE and step.status == 503 and ("Retry-After", "1") in step.headers
    ses.close(False)
    [alert] = sent                                          # refused, and said so: not "forwarded"
    assert alert["dlp"]["unscanned"]["reason"] == "unverified-range"
    assert alert["dlp"]["action"] == "refused_unscanned" and "denied" in alert["event"]["type"]
    assert count(s, "dlp_scan_failures_total", reason="unverified_range", action="closed") == 1
    assert count(s, "dlp_exchanges_total", tap="proxy", verdict="unscanned") == 1


async def test_a_206_of_another_version_is_asked_again_whole(make):
    s = make()
    await _serve_whole(s, BENIGN)
    ses = _session(s, RANGE)
    assert ses.range_plan == RANGED
    assert ses.ask_whole(206, _part(len(BENIGN), etag='"v2"'))        # the file changed upstream
    assert ses.upstream_drop == {"range", "if-range"} and not s.clean.known(ses.resource, "/exports/x.csv")
    ses.close(False)
    ses = _session(s, RANGE)                                # ICAP/ext_proc cannot ask again: refused
    assert ses.on_response(206, {"Content-Range": "bytes 0-511/9"}, content_length=512).status == 503
    ses.close(False)


async def test_a_takedown_forgets_the_clean_verdict(make):
    s = make()
    ses, _ = await _serve_whole(s, BENIGN)
    assert s.clean.known(ses.resource, "/exports/x.csv")
    leak = _session(s, path="/exports/x.csv?page=2")        # the same resource (pagination folded)
    leak.on_response(200, _full(LEAK, '"v9"'), content_length=len(LEAK))
    _, last = await run(leak, pieces(LEAK))
    leak.close(False)
    assert last.status == 451
    assert not s.clean.known(ses.resource, "/exports/x.csv")


async def test_gzip_ranges_follow_the_same_rule(make):
    import gzip
    s = make()
    body = gzip.compress(LEAK)
    ses = _session(s, RANGE)
    assert ses.range_plan == WHOLE
    ses.on_response(200, _full(body, **{"Content-Encoding": "gzip"}), content_length=len(body))
    _, last = await run(ses, pieces(body))
    ses.close(False)
    assert last.status == 451


async def test_monitor_routes_keep_serving_ranges_as_partial(make):
    s = make(mode="monitor")
    ses = _session(s, RANGE)
    assert ses.upstream_drop == frozenset()
    step = ses.on_response(206, _part(len(LEAK)), content_length=512)
    assert not step.stops and ses.ctx.partial
    ses.close(False)


async def test_only_a_complete_clean_200_fills_the_cache(make):
    s = make()
    ses = _session(s)
    ses.on_response(200, _full(BENIGN), content_length=len(BENIGN))
    await ses.feed(BENIGN[:1000])
    ses.close(False)                                        # abandoned: not scanned whole
    assert not s.clean.known(ses.resource, "/exports/x.csv")
    ses = _session(s)
    ses.on_response(200, {"Content-Length": str(len(BENIGN))}, content_length=len(BENIGN))   # no validator
    await run(ses, pieces(BENIGN))
    ses.close(True)
    assert len(s.clean) == 0
    await _serve_whole(s, BENIGN)
    assert len(s.clean) == 1
