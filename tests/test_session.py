"""The exchange session in memory: every action and every tap's edge, with fake chunks and a real
Sensor (real engine, registry, ledger and spool on a temporary state dir; no subprocess)."""
from __future__ import annotations

import asyncio
import gzip
import os
import struct
import zlib
from dataclasses import replace

import pytest

from sensor import synth
from sensor.config import Config, with_overrides
from sensor.decode.limits import DecodeLimits
from sensor.enforce.fingerprint import BodyPrint
from sensor.enforce.resource import resource_of
from sensor.exchange.session import CUT, FORWARD, HOLD, PENDING_HOLD, REFUSE, ExchangeSession, Step
from sensor.runtime import Sensor, build_detector
from tests.conftest import zip_bytes
from tests.sensors import detector, sensor_fixture  # noqa: F401  (detector: a fixture)

HOST = "site.example"
K = 1 << 10
LEAK = synth.breach_csv(60)                     # 60 people with licence numbers: trips (>= 10 strong records)
BENIGN = synth.benign_web(512 << 10)[: 512 << 10]

make = sensor_fixture()


def open_session(sensor: Sensor, path: str = "/exports/x.csv", *, peer: str = "10.0.0.1", tap: str = "proxy",
                 http10: bool = False) -> ExchangeSession:
    return ExchangeSession(sensor, tap=tap, method="GET", scheme="http", host=HOST, target=path, peer=peer,
                           headers={"User-Agent": "t"}, http10=http10)


def pieces(data: bytes, size: int = 16 * K) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def count(sensor: Sensor, name: str, **labels) -> float:
    return sensor.metrics.registry.get_sample_value(name, labels) or 0.0


async def run(session: ExchangeSession, chunks: list[bytes]) -> tuple[list[Step], Step]:
    """Feed every chunk until a stop; (the steps, the last one: end() or the stop)."""
    steps = []
    for c in chunks:
        step = await session.feed(c)
        steps.append(step)
        if step.stops:
            return steps, step
    step = await session.end()
    steps.append(step)
    return steps, step


def sent(steps: list[Step]) -> bytes:
    return b"".join(b"".join(s.send) for s in steps if s.action == FORWARD)


# -- hold-back, lookahead, the end judged first ------------------------------------------------------

async def test_holdback_held_then_released_in_order(make):
    s = make()
    ses = open_session(s)
    assert ses.on_request().action == FORWARD
    assert ses.on_response(200, {"Content-Type": "text/html"}).action == HOLD     # the head waits too
    chunks = pieces(BENIGN[: 128 * K])
    steps = [await ses.feed(c) for c in chunks[:3]]
    assert [st.action for st in steps] == [HOLD, HOLD, HOLD]
    step = await ses.feed(chunks[3])                    # 64 KiB held: the head and all but the latest go
    assert step.action == FORWARD and step.start and step.send == tuple(chunks[:3])
    rest = [await ses.feed(c) for c in chunks[4:]]
    end = await ses.end()
    assert sent([step, *rest, end]) == BENIGN[: 128 * K]
    ses.close(True)
    assert count(s, "dlp_exchanges_total", tap="proxy", verdict="pass") == 1
    assert ses.ctx.bytes_sent == 128 * K


async def test_trip_inside_the_holdback_is_451_with_the_takedown_committed_first(make):
    s = make()
    ses = open_session(s)
    ses.on_response(200, {"Content-Type": "text/csv"})
    _, step = await run(ses, pieces(LEAK, 4 * K))
    assert (step.action, step.status, step.reason) == (REFUSE, 451, "tripped")
    assert step.body == s.block_page()
    assert ses.ctx.takedown_id is not None              # set once the commit is on disk (before this answer)
    assert s.registry.blocked(ses.resource) == ses.ctx.takedown_id
    ses.close(False)
    assert count(s, "dlp_trips_total", mode="enforce") == 1
    assert count(s, "dlp_exchanges_total", tap="proxy", verdict="trip") == 1


