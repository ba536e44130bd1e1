"""Hyperscan scratch per thread, and the one lock every stream close takes.

Scans run in worker threads (:mod:`sensor.exchange.workers`) as well as on the event loop (the CLI,
an aborted exchange's last flush). hyperscan 0.9.1 allows one scan per scratch at a time (a second
raises ``ScratchInUseError``), so every scan passes the calling thread's own scratch
(:func:`scratch_for`). ``Stream.close()`` cannot be given one (the binding swaps its arguments
there and corrupts memory): it always uses the database's own scratch, so closes are serialised
by :data:`CLOSE_LOCK`. A close only flushes the end of a stream (a few matches): the lock is held
for microseconds.

Small block-mode databases that a module compiles once for the process (the base64 finder's
filters, the HTML header-cell check) are scanned with :func:`block_ends`, on scratches kept for
the thread's life: there are a handful of them, never replaced, so :func:`scratch_for`'s bound
(meant for engines, which reloads replace) would only make them evict each other.
"""
from __future__ import annotations

import threading

import hyperscan as hs

CLOSE_LOCK = threading.Lock()
KEEP = 4            # databases a thread keeps a scratch for (the current engine's two, and the last one's)

_LOCAL = threading.local()
_CONST = threading.local()          # scratches for the process's constant databases (block_ends)


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


def _first(i: int, start: int, end: int, flags: int, ctx: list) -> bool:
    ctx.append(end)
    return True                     # the first match is enough: stop the scan


def block_ends(db: hs.Database, buf: bytes, handler=_first) -> list[int]:
    """End offsets of ``db``'s matches in ``buf`` (the first only, with the default handler), ``db``
    being a block-mode database compiled once for the process, on the calling thread's scratch."""
    try:
        scratch = _CONST.held[id(db)]           # one attribute and one dict look-up per call
    except (AttributeError, KeyError):
        held = _CONST.__dict__.setdefault("held", {})
        scratch = held[id(db)] = hs.Scratch(db)
    ends: list[int] = []
    try:
        db.scan(buf, match_event_handler=handler, context=ends, scratch=scratch)
    except hs.ScanTerminated:
        pass
    return ends
