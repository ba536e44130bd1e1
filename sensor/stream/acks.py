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
