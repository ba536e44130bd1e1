"""Content prints (sensor.enforce.fingerprint.BodyPrint) against a real registry: a refusal by
content needs the tripped body's prefix up to the trip, never only a shared head."""
from __future__ import annotations

import random
import sqlite3

import pytest

from sensor.detect.keys import content_fingerprint
from sensor.enforce.fingerprint import BodyPrint, prefix_print
from sensor.enforce.registry import Registry, split_print

KEY = bytes(range(32))
HEAD = 64 << 10


def _body(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _chunks(body: bytes, rng: random.Random, most: int = 9000) -> list[bytes]:
    out, i = [], 0
    while i < len(body):
        n = rng.choice((1, 2, rng.randint(1, most), rng.randint(1, most), most * 4))
        out.append(body[i:i + n])
        i += n
    return out


def _run(reg: Registry, chunks: list[bytes], size: int = HEAD) -> tuple[int | None, BodyPrint]:
    bp = BodyPrint(KEY, reg, size)
    for c in chunks:
        if (tid := bp.feed(c)) is not None:
            return tid, bp
    return bp.finish(), bp


def _trip_print(reg: Registry, body: bytes, tripped_after: int, resource: str = "site/leak.csv") -> int:
    """Record a trip that happened once ``tripped_after`` bytes had been fed (as a tap would)."""
    bp = BodyPrint(KEY, reg, HEAD)
    bp.feed(body[:tripped_after])
    assert bp.length == tripped_after
    return reg.add(resource, actor="sensor:t", reason="trip", fingerprint=bp.value()).id


@pytest.fixture
def reg(tmp_path):
    r = Registry(tmp_path / "takedowns.db")
    yield r
    r.close()


def test_the_print_is_the_keyed_hash_of_the_prefix_seen(reg):
    body = _body(300_000, 1)
    bp = BodyPrint(KEY, reg, HEAD)
    for c in _chunks(body[:123_457], random.Random(2)):
        bp.feed(c)
    assert bp.value() == prefix_print(KEY, body[:123_457])
    digest, length = split_print(bp.value())
    assert length == 123_457 and len(digest) == 32 and digest != content_fingerprint(KEY, body[:123_457])
    assert BodyPrint(KEY, reg, HEAD).value() is None             # nothing fed: nothing to store


@pytest.mark.parametrize("seed", range(12))
def test_the_tripped_body_matches_under_any_chunking(reg, seed):
    rng = random.Random(seed)
    body = _body(rng.randint(70_000, 400_000), seed)
    tid = _trip_print(reg, body, rng.randint(1, len(body)))
    got, _ = _run(reg, _chunks(body, rng))
    assert got == tid
    longer = body + b"more rows appended later"                 # the same leaked prefix, then more
    assert _run(reg, _chunks(longer, rng))[0] == tid


def test_a_clean_body_sharing_the_head_passes(reg):
    leak = _body(2 << 20, 3)
    tid = _trip_print(reg, leak, 1_500_000)
    clean = leak[:HEAD] + _body(2 << 20, 4)                       # same first 64 KiB, different after
    assert _run(reg, _chunks(clean, random.Random(5)))[0] is None
    clean2 = leak[:1_499_999] + b"\x00" + leak[1_500_000:]       # differs in the last byte before L
    assert _run(reg, _chunks(clean2, random.Random(6)))[0] is None
    assert _run(reg, [leak])[0] == tid


def test_a_body_shorter_than_the_print_passes(reg):
    leak = _body(500_000, 7)
    _trip_print(reg, leak, 200_000)
    assert _run(reg, [leak[:199_999]])[0] is None
    assert _run(reg, _chunks(leak[:100_000], random.Random(8)))[0] is None


def test_a_whole_body_print_matches_at_its_last_byte(reg):
    leak = _body(10_000, 9)                                        # tripped at its end: the whole body
    tid = _trip_print(reg, leak, len(leak))
    bp = BodyPrint(KEY, reg, HEAD)
    assert bp.feed(leak[:5000]) is None
    assert bp.feed(leak[5000:]) == tid                             # before the last chunk would leave
    assert _run(reg, [leak[:-1]])[0] is None


def test_several_prints_at_several_lengths_in_one_chunk(reg):
    a, b = _body(300_000, 10), _body(300_000, 11)
    ta = _trip_print(reg, a, 250_000, "site/a")
    tb = _trip_print(reg, b, 1_000, "site/b")
    assert reg.print_lengths() == (1_000, 250_000)
    assert _run(reg, [a])[0] == ta and _run(reg, [b])[0] == tb
    assert _run(reg, [a[:1000] + b[1000:]])[0] is None


def test_a_print_being_committed_refuses_already(tmp_path):
    import asyncio

    async def main():
        reg = Registry(tmp_path / "t.db")
        leak = _body(100_000, 12)
        bp = BodyPrint(KEY, reg, HEAD)
        bp.feed(leak[:70_000])
        task = reg.add_soon("site/x", actor="a", reason="r", fingerprint=bp.value())
        assert reg.print_lengths() == (70_000,)
        assert _run(reg, [leak])[0] == 0                           # refused before the fsync
        td = await task
        assert _run(reg, [leak])[0] == td.id and td.fingerprint_len == 70_000
        reg.close()
    asyncio.run(main())


def test_lifting_forgets_the_print(reg):
    leak = _body(100_000, 13)
    tid = _trip_print(reg, leak, 90_000)
    reg.lift(tid, actor="bob", reason="false positive")
    assert reg.print_lengths() == () and _run(reg, [leak])[0] is None


def test_head_prints_from_an_older_registry_keep_refusing(tmp_path):
    """A database from before prefix prints: migrated in place, its prints stay head prints."""
    path = tmp_path / "takedowns.db"
    old = sqlite3.connect(path)
    old.executescript("""CREATE TABLE takedowns (id INTEGER PRIMARY KEY AUTOINCREMENT, resource TEXT NOT NULL,
        fingerprint TEXT, created REAL NOT NULL, actor TEXT NOT NULL, reason TEXT NOT NULL, exchange_id TEXT,
        lifted REAL, lifted_by TEXT, lift_reason TEXT);
        CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, action TEXT NOT NULL,
        takedown_id INTEGER, resource TEXT NOT NULL, actor TEXT NOT NULL, reason TEXT NOT NULL);
        CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);""")
    big, small = _body(200_000, 14), _body(5_000, 15)
    for i, b in enumerate((big, small)):
        old.execute("INSERT INTO takedowns(resource, fingerprint, created, actor, reason) VALUES (?,?,?,?,?)",
                    (f"site/{i}", content_fingerprint(KEY, b[:HEAD]), 1.0, "sensor:old", "trip"))
    old.commit()
    old.close()
    path.chmod(0o600)
    reg = Registry(path)
    try:
        assert [t.fingerprint_len for t in reg.list()] == [None, None] and reg.head_prints
        assert _run(reg, _chunks(big, random.Random(16)))[0] == 1
        assert _run(reg, _chunks(small, random.Random(17)))[0] == 2     # shorter than the head: at its end
        assert _run(reg, [big[:HEAD] + b"x" * 10])[0] == 1             # the documented over-block of head prints
        assert _run(reg, [small + b"x"])[0] is None
        new = reg.add("site/new", actor="a", reason="r", fingerprint=f"{HEAD}:{'ab' * 16}")
        assert new.fingerprint_len == HEAD and Registry(path).get(new.id).print == f"{HEAD}:{'ab' * 16}"
    finally:
        reg.close()


def test_memory_stays_constant_whatever_the_body(reg):
    _trip_print(reg, _body(1000, 18), 1000)
    bp = BodyPrint(KEY, reg, HEAD)
    chunk = b"\x01" * (1 << 20)
    for _ in range(64):                                            # 64 MiB through one print
        bp.feed(chunk)
    kept = [k for k, v in vars(bp).items() if isinstance(v, (bytes, bytearray, memoryview)) and k != "key"]
    assert bp.length == 64 << 20 and not kept                     # no bytes of the body are kept


def test_fleet_records_carry_the_print_and_its_length(reg):
    """dlp.takedowns: ``fingerprint`` + ``fingerprint_len``; a record without a length is a head print,
    one with a malformed length drops the print (never a broader match)."""
    from sensor.stream.fleet import _print_of, takedown_record
    from sensor.stream.records import decode
    leak = _body(100_000, 19)
    tid = _trip_print(reg, leak, 80_000)
    [change] = reg.unpublished()
    rec = decode(takedown_record(action="add", resource="site/leak.csv", actor="sensor:t", reason="trip",
                                 origin="a", ts=1.0, fingerprint=change["fingerprint"],
                                 fingerprint_len=change["fingerprint_len"]))
    assert rec["fingerprint_len"] == 80_000 and len(rec["fingerprint"]) == 32
    assert _print_of(rec) == reg.get(tid).print
    joined = decode(takedown_record(action="add", resource="r", actor="a", reason="r", origin="a", ts=1.0,
                                    fingerprint=reg.get(tid).print))
    assert (joined["fingerprint"], joined["fingerprint_len"]) == (rec["fingerprint"], 80_000)
    head = decode(takedown_record(action="add", resource="r", actor="a", reason="r", origin="a", ts=1.0,
                                  fingerprint="ab" * 16))
    assert "fingerprint_len" not in head.header and _print_of(head) == "ab" * 16
    for bad in (-5, "80000", True, 1.5):
        assert _print_of(decode(takedown_record(action="add", resource="r", actor="a", reason="r", origin="a",
                                                ts=1.0, fingerprint="ab" * 16, fingerprint_len=bad))) is None


def test_a_record_only_print_needs_no_registry():
    """The Kafka worker publishes prints without a local registry (None, or a stand-in that answers
    only ``blocked_content``): nothing is looked up, the print is recorded all the same."""
    class StandIn:
        @staticmethod
        def blocked_content(fingerprint: str) -> None:
            return None
    body = _body(200_000, 20)
    for registry in (None, StandIn()):
        bp = BodyPrint(KEY, registry, HEAD)
        for c in _chunks(body, random.Random(21)):
            assert bp.feed(c) is None
        assert bp.finish() is None and bp.value() == prefix_print(KEY, body)
