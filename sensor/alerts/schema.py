"""The one alert schema: ECS-shaped JSON, with a documented mapping to OCSF Data Security Finding.

An alert says which resource leaked, how much, what was done about it, and how to correlate it —
never the personal values themselves: samples are redacted (last 4 characters at most) and carry
HMAC fingerprints. The client address goes in ECS ``source.address``/``source.ip`` only when the
operator asks for it raw (``alerts.source_ip: raw``); hashed, its keyed hash goes in
``dlp.client.hash`` (ECS reserves ``source.*`` for the real address); dropped, neither.
``dlp.dedup_id`` is fixed when the alert is created, so every redelivery carries the same one.
Field names and types follow ECS 8.11 (``ecs.version``); tests/ecs_fields.json is the subset we
emit, and the alert tests check every emitted field against it.
"""
from __future__ import annotations

import datetime as dt
import hmac
from dataclasses import dataclass
from typing import Any

from sensor import __version__
from sensor.detect.scanner import ScanResult
from sensor.exchange.identity import client_hash as keyed_client_hash

ECS_VERSION = "8.11.0"
SOURCE_IP_MODES = ("raw", "hashed", "drop")
SEVERITY = {"trip": 9, "alert": 5}      # ECS event.severity / OCSF severity_id via _OCSF_SEVERITY
FORWARDED = ("logged", "forwarded_unscanned")     # actions that let the response through (not "denied")


@dataclass
class AlertContext:
    """What the tap knew about the exchange when the verdict came."""
    exchange_id: str
    sensor_id: str
    resource: str
    url: dict[str, str]
    method: str
    status: int
    client_ip: str
    mode: str
    action: str                     # cut_and_takedown | blocked_451 | takedown | logged
    partial: bool = False
    bytes_sent: int = 0
    takedown_id: int | None = None
    ruleset: str = ""


def iso(ts: float) -> str:
    """ECS ``date``: ISO 8601, UTC, milliseconds."""
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dedup_id(key: bytes, sensor_id: str, exchange_id: str, verdict: str) -> str:
    return hmac.new(key, f"{sensor_id}|{exchange_id}|{verdict}".encode(), "sha256").hexdigest()[:32]


def incident_id(key: bytes, resource: str) -> str:
    """One incident per leaking resource: the same id on every sensor of a fleet (they share the key)."""
    return hmac.new(key, f"incident|{resource}".encode(), "sha256").hexdigest()[:32]