async def test_trip_after_the_holdback_is_a_cut_after_the_takedown(make):
    s = make()
    ses = open_session(s)
    ses.on_response(200, {"Content-Type": "text/csv"}, content_length=200 * K + len(LEAK))
    steps, step = await run(ses, pieces(BENIGN[: 200 * K] + LEAK))
    assert step.action == CUT and step.status == 451
    assert 64 * K <= len(sent(steps)) < 200 * K + len(LEAK)
    assert s.registry.blocked(ses.resource) is not None and ses.ctx.takedown_id is not None
    assert await ses.feed(b"more") is step and await ses.end() is step    # stays stopped
    ses.close(False)


async def test_a_trips_content_print_refuses_the_same_file_under_another_url(make):
    s = make()
    body = BENIGN[: 8 * K] + LEAK
    ses = open_session(s, "/exports/a.csv")
    ses.on_response(200, {"Content-Type": "text/csv"})
    _, step = await run(ses, pieces(body, 4 * K))
    assert step.action == REFUSE
    ses.close(False)
    again = open_session(s, "/exports/copy-of-a.csv")
    again.on_response(200, {"Content-Type": "text/csv"})
    _, step = await run(again, pieces(body, 4 * K))
    assert (step.action, step.reason) == (REFUSE, "refused")     # by content, before it trips again
    again.close(False)
    assert count(s, "dlp_refusals_total", reason="content") == 1


async def test_lookahead_keeps_the_latest_chunk_until_the_next_or_a_tick(make):
    s = make(holdback=16 * K)
    ses = open_session(s)
    ses.on_response(200, {"Content-Type": "text/html"})         # no Content-Length: lookahead
    a, b = BENIGN[: 16 * K], BENIGN[16 * K: 32 * K]
    step = await ses.feed(a)
    assert step.action == FORWARD and step.start and step.send == ()
    assert ses.holding
    assert ses.tick().send == (a,)                      # patience ran out: the held chunk goes
    assert ses.tick().action == HOLD and not ses.holding
    assert (await ses.feed(b)).action == HOLD            # kept back: it may be the last
    assert (await ses.end()).send == (b,)
    ses.close(True)


async def test_a_content_length_bodys_last_read_is_judged_before_it_leaves(make):
    rows = synth.breach_rows(10)
    body = BENIGN[: 200 * K] + b"\n" + synth.BREACH_HEADER.encode() + "".join(rows).encode()
    body = body[:-1]                                    # the 10th record completes only at the end
    s = make()
    ses = open_session(s)
    ses.on_response(200, {"Content-Type": "text/csv"}, content_length=len(body))
    chunks = pieces(body)
    steps, step = await run(ses, chunks)
    assert step.action == CUT and len(steps) == len(chunks)     # the last chunk tripped, unsent
    assert sent(steps) == body[: len(body) - len(chunks[-1])]
    ses.close(False)


async def test_feed_last_holds_everything_until_end_judges(make):
    """ext_proc knows the last message (end_of_stream): nothing of it, nor the chunk kept before it, leaves
    before the final verdict."""
    s = make(holdback=16 * K)
    ses = open_session(s, tap="extproc")
    ses.on_response(200, {"Content-Type": "text/html"})
    first = await ses.feed(BENIGN[: 16 * K])
    assert first.start and first.send == ()
    assert (await ses.feed(BENIGN[16 * K: 20 * K], last=True)).action == HOLD
    end = await ses.end()
    assert end.send == (BENIGN[: 16 * K], BENIGN[16 * K: 20 * K])     # one chunk per body message
    ses.close(True)


async def test_tick_with_holdback_too_releases_the_head_and_the_holdback(make):
    s = make()
    ses = open_session(s, tap="extproc")
    assert ses.on_response(200, {}).action == HOLD
    assert (await ses.feed(b"x" * 100)).action == HOLD
    assert ses.tick().action == HOLD                    # the lookahead's patience never releases the hold-back
    step = ses.tick(holdback_too=True)                  # Envoy's message timeout does
    assert step.start and step.send == (b"x" * 100,)
    ses.close(True)


