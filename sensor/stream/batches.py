"""The worker's ``exchanges`` consumer: aiokafka ``getmany`` batches and manual commits, no faust stream.

Measured (bench/stream.py, worker on a core of its own): through faust's stream one worker did
0.35x of an in-process scan of the same exchanges; its time went to per-event faust machinery,
its consumer thread, and one broker round trip per exchange (each finding awaited before the next
record). So the scan agent reads the topic itself, in batches: one ``getmany`` returns up to
``MAX_RECORDS`` records (each partition's in offset order), the worker scans them all, publishes
every finding of the batch and waits for the broker once, then commits.

Commits stay safe with batches: an exchange's records are acked (``acks.InOrderAcks``) only when
its finding is on the broker, acks reach :meth:`BatchReader.done` in offset order per partition,
and :meth:`commit` sends the highest contiguous offset — never one past an exchange still open or
a record not yet done. Anything not committed is read again after a crash (``kill -9``) or by the
partition's next owner; what it publishes twice carries the same exchange id.

The consumer group is ``<kafka.worker.group>.scan``: faust's own members (the ledger agent, the
exposure table) speak faust's assignor protocol, which a plain aiokafka member cannot join. On a
partition the new group never committed, the worker starts where faust's group left the topic
(workers before this one read ``exchanges`` through faust; :meth:`BatchReader.adopt`), not at the
earliest record: replaying an hour of exchanges would re-publish takedowns that were lifted since.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from sensor.config import KafkaConfig
from sensor.stream.kafka import client_kwargs

log = logging.getLogger("dlp_sensor.worker")

MAX_RECORDS = 500                   # records per batch (a chunk record is at most 512 KiB of body)
# per partition and fetch (aiokafka's default): 4 MiB cost ~5% more CPU per exchange here (bigger
# responses through asyncio's stream buffer) and more memory
PARTITION_FETCH_BYTES = 1 << 20
# aiokafka recomputes every record batch's CRC-32C in software: 3.5% of the worker's CPU (perf,
# bench/stream.py), the body bytes being most of what it reads. The broker checked it when the batch
# was produced and TCP guards the wire; librdkafka's consumers skip the check by default too
# (``check.crcs=false``). What it would catch here is a broker's storage flipping bits in a mirrored
# copy of a response: one exchange scanned wrong, never an offset skipped.
CHECK_CRCS = False


def scan_group(k: KafkaConfig) -> str:
    return f"{k.group}.scan"


class Msg:
    """One record as the worker handles it (``tp`` and ``offset`` are what the ack and contiguity
    guards key on); ``value`` is dropped once scanned, so a held record costs no body bytes.
    ``scanned``: the record carried body bytes that were scanned (the loop yields after those)."""
    __slots__ = ("tp", "offset", "key", "value", "scanned")

    def __init__(self, tp: TopicPartition, offset: int, key: bytes | None, value: bytes | None) -> None:
        self.tp, self.offset, self.key, self.value = tp, offset, key, value
        self.scanned = False

    @property
    def topic(self) -> str:
        return self.tp.topic

    @property
    def partition(self) -> int:
        return self.tp.partition


class _Listener(ConsumerRebalanceListener):
    def __init__(self, reader: "BatchReader") -> None:
        self.reader = reader

    async def on_partitions_revoked(self, revoked) -> None:
        self.reader.steady.clear()                      # records fetched from here on wait for the new assignment
        if self.reader.on_revoking is not None:         # work in flight finishes first: its acks go in the commit
            await self.reader.on_revoking()
        try:                                            # what is done, before another member takes it
            await asyncio.wait_for(self.reader.commit(), 5.0)
        except asyncio.TimeoutError:
            log.warning("commit before the rebalance timed out; the records will be read again")
        await self.reader.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        try:
            await self.reader.on_assigned(set(assigned))
        finally:
            self.reader.joined = True
            self.reader.steady.set()


class BatchReader:
    """A consumer of one topic in ``group``; the caller reads :meth:`batch`, marks records
    :meth:`done` in offset order, and calls :meth:`commit` after each batch."""

    def __init__(self, k: KafkaConfig, topic: str, group: str, *,
                 on_assigned: Callable[[set], Awaitable[None]], on_revoked: Callable[[set], Awaitable[None]],
                 on_revoking: Callable[[], Awaitable[None]] | None = None) -> None:
        self.k, self.topic, self.group = k, topic, group
        self.on_assigned, self.on_revoked = on_assigned, on_revoked
        self.on_revoking = on_revoking                  # before the rebalance's commit
        self.joined = False                             # the first assignment has arrived (and been positioned)
        # set while no rebalance is under way: aiokafka fetches for a new assignment while the assigned
        # hook (which positions the worker's contiguity guard at the committed offsets) still awaits the
        # broker; a record processed before that hook is done is read again after it (seen under load:
        # a record dead-lettered twice)
        self.steady = asyncio.Event()
        self.started = False
        self._done: dict[TopicPartition, int] = {}      # partition -> next offset to commit
        self._committing = asyncio.Lock()
        self.consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        """Join the group (raises while the broker is unreachable; call again)."""
        c = AIOKafkaConsumer(
            **client_kwargs(self.k), group_id=self.group, enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=6000, heartbeat_interval_ms=1000, max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
            fetch_max_wait_ms=100, max_poll_interval_ms=300_000, check_crcs=CHECK_CRCS)
        try:
            await c.start()
        except BaseException:
            await c.stop()
            raise
        self.consumer = c
        self.consumer.subscribe([self.topic], listener=_Listener(self))
        self.started = True

    async def adopt(self, legacy: str, offsets) -> None:
        """Before joining: partitions this group never committed start where ``legacy`` (faust's group, which
        read the topic before) committed, by committing those offsets for this group. Only while the group
        is empty: a live group has its own offsets, and the broker refuses a commit from outside it."""
        tps = [TopicPartition(self.topic, p) for p in range(self.k.partitions)]
        have = await offsets.committed(self.group, tps)
        left = await offsets.committed(legacy, [tp for tp in tps if tp not in have])
        if not left:
            return
        c = AIOKafkaConsumer(**client_kwargs(self.k), group_id=self.group, enable_auto_commit=False)
        await c.start()
        try:
            c.assign(list(left))
            await c.commit(left)
            log.info("%s: %d partition(s) start where faust's group %s left them", self.topic, len(left), legacy)
        except KafkaError as e:
            log.info("%s: offsets of %s not adopted (%s): the group has its own", self.topic, legacy,
                     type(e).__name__)
        finally:
            await c.stop()

    async def stop(self) -> None:
        """Commit what is done and leave the group (its partitions move at once, not after the session timeout)."""
        try:
            await asyncio.wait_for(self.commit(), 5)
        except asyncio.TimeoutError:
            log.warning("final commit of %s timed out", self.topic)
        await self.consumer.stop()

    async def batch(self, timeout_ms: int) -> list:
        """Up to ``MAX_RECORDS`` records; each partition's in offset order."""
        got = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=MAX_RECORDS)
        if got and not self.steady.is_set():
            await self.steady.wait()                    # the assignment these came under is not positioned yet
            owned = self.assignment()                   # a partition gone meanwhile: its next owner reads them
            got = {tp: recs for tp, recs in got.items() if tp in owned}
        return [Msg(tp, r.offset, r.key, r.value) for tp, recs in got.items() for r in recs]

    def done(self, msg: Msg) -> None:
        """``msg`` and everything before it on its partition may be committed (called in offset order)."""
        self._done[msg.tp] = msg.offset + 1

    def forget(self, tps: set) -> None:
        for tp in [tp for tp in self._done if tp in tps]:
            del self._done[tp]

    async def commit(self) -> None:
        async with self._committing:
            if not self._done:
                return
            owned = self.assignment()
            offsets = {tp: o for tp, o in self._done.items() if tp in owned}
            self._done.clear()
            if not offsets:
                return
            try:
                await self.consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError, KafkaError) as e:
                # a rebalance took the partitions meanwhile: their next owner reads the records again
                log.warning("commit of %d partition(s) of %s failed (%s); the records will be read again",
                            len(offsets), self.topic, type(e).__name__)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.consumer.seek(tp, offset)

    def assignment(self) -> set:
        return self.consumer.assignment() if self.consumer is not None else set()

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.consumer.highwater(tp)

    async def position(self, tp: TopicPartition) -> int | None:
        return await self.consumer.position(tp)
