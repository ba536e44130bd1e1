"""The compiled EDM matcher (sensor/edm/_edmcore.pyx) against the Python reference (sensor/edm/match.py).

Differential: the same canonical bytes as the Python bytes normalisers on fuzzed spellings, the same
keyed hash as :class:`~sensor.edm.indexfile.Hasher`, and the same EDM counts and row ids on the
test roster's records (respelled, mixed with other people's values and noise), at every
``min_fields``, with two indexes, at a small ``ROW_CAP`` and through a real scan. Both matchers read
the same index file built by the real ``dlp-sensor index build``.
"""
from __future__ import annotations

import random

import pytest

from sensor import synth
from sensor.detect.keys import load_key
from sensor.edm import match as M
from sensor.edm.indexfile import Hasher
from sensor.edm.match import EdmMatcher, IndexSpec, load_indexes
from sensor.edm.normalise import bytes_normaliser
from tests.conftest import require_built
from tests.test_edm import _LONG_DIR, _LONG_SUFFIX, _MONTHS, census, index_file, roster, scan, state  # noqa: F401

CODES = {"dl": 0, "address": 1, "name": 2, "dob": 3}


@pytest.fixture(scope="module")
def core():
    return require_built(M._edmcore, "sensor.edm._edmcore")


def _pair(index_file, key, monkeypatch, specs=None):
    """(compiled, reference) index sets over the same files."""
    specs = specs or [IndexSpec(str(index_file))]
    c = load_indexes(specs, key)
    monkeypatch.setenv(M.ENV_FORCE_PYTHON, "1")
    p = load_indexes(specs, key)
    monkeypatch.delenv(M.ENV_FORCE_PYTHON)
    assert not isinstance(c.matcher(), EdmMatcher) and isinstance(p.matcher(), EdmMatcher)
    return c, p


# -- spellings ------------------------------------------------------------------------------------
_NOISE = b"aAzZqQ09 ,.-/'#&\t\n\r\x0b\x0c\x1c\x1f\x00\x7f;:_()"


def _case(rng: random.Random, s: str) -> str:
    return rng.choice([s, s.upper(), s.lower(), s.title()])


def _name(rng: random.Random, r: dict) -> str:
    f, last, mi = r["first_name"], r["last_name"], r.get("middle_initial") or "Q"
    return _case(rng, rng.choice([f"{last}, {f}", f"{f} {last}", f"{f} {mi}. {last}", f"{last},{f} {mi}",
                                  f"  {f}\t{last} ", f"{last.upper()} {f}", f"O'{last} {f}", f"{f}-{last}",
                                  f"{f} {last} Jr.", f"{f} {last} " * 12, f"J{f}\u00e9 {last}"]))


def _address(rng: random.Random, r: dict) -> str:
    a = r["street_address"]
    parts = a.split()
    long_ = " ".join([parts[0]] + [(_LONG_DIR.get(p, p.title()) if i == 0 else p.title()) for i, p in
                                   enumerate(parts[1:-1])] + [_LONG_SUFFIX.get(parts[-1], parts[-1])])
    return _case(rng, rng.choice([a, long_, f"{a}, Apt 5", f"{long_} Unit 2, {r['city']}, {r['state']}",
                                  f" {a}.", a.replace(" ", "  "), f"{parts[0]}-B {' '.join(parts[1:])}",
                                  f"{a} #4", f"{a}\t{r['zip']}", f"{parts[0]} Av of {parts[-1]} Street",
                                  "\u00bd " + a]))


def _date(rng: random.Random, r: dict) -> str:
    m, d, y = (int(x) for x in r["date_of_birth"].split("/"))
    return rng.choice([r["date_of_birth"], f"{y}-{m:02d}-{d:02d}", f"{y}{m:02d}{d:02d}", f"{m}.{d}.{y}",
                       f"{m}-{d}/{y}", f"{y}/{m}/{d}", f"{_MONTHS[m - 1]} {d}, {y}", f"{d} {_MONTHS[m - 1][:3]} {y}",
                       f"{y}-{m:02d}-{d:02d}T00:00:00", f"{m:02d}/{d + 40}/{y}", f"02/29/{y}", f"{y}-13-01",
                       f" {m}/{d}/{y} ", f"{m}/{d}/{y:05d}", f"0000{m:02d}{d:02d}", f"{m}//{y}"])