# -- HTTP/1.0 unframed bodies -------------------------------------------------------------------------

async def test_http10_unframed_body_is_held_whole_and_sent_with_its_length(make):
    s = make()
    ses = open_session(s, http10=True)
    assert ses.on_response(200, {"Content-Type": "text/html"}).action == HOLD
    body = BENIGN[: 300 * K]
    assert {(await ses.feed(c)).action for c in pieces(body)} == {HOLD}
    end = await ses.end()
    assert end.start and end.length == len(body) and b"".join(end.send) == body
    ses.close(True)


async def test_http10_unframed_body_past_the_buffer_is_505(make):
    s = make(http10_buffer=64 * K)
    ses = open_session(s, http10=True)
    ses.on_response(200, {"Content-Type": "text/html"})
    _, step = await run(ses, pieces(BENIGN[: 128 * K]))
    assert (step.action, step.status) == (REFUSE, 505)
    ses.close(False)


async def test_http10_with_a_content_length_is_not_buffered(make):
    s = make(holdback=0)
    ses = open_session(s, http10=True)
    assert ses.on_response(200, {}, content_length=10).start
    assert (await ses.feed(b"0123456789")).send == (b"0123456789",)
    ses.close(True)


# -- failures ---------------------------------------------------------------------------------------

def _bomb(sensor: Sensor) -> bytes:
    sensor.limits = DecodeLimits(max_decoded_bytes=100 * K)
    return gzip.compress(BENIGN[: 300 * K])


async def test_decode_limit_fails_closed_on_enforce_routes(make):
    s = make()
    body = _bomb(s)
    ses = open_session(s)
    ses.on_response(200, {"Content-Type": "text/html", "Content-Encoding": "gzip"})
    _, step = await run(ses, pieces(body, 4 * K))
    assert (step.action, step.status, step.reason) == (REFUSE, 503, "uninspected")
    assert ses.ctx.action == "refused_uninspected"
    ses.close(False)
    assert count(s, "dlp_scan_failures_total", reason="decode_limit", action="closed") == 1
    assert count(s, "dlp_exchanges_total", tap="proxy", verdict="alert") == 1     # the SOC hears of it


async def test_decode_limit_passes_when_the_route_says_open(make):
    s = make(on_error="open", on_error_explicit=True)
    body = _bomb(s)
    ses = open_session(s)
    ses.on_response(200, {"Content-Type": "text/html", "Content-Encoding": "gzip"})
    steps, step = await run(ses, pieces(body, 4 * K))
    assert step.action == FORWARD and sent(steps) == body
    ses.close(True)
    assert count(s, "dlp_exchanges_total", tap="proxy", verdict="alert") == 1


def _broken(session: ExchangeSession) -> None:
    def boom(data: bytes) -> str:
        raise RuntimeError("scanner broke")
    session.scan.write = boom           # type: ignore[method-assign,union-attr]


async def test_scanner_error_on_a_closed_route_is_503_with_retry_after(make):
    s = make(on_error="closed")
    ses = open_session(s)
    ses.on_response(200, {})
    _broken(ses)
    step = await ses.feed(b"abc")
    assert (step.action, step.status, step.reason) == (REFUSE, 503, "scanner_error")
    assert ("Retry-After", "1") in step.headers
    ses.close(False)
    assert count(s, "dlp_scan_failures_total", reason="internal", action="closed") == 1
    assert s.admission.active == 0


async def test_scanner_error_on_an_open_route_lets_the_rest_through_unscanned(make):
    s = make(on_error="open", holdback=0)
    ses = open_session(s)
    ses.on_response(200, {}, content_length=6)
    _broken(ses)
    assert (await ses.feed(b"abc")).send == (b"abc",)
    assert (await ses.feed(b"def")).send == (b"def",)
    ses.close(True)
    assert count(s, "dlp_scan_failures_total", reason="internal", action="open") == 1
    assert count(s, "dlp_exchanges_total", tap="proxy", verdict="unscanned") == 1


