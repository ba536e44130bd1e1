"""Value starts from libhs (block-mode SOM_LEFTMOST databases, sensor/detect/_hscore.pyx) against
``re``: wherever the compiled core takes a start from libhs, it is the start ``rx.search(buf, lo, e)``
returns (and "no match" where it returns None), at every end offset of random and leak-like bytes.
``value_start`` answers -2 where the core leaves the search to ``re``; that must stay rare on rows
of values. Distinct counting in C (``Distinct``) answers as DistinctCounter does.
"""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings, strategies as st

from sensor import synth
from sensor.detect import core
from sensor.detect.distinct import DistinctCounter
from tests.conftest import require_built


@pytest.fixture(scope="module")
def info(engine):
    require_built(core._hscore, "sensor.detect._hscore")
    c = core.core_for(engine)
    assert c is not None
    return c.info


def _som_patterns(engine, info):
    ks = [k for k, p in enumerate(engine.patterns) if p.width <= 0 and p.rx is not None]
    got = [k for k in ks if core._hscore.value_start(info, k, b"x", 0, 1) != -2]
    assert got, "no value regex takes its start from libhs"
    return got


def _check(engine, info, ks, buf: bytes, lo_of) -> int:
    asked_re = 0
    for k in ks:
        p = engine.patterns[k]
        for e in range(1, len(buf) + 1):
            lo = lo_of(p, buf, e)
            s = core._hscore.value_start(info, k, buf, lo, e)
            if s == -2:
                asked_re += 1
                continue
            m = p.rx.search(buf, lo, e)
            assert (m.start() if m else -1) == s, (k, lo, e)
    return asked_re


def _lo_window(p, buf, e):
    return e - p.maxw if e > p.maxw else 0


def _lo_field(p, buf, e):
    lo = _lo_window(p, buf, e)
    return max(lo, buf.rfind(b",", lo, e) + 1, buf.rfind(b" ", lo, e) + 1)


@pytest.fixture(params=[0, 1, 2], ids=["adaptive", "word-starts", "window"])
def strategy(request):
    """Both exact ways to find a word-start regex's start, and the timed choice between them."""
    core._hscore._set_start_strategy(request.param)
    yield request.param
    core._hscore._set_start_strategy(0)


def test_starts_on_leak_rows_are_re_starts(engine, info, strategy):
    ks = _som_patterns(engine, info)
    data = synth.breach_csv(40)
    asked = _check(engine, info, ks, data[:3000], _lo_window) + _check(engine, info, ks, data[:3000], _lo_field)
    assert asked < len(ks) * 6000 // 10                       # libhs answers the great majority
    assert info.word_start_patterns >= 4                     # names, street, city: by word starts


EMAILISH = b"ab._%+-@@..xyZ09 <>,;:\n"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(list(EMAILISH)), min_size=1, max_size=120), st.integers(0, 2**32))
def test_email_starts_by_word_boundaries_are_re_starts(engine, info, chars, seed):
    """The email pattern has no leftmost-start database (libhs: "too large"): its starts come from
    the word boundaries, a boundary after a word byte through the database that takes that byte
    first. Emails with junk around them and random email-ish bytes, at every end offset."""
    rnd = random.Random(seed)
    buf = bytes(chars)
    for v in (b"john.doe@example.com", b"-x@y.org", b"a..b@c.de", b"_@a.io", b"%a@b.co", b".+@x.info"):
        at = rnd.randrange(len(buf) + 1)
        buf = buf[:at] + v + buf[at:]
    ks = [k for k, p in enumerate(engine.patterns) if p.rx is not None and b"@" in p.rx.pattern
          and core._hscore.value_start(info, k, b"x", 0, 1) != -2]
    assert ks, "the email pattern takes its start from libhs"
    _check(engine, info, ks, buf, _lo_window if rnd.random() < 0.5 else _lo_field)