def _dl(rng: random.Random, r: dict) -> str:
    v = r["driver_license"]
    return rng.choice([v, v.lower(), f"{v[:1]}-{v[1:4]} {v[4:]}", f" {v}.", f"{v}\u00e9", "--"])


SPELL = {"name": _name, "address": _address, "dob": _date, "dl": _dl}


def _random_bytes(rng: random.Random) -> bytes:
    return bytes(rng.choice(_NOISE) for _ in range(rng.randrange(0, 30)))


# -- normalisers and hash ----------------------------------------------------------------------------
def test_c_normalisers_give_the_python_bytes(core, roster):
    """Every spelling the C normalisers accept comes out byte-identical to the Python normaliser;
    the rest (non-ASCII, spelled-out months) is left to Python, and most realistic spellings are not."""
    rng = random.Random(20)
    rows = roster[1]
    for kind, code in CODES.items():
        ref = bytes_normaliser(kind)
        handled = 0
        for i in range(6000):
            raw = _random_bytes(rng) if i % 3 == 0 else SPELL[kind](rng, rng.choice(rows)).encode()
            got = core.normalise_c(code, raw)
            if got is NotImplemented:
                continue
            handled += 1
            assert got == ref(raw), (kind, raw)
        assert handled > 2500, (kind, handled)       # the hot path is the C one


@pytest.mark.parametrize("short", [1, 0], ids=["padded-here", "sha256-final"])
def test_probe_hash_is_the_hasher(core, roster, index_file, state, monkeypatch, short):
    """The keyed hash of every spelling, from the saved chaining states with the padding built by
    the matcher (default; values of 0 to ~120 bytes: one or two inner blocks) or through
    SHA256_Update/Final: the Python Hasher's."""
    key = load_key(None, state)
    core.set_short(short)
    try:
        c, _ = _pair(index_file, key, monkeypatch)
    finally:
        core.set_short(1)
    m, h = c.matcher(), Hasher(key)
    rng = random.Random(3)
    for kind in CODES:
        for _ in range(300):
            raw = SPELL[kind](rng, rng.choice(roster[1])).encode()
            canon = bytes_normaliser(kind)(raw)
            want = (None, None) if canon is None else (canon, h(kind, canon.decode()))
            assert m.probe(0, kind, raw) == want, (kind, raw)
    for n in range(0, 140):                        # every length across the one/two-block and fallback edges
        raw = (b"A1" * 80)[:n]
        canon = bytes_normaliser("dl")(raw)
        want = (None, None) if canon is None else (canon, h("dl", canon.decode()))
        assert m.probe(0, "dl", raw) == want, n


def test_the_filter_holds_every_indexed_hash(core, index_file, state, monkeypatch):
    """No false negatives: every hash of every field passes its filter (so skipping the mapping on a
    rejected value cannot change a result); most random hashes are rejected."""
    c, _ = _pair(index_file, load_key(None, state), monkeypatch)
    m = c.matcher()
    ix = c.indexes[0]
    rng = random.Random(8)
    for kind, fl in ix.file.fields.items():
        hs = list(fl.hashes)
        assert hs and all(m.in_filter(0, kind, h) for h in hs), kind
        fp = sum(m.in_filter(0, kind, rng.getrandbits(64)) for _ in range(4000))
        assert fp < 200, (kind, fp)               # ~1 % expected at 10 bits a hash