# -- registry -----------------------------------------------------------------------------------------

async def test_a_taken_down_resource_is_refused_before_the_upstream_is_asked(make):
    s = make()
    s.registry.add(resource_of(s.config, HOST, "/exports/x.csv"), actor="t", reason="t")
    ses = open_session(s, "/exports/../exports//x.csv?page=2")          # the same resource, spelled otherwise
    step = ses.on_request()
    assert (step.action, step.status) == (REFUSE, 451)
    ses.close(False)
    assert count(s, "dlp_refusals_total", reason="resource") == 1
    assert count(s, "dlp_exchanges_total", tap="proxy", verdict="unscanned") == 0     # a refusal, not an exchange


def _print_of(sensor: Sensor, data: bytes) -> str:
    p = BodyPrint(sensor.key, None, sensor.config.fingerprint_bytes)
    p.feed(data)
    return p.value()


async def test_a_taken_down_content_print_is_refused_under_another_url(make):
    s = make()
    body = BENIGN[: 100 * K]
    s.registry.add(resource_of(s.config, HOST, "/elsewhere.html"), actor="t", reason="t",
                   fingerprint=_print_of(s, body[: 40 * K]))
    ses = open_session(s, "/copy.html")
    ses.on_response(200, {"Content-Type": "text/html"})
    _, step = await run(ses, pieces(body))
    assert (step.action, step.status, step.reason) == (REFUSE, 451, "refused")
    ses.close(False)
    assert count(s, "dlp_refusals_total", reason="content") == 1


async def test_a_short_taken_down_body_is_refused_whole(make):
    s = make()
    body = b"<p>a short page</p>"
    s.registry.add(resource_of(s.config, HOST, "/elsewhere.html"), actor="t", reason="t", fingerprint=_print_of(s, body))
    ses = open_session(s, "/copy.html")
    ses.on_response(200, {"Content-Type": "text/html"})
    _, step = await run(ses, [body])
    assert (step.action, step.status) == (REFUSE, 451)
    ses.close(False)


async def test_a_host_that_is_not_the_sites_is_refused_with_421(make):
    from sensor.enforce.resource import SiteRule
    s = make()
    s.config.site = SiteRule.parse(["www.example.gov"], "refuse")
    ses = open_session(s)                               # Host: site.example
    step = ses.on_request()
    assert (step.action, step.status) == (REFUSE, 421)
    ses.close(False)
    assert count(s, "dlp_refusals_total", reason="host") == 1


# -- admission ----------------------------------------------------------------------------------------

async def test_admission_caps_per_client_and_global_answer_503_with_retry_after(make):
    s = make(max_scans=3, max_scans_per_client=2, on_error="closed")
    a1, a2, a3 = (open_session(s, peer="10.0.0.1") for _ in range(3))
    assert a1.on_response(200, {}).action == HOLD and a2.on_response(200, {}).action == HOLD
    step = a3.on_response(200, {})
    assert (step.action, step.status) == (REFUSE, 503) and ("Retry-After", "1") in step.headers
    b = open_session(s, peer="10.0.0.2")
    assert b.on_response(200, {}).action == HOLD        # another client is not held up by the first
    sent: list[dict] = []
    s.dispatcher.submit = sent.append                   # the alerts the refusals raise
    c = open_session(s, peer="10.0.0.3")
    assert c.on_response(200, {}).status == 503         # the global cap, route fails closed
    # saturation is heard by the SOC (the per-client cap is a throttle, not an alert)
    [sat] = sent
    assert sat["rule"]["id"] == "dlp.unscanned" and sat["dlp"]["unscanned"]["reason"] == "overload-refused"
    assert sat["dlp"]["action"] == "refused_unscanned" and "denied" in sat["event"]["type"]
    assert count(s, "dlp_scan_failures_total", reason="client_overload", action="closed") == 1
    assert count(s, "dlp_scan_failures_total", reason="overload", action="closed") == 1
    a1.close(False)
    again = open_session(s, peer="10.0.0.1")
    assert again.on_response(200, {}).action == HOLD
    for x in (a2, a3, b, c, again):
        x.close(False)
    assert s.admission.active == 0 and not s.admission.by_client
    assert count(s, "dlp_exchanges_total", tap="proxy", verdict="unscanned") == 0     # refusals: not exchanges


