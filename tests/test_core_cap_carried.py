"""A record left open at a chunk's end is finished in the next call, with entries that came from the
earlier chunk's hits. Its adds must not cross DISTINCT_CAP on the GIL-free path: there the switch to
the sketch (or an add to it) would run Python without the GIL (a segfault before the fix)."""
from tests.test_core_diff import compiled, same  # noqa: F401


def ssn(i: int) -> str:
    return f"{101 + i // 8000:03d}-22-{1000 + i % 8000:04d}"


def test_a_carried_record_crossing_the_cap_gives_the_reference_result(engine, compiled, monkeypatch):
    from sensor.detect import scanner as scanner_mod
    monkeypatch.setattr(scanner_mod, "DISTINCT_CAP", 8)
    head = b"hello world, nothing here\n" * 400
    open_line = ("ssn " + " ".join(ssn(i) for i in range(10))).encode()   # 10 values, no LF: carried
    rest = f"\nssn {ssn(10)}\nssn {ssn(11)}\nssn {ssn(12)}\n".encode()
    r = same(engine, head + open_line + rest, cuts=[len(head), len(head) + len(open_line)])
    assert any(n.startswith("approximate:") for n in r["notes"])


def test_a_carried_record_just_below_the_cap_gives_the_reference_result(engine, compiled, monkeypatch):
    """The table is a few values below its cap when the carried record's adds arrive (the window the
    bound on the GIL-free adds missed)."""
    from sensor.detect import scanner as scanner_mod
    monkeypatch.setattr(scanner_mod, "DISTINCT_CAP", 200)
    first = "".join(f"ssn {ssn(i)}\n" for i in range(198)).encode()
    open_line = ("ssn " + " ".join(ssn(198 + i) for i in range(8))).encode()
    rest = f"\nssn {ssn(206)}".encode()
    r = same(engine, first + open_line + rest, cuts=[len(first), len(first) + len(open_line)])
    assert any(n.startswith("approximate:") for n in r["notes"])
