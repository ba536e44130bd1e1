"""Robustness of the compiled scanning core (sensor/detect/_hscore.pyx), beyond result equality.

tests/test_core_diff.py holds the compiled loop to the Python reference on ordinary inputs; here:
per-thread scratch freed when a thread exits, a failing end-of-part close handled exactly as the
reference handles it, misuse (two calls in one part at once) refused instead of corrupting memory,
bad inputs (huge lines, NULs, invalid UTF-8, empty chunks, a million matches in one chunk), a pack
reload while old scanners still run, and many scanners moved between threads of a pool.
"""
from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor

import hyperscan as hs
import pytest

from sensor import synth
from sensor.detect import core
from sensor.detect.policy import Policy
from sensor.detect.preamble import HOLD_LINES
from sensor.pipeline import BodyScan, Exchange
from tests.conftest import KEY, require_built
from tests.test_core_diff import _scan, compiled, same  # noqa: F401  (compiled: a fixture)


def _json(r) -> dict:
    out = r.to_json()
    out.pop("seconds")
    return out


def test_thread_scratch_is_freed_when_the_thread_exits(compiled):
    """A worker pool that replaces its threads must not leak one libhs scratch per thread."""
    H = core._hscore
    before = H.live_scratches()
    for _ in range(40):
        assert H._scratch_in_native_thread(compiled.main) == 0
        if compiled.gated is not None:
            assert H._scratch_in_native_thread(compiled.gated) == 0
    assert H.live_scratches() == before
    # the count is live: a Python thread that scanned holds one scratch while it runs
    import threading
    scanned, done = threading.Event(), threading.Event()

    def worker():
        ps = compiled.part()
        ps.scan(b"ssn 078-05-1120\n")
        ps.close()
        scanned.set()
        done.wait()

    t = threading.Thread(target=worker)
    t.start()
    scanned.wait()
    assert H.live_scratches() == before + 1
    done.set()
    t.join()


class _FailingClose:
    """The reference's hs.Stream, whose close() frees the stream and then raises (a libhs error)."""

    def __init__(self, stream):
        self.stream = stream

    def scan(self, *a, **kw):
        return self.stream.scan(*a, **kw)

    def close(self, **kw):
        self.stream.close()
        raise hs.error("injected close failure")


@pytest.mark.parametrize("tail", [b"\n", b""])
def test_failing_close_is_handled_as_the_reference_does(engine, compiled, tail):
    """A libhs error at end of part does not escape the scanner, on both paths, and both keep the
    same result (the matches reported before the error, none after it)."""
    data = synth.breach_csv(300).rstrip(b"\n") + tail
    results = []
    for use_core in (True, False):
        saved = engine.__dict__["_core"]
        if not use_core:
            engine.__dict__["_core"] = None
        try:
            body = BodyScan(engine, Policy(), key=KEY, exchange=Exchange())
            for i in range(0, len(data), 4096):
                body.write(data[i:i + 4096])
            if use_core:
                core._hscore._fail_next_close(-1)          # HS_INVALID from the next close
            else:
                body.scanner._stream = _FailingClose(body.scanner._stream)
            results.append(_json(body.finish()))
        finally:
            engine.__dict__["_core"] = saved
            core._hscore._fail_next_close(0)
    assert results[0] == results[1]
    assert results[0]["verdict"] == "trip"


def test_close_error_keeps_streams_freed_and_raises(compiled):
    ps = compiled.part()
    ps.scan(b"ssn 078-05-1120 and more")
    core._hscore._fail_next_close(-1)
    with pytest.raises(core._hscore.CoreError) as e:
        ps.close()
    assert "078" not in str(e.value)
    assert ps.nhits == 0
    with pytest.raises(core._hscore.CoreError):
        ps.scan(b"after close")                         # refused, not a use of a freed stream
    assert ps.close() == 0                              # idempotent


