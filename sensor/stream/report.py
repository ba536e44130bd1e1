"""The fleet-wide exposure report: the workers' ``exposure`` table, read from its compacted changelog.

Every worker's table partition is written to ``<group>-exposure-changelog`` (faust, JSON keys and
values); the latest value per resource is the fleet's ledger for it — downloads through every
sidecar (mirrored exchanges, and the sidecars' own alert/trip verdicts), unique clients (keyed
hashes) and records. Reading it needs no worker to be up.
"""
from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from sensor.alerts.schema import iso
from sensor.config import KafkaConfig
from sensor.enforce.report import ExposureIncident, ExposureReport
from sensor.stream.kafka import client_kwargs


async def read_exposure(k: KafkaConfig, timeout: float = 10.0) -> dict[str, dict]:
    topic = f"{k.group}-exposure-changelog"
    c = AIOKafkaConsumer(**client_kwargs(k), group_id=None, enable_auto_commit=False, auto_offset_reset="earliest")
    await asyncio.wait_for(c.start(), timeout)
    try:
        parts = (await c._client.fetch_all_metadata()).partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return {}
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        out: dict[str, dict] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any([await c.position(tp) < end[tp] for tp in tps]) and loop.time() < deadline:
            for msgs in (await c.getmany(timeout_ms=200)).values():
                for m in msgs:
                    key = orjson.loads(m.key)
                    if m.value is None:
                        out.pop(key, None)
                    else:
                        out[key] = orjson.loads(m.value)
        return out
    finally:
        await c.stop()


def fleet_report(exposure: dict[str, dict]) -> dict[str, Any]:
    """The fleet's report in the one exposure schema (:class:`ExposureReport`, scope ``fleet``): the
    workers' table counts at the trip, so what it counts before the trip is ``served_before_detection``;
    what it does not keep (refusals, takedown times, per-client snapshots) is None."""
    incidents = []
    for resource, e in sorted(exposure.items(), key=lambda kv: kv[1].get("first_served", 0)):
        if not e.get("flagged"):
            continue
        first, last, tripped = e.get("first_served"), e.get("last_served"), e.get("tripped_at")
        incidents.append(ExposureIncident(
            resource=resource, status="tripped" if tripped else "alerted",
            first_served=iso(first) if first else None, tripped_at=iso(tripped) if tripped else None,
            exposed_seconds=round(last - first, 3) if first and last else None,
            served=e.get("downloads", 0), completed_downloads=e.get("completed", 0), bytes_sent=e.get("bytes", 0),
            served_before_detection=e.get("before_takedown", 0) if tripped else None,
            unique_clients=e.get("clients", 0), max_records_in_one_response=e.get("records_max", 0),
            flagged_responses=e.get("flagged", 0)))
    return ExposureReport("fleet", incidents).to_dict()
