"""Hyperscan scratch per thread, and the one lock every stream close takes.

Scans run in worker threads (:mod:`sensor.exchange.workers`) as well as on the event loop (the CLI,
an aborted exchange's last flush). hyperscan 0.9.1 allows one scan per scratch at a time (a second
raises ``ScratchInUseError``), so every scan passes the calling thread's own scratch
(:func:`scratch_for`). ``Stream.close()`` cannot be given one (the binding swaps its arguments
there and corrupts memory): it always uses the database's own scratch, so closes are serialised
by :data:`CLOSE_LOCK`. A close only flushes the end of a stream (a few matches): the lock is held
for microseconds.
"""
from __future__ import annotations

import threading

import hyperscan as hs

CLOSE_LOCK = threading.Lock()
KEEP = 4            # databases a thread keeps a scratch for (the current engine's two, and the last one's)

_LOCAL = threading.local()


def scratch_for(db: hs.Database) -> hs.Scratch:
    """The calling thread's scratch for ``db``, made on first use. The entry holds the database
    too, so an id is never reused while its scratch is kept; the oldest goes past :data:`KEEP`
    (an engine reload)."""
    held: dict[int, tuple[hs.Database, hs.Scratch]] | None = getattr(_LOCAL, "held", None)
    if held is None:
        held = _LOCAL.held = {}
    got = held.get(id(db))
    if got is not None:
        return got[1]
    scratch = hs.Scratch(db)
    held[id(db)] = (db, scratch)
    while len(held) > KEEP:
        del held[next(iter(held))]
    return scratch