def epoch(timestamp: str) -> float:
    """Seconds since the epoch of an alert's ``@timestamp`` (HEC ``time``, CEF ``rt``)."""
    return dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def build_alert(ctx: AlertContext, result: ScanResult, *, key: bytes, source_ip: str = "hashed",
                now: float, client_hash: str | None = None, exposure: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ECS alert for one exchange. ``client_hash`` is for callers that only ever saw the
    client's keyed hash (the Kafka worker): it goes in ``dlp.client.hash`` unless ``source_ip`` is drop.
    ``exposure`` (sensor.enforce.exposure): the records added up across responses that tripped —
    ``dlp.exposure`` {scope, key, records, strong_records, person_records, responses, window_s,
    approximate}; ``result`` then carries those totals."""
    verdict = result.verdict
    did = dedup_id(key, ctx.sensor_id, ctx.exchange_id, verdict)
    source: dict[str, str] = {}
    client: dict[str, str] = {}
    if ctx.client_ip and source_ip == "raw":
        source = {"address": ctx.client_ip, "ip": ctx.client_ip}
    elif ctx.client_ip and source_ip == "hashed":
        client = {"hash": keyed_client_hash(key, ctx.client_ip)}
    elif client_hash and source_ip != "drop":
        client = {"hash": client_hash}
    top = max(result.findings.items(), key=lambda kv: kv[1], default=("", 0))[0]
    alert: dict[str, Any] = {
        "@timestamp": iso(now),
        "ecs": {"version": ECS_VERSION},
        "event": {"kind": "alert", "category": ["network"], "type": ["info", "denied"] if ctx.action not in FORWARDED
                  else ["info"], "action": f"dlp-{verdict}", "severity": SEVERITY.get(verdict, 3),
                  "dataset": "dlp_sensor.alert", "id": did},
        "rule": {"id": f"dlp.{verdict}", "name": ("Personal-data leak: records served across responses tripped "
                                                  "the policy" if exposure else
                                                  "Personal-data leak: response tripped the policy"
                                                  if verdict == "trip" else "Personal data in a response"),
                 "ruleset": ctx.ruleset, "category": "data-loss-prevention"},
        "url": ctx.url,
        "http": {"request": {"method": ctx.method}, "response": {"status_code": ctx.status}},
        "observer": {"vendor": "dlp-sensor", "product": "dlp-sensor", "type": "dlp", "version": __version__,
                     "name": ctx.sensor_id},
        "dlp": {"verdict": verdict, "action": ctx.action, "mode": ctx.mode, "records": result.records,
                "strong_records": result.strong_records, "person_records": result.person_records,
                "findings": dict(sorted(result.findings.items())), "top_signature": top,
                "samples": {k: [s.__dict__ for s in v] for k, v in sorted(result.samples.items())},
                "resource": ctx.resource, "incident": {"id": incident_id(key, ctx.resource)},
                "exchange_id": ctx.exchange_id, "sensor_id": ctx.sensor_id,
                "dedup_id": did, "takedown_id": ctx.takedown_id, "partial": ctx.partial,
                "bytes_sent": ctx.bytes_sent, "bytes_scanned": result.bytes, "trip_at_byte": result.trip_at_byte,
                "notes": list(result.notes)},
    }
    if exposure:
        alert["dlp"]["exposure"] = dict(exposure)
    if result.edm:                            # exact data match: index name -> EDM records (row ids go to the ledger only)
        alert["dlp"]["edm"] = dict(sorted(result.edm.items()))
    if source:
        alert["source"] = source
    if client:
        alert["dlp"]["client"] = client
    return alert


_OCSF_SEVERITY = {9: 5, 5: 3}           # ECS 9 -> OCSF Critical (5); 5 -> Medium (3)


def to_ocsf(alert: dict[str, Any]) -> dict[str, Any]:
    """The same alert as an OCSF 1.3 Data Security Finding (class_uid 2006); mapped field by field in docs/alert-formats.md."""
    d = alert["dlp"]
    ts = round(epoch(alert["@timestamp"]) * 1000)
    activity = 1                                                    # Create
    return {
        "class_uid": 2006, "class_name": "Data Security Finding", "category_uid": 2,
        "activity_id": activity, "type_uid": 2006 * 100 + activity,
        "severity_id": _OCSF_SEVERITY.get(alert["event"]["severity"], 1), "time": ts,
        "message": alert["rule"]["name"],
        "metadata": {"version": "1.3.0", "uid": d["dedup_id"],
                     "product": {"name": "dlp-sensor", "vendor_name": "dlp-sensor",
                                 "version": alert["observer"]["version"]}},
        "finding_info": {"uid": d["dedup_id"], "title": alert["rule"]["name"], "types": [d["verdict"]],
                         "analytic": {"uid": alert["rule"]["id"], "name": alert["rule"]["name"], "type_id": 1}},
        "data_security": {"category_id": 1, "detection_system_id": 3, "detection_pattern": d["top_signature"],
                          "data_lifecycle_state_id": 2},   # category PII; system Network DLP; in transit
        "action_id": 2 if d["action"] not in FORWARDED else 1,  # Denied / Allowed
        "disposition_id": 2 if d["action"] not in FORWARDED else 1,
        "resources": [{"uid": d["resource"], "type": "http resource"}],
        "http_request": {"http_method": alert["http"]["request"]["method"],
                         "url": {"url_string": alert["url"].get("original"), "path": alert["url"].get("path"),
                                 "hostname": alert["url"].get("domain")}},
        "observables": [{"name": k, "type_id": 99, "value": str(n)} for k, n in d["findings"].items()],
        "unmapped": {"dlp": d},
    } | _ocsf_src(alert)


def _ocsf_src(alert: dict[str, Any]) -> dict[str, Any]:
    """OCSF ``src_endpoint``: the raw ip when configured, else the keyed hash as its uid, else nothing."""
    if "ip" in alert.get("source", {}):
        return {"src_endpoint": {"ip": alert["source"]["ip"]}}
    if h := alert["dlp"].get("client", {}).get("hash"):
        return {"src_endpoint": {"uid": h}}
    return {}
