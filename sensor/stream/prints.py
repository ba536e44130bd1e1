"""The worker's content print, hashed only for exchanges that trip.

The worker publishes a print only with a takedown (it has no registry to look prints up in), and
the print of a trip is the keyed hash of the bytes seen up to the trip (:mod:`sensor.enforce.fingerprint`).
Most exchanges never trip, so hashing every body as it arrives (HMAC-SHA256 over all of it, plus
BLAKE2b over the head) was wasted work: measured 4-5% of the worker's CPU (perf, bench/stream.py's
corpus). :class:`LazyPrint` keeps the chunks of a body it has not needed yet (references to bytes
the worker already holds, no copy) and hashes them only when a trip asks for the print. A body
past ``hold`` bytes is hashed as before from then on, so an open exchange never holds more than
``hold`` bytes; nor do all of them together hold more than the shared :class:`Budget`. After the
takedown is out the print is never read again, and further chunks are neither hashed nor kept.
"""
from __future__ import annotations

from sensor.enforce.fingerprint import BodyPrint

HOLD_PER_BODY = 1 << 20         # a body's unhashed chunks, at most
HOLD_TOTAL = 64 << 20           # all open bodies' unhashed chunks together, at most


class Budget:
    """Bytes held unhashed by all the worker's open prints."""

    def __init__(self, total: int = HOLD_TOTAL) -> None:
        self.total = total
        self.held = 0


class LazyPrint:
    """A record-only :class:`BodyPrint` (no registry) whose hashing is deferred to :meth:`value`."""

    __slots__ = ("print", "budget", "hold", "_pending", "_held", "closed")

    def __init__(self, key: bytes, size: int, budget: Budget, hold: int = HOLD_PER_BODY) -> None:
        self.print = BodyPrint(key, None, size)
        self.budget, self.hold = budget, hold
        self._pending: list = []
        self._held = 0
        self.closed = False             # the print was published: later bytes do not matter

    @property
    def wants(self) -> int:
        return self.print.wants

    def feed(self, chunk) -> None:
        if self.closed or not chunk:
            return
        n = len(chunk)
        if self._held + n <= self.hold and self.budget.held + n <= self.budget.total:
            self._pending.append(chunk)
            self._held += n
            self.budget.held += n
            return
        self._flush()
        self.print.feed(chunk)

    def value(self) -> str | None:
        """The print of the bytes fed so far (hashing what was held)."""
        self._flush()
        return self.print.value()

    def close(self) -> None:
        """The print was published, or the body is done with: drop what is held, hash nothing more."""
        self.closed = True
        self._release()

    def _flush(self) -> None:
        for chunk in self._pending:
            self.print.feed(chunk)
        self._release()

    def _release(self) -> None:
        self.budget.held -= self._held
        self._pending, self._held = [], 0