# -- records -----------------------------------------------------------------------------------------
def _records(rows: list[dict], n: int, seed: int) -> list[list[tuple[str, bytes]]]:
    """Fields of one person, of another, and of nobody; some kinds twice; respelled."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.choice(rows), rng.choice(rows)
        rec = []
        for kind, spell in SPELL.items():
            for _ in range(rng.choice([0, 1, 1, 1, 2])):
                who = a if rng.random() < 0.6 else b
                raw = spell(rng, who).encode() if rng.random() < 0.9 else _random_bytes(rng)
                rec.append((kind, raw))
        if rng.random() < 0.2:
            rec.append(("ssn", b"123-45-6789"))      # a kind no index holds
        # kinds as fresh string objects now and then (the scanner's are always the same objects)
        rec = [("".join(list(k)) if rng.random() < 0.3 else k, v) for k, v in rec]
        rng.shuffle(rec)
        out.append(rec)
    return out


def _run(edm, records):
    m = edm.matcher()
    hits = [bool(m.record(list(r))) for r in records]
    return m.counts, {k: sorted(v) for k, v in m.rows.items()}, m.total, m.verdict(), hits


@pytest.fixture(params=[(1, 1, 0), (2, 1, 0), (2, 1, 1), (0, 1, 0), (0, 0, 0)],
                ids=["filter-adaptive", "filter-always", "filter-always-pardir", "filter-never",
                     "filter-never-not-lean"])
def filter_mode(core, request):
    """The membership filter used while most values miss (default), always, never; min_fields kinds
    hashed ahead while most values hit (default) or min_fields + 1; directory entries fetched after
    the filter (default) or with it: the same results."""
    core.set_filter(request.param[0])
    core.set_lean(request.param[1])
    core.set_pardir(request.param[2])
    yield request.param
    core.set_filter(1)
    core.set_lean(1)
    core.set_pardir(0)


@pytest.mark.parametrize("need", [1, 2, 3, 4])
def test_same_counts_and_rows_as_the_reference(core, roster, index_file, state, monkeypatch, need, filter_mode):
    key = load_key(None, state)
    c, p = _pair(index_file, key, monkeypatch, [IndexSpec(str(index_file), min_fields=need)])
    records = _records(roster[1], 1500, seed=need)
    cc, cr, ct, cv, ch = _run(c, records)
    pc, pr, pt, pv, ph = _run(p, records)
    assert (cc, cr, ct, cv) == (pc, pr, pt, pv)
    assert 0 < ct < len(records)
    # both batch alike: a match is reported at the call that completed its batch
    assert ch == ph and any(ch)
    # per record too: flushed after each record, each one's own answer
    alone = []
    for rec in records:
        one = p.matcher()
        one.record(list(rec))
        alone.append(one.total > 0)
    assert _flushed_hits(c, records) == alone


def test_flat_hand_over_same_as_pairs(core, roster, index_file, state, monkeypatch):
    """The scanner hands a record flat (kind, raw, kind, raw, ...): both matchers answer as for the
    same values in (kind, raw) pairs, call by call."""
    key = load_key(None, state)
    c, p = _pair(index_file, key, monkeypatch, [IndexSpec(str(index_file), min_fields=2)])
    records = _records(roster[1], 600, seed=11)
    flat = [[x for kv in r for x in kv] for r in records]
    for edm in (c, p):
        want = _run(edm, records)
        assert _run(edm, flat) == want
        assert want[2] > 0


def _flushed_hits(edm, records):
    m = edm.matcher()
    out = []
    for rec in records:
        m.record(list(rec))
        out.append(m.flush())
    return out


def test_two_indexes_and_a_small_row_cap(core, roster, index_file, state, monkeypatch, filter_mode):
    """Two indexes (each its own min_fields); past ROW_CAP the same rows were kept, the same counted."""
    key = load_key(None, state)
    specs = [IndexSpec(str(index_file), name="a", min_fields=2), IndexSpec(str(index_file), name="b", min_fields=3)]
    c, p = _pair(index_file, key, monkeypatch, specs)
    monkeypatch.setattr(M, "ROW_CAP", 40)
    records = _records(roster[1], 1500, seed=11)
    got, want = _run(c, records), _run(p, records)
    assert got[:4] == want[:4]
    assert len(got[1]["a"]) == 40 and got[0]["a"] > 40 and got[0]["b"] > 0


def test_a_scan_gives_the_same_edm_result(core, engine, roster, index_file, state, monkeypatch, filter_mode):
    """Through the scanner: the roster's own people (respelled as a JSON export) and other people."""
    import json
    key = load_key(None, state)
    c, p = _pair(index_file, key, monkeypatch)
    rng = random.Random(5)
    people = [{"name": _name(rng, r), "dob": _date(rng, r), "address": _address(rng, r), "dl": _dl(rng, r)}
              for r in rng.sample(roster[1], 400)]
    bodies = [(roster[0].read_bytes(), "text/csv"), (synth.breach_csv(2000, seed=99), "text/csv"),
              (json.dumps(people).encode(), "application/json")]
    for data, ct in bodies:
        a, b = scan(engine, data, c, content_type=ct), scan(engine, data, p, content_type=ct)
        assert (a.edm_records, a.edm, a.edm_rows) == (b.edm_records, b.edm, b.edm_rows)
    assert scan(engine, bodies[0][0], c).edm_records > 0 and scan(engine, bodies[1][0], c).edm_records == 0


