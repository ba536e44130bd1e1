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
    incidents = []
    for resource, e in sorted(exposure.items(), key=lambda kv: kv[1].get("first_served", 0)):
        if not e.get("flagged"):
            continue
        tripped = e.get("tripped_at")
        incidents.append({
            "resource": resource, "first_served": iso(e["first_served"]) if e.get("first_served") else None,
            "tripped_at": iso(tripped) if tripped else None,
            "downloads": e.get("downloads", 0), "completed_downloads": e.get("completed", 0),
            "downloads_before_takedown": e.get("before_takedown", 0), "unique_clients": e.get("clients", 0),
            "max_records_in_one_response": e.get("records_max", 0), "bytes": e.get("bytes", 0),
            "flagged_responses": e.get("flagged", 0)})
    return {"scope": "fleet", "incidents": incidents}


def render_fleet_text(report: dict[str, Any]) -> str:
    inc = report["incidents"]
    if not inc:
        return "Fleet: no incidents in the workers' exposure table.\n"
    lines = [f"Fleet: {len(inc)} incident(s) (every sidecar, from the workers' exposure table)", ""]
    for i in inc:
        lines += [f"== {i['resource']}",
                  f"   first served        {i['first_served'] or '-'}",
                  f"   tripped             {i['tripped_at'] or '-'}",
                  f"   downloads           {i['downloads']:,} ({i['completed_downloads']:,} complete), "
                  f"{i['downloads_before_takedown']:,} before the takedown",
                  f"   distinct clients    {i['unique_clients']:,}",
                  f"   records             {i['max_records_in_one_response']:,} people's records in one response",
                  ""]
    return "\n".join(lines)