def test_two_calls_in_one_part_at_once_are_refused(engine, compiled):
    """A scan of a part while the same part's hits are being walked (the Python the walk calls can
    let another thread run) raises instead of moving the hits array under the walk."""
    data = synth.breach_csv(400)
    want = same(engine, data)
    body = BodyScan(engine, Policy(), key=KEY, exchange=Exchange())
    sc = body.scanner
    seen: list[BaseException | None] = []
    sample = sc._sample

    def reentrant_sample(si, raw):
        try:
            sc._stream.scan(b"4111 1111 1111 1111\n" * 5000)
            seen.append(None)
        except core._hscore.CoreError as e:
            seen.append(e)
        return sample(si, raw)

    sc._sample = reentrant_sample
    for i in range(0, len(data), 8192):
        body.write(data[i:i + 8192])
    got = _json(body.finish())
    assert seen and all(isinstance(e, core._hscore.CoreError) for e in seen)
    assert got == want                                  # the refused calls changed nothing


def test_a_chunk_is_scanned_in_slices_with_the_same_hits(compiled):
    """A chunk longer than one libhs call takes (4 GiB: an unsigned int) goes in slices; the hits are
    those of one call (the slice size is lowered here to make it testable)."""
    data = synth.breach_csv(300)
    one = compiled.part()
    one.scan(data)
    want = one.hits_list()
    core._hscore._set_max_call(7)
    try:
        sliced = compiled.part()
        sliced.scan(data)
        got = sliced.hits_list()
    finally:
        core._hscore._set_max_call(0)
    assert got == want and len(want) > 100


def test_typed_arguments_refuse_none(compiled):
    ps = compiled.part()
    for call in (lambda: ps.scan(None), lambda: ps.scan_gate(None), lambda: core._hscore.load_stream(None),
                 lambda: core._hscore.PartScan(None, None, 3)):
        with pytest.raises(TypeError):
            call()
    if compiled.gated is None:
        with pytest.raises(core._hscore.CoreError):
            ps.open_gate(0)
    else:
        ps.open_gate(0)
        with pytest.raises(core._hscore.CoreError):
            ps.open_gate(0)                             # a second gated stream would leak the first


def test_bytearray_and_memoryview_chunks(engine, compiled):
    """ExchangeScanner.feed takes any bytes-like chunk, on both paths, with the result of bytes (the
    reference used to raise on a bytearray holding a value; the core refused any non-bytes)."""
    from sensor.detect.scanner import ExchangeScanner

    data = synth.breach_csv(200)
    results = {}
    for kind in (bytes, bytearray, memoryview):
        for use_core in (True, False):
            saved = engine.__dict__["_core"]
            if not use_core:
                engine.__dict__["_core"] = None
            try:
                sc = ExchangeScanner(engine, Policy(), key=KEY)
                for i in range(0, len(data), 5000):
                    sc.feed(kind(data[i:i + 5000]))
                results[kind.__name__, use_core] = _json(sc.finish())
            finally:
                engine.__dict__["_core"] = saved
    want = results["bytes", False]
    assert want["verdict"] == "trip"
    assert all(r == want for r in results.values())


def test_hits_array_shrinks_after_a_dense_chunk(compiled):
    """One chunk with a million matches grows the hits array; the next chunk gives the memory back."""
    ps = compiled.part()
    n = ps.scan(b"078-05-1120 " * 400_000)
    assert n >= 400_000
    assert ps.capacity >= n
    assert ps.scan(b"nothing here") == 0
    assert ps.capacity <= 1 << 16
    ps.close()


def test_bad_inputs_same_as_reference(engine, compiled):
    """Random bytes, NULs, invalid UTF-8, a huge line, empty chunks: no crash, the reference's result."""
    rnd = random.Random(1919)
    blob = bytes(rnd.randrange(256) for _ in range(300_000))
    same(engine, blob, cuts=[0, 0, 1, 1, 7, 70_000, 70_000])            # zero-length chunks included
    same(engine, b"\x00" * 200_000 + b"ssn 078-05-1120\x00" * 2000)
    same(engine, b"\xff\xfe\xc3(" * 50_000 + "Jos\u00e9 078-05-1120 \ud800".encode("utf-8", "surrogatepass") * 500)
    same(engine, b"a" * (8 << 20), cuts=[1 << 20])                      # one 8 MB line, no newline
    same(engine, (b"name,ssn,card\n" + b"Jane Roe,078-05-1120,4111111111111111," * 100_000))   # one dense line


