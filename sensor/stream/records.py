"""The Kafka record format (version 1): one JSON header line, then — for body chunks — the raw bytes.

Every record value is ``orjson(header) + b"\\n" + payload``. orjson never writes a raw newline
(it escapes them), so the first ``\\n`` always ends the header; the payload is the body bytes as
the tap saw them (no base64: a 512 KiB chunk costs 512 KiB on the wire). Keys are UTF-8 strings.

=================  ===============  ===========================================================
topic              key              header ``type`` and fields
=================  ===============  ===========================================================
``exchanges``      exchange id      ``meta``: url, resource, method, status, content_type,
                                    content_encoding, client (keyed hash), mode, path, partial,
                                    sensor, ts
                                    ``chunk``: seq (0, 1, 2…), then ≤ 512 KiB of body bytes
                                    ``end``: seq (= number of chunks), bytes, completed, lost
``findings``       resource         ``finding``: xid, verdict, records, findings{sig: n},
                                    bytes, client, completed, partial, origin, sensor, ts
``alerts``         resource         the ECS alert itself (``sensor.alerts.schema``), no header
``takedowns``      resource         ``takedown`` / ``lift``: resource, fingerprint[, fingerprint_len], actor,
                                    reason, xid, origin, ts   (topic is compacted)
``deadletter``     original key     ``dead``: topic, partition, offset, error; payload = the
                                    original value
=================  ===============  ===========================================================

Every header carries ``"v": 1``. A reader refuses other versions (dead-letter), so a rolling
upgrade that changes the format bumps it. No header ever holds a raw personal value: clients are
keyed hashes, findings are counts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

VERSION = 1
TYPES = {"meta", "chunk", "end", "finding", "takedown", "lift", "dead"}
MAX_HEADER = 64 << 10


class RecordError(ValueError):
    """A record this version cannot read; the message says why (never quotes the payload)."""


@dataclass
class Record:
    header: dict[str, Any]
    payload: bytes = b""

    @property
    def type(self) -> str:
        return self.header["type"]

    def __getitem__(self, k: str) -> Any:
        return self.header[k]

    def get(self, k: str, default: Any = None) -> Any:
        return self.header.get(k, default)


def encode(rtype: str, payload: bytes = b"", **fields: Any) -> bytes:
    assert rtype in TYPES, rtype
    return orjson.dumps({"v": VERSION, "type": rtype, **fields}) + b"\n" + payload


def decode(value: bytes | None) -> Record:
    if not value:
        raise RecordError("empty record")
    nl = value.find(b"\n", 0, MAX_HEADER)
    if nl < 0:
        raise RecordError("no header line (not a dlp-sensor record, or header over 64 KiB)")
    try:
        header = orjson.loads(value[:nl])
    except orjson.JSONDecodeError as e:
        raise RecordError(f"header is not JSON ({e.msg} at {e.pos})") from None
    if not isinstance(header, dict):
        raise RecordError("header is not a JSON object")
    if header.get("v") != VERSION:
        raise RecordError(f"unsupported record version {header.get('v')!r} (this reader: {VERSION})")
    if header.get("type") not in TYPES:
        raise RecordError(f"unknown record type {str(header.get('type'))[:32]!r}")
    return Record(header, value[nl + 1:])


def finding_record(xid: str, resource: str, result, *, bytes_seen: int, client: str | None, completed: bool,
                   partial: bool, sensor: str, origin: str, served_at: float, tripped_at: float | None,
                   now: float) -> bytes:
    """One exchange's verdict and counts (a ``ScanResult``) for the fleet ledger — never a value."""
    return encode("finding", xid=xid, resource=resource, verdict=result.verdict, records=result.records,
                  strong_records=result.strong_records, person_records=result.person_records,
                  findings=result.findings, edm_records=result.edm_records, edm=dict(result.edm),
                  bytes=bytes_seen, client=client, completed=completed, partial=partial,
                  sensor=sensor, origin=origin, served_at=served_at, ts=now, tripped_at=tripped_at)


def require(rec: Record, **types: type) -> None:
    """Check that the header has these fields with these types (RecordError names the first bad one)."""
    for name, t in types.items():
        v = rec.header.get(name)
        if not isinstance(v, t) or isinstance(v, bool) and t is not bool:
            raise RecordError(f"{rec.type} record: field {name!r} missing or not {getattr(t, '__name__', t)}")
