"""The table-recovery watch seeks again exactly the changelog partitions faust's recovery waits for in vain.

faust's own objects (an app's ``Recovery`` and its consumer's read offsets) are used as they are; only the
seek, which needs a joined consumer, is recorded instead of sent. The stall itself (a standby changelog
partition turned active whose records the fetch loop drops) is exercised end to end by
``test_stream.py::test_exposure_table_moves_with_its_partitions``.
"""
from __future__ import annotations

import asyncio

import faust
from faust.types import TP

from sensor.stream.recovery import RecoveryWatch


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_only_a_partition_that_stays_behind_is_sought_again() -> None:
    async def run() -> None:
        app = faust.App("recovery-watch-probe", broker="kafka://127.0.0.1:9", store="memory://", web_enabled=False)
        rec = app.tables.recovery
        stuck, moving, done = (TP("probe-changelog", p) for p in (4, 5, 6))
        rec.active_highwaters.update({stuck: 1, moving: 9, done: 3})
        rec.active_offsets.update({stuck: -1, moving: 2, done: 3})
        app.consumer._read_offset[stuck] = 7          # what made the fetch loop drop offsets 0-1
        clock, sought, reseeks = Clock(), [], []

        async def seek(offsets: dict) -> None:
            sought.append(offsets)

        watch = RecoveryWatch(app, after=3.0, clock=clock, seek=seek, on_reseek=reseeks.append)
        await watch.check()                             # not recovering: nothing looked at
        assert sought == []
        rec.in_recovery = True
        await watch.check()                             # first look: the clocks start
        clock.now += 2.0
        rec.active_offsets[moving] = 5                  # this one moves
        await watch.check()
        assert sought == []
        clock.now += 1.5
        await watch.check()                             # stuck for 3.5 s; moving for 1.5 s only
        assert sought == [{stuck: 0}] and reseeks == [stuck]
        assert app.consumer._read_offset[stuck] is None
        await watch.check()                             # not again before another 3 s
        assert len(sought) == 1
        clock.now += 3.0
        await watch.check()
        assert sought[-2:] == [{stuck: 0}, {moving: 5 + 1}]       # moving has stalled too by now
        rec.active_offsets[stuck] = 1                   # read up to the highwater: done
        rec.in_recovery = False
        clock.now += 10.0
        n = len(sought)
        await watch.check()
        assert len(sought) == n

    asyncio.run(run())