async def test_past_the_global_cap_an_open_route_forwards_unscanned(make):
    s = make(max_scans=1, on_error="open", holdback=0)
    first = open_session(s, peer="10.0.0.1")
    first.on_response(200, {})
    second = open_session(s, peer="10.0.0.2")
    assert second.on_response(200, {}, content_length=len(LEAK)).start and second.scan is None
    assert (await second.feed(LEAK)).send == (LEAK,)
    second.close(True)
    first.close(False)
    assert count(s, "dlp_scan_failures_total", reason="overload", action="open") == 1
    assert count(s, "dlp_exchanges_total", tap="proxy", verdict="unscanned") == 1


# -- monitor ------------------------------------------------------------------------------------------

async def test_monitor_never_holds_a_byte_and_never_cuts(make):
    s = make(mode="monitor")
    ses = open_session(s)
    assert ses.on_response(200, {"Content-Type": "text/csv"}).start
    chunks = pieces(LEAK, 4 * K)
    for c in chunks:
        step = await ses.feed(c)
        assert step.action == FORWARD and step.send == (c,)
    assert (await ses.end()).action == FORWARD
    ses.close(True)
    assert count(s, "dlp_trips_total", mode="monitor") == 1
    assert s.registry.blocked(ses.resource) is None     # monitor alerts; it does not take down


async def test_partial_content_is_flagged_and_counted(make):
    s = make()
    ses = open_session(s)
    ses.on_response(206, {"Content-Range": "bytes 0-9/100"})
    assert ses.ctx.partial
    ses.close(False)
    assert count(s, "dlp_partial_responses_total") == 1


# -- ICAP's edges -------------------------------------------------------------------------------------

async def test_keep_nothing_judges_a_copy_the_client_keeps(make):
    """ICAP 204: nothing is held or released, the end says whether the client's copy may go."""
    s = make()
    ses = open_session(s, tap="icap")
    ses.on_response(200, {"Content-Type": "text/html"}, holdback_cap=32 * K)
    assert ses.holdback == 32 * K
    ses.keep_nothing()
    assert {(await ses.feed(c)).action for c in pieces(BENIGN[: 100 * K])} == {HOLD}
    end = await ses.end()
    assert end.action == FORWARD and end.send == ()
    ses.close(True)
    assert ses.ctx.bytes_sent == 100 * K


async def test_keep_nothing_still_refuses_a_leak(make):
    s = make()
    ses = open_session(s, tap="icap")
    ses.on_response(200, {"Content-Type": "text/csv"}, holdback_cap=0)
    ses.keep_nothing()
    _, step = await run(ses, pieces(LEAK, 4 * K))
    assert step.stops and step.status == 451            # a CUT after start: ICAP still answers the page
    ses.close(False)


async def test_no_body_forwards_the_head_and_counts_unscanned(make):
    s = make()
    ses = open_session(s)
    assert ses.on_response(304, {}, has_body=False).start
    assert (await ses.end()).action == FORWARD
    ses.close(True)
    assert count(s, "dlp_exchanges_total", tap="proxy", verdict="unscanned") == 1


# -- accounting ---------------------------------------------------------------------------------------