def test_leading_group_require_is_res(engine, info):
    """``m.group(g).upper() in words`` from the group's byte table (no ``re``) wherever a match
    starts, on leak rows, names in several shapes and fuzzed bytes."""
    rnd = random.Random(5)
    names = [b"SMITH,JOHN", b"Smith, John", b"JOHN SMITH", b"John Q. Smith", b"O'NEIL,MARY", b"de la Cruz, Ana",
             b"MARY-ANN JONES", b"ZZQX,QQQ", b"Zzqx, Qqq", b"A" * 80 + b",BOB"]
    bufs = [synth.breach_csv(30), b" ; ".join(names)]
    for _ in range(40):
        bufs.append(bytes(rnd.choice(ALPHABET + b"JOHNSMITHMARY") for _ in range(rnd.randrange(1, 60))))
    ks = [k for k, p in enumerate(engine.patterns) if p.require and core._hscore._lead_group_ok(info, k, b"x", 0, 1)
          is not None]
    assert ks, "no require takes the leading-group table"
    checked = 0
    for k in ks:
        p = engine.patterns[k]
        for buf in bufs:
            for e in range(1, len(buf) + 1):
                m = p.rx.search(buf, max(0, e - p.maxw), e)
                if m is None:
                    continue
                want = all(m.group(g).upper() in w for g, w in p.require)
                assert core._hscore._lead_group_ok(info, k, buf, m.start(), e) == want, (k, buf[m.start():e])
                checked += 1
    assert checked > 100


@pytest.mark.parametrize("pattern,flags,lead", [
    (rb"(?:\b(?P<g>[A-Z]{2,5}) [A-Z]+)\Z", 0, True),
    (rb"(?:\b(?P<g>[A-Z]{2,5})[A-Z ]+)\Z", 0, False),            # the next byte may be the group's
    (rb"(?:\b(?P<g>[A-Z]{2,5}) ?[A-Z]+)\Z", 0, False),           # the next element is optional
    (rb"(?:\b(?P<g>[a-z]{2,5})A)\Z", 2, False),                  # IGNORECASE: A is a group byte
    (rb"(?:\b(?P<g>\w+)-x)\Z", 0, True),
    (rb"(?:\b(?P<g>[^ ]+) x)\Z", 0, False),                      # a negated class: not handled
    (rb"(?:x|\b(?P<g>[A-Z]+) x)\Z", 0, False),                   # alternation at the top
    (rb"(?:\bA(?P<g>[A-Z]+) x)\Z", 0, False),                    # the group is not the first element
])
def test_leading_group_analysis(pattern, flags, lead, info):
    import re
    assert (core._hscore._lead_group(re.compile(pattern, flags), "g") is not None) == lead


ALPHABET = b"AaBbZz019 ,.-'\t\n@_&\xc2\xa7JanSTCA"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(list(ALPHABET)), min_size=1, max_size=90), st.integers(0, 2**32))
def test_starts_on_fuzzed_bytes_are_re_starts(engine, info, chars, seed):
    rnd = random.Random(seed)
    buf = bytes(chars)
    if rnd.random() < 0.5:                                 # splice a real row in
        row = synth.breach_csv(2).split(b"\n")[1 + rnd.randrange(2)]
        at = rnd.randrange(len(buf) + 1)
        buf = buf[:at] + row + buf[at:]
    ks = _som_patterns(engine, info)
    _check(engine, info, ks, buf, _lo_window if rnd.random() < 0.5 else _lo_field)


def test_distinct_answers_as_distinct_counter(info):
    rnd = random.Random(7)
    hs = [rnd.getrandbits(64) - (1 << 63) for _ in range(3000)] + [0, 0, -2, 5, 5]
    hs += hs[:500]
    a, b = core._hscore.Distinct(2000), DistinctCounter(2000)
    for h in hs:
        assert a.add(h) == b.add(h)
        assert len(a) == len(b) and bool(a) == bool(b) and a.approximate == b.approximate
    assert a.approximate and a.exact is None
    small = core._hscore.Distinct(10)
    assert not small and len(small) == 0 and 0 not in small
    assert small.add(0) and not small.add(0) and 0 in small and small.exact == {0}


