"""The worker's deferred content print gives the print an eager one would, and holds bounded bytes."""
from __future__ import annotations

import os

import pytest

from sensor.enforce.fingerprint import BodyPrint
from sensor.stream.prints import Budget, LazyPrint

KEY = bytes(range(32))
SIZE = 64 << 10


def eager(chunks: list[bytes]) -> str | None:
    p = BodyPrint(KEY, None, SIZE)
    for c in chunks:
        p.feed(c)
    return p.value()


@pytest.mark.parametrize("hold,total", [(1 << 20, 64 << 20),    # all held, hashed at value()
                                        (300, 64 << 20),        # the body passes its hold part way
                                        (1 << 20, 500)])        # the shared budget runs out part way
def test_same_print_as_hashing_as_it_comes(hold: int, total: int) -> None:
    chunks = [os.urandom(n) for n in (100, 150, 1, 400, 7, 2000)]
    budget = Budget(total)
    lazy = LazyPrint(KEY, SIZE, budget, hold=hold)
    for i, c in enumerate(chunks, 1):
        lazy.feed(c)
        assert budget.held <= min(hold, total)
        assert lazy.value() == eager(chunks[:i])      # a trip after any chunk: the print of the bytes so far
    lazy.close()
    assert budget.held == 0


def test_close_releases_and_stops_hashing() -> None:
    budget = Budget()
    a, b = LazyPrint(KEY, SIZE, budget), LazyPrint(KEY, SIZE, budget)
    a.feed(b"x" * 1000)
    b.feed(b"y" * 500)
    assert budget.held == 1500
    a.close()                               # an exchange that ended without a trip: nothing hashed
    assert budget.held == 500
    a.feed(b"z" * 10)                       # after its takedown was published: nothing kept
    assert budget.held == 500 and a.print.seen == 0
    assert b.value() == eager([b"y" * 500])
    b.close()
    assert budget.held == 0