async def test_accounting_happens_once_even_when_the_handler_is_cancelled_mid_verdict(make):
    """A container's verdict is read in a thread; the client leaving cancels the tap's handler: the
    verdict still counts, once."""
    s = make(holdback=0)
    body = zip_bytes({"people.csv": LEAK})
    ses = open_session(s, "/exports/people.zip")
    ses.on_response(200, {"Content-Type": "application/zip"})
    for c in pieces(body, 4 * K):
        assert not (await ses.feed(c)).stops
    assert ses.slow_end
    task = asyncio.ensure_future(ses.end())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    ses.close(False)
    ses.close(False)
    assert ses.finishing is not None
    await asyncio.wait_for(asyncio.shield(ses.finishing), 30)
    await asyncio.sleep(0)                              # the done callback
    assert count(s, "dlp_exchanges_total", tap="proxy", verdict="trip") == 1
    assert s.admission.active == 0


async def test_close_accounts_an_abandoned_exchange_once(make):
    s = make()
    ses = open_session(s)
    ses.on_response(200, {"Content-Type": "text/html"})
    await ses.feed(BENIGN[: 10 * K])
    ses.close(False)
    ses.close(True)
    assert count(s, "dlp_exchanges_total", tap="proxy", verdict="pass") == 1


# -- the route table ----------------------------------------------------------------------------------

async def test_one_route_table_gives_mode_holdback_and_thresholds(make, detector):
    from sensor.config import ProxyRoute
    from sensor.detect.policy import PolicyError
    s = make(routes=(ProxyRoute("/open-data/*", "enforce", "closed", 8 * K, True,
                                trip=(("person_records", 0), ("strong_records", 0))),))
    ses = open_session(s, "/open-data/people.csv?page=3")
    assert (ses.route.holdback, ses.route.on_error, ses.route.policy.trip.strong_records) == (8 * K, "closed", 0)
    ses.on_response(200, {"Content-Type": "text/csv"})
    steps, step = await run(ses, pieces(LEAK, 4 * K))
    assert step.action == FORWARD and sent(steps) == LEAK      # this route's thresholds never trip
    ses.close(True)
    other = open_session(s, "/exports/people.csv")
    assert other.route.holdback == 64 * K and other.route.policy.trip.strong_records == 10
    other.close(False)
    bad = with_overrides(Config(), state_dir=str(s.config.state_dir))
    bad.proxy = replace(bad.proxy, routes=(ProxyRoute("/x", "enforce", "open", 0, allow=frozenset({"no-such-id"})),))
    with pytest.raises(PolicyError, match=r"proxy.routes\[0\].allow: unknown signature id"):
        build_detector(bad)


def test_route_thresholds_in_the_config_file_apply_over_the_policy_routes():
    from sensor.config import ConfigError, parse_config
    from sensor.detect.policy import parse_policy
    from sensor.exchange.routes import route_for
    c = parse_config({"proxy": {"routes": [{"match": "/api/*", "trip": {"person_records": 5}}]}})
    policy = parse_policy({"routes": [{"match": "/api/*", "trip": {"strong_records": 3}}]})
    p = route_for(c, policy, "/api/people").policy
    assert (p.trip.strong_records, p.trip.person_records, p.routes) == (3, 5, ())
    with pytest.raises(ConfigError, match=r"proxy.routes\[0\].trip.people: unknown key"):
        parse_config({"proxy": {"routes": [{"match": "/a", "trip": {"people": 5}}]}})


def test_a_route_is_resolved_once_per_policy_and_proxy_section_and_follows_a_change():
    """route_for remembers a path's route (every exchange resolves one on the loop); a reload (a new
    policy), a changed mode or new routes resolve it afresh."""
    from sensor.config import parse_config
    from sensor.detect.policy import parse_policy
    from sensor.exchange.routes import route_for
    c = parse_config({"proxy": {"mode": "monitor", "routes": [{"match": "/api/*", "trip": {"person_records": 5}}]}})
    policy = parse_policy({})
    first = route_for(c, policy, "/api/people")
    assert route_for(c, policy, "/api/people") is first
    assert route_for(c, policy, "/other").mode == "monitor"
    c.proxy.mode = "enforce"                        # the config object changed in place
    assert route_for(c, policy, "/other").mode == "enforce"
    c.proxy.routes = ()
    assert route_for(c, policy, "/api/people").policy.trip.person_records != 5
    reloaded = parse_policy({"trip": {"person_records": 7}})
    assert route_for(c, reloaded, "/x").policy.trip.person_records == 7