# -- selection ---------------------------------------------------------------------------------------
def test_forced_python_is_warned_once_and_exported(core, index_file, state, monkeypatch, caplog):
    """DLP_SENSOR_PYTHON_EDM=1 selects the reference: one warning, the gauge at 0 with the reason;
    otherwise the gauge says compiled."""
    from prometheus_client import generate_latest

    from sensor.metrics import Metrics

    key = load_key(None, state)
    assert 'dlp_sensor_compiled_edm{reason="compiled"} 1.0' in generate_latest(Metrics().registry).decode()
    monkeypatch.setenv(M.ENV_FORCE_PYTHON, "1")
    monkeypatch.setattr(M, "_warned", False)
    metrics = Metrics()
    with caplog.at_level("WARNING", logger="dlp.edm"):
        for _ in range(2):
            assert isinstance(load_indexes([IndexSpec(str(index_file))], key).matcher(), EdmMatcher)
    assert len([r for r in caplog.records if "compiled EDM matcher not in use" in r.message]) == 1
    assert 'dlp_sensor_compiled_edm{reason="forced-python"} 0.0' in generate_latest(metrics.registry).decode()
    monkeypatch.delenv(M.ENV_FORCE_PYTHON)
    M._announce()                                  # the gauge follows the selection back


def test_close_with_a_matcher_alive(core, index_file, state, roster):
    """Closing the set while a compiled matcher still exists (a scan in flight) neither raises nor
    pulls the mapping from under it: the matcher keeps matching; the mapping goes with it."""
    import gc
    edm = load_indexes([IndexSpec(str(index_file))], load_key(None, state))
    m = edm.matcher()
    edm.close()
    r = roster[1][0]
    m.record([("name", f"{r['first_name']} {r['last_name']}".encode()), ("dl", r["driver_license"].encode())])
    assert m.flush() is True and m.total == 1
    del m
    gc.collect()


def test_queued_values_are_held_then_released(core, roster, index_file, state):
    """A queued record's values are referenced by the matcher until its batch is looked up (the
    caller's list may be dropped or changed), then released: none leaks, none is freed early."""
    import sys
    edm = load_indexes([IndexSpec(str(index_file))], load_key(None, state))
    r = roster[1][0]
    dl, name = r["driver_license"].encode() + b"", f"{r['first_name']} {r['last_name']}".encode()
    base = sys.getrefcount(dl)
    m = edm.matcher()
    vals = [("dl", dl), ("name", name)]
    for _ in range(10):
        m.record(vals)
    vals.clear()                                   # the caller's list changes: the bytes stay held
    assert sys.getrefcount(dl) == base + 10
    assert m.counts == {edm.indexes[0].name: 1}   # one person ten times (reading counts looks the queue up)
    assert sys.getrefcount(dl) == base
    m.record([("dl", dl), ("name", name)])
    del m
    assert sys.getrefcount(dl) == base
