"""Unstick faust's table recovery when a changelog partition it waits for delivers nothing.

Why: after a rebalance faust restores each table partition it now owns by seeking its changelog
partition and reading up to the highwater; the worker is not ready (the ledger stops counting)
until every one is read. Seen here (``test_exposure_table_moves_with_its_partitions`` beside busy
loops: it stalled in 1 run of 4 without this watch, and in 2 of 6 with it, which unstuck both): the partitions that were this worker's
*standby* a moment before become *active*; the recovery seeks them to offset 0 and then waits
forever ("No event received for active tp ... since recovery start"; a normal restore of the same
partitions takes ~0.1 s). The exposure table then stays where it was: every exchange after the
handover is lost to the ledger until the worker restarts. The fetch loop's read offset was clear
when the watch found the stall (so it is not faust's ``DROPPED MESSAGE ROFF`` drop); the records are
simply never fetched after that seek. Seeking the partitions again ends it: faust's recovery
completed within 0.1 s of the second seek in both runs.

:class:`RecoveryWatch` looks at the recovery's own bookkeeping (what it has read of each active
changelog partition, the highwater it waits for, when an event last came) and, for a partition
that has had nothing for ``after`` seconds, clears the fetch loop's read offset, resumes the
partition and seeks it to the next offset the recovery needs. faust has no option for this, and
its private attributes are read defensively: if a faust upgrade renames them the watch does nothing
(and says so once in the log).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("dlp_sensor.worker")

STALL_AFTER = 3.0       # an active changelog partition with records left and no event for this long is sought again


class RecoveryWatch:
    """Call :meth:`check` every second or so (it does nothing unless faust is recovering)."""

    def __init__(self, app: Any, *, after: float = STALL_AFTER, clock: Callable[[], float] = time.monotonic,
                 on_reseek: Callable[[Any], None] | None = None,
                 seek: Callable[[dict], Awaitable[None]] | None = None) -> None:
        self.app, self.after, self._clock = app, after, clock
        self.on_reseek = on_reseek
        self._seek = seek                                   # default: the faust consumer's ``seek_wait``
        self._since: dict[Any, tuple[int, float]] = {}     # tp -> (offset read, when it was first seen there)
        self._broken = False

    def stalled(self) -> list[tuple[Any, int]]:
        """Active changelog partitions the recovery still needs records of and that have not moved for
        ``after`` seconds: (tp, next offset to read)."""
        try:
            rec = self.app.tables.recovery
            if not rec.in_recovery:
                self._since.clear()
                return []
            offsets, highwaters = rec.active_offsets, rec.active_highwaters
            items = list(highwaters.items())
        except AttributeError as e:
            if not self._broken:
                self._broken = True
                log.warning("faust's recovery bookkeeping is not where it was (%s): recovery stalls are not watched",
                            type(e).__name__)
            return []
        now = self._clock()
        out = []
        for tp, hw in items:
            read = offsets.get(tp)
            if hw is None or read is None or read >= hw:
                self._since.pop(tp, None)
                continue
            seen = self._since.get(tp)
            if seen is None or seen[0] != read:
                self._since[tp] = (read, now)
                continue
            if now - seen[1] >= self.after:
                self._since[tp] = (read, now)               # once per ``after`` at most
                out.append((tp, max(read, -1) + 1))         # faust's -1: nothing read yet
        return out

    async def check(self) -> None:
        for tp, offset in self.stalled():
            consumer = self.app.consumer
            roff = getattr(consumer, "_read_offset", {}).get(tp)
            log.warning("table recovery: changelog %s[%d] delivered nothing for %.0fs (needs offset %d on, up to %s; "
                        "the fetch loop's read offset was %s); seeking it again", tp.topic, tp.partition, self.after,
                        offset, self.app.tables.recovery.active_highwaters.get(tp), roff)
            try:
                read_offset = getattr(consumer, "_read_offset", None)
                if read_offset is not None:
                    read_offset[tp] = None                  # the loop drops nothing below it any more
                consumer.resume_partitions([tp])
                await (self._seek or consumer.seek_wait)({tp: offset})
            except Exception as e:                      # noqa: BLE001  (a rebalance meanwhile: recovery starts over)
                log.warning("table recovery: seeking %s[%d] again failed: %r", tp.topic, tp.partition, e)
                continue
            if self.on_reseek is not None:
                self.on_reseek(tp)