def test_the_client_hash_is_remembered_but_keyed_per_sensor_key():
    from sensor.exchange.identity import client_hash
    assert client_hash(b"k1", "203.0.113.7") == client_hash(b"k1", "203.0.113.7:4711")
    assert client_hash(b"k1", "203.0.113.7") != client_hash(b"k2", "203.0.113.7")


# -- what the act layer is told ------------------------------------------------------------------------

def _spy_finished(s: Sensor) -> list[dict]:
    """Every ``finished`` call's keywords, with the alert it raised (the real method still runs)."""
    calls: list[dict] = []
    real = s.finished

    def finished(ctx, result, **kw):
        alert = real(ctx, result, **kw)
        calls.append({**kw, "result": result, "alert": alert})
        return alert
    s.finished = finished                       # type: ignore[method-assign]
    return calls


async def test_bytes_that_leave_unscanned_raise_an_alert_naming_why(make):
    s = make(max_scans=1, on_error="open", holdback=0)
    calls = _spy_finished(s)
    first = open_session(s, peer="10.0.0.1")
    first.on_response(200, {})
    second = open_session(s, peer="10.0.0.2")        # past the global cap: forwarded unscanned
    second.on_response(200, {}, content_length=len(LEAK))
    await second.feed(LEAK)
    second.close(True)
    first.close(False)
    third = open_session(s, peer="10.0.0.3")         # the scanner breaks: the rest leaves unscanned
    third.on_response(200, {}, content_length=6)
    _broken(third)
    await third.feed(b"abc")
    third.close(True)
    by_reason = {c["unscanned"]: c for c in calls if c.get("unscanned")}
    assert set(by_reason) == {"overload", "scanner-error"}
    assert by_reason["overload"]["alert"]["rule"]["id"] == "dlp.unscanned"
    assert by_reason["scanner-error"]["result"] is None


async def test_a_trip_hands_its_counts_to_the_takedown(make):
    s = make()
    seen: list = []
    real = s.take_down

    async def take_down(ctx, fingerprint, tripped_at, **kw):
        seen.append(kw.get("result"))
        return await real(ctx, fingerprint, tripped_at, **kw)
    s.take_down = take_down                     # type: ignore[method-assign]
    ses = open_session(s)
    ses.on_response(200, {}, content_length=len(LEAK))
    _, step = await run(ses, pieces(LEAK))
    ses.close(False)
    assert step.status == 451 and len(seen) == 1
    assert seen[0] is not None and seen[0].verdict == "trip" and seen[0].strong_records >= 10


async def test_no_holdback_still_holds_the_head_the_scanner_has_not_read(make):
    """``holdback_kib: 0`` releases each chunk once it is judged clean, but the scanner holds a
    part's first lines (up to 16 lines or 4 KiB) before it reads them, to find the table's header:
    the head waits for them, so a small first chunk of a roster never leaves unscanned (the trip
    cuts a download of which no byte has left)."""
    s = make(holdback=0)
    ses = open_session(s)
    ses.on_response(200, {"Content-Type": "text/csv"}, content_length=len(LEAK))    # no lookahead chunk
    first = LEAK[:LEAK.index(b"\n", LEAK.index(b"\n") + 1) + 1]      # the header and one row
    step = await ses.feed(first)
    assert step.action == HOLD and not step.send
    steps, step = await run(ses, pieces(LEAK[len(first):], 4 * K))
    assert (step.action, step.status) == (CUT, 451) and not sent(steps)
    ses.close(False)
    ses = open_session(s, "/exports/benign.csv")                      # a clean body still flows
    ses.on_response(200, {"Content-Type": "text/csv"}, content_length=64 * K)
    steps, _ = await run(ses, pieces(BENIGN[: 64 * K], 4 * K))
    assert sent(steps) == BENIGN[: 64 * K]
    assert steps[1].action == FORWARD                                 # from the second chunk: 4 KiB read
    ses.close(True)


