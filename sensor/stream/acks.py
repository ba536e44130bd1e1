"""Hand faust a partition's acks in offset order, whatever order the exchanges finish in.

The scan agent acks an exchange's records only once its finding is on the broker, and exchanges
finish out of order: a short download behind a long one on the same partition is done first.
faust does not guard against that. Its ``Consumer._new_offset`` commits the first run of
consecutive acked offsets. It looks for an unacked hole before that run only when the partition
already has a committed offset that is truthy (so never on a partition committed at 0, or not at
all). And even then it lets a hole of exactly one offset through. Given out-of-order acks, it can
commit past the ``meta`` record of an exchange that is still open. If that worker then dies, the
next owner of the partition starts after the ``meta``, and the exchange's other records are
orphans: its finding is lost.

:class:`InOrderAcks` holds each ack back until every earlier message of its partition that the
agent has seen is done too. So faust only ever sees acks in offset order, and its commit never
passes an open exchange. This is hand-written because faust has no per-partition ordering option
for manual acks (``stream.noack()`` leaves ordering to the caller).
"""
from __future__ import annotations

import heapq
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Partition:
    heap: list[int] = field(default_factory=list)           # offsets seen and not yet acked, smallest first
    entries: dict[int, list] = field(default_factory=dict)  # offset -> [message, done]


class InOrderAcks:
    """Messages are ``track``-ed when the agent takes them and ``done`` when they may be committed."""

    def __init__(self, ack: Callable[[Any], None]) -> None:
        self._ack = ack
        self._parts: dict[Any, _Partition] = {}

    def track(self, msg: Any) -> None:
        """Before the agent works on ``msg``. A message read again after a rewind replaces the old one."""
        p = self._parts.setdefault(msg.tp, _Partition())
        if msg.offset not in p.entries:
            heapq.heappush(p.heap, msg.offset)
        p.entries[msg.offset] = [msg, False]

    def done(self, msg: Any) -> None:
        """``msg`` may be committed once everything before it is. Calling it twice is harmless."""
        p = self._parts.get(msg.tp)
        entry = p.entries.get(msg.offset) if p else None
        if entry is None or entry[0] is not msg:        # already acked, forgotten, or read again since
            return
        entry[1] = True
        while p.heap:
            head = p.entries[p.heap[0]]
            if not head[1]:
                return
            heapq.heappop(p.heap)
            del p.entries[head[0].offset]
            self._ack(head[0])

    def forget(self, keep: Collection) -> None:
        """After a rebalance: partitions not in ``keep`` moved away and their new owner reads them again."""
        for tp in [tp for tp in self._parts if tp not in keep]:
            del self._parts[tp]

    def held(self) -> int:
        """Messages seen and not yet handed to faust (done or not)."""
        return sum(len(p.entries) for p in self._parts.values())


REWINDS_BEFORE_SKIPPING = 3     # a hole that survives this many rewinds is taken to be missing on the broker


@dataclass
class _Cursor:
    expect: int                 # the next offset the agent must see on this partition
    moved_at: float             # when ``expect`` last moved, or the partition was last (re)positioned
    rewound_to: int = -1        # the offset of the last rewind still waiting to be read
    rewinds: int = 0            # rewinds to ``rewound_to`` so far
    behind_since: float | None = None   # when the partition was first seen with records past ``expect``


