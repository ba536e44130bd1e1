"""Kafka connection settings, topics, and the broker health probe shared by sidecars and workers."""
from __future__ import annotations

import asyncio
import logging
import ssl

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from sensor.config import KafkaConfig

log = logging.getLogger("dlp_sensor.kafka")

# topic -> configs used when this process creates it (an operator's own topics keep theirs).
# ``exchanges`` and ``deadletter`` carry response bodies — the very data being protected — so they
# are kept one hour and one day; ``takedowns`` is compacted so a new sidecar reads the current
# state of every resource, not its whole history.
TOPICS: dict[str, dict[str, str]] = {
    "exchanges": {"retention.ms": str(3600 * 1000)},
    "findings": {},
    "alerts": {},
    "takedowns": {"cleanup.policy": "compact"},
    "deadletter": {"retention.ms": str(24 * 3600 * 1000)},
}


def client_kwargs(k: KafkaConfig) -> dict:
    """aiokafka connection arguments for producers, consumers and the admin client (TLS and SASL too)."""
    assert k.bootstrap, "kafka.bootstrap is not set"
    kw: dict = {"bootstrap_servers": k.bootstrap.split(","), "security_protocol": k.security_protocol}
    if k.security_protocol in ("SSL", "SASL_SSL"):
        ctx = ssl.create_default_context(cafile=k.ssl_cafile)
        if k.ssl_certfile:
            ctx.load_cert_chain(k.ssl_certfile, k.ssl_keyfile)
        kw["ssl_context"] = ctx
    if k.sasl_mechanism:
        kw.update(sasl_mechanism=k.sasl_mechanism, sasl_plain_username=k.sasl_username,
                  sasl_plain_password=k.sasl_password)
    return kw


async def ensure_topics(k: KafkaConfig, *, timeout: float = 10.0) -> None:
    """Create the five topics if missing (clusters that forbid it need them made beforehand)."""
    admin = AIOKafkaAdminClient(**client_kwargs(k), request_timeout_ms=int(timeout * 1000))
    await asyncio.wait_for(admin.start(), timeout)
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(k.topic(name), num_partitions=k.partitions if name != "takedowns" else 1,
                        replication_factor=1, topic_configs=cfg)
               for name, cfg in TOPICS.items() if k.topic(name) not in existing]
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass                                    # another process won the race
    finally:
        await admin.close()


def supervised(coro, name: str) -> asyncio.Task:
    """A background task whose crash is logged with its traceback (and so never silent)."""
    def done(t: asyncio.Task) -> None:
        if not t.cancelled() and t.exception() is not None:
            log.error("background task %s crashed", name, exc_info=t.exception())
    task = asyncio.create_task(coro, name=name)
    task.add_done_callback(done)
    return task


class Health:
    """Is the broker reachable? A metadata round trip every ``interval`` on a client of its own;
    flips the ``dlp_kafka_up`` gauge and logs each change once."""

    def __init__(self, k: KafkaConfig, gauge, component: str, interval: float = 1.0):
        self.k = k
        self.gauge = gauge.labels(component=component)
        self.component = component
        self.interval = interval
        self.up = True

    async def run(self) -> None:
        client = AIOKafkaClient(**client_kwargs(self.k), request_timeout_ms=int(self.interval * 2000))
        try:
            while True:
                try:
                    if not client.cluster.brokers():
                        await asyncio.wait_for(client.bootstrap(), self.interval * 2)
                    await asyncio.wait_for(client.fetch_all_metadata(), self.interval * 2)
                    ok = True
                except (asyncio.TimeoutError, KafkaError, OSError):
                    ok = False
                if bool(ok) != self.up:
                    self.up = bool(ok)
                    (log.info if ok else log.error)("kafka %s: broker %s", self.component,
                                                     "reachable again" if ok else "unreachable")
                self.gauge.set(1 if self.up else 0)
                await asyncio.sleep(self.interval)
        finally:
            await client.close()


class Offsets:
    """Committed, earliest and end offsets on clients of its own: the worker asks while faust's consumer
    thread is inside a rebalance, where asking faust's own consumer would wait on itself."""

    def __init__(self, k: KafkaConfig, *, timeout: float = 5.0):
        self.k = k
        self.timeout = timeout
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer = None

    async def _clients(self):
        if self._admin is None:
            admin = AIOKafkaAdminClient(**client_kwargs(self.k), request_timeout_ms=int(self.timeout * 1000))
            await asyncio.wait_for(admin.start(), self.timeout)
            self._admin = admin
        if self._consumer is None:
            consumer = AIOKafkaConsumer(**client_kwargs(self.k), enable_auto_commit=False,
                                        request_timeout_ms=int(self.timeout * 1000))
            await asyncio.wait_for(consumer.start(), self.timeout)
            self._consumer = consumer
        return self._admin, self._consumer

    async def committed(self, group: str, tps: list) -> dict:
        """A group's committed offsets (partitions it never committed are absent)."""
        admin, _ = await self._clients()
        parts = [TopicPartition(tp.topic, tp.partition) for tp in tps]
        committed = await asyncio.wait_for(admin.list_consumer_group_offsets(group, partitions=parts), self.timeout)
        return {tp: committed[tp].offset for tp in parts if tp in committed and committed[tp].offset >= 0}

    async def starting(self, group: str, tps: list) -> dict:
        """Where a group's consumer starts each partition: its committed offset, else the earliest."""
        _, consumer = await self._clients()
        parts = [TopicPartition(tp.topic, tp.partition) for tp in tps]
        out = await self.committed(group, parts)
        rest = [tp for tp in parts if tp not in out]
        if rest:
            out.update(await asyncio.wait_for(consumer.beginning_offsets(rest), self.timeout))
        return out

    async def close(self) -> None:
        """Close both clients' connections at shutdown. Never waits past ``timeout``: the broker may be gone."""
        admin, consumer, self._admin, self._consumer = self._admin, self._consumer, None, None
        for stop in ([admin.close()] if admin else []) + ([consumer.stop()] if consumer else []):
            try:
                await asyncio.wait_for(stop, self.timeout)
            except (asyncio.TimeoutError, KafkaError, OSError) as e:
                log.warning("closing an offsets client: %s", type(e).__name__)

    async def ends(self, tps: list) -> dict:
        _, consumer = await self._clients()
        return await asyncio.wait_for(consumer.end_offsets([TopicPartition(tp.topic, tp.partition) for tp in tps]),
                                      self.timeout)