def test_reused_distinct_tables_start_empty(info):
    """Freed tables of 64 KiB and more are kept for the next counters (a page fault per 4 KiB
    saved on dense data): a counter built on a reused table counts from zero, as a fresh one."""
    rnd = random.Random(3)
    for _ in range(3):
        big = [core._hscore.Distinct(1 << 20) for _ in range(3)]
        for d in big:
            for _ in range(40_000):
                d.add(rnd.getrandbits(63) + 1)
        assert core._hscore.pool_held() <= 8 << 20
        kept = [rnd.getrandbits(63) + 1 for _ in range(20_000)]
        del big                                       # their tables go to the pool
        a, b = core._hscore.Distinct(1 << 20), DistinctCounter(1 << 20)
        for h in kept + kept[:5000]:
            assert a.add(h) == b.add(h)
        assert len(a) == len(b) == len(set(kept))
        assert all(h in a for h in kept[:100]) and not any(rnd.getrandbits(63) + 1 in a for _ in range(100))


def _ssns(n: int, rnd: random.Random) -> list[bytes]:
    out = []
    while len(out) < n:
        a, g, s = rnd.randrange(1, 600), rnd.randrange(1, 99), rnd.randrange(1, 9999)
        out.append(b"%03d-%02d-%04d" % (a, g, s))
    return out


@pytest.mark.parametrize("n", [2, 5, 80])
def test_estimated_records_same_as_reference(engine, info, n):
    """A line of plain text with many strong identifiers beside a date of birth: the estimate (one
    person per distinct identifier, ESTIMATE_MIN_IDS or more) is computed in C arrays, or past 64
    strong values of a record with the reference's dict; both give the reference's result."""
    from tests.test_core_diff import same

    rnd = random.Random(n)
    line = b"Employee roster export. DOB 03/14/1975 " + b" ".join(
        b"SSN: " + v for v in _ssns(n, rnd) + _ssns(2, random.Random(1)))
    body = b"plain notes\n" + line + b"\nnext line SSN 078-05-1120 born 01/02/1980\n"
    r = same(engine, body * 3)
    if n >= 5:
        assert any(x.startswith("records-estimated:") for x in r["notes"]), r


def test_record_identity_hash_is_pythons(info):
    """The compiled record identity: hash(tuple(sorted(value hashes))) computed without objects."""
    rnd = random.Random(11)
    edge = [0, 1, -1, -2, 2**61 - 2, 2**61 - 1, 2**61, -(2**61 - 1), -(2**61), 2**63 - 1, -(2**63), -(2**63) + 1,
            2 * (2**61 - 1), 4 * (2**61 - 1), 4 * (2**61 - 1) - 1, 4 * (2**61 - 1) + 1, 2**62, -(2**62),
            -4 * (2**61 - 1), 2**63 - 2]                 # int_hash's reduction without a division
    cases = [[], [0], [-1], edge, edge[::-1]]
    for _ in range(3000):
        n = rnd.randrange(1, 12)
        cases.append([rnd.choice(edge) if rnd.random() < 0.1 else hash(rnd.randbytes(rnd.randrange(0, 9)))
                      for _ in range(n)])
    for hs in cases:
        assert core._hscore.tuple_hash_of_sorted(list(hs)) == hash(tuple(sorted(hs))), hs