class Contiguity:
    """Admit each partition's records to an agent in unbroken offset order from where it was positioned.

    Why: faust's fetch loop (``Consumer._drain_messages``) may deliver records fetched before a
    rebalance's seek *after* it. It then records the stale batch's offsets as "read" and silently
    drops the records the seek fetches again below them (its ``DROPPED MESSAGE ROFF`` path). Seen on
    Tansu in the worker-kill test with a CPU hog beside it, in 3 of about 30 runs: the new owner of a
    partition delivered offsets 32-69 after seeking to the committed 28, and 28-31 (the ``meta``
    record of an exchange the dead worker had open) never reached the agent. In 2 more runs a
    partition delivered nothing at all after its seek. Either way an exchange's finding was lost.

    So the agent checks every record against the offset it expects next on its partition: the
    committed offset (or the earliest) at assignment, then one past each record admitted.

    - A record past a hole is not processed, nor acked, so nothing commits past the hole. The
      partition is sought back to the hole; records past it are dropped while the rewind takes
      effect (``patience``); records are admitted again from the hole's offset.
    - A partition that has records to read but delivers none while the agent is idle is sought back
      the same way (:meth:`stalled`).
    - Re-reads (an offset below the expected one) are admitted: the agent collapses duplicates by
      exchange id.
    - A hole that survives ``REWINDS_BEFORE_SKIPPING`` rewinds is missing on the broker (a
      transaction marker, compaction, retention); it is skipped and reported in :attr:`skipped`.

    Hand-written because faust has no option to turn its drop logic off or to check it.
    """

    def __init__(self, *, clock: Callable[[], float], patience: float = 2.0) -> None:
        self._clock = clock
        self.patience = patience                # how long a rewind may take before it is tried again
        self._cursors: dict[Any, _Cursor] = {}
        self.skipped: list[tuple[Any, int, int]] = []      # (tp, first, last) offsets given up on

    def position(self, tp: Any, offset: int) -> None:
        """Where the consumer was positioned on ``tp`` (after an assignment: its committed offset)."""
        self._cursors[tp] = _Cursor(offset, self._clock())

    def forget(self, keep: Collection) -> None:
        for tp in [tp for tp in self._cursors if tp not in keep]:
            del self._cursors[tp]

    def partitions(self) -> list:
        return list(self._cursors)

    def admit(self, msg: Any) -> int | None:
        """``None``: process ``msg``. Otherwise ``msg`` lies past a hole: drop it, and seek its partition
        back to the offset returned (``-1``: a rewind is already under way, just drop it)."""
        c = self._cursors.get(msg.tp)
        if c is None:                                   # not positioned (no assignment seen yet): trust faust
            self._cursors[msg.tp] = _Cursor(msg.offset + 1, self._clock())
            return None
        if msg.offset < c.expect:                       # read again after a rewind
            return None
        if msg.offset == c.expect:
            self._advance(c, msg.offset + 1)
            return None
        if c.rewound_to == c.expect:                    # a rewind to this hole is under way
            if self._clock() - c.moved_at < self.patience:
                return -1
            if c.rewinds >= REWINDS_BEFORE_SKIPPING:
                self.skipped.append((msg.tp, c.expect, msg.offset - 1))
                self._advance(c, msg.offset + 1)
                return None
        return self._rewind(c)

    def stalled(self, end_offset: Callable[[Any], int | None], *, after: float) -> list[tuple[Any, int]]:
        """Partitions that have had records past the expected offset for ``after`` seconds without moving,
        and the offset to seek each back to. Call it only while the agent is idle. (A record that has
        just arrived on a quiet partition is not a stall: it has not been waited for ``after`` yet.)"""
        now = self._clock()
        out = []
        for tp, c in self._cursors.items():
            end = end_offset(tp)
            if end is None or end <= c.expect:
                c.behind_since = None
                continue
            if c.behind_since is None:
                c.behind_since = now
            if now - c.behind_since >= after and now - c.moved_at >= after:
                out.append((tp, self._rewind(c)))
        return out

    def _advance(self, c: _Cursor, expect: int) -> None:
        c.expect = expect
        c.moved_at = self._clock()
        c.rewound_to, c.rewinds, c.behind_since = -1, 0, None

    def _rewind(self, c: _Cursor) -> int:
        c.rewinds = c.rewinds + 1 if c.rewound_to == c.expect else 1
        c.rewound_to = c.expect
        c.moved_at = self._clock()
        return c.expect
