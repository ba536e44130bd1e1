"""The compiled scanning core (sensor/detect/_hscore.pyx) against the Python reference scanner.

Both paths scan the same bytes, cut the same way, through the whole pipeline (decoders, structure
view, records); their results must be identical (``ScanResult.to_json()`` but ``seconds``, and the
record identities and trip byte that the JSON leaves out). Inputs: the test corpus (tests/data,
tests/corpus15.py's files), the synthetic breach and web bodies, real text from the machine, and
fuzzed inputs (random chunking, random bytes, mutations of leak files).

Under CI=true a missing compiled module fails here: the sensor would silently run several times
slower on dense data.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sensor import synth
from sensor.detect import core
from sensor.pipeline import BodyScan, Exchange
from sensor.detect.policy import Policy
from tests import corpus15
from tests.conftest import KEY, require_built

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def compiled(engine):
    require_built(core._hscore, "sensor.detect._hscore")
    c = core.core_for(engine)
    assert c is not None, f"compiled core refused the default pack: {core.status()}"
    return c


def _scan(engine, data: bytes, cuts: list[int], compiled: bool, content_type: str = "", **kw):
    saved = engine.__dict__.get("_core", False)
    if not compiled:
        engine.__dict__["_core"] = None           # this engine's scanners take the Python reference
    try:
        body = BodyScan(engine, Policy(), key=KEY, exchange=Exchange(content_type=content_type), **kw)
        assert (body.scanner._core is not None) == compiled     # the path this call claims to take
        prev = 0
        for c in cuts + [len(data)]:
            if c > prev:
                body.write(data[prev:c])
                prev = c
        r = body.finish()
    finally:
        if saved is False:
            engine.__dict__.pop("_core", None)
        else:
            engine.__dict__["_core"] = saved
    out = r.to_json()
    out.pop("seconds")
    return out, r.strong_ids, r.person_ids, r.ids_capped, r.trip_at_byte


def same(engine, data: bytes, cuts: list[int] | None = None, content_type: str = "", **kw) -> dict:
    cuts = sorted(set(cuts if cuts is not None else range(65536, len(data), 65536)))
    a = _scan(engine, data, cuts, True, content_type, **kw)
    b = _scan(engine, data, cuts, False, content_type, **kw)
    assert a[0] == b[0]
    assert a[1:] == b[1:]
    return a[0]


def _corpus() -> list[tuple[str, str, bytes]]:
    files = [(f.name, f.content_type, f.data) for f in corpus15.build()]
    files += [(p.name, "", p.read_bytes()) for p in sorted(DATA.rglob("*")) if p.is_file()]
    return files


CORPUS = _corpus()


@pytest.mark.parametrize("name,ctype,data", CORPUS, ids=[c[0] for c in CORPUS])
def test_corpus_file_same_result(engine, compiled, name, ctype, data):
    same(engine, data, content_type=ctype)
    same(engine, data, cuts=list(range(997, len(data), 997)), content_type=ctype)   # small, odd chunks


def test_synthetic_bodies_same_result(engine, compiled):
    r = same(engine, synth.breach_csv(3000))
    assert r["verdict"] == "trip"                 # the comparison is not vacuous
    same(engine, synth.breach_csv(500), stop_on_trip=True)
    same(engine, synth.benign_web(1 << 20))


def test_real_text_same_result(engine, compiled):
    from bench.engine import real_text
    same(engine, real_text(2 << 20))


LEAKS = [f for f in corpus15.build() if f.expected == "trip"][:12]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzed_chunking_and_mutations(engine, compiled, data):
    f = data.draw(st.sampled_from(LEAKS))
    body = bytearray(f.data[:data.draw(st.integers(2000, 60000))])
    rnd = random.Random(data.draw(st.integers(0, 2**32)))
    for _ in range(data.draw(st.integers(0, 40))):          # mutations: flip, insert, delete, duplicate
        op = rnd.randrange(4)
        at = rnd.randrange(len(body) + 1)
        if op == 0 and at < len(body):
            body[at] = rnd.choice(b"0123456789-/, \n\t\"{}[]<>:;|@.aZ")
        elif op == 1:
            body[at:at] = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 8)))
        elif op == 2:
            del body[at:at + rnd.randrange(1, 30)]
        else:
            body[at:at] = body[max(0, at - 200):at]
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=12))
    same(engine, bytes(body), cuts=cuts, content_type=f.content_type)


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=0, max_size=5000), st.lists(st.integers(0, 5000), max_size=8))
def test_fuzzed_random_bytes(engine, compiled, blob, cuts):
    same(engine, blob, cuts=[c for c in cuts if c <= len(blob)])


def test_scans_from_other_threads(engine, compiled):
    """Successive chunks of one scanner from different threads (one call at a time): each thread
    uses its own libhs scratch; the result is the one-thread result."""
    from concurrent.futures import ThreadPoolExecutor

    data = synth.breach_csv(1500)
    want = same(engine, data)
    body = BodyScan(engine, Policy(), key=KEY, exchange=Exchange())
    with ThreadPoolExecutor(4) as pool:
        for k, i in enumerate(range(0, len(data), 8192)):
            pool.submit(body.write, data[i:i + 8192]).result()
        r = pool.submit(body.finish).result()
    got = r.to_json()
    got.pop("seconds")
    assert got == want


def test_validator_twins_agree():
    """Every C twin against its Python validator, on values shaped like its matches and on noise."""
    require_built(core._hscore, "sensor.detect._hscore")
    from sensor.detect import validators as V
    rnd = random.Random(19)
    cands = [b"078-05-1120", b"123-45-6789", b"666-12-3456", b"4111 1111 1111 1111", b"5555555555554444",
             b"user@example.com", b"a@mail.EXAMPLE.org", b"x@test", b"(212) 555-0123", b"1-212-555-0199"]
    for _ in range(4000):
        n = rnd.randrange(1, 24)
        cands.append(bytes(rnd.choice(b"0123456789- ") for _ in range(n)))
        cands.append(b"%d%s" % (rnd.randrange(10**18), rnd.choice([b"", b"-", b" "])))
        cands.append(b"ab@" + bytes(rnd.choice(b"abcdeEXAMPLtos.") for _ in range(rnd.randrange(0, 16))))
        # dates: the shapes the DOB patterns match, out-of-calendar ones, and separator noise
        y, m, d = rnd.randrange(1850, 2100), rnd.randrange(0, 14), rnd.randrange(0, 33)
        sep = rnd.choice([b"/", b"-", b".", b" ", b", ", b"/ "])
        cands += [b"%02d%s%02d%s%04d" % (m, sep, d, sep, y), b"%04d-%02d-%02d" % (y, m, d),
                  b"%04d%02d%02d" % (y, m, d), b"%d/%d/%d" % (m, d, y % 100),
                  bytes(rnd.choice(b"0123456789/-., \tJanMrch") for _ in range(rnd.randrange(0, 14)))]
    cands += [b"02/29/2000", b"02/29/1900", b"02/29/2004", b"00010101", b"99991231", b"1_9/01/1990",
              b"%d/1/1990" % 10**30, b"\xc2\xa014/03/1975", b"March 14, 1975", b"14 Mar 1975"]

    def outcome(fn, v):
        try:
            return fn(v)
        except Exception as e:          # noqa: BLE001 - the reference may raise (dob: OverflowError)
            return type(e)

    for name in core._hscore.TWINS:
        for v in cands:
            assert outcome(lambda x: core._hscore.check(name, x), v) == outcome(V.REGISTRY[name], v), (name, len(v))


def test_forced_python_is_warned_once_and_exported(monkeypatch, caplog, compiled):
    """DLP_SENSOR_PYTHON_CORE=1 selects the Python reference: one warning, the gauge at 0 with the reason."""
    from prometheus_client import generate_latest

    from sensor.detect.engine import Engine
    from sensor.detect.pack import load_pack
    from sensor.metrics import Metrics

    monkeypatch.setenv(core.ENV_FORCE_PYTHON, "1")
    monkeypatch.setattr(core, "_warned", set())
    try:
        with caplog.at_level("WARNING", logger="dlp.core"):
            engines = [Engine(load_pack()) for _ in range(2)]
            assert all(core.core_for(e) is None for e in engines)
        assert core.status() == "forced-python"
        assert len([r for r in caplog.records if "compiled scanning core not in use" in r.message]) == 1
        text = generate_latest(Metrics().registry).decode()
        assert 'dlp_sensor_compiled_core{reason="forced-python"} 0.0' in text
    finally:
        core._set_status("compiled")           # the session's engine still runs the compiled core


def test_header_columns_beyond_the_c_table_same_result(engine, compiled):
    """A CSV whose header names columns past the compiled loop's C column table (64 columns) and
    before it: column context from the table where it covers the header, from the dict where not."""
    rows = synth.breach_csv(400).split(b"\n")
    head, body = rows[0], [r for r in rows[1:] if r]
    pad = b",".join(b"c%d" % k for k in range(60))
    wide = [pad + b"," + head] + [b",".join(b"%d" % k for k in range(60)) + b"," + r for r in body]
    r = same(engine, b"\n".join(wide) + b"\n")
    assert r["verdict"] == "trip"
    same(engine, b"\n".join(rows) + b"\n", cuts=list(range(211, 40000, 211)))