async def test_no_holdback_holds_a_first_read_shorter_than_the_sniff(make):
    """A first read shorter than the decoders' sniff (64 bytes: container, gzip or text?) reaches no
    scanner yet: it waits as the scanner's held lines do, or it left before any byte of the roster
    was scanned (``holdback_kib: 0``: 40 bytes of a leak sent, then the cut)."""
    s = make(holdback=0)
    ses = open_session(s)
    ses.on_response(200, {"Content-Type": "text/csv"}, content_length=len(LEAK))
    step = await ses.feed(LEAK[:40])
    assert step.action == HOLD and not step.send
    steps, step = await run(ses, pieces(LEAK[40:], 4 * K))
    assert (step.action, step.status) == (CUT, 451) and not sent(steps)
    ses.close(False)


def _gzip_head(text: bytes) -> bytes:
    """A gzip stream's start that decodes to ``text`` (flushed: whole, not the end)."""
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    return c.compress(text) + c.flush(zlib.Z_SYNC_FLUSH)


async def _held_most(ses: ExchangeSession, chunks: list[bytes]) -> int:
    most = 0
    for c in chunks:
        st = await ses.feed(c)
        assert not st.stops
        most = max(most, ses.held_n)
    await ses.end()
    return most


@pytest.mark.parametrize("rest", ["corrupt", "idle"])
async def test_the_head_waits_for_the_scanner_but_never_holds_the_body_whole(make, rest):
    """The scanner holds a body's first lines until 16 lines or 4 KiB have come, and the head waits
    for them; when no more come (gzip that turns corrupt after them: decoding stops; or empty deflate
    blocks, 5 bytes that yield nothing), the 1-2 MB body was held whole in memory until its end.
    Now the stop reads the held lines, and the wait ends at PENDING_HOLD held."""
    head = _gzip_head(b"name,city\n" + b"Ann,Fresno\n" * 8)          # 9 lines, 98 bytes: held unread
    if rest == "corrupt":
        tail = b"\xff" * 8 + os.urandom(1 << 20)
    else:
        tail = b"\x00\x00\x00\xff\xff" * 400_000 + b"\x01\x00\x00\xff\xff" + struct.pack("<II", 0, 0)
    s = make()
    ses = open_session(s)
    ses.on_response(200, {"Content-Type": "text/csv", "Content-Encoding": "gzip"})
    most = await _held_most(ses, [head] + pieces(tail, 16 * K))
    ses.close(True)
    assert most <= (64 * K if rest == "corrupt" else PENDING_HOLD) + 16 * K


async def test_a_tick_does_not_release_the_lines_the_scanner_has_not_read(make):
    """``holdback_kib: 0``, a chunked roster sent a row at a time with a pause after each: the
    patience tick released each row while the scanner still held the first 16 lines unread, so 15
    lines (14 licence holders: more than a trip) left before any was scanned. They wait for it now;
    the 16th line gets them read, the trip cuts, and fewer rows left than a trip needs."""
    s = make(holdback=0)
    ses = open_session(s)
    ses.on_response(200, {"Content-Type": "text/csv"})          # chunked: lookahead and ticks
    out = b""
    for line in LEAK.split(b"\n")[:40]:
        step = await ses.feed(line + b"\n")
        if step.stops:
            break
        out += b"".join(step.send) + b"".join(ses.tick().send)
    assert step.action == CUT
    assert out.count(b"\n") < 11              # header + fewer than the 10 strong records of a trip
    ses.close(False)