def test_word_set_answers_as_frozenset(engine, info):
    """The require word sets as C tables: membership as the frozenset's, long words included."""
    rnd = random.Random(3)
    sets = {id(w): w for p in engine.patterns for _, w in (p.require or ())}
    extra = frozenset([b"", b"A", b"X" * 23, b"Y" * 24, b"Z" * 90, b"\xc3\x89MILE", b"O'NEIL", b"MARY-ANN",
                       # the 8-byte keys (a short word is its own zero-padded key): NULs, the edges
                       b"AB\x00", b"\x00", b"\x00AB", b"ABCDEFGH", b"ABCDEFGHI", b"ABCDEFG\x00", b"\xff" * 8])
    for words in list(sets.values()) + [extra, frozenset()]:
        ws = core._hscore.WordSet(words)
        probes = list(words)[:500] + list(extra)
        probes += [bytes(rnd.choice(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ'-") for _ in range(rnd.randrange(0, 30)))
                   for _ in range(2000)]
        probes += [w[:-1] for w in list(words)[:200] if w] + [w + b"S" for w in list(words)[:200]]
        probes += [b"AB", b"AB\x00\x00", b"\x00\x00", b"ABCDEFG", b"\xff" * 7, b"\xff" * 9]
        for v in probes:
            assert (v in ws) == (v in words), v
    with pytest.raises(TypeError):
        core._hscore.WordSet(frozenset(["text"]))


@pytest.mark.parametrize("pattern,flags,first", [
    (rb"(?:\b[A-Z][a-z]+ x)\Z", 0, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    (rb"(?:\b[A-Z][a-z]+ x)\Z", 2, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"),
    (rb"(?:\b(?:x|\d{2})y)\Z", 0, b"x0123456789"),
    (rb"(?:\b(?P<g>[.-]{1,3})@)\Z", 0, b".-"),
    (rb"(?:\b[a-z]?b)\Z", 0, None),                                  # optional first element: any byte
    (rb"(?:a\b[a-z])\Z", 0, None),                                   # no leading \b
])
def test_first_bytes_of_a_boundary_regex(pattern, flags, first, info):
    """Word starts whose byte cannot begin a match are not tried: the table of first bytes."""
    import re
    got = core._hscore._first_bytes(re.compile(pattern, flags))
    want = bytes(1 if first is None or c in first else 0 for c in range(256))
    assert got == want


PLACEISH = b"AaBbCcKkSsOoNnYyZz 0123456789 ,,,\t_-.\n'"
PLACES = [b"LOS ANGELES,CA,93015", b"Kansas City, MO 64101", b"Salt Lake City UT, 84101", b"Oak\tCA\t90210",
          b"New York, NY, 10001", b"SAN LUIS OBISPO, CA 93401", b"X_Oak Park, IL 60301", b"9Reno,NV,89501",
          b"A" * 21 + b" Bend, OR 97701", b"Abcdefghijklmnopqrstu, WA 98001", b"AB CD EF GH, ZZ 12345",
          b"Boise,,ID 83701", b"Boise , ID 83701", b"Boise  ID 83701", b"Mc Allen TX  78501", b"El Paso,TX,7990"]
NAMES = [b"JOHN Q SMITH", b"JOHN Q. SMITH", b"MARY O'NEIL", b"AB C-SMITH", b"X JOHN SMITH", b"John Smith",
         b"John Q. Smith", b"Mary O'Neil-Jones", b"9John Smith", b"J Smith", b"SMITH,JOHN", b"O'NEIL, MARY",
         b"SMITH\tJOHN", b"D'ARCY-O'NEIL,ANN", b"Smith, John", b"O'Neil, Mary", b"Smith,John", b"_SMITH,JOHN",
         b"A" * 21 + b",BOB", b"Abcdefghijklmnopqrst, Bob", b"Jo Ab", b"JOHN  SMITH", b"Ann Q  Smith"]
STREETS = [b"22448 S MAIN CT", b"1234 W MAIN ST", b"55 Elm Street", b"901 N. Maple Ave", b"77 21st Street",
           b"7 North Elm Oak Pine Way", b"7 NORTH ELM OAK PINE RD", b"7 North Elm Oak Pine Birch Way", b"1 N St St",
           b"1234567 MAIN ST", b"x123 MAIN ST", b"-123 MAIN ST", b"12 E  MAIN ST", b"12 Main  St", b"12 MAIN STREETS",
           b"12 3rd 4TH 5Th Ave", b"123456 " + b"A" * 20 + b" ST", b"1 " + b"Ab" * 11 + b" Rd", b"9 N 10th ST ST",
           b"12 W. West Hwy", b"5 SOUTH 1ST AVE", b"4 Ln Ln Ln Ln", b"_12 OAK DR", b"12 OAK DR ST"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(list(PLACEISH)), min_size=0, max_size=80), st.integers(0, 2**32))
def test_closed_form_starts_are_re_starts(engine, info, chars, seed):
    """Emails, city/state/ZIP places, street addresses and the four name shapes take their start from
    a closed form in C (email_start, place_start, street_start, name_start), never from ``re``: the same start as ``rx.search(buf, lo, e)`` at every end offset,
    on real and near-miss values spliced into random bytes."""
    rnd = random.Random(seed)
    buf = bytes(chars)
    for v in rnd.sample(PLACES, 3) + rnd.sample(NAMES, 4) + rnd.sample(STREETS, 4) + [b"john.doe@example.com", b"a@b.c.d.e.f.gh", b"x@" + b"a" * 64 + b".com"]:
        at = rnd.randrange(len(buf) + 1)
        buf = buf[:at] + v + buf[at:]
    ks = [k for k, p in enumerate(engine.patterns) if p.rx is not None
          and p.rx.pattern in (core._hscore.EMAIL_VALUE_RX, core._hscore.PLACE_VALUE_RX, core._hscore.STREET_VALUE_RX)
          + core._hscore.NAME_VALUE_RX]
    assert len({engine.patterns[k].rx.pattern for k in ks}) == 7, "the pack's value regexes are the closed forms'"
    assert _check(engine, info, ks, buf, _lo_window) == 0
    assert _check(engine, info, ks, buf, _lo_field) == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.sampled_from([b",", b"\t", b";", b"|", b"\x00", b"\xff"]),
       st.integers(-4, 90), st.integers(-4, 90))
def test_column_count_scan_is_pythons(info, buf, delim, lo, hi):
    """The CSV column count reads 8 bytes a step: as ``bytes.find``/``bytes.count`` for every span,
    quote anywhere, delimiter bytes with the top bit set or zero."""
    a, b = max(0, min(lo, len(buf))), max(0, min(hi, len(buf)))
    want = (-1 if buf.find(b'"', a, b) >= 0 else buf.count(delim, a, b)) if a < b else 0
    assert core._hscore._count_unquoted(buf, delim, lo, hi) == want
    dense = (buf + delim * 9 + b"x" * 7) * 3            # long runs of delimiters, no quote
    assert core._hscore._count_unquoted(dense, delim, 0, len(dense)) == (
        -1 if b'"' in dense else dense.count(delim))


STREETISH = b"0123456789 NSEWnsewStRrdDhHTAaLl.Oo_-,\tx"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list(STREETISH)), min_size=0, max_size=60), st.integers(0, 2**32))
def test_street_starts_are_re_starts(engine, info, chars, seed):
    """street_start against ``re`` at every end offset: street-like bytes (digits, directions,
    ordinals, suffix letters, single and double spaces) with real and near-miss addresses spliced in,
    the search bounded by the window and by the field."""
    rnd = random.Random(seed)
    buf = bytes(chars)
    for v in rnd.sample(STREETS, 3):
        at = rnd.randrange(len(buf) + 1)
        buf = buf[:at] + v + buf[at:]
    ks = [k for k, p in enumerate(engine.patterns) if p.rx is not None and p.rx.pattern == core._hscore.STREET_VALUE_RX]
    assert ks, "the pack's street regex is the closed form's"
    assert _check(engine, info, ks, buf, _lo_window) == 0
    assert _check(engine, info, ks, buf, _lo_field) == 0
    assert _check(engine, info, ks, buf, lambda p, b, e: rnd.randrange(e + 1)) == 0