def test_a_million_matches_in_one_chunk(engine, compiled):
    """A chunk of a million values: no crash, hits memory bounded by the chunk; on a fifth of it,
    the reference's result."""
    rnd = random.Random(7)
    rows = [b"%03d-%02d-%04d,%03d-%02d-%04d" % (rnd.randrange(101, 665), rnd.randrange(10, 99),
                                               rnd.randrange(1000, 9999), rnd.randrange(101, 665),
                                               rnd.randrange(10, 99), rnd.randrange(1000, 9999))
            for _ in range(500_000)]
    data = b"ssn,ssn2\n" + b"\n".join(rows) + b"\n"
    ps = compiled.part()
    assert ps.scan(data) >= 1_000_000                  # the hits of one call
    assert ps.capacity < 4 * ps.nhits
    ps.close()
    r = _scan(engine, data, [], True)[0]
    assert r["verdict"] in ("alert", "trip")
    small = data[:len(data) // 5]
    assert same(engine, small, cuts=[])["verdict"] in ("alert", "trip")


def test_pack_reload_while_old_scanners_run(engine, compiled):
    """A new engine (reload) brings new databases; scanners of the old one keep theirs, in any thread,
    and the old databases' release (which voids every thread's scratch sizing) harms neither."""
    from sensor.detect.engine import Engine
    from sensor.detect.pack import load_pack

    data = synth.breach_csv(600)
    want = same(engine, data)
    old = Engine(load_pack())
    assert core.core_for(old) is not None and core.core_for(old).main is not compiled.main
    olds = [BodyScan(old, Policy(), key=KEY, exchange=Exchange()) for _ in range(3)]
    chunks = [data[i:i + 6000] for i in range(0, len(data), 6000)]
    with ThreadPoolExecutor(3) as pool:
        half = len(chunks) // 2
        for ch in chunks[:half]:
            for b in olds:
                pool.submit(b.write, ch).result()
        new = Engine(load_pack())                      # the reload
        news = [BodyScan(new, Policy(), key=KEY, exchange=Exchange()) for _ in range(3)]
        for ch in chunks:
            for b in news:
                pool.submit(b.write, ch).result()
        for ch in chunks[half:]:
            for b in olds:
                pool.submit(b.write, ch).result()
        got = [_json(pool.submit(b.finish).result()) for b in olds]
        del olds, old                                   # the old databases are freed here
        got += [_json(pool.submit(b.finish).result()) for b in news]
        assert all(g == want for g in got)
        # after the free, new scanners on the new engine in the same threads
        again = [_json(pool.submit(_one, new, data).result()) for _ in range(3)]
        assert all(g == want for g in again)


def _one(engine, data: bytes):
    body = BodyScan(engine, Policy(), key=KEY, exchange=Exchange())
    for i in range(0, len(data), 7000):
        body.write(data[i:i + 7000])
    return body.finish()


def test_many_scanners_moved_between_pool_threads(engine, compiled):
    """8 threads x 48 scanners: every chunk of every scanner from whichever pool thread is free
    (one call at a time per scanner), scanners of different bodies interleaved; each result is the
    one-thread result of its body."""
    bodies = [synth.breach_csv(150), synth.benign_web(60_000), synth.breach_csv(90) + synth.benign_web(20_000)]
    wants = [same(engine, d) for d in bodies]
    scans = [(k % 3, BodyScan(engine, Policy(), key=KEY, exchange=Exchange())) for k in range(48)]
    pos = [0] * len(scans)
    step = 3000
    with ThreadPoolExecutor(8) as pool:
        while True:
            live = [j for j, (b, _) in enumerate(scans) if pos[j] < len(bodies[b])]
            if not live:
                break
            futs = []
            for j in live:                               # one call per scanner per round
                b, body = scans[j]
                futs.append(pool.submit(body.write, bodies[b][pos[j]:pos[j] + step]))
                pos[j] += step
            for f in futs:
                f.result()
        results = list(pool.map(lambda s: _json(s[1].finish()), scans))
    for (b, _), r in zip(scans, results):
        assert r == wants[b]


def test_corrupt_or_truncated_cached_database_is_refused(compiled):
    """A cached database with flipped bits or cut short does not load (libhs checks it): CoreError,
    and core.py compiles again, never a crash."""
    H = core._hscore
    blob = compiled.main.serialize()
    rnd = random.Random(5)
    for _ in range(40):
        b = bytearray(blob)
        for _ in range(rnd.randrange(1, 4)):
            b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
        with pytest.raises(H.CoreError):
            H.load_stream(bytes(b))
    for n in (0, 1, 16, 1000, len(blob) // 2, len(blob) - 1):
        with pytest.raises(H.CoreError):
            H.load_stream(blob[:n])


class _Unserializable:
    def serialize(self) -> bytes:
        raise core._hscore.CoreError("hs_serialize_database failed")


class _Full:
    def serialize(self) -> bytes:
        return b"x" * 100


def test_failing_cache_write_leaves_no_temporary(tmp_path, monkeypatch):
    """Neither a serialization error nor a failed write escapes _store, nor leaves a temporary."""
    require_built(core._hscore, "sensor.detect._hscore")
    path = tmp_path / "c" / "db.hsdb"
    core._store(path, _Unserializable())
    assert not path.exists()

    def full(fd, mode):                       # a full disk: the write fails after mkstemp
        class F:
            def __enter__(self):
                return self

            def __exit__(self, *a):
                os.close(fd)

            def write(self, b):
                raise OSError(28, "No space left on device")
        return F()

    monkeypatch.setattr(core.os, "fdopen", full)
    core._store(path, _Full())
    assert not path.exists()
    assert list(path.parent.iterdir()) == []


def test_unexpected_build_failure_falls_back_to_the_reference(monkeypatch, compiled):
    """Any exception while building an engine's core selects the Python reference (warned, exported),
    it does not make every scanner of that engine fail to start."""
    from sensor.detect.engine import Engine
    from sensor.detect.pack import load_pack

    def boom(engine):
        raise RuntimeError("unexpected")

    monkeypatch.setattr(core, "Core", boom)
    e = Engine(load_pack())
    try:
        assert core.core_for(e) is None
        assert core.status() == "compile-error"
        body = BodyScan(e, Policy(), key=KEY, exchange=Exchange())
        body.write(synth.breach_csv(300))
        assert body.finish().verdict == "trip"
    finally:
        core._set_status("compiled")           # the session's engine still runs the compiled core


def test_a_dense_chunk_is_walked_without_the_gil(engine, compiled):
    """The per-match pass walks a dense chunk's hits without the GIL and takes it once, for the
    batch that finishes the chunk's records (issue 19 point 1): the rows of the breach CSV take no
    rare Python path (no exit), and the result is the reference's."""
    data = synth.breach_csv(2000)                      # ~11,000 matches
    # the header and the first rows (as many lines as the scanner holds to find the table), then the rest
    first = sum(len(ln) + 1 for ln in data.split(b"\n")[:HOLD_LINES])
    r = same(engine, data, cuts=[first])
    assert r["verdict"] == "trip"
    H = core._hscore
    body = BodyScan(engine, Policy(), key=KEY, exchange=Exchange())
    assert body.scanner._core is not None
    body.write(data[:first])                           # header hotwords: GIL-held steps, as designed
    calls, exits, batches = H.pass_counts()
    body.write(data[first:])
    calls2, exits2, batches2 = H.pass_counts()
    assert calls2 - calls >= 1
    assert exits2 - exits == 0                         # no hit of the rows needed Python
    assert batches2 - batches == calls2 - calls        # one GIL-held batch per call
    assert body.finish().verdict == "trip"


def test_records_finished_in_the_walk_keep_the_reference_order(engine, compiled):
    """Records finished without the GIL queue their distinct adds, samples and identities for the
    batch in the reference's order: past the identity cap (RECORD_IDS_CAP = 4096 records) the same
    identities are kept, and the same samples, with chunks cut mid-record."""
    from sensor.detect.scanner import RECORD_IDS_CAP
    data = synth.breach_csv(RECORD_IDS_CAP + 600)
    r = same(engine, data, cuts=list(range(40_000, len(data), 40_000)))
    assert r["records"] > RECORD_IDS_CAP


def test_past_the_distinct_cap_the_batch_keeps_the_reference_order(engine, compiled, monkeypatch):
    """Past DISTINCT_CAP a counter is a sketch whose "new value" answers depend on the order of
    the adds: the walk's adds are then made in the batch with the GIL, in the reference's order
    (not the GIL-free way, which needs every table exact through the call)."""
    from sensor.detect import scanner as scanner_mod
    monkeypatch.setattr(scanner_mod, "DISTINCT_CAP", 700)
    data = synth.breach_csv(2500)
    r = same(engine, data, cuts=list(range(30_000, len(data), 30_000)))
    assert any(n.startswith("approximate:") for n in r["notes"])
