"""Alert sinks: where the SOC receives alerts. Each one delivers one alert or raises.

HTTP sinks use aiohttp; a non-2xx answer is a failure (retried from the spool). Syslog sends
RFC 5424 lines carrying ArcSight CEF, over UDP or TCP (octet-counted framing, RFC 6587).
"""
from __future__ import annotations

import asyncio
import os
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from sensor.alerts.schema import to_ocsf

SINK_TYPES = ("stdout", "jsonl", "webhook", "slack", "pagerduty", "splunk_hec", "syslog")
PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"


class DeliveryError(Exception):
    pass


# Paging and chat sinks hear of an incident at most once per window by default (first alert at once,
# the latest one when the window closes): one leak downloaded 2,734 times is one page, not 2,734.
DEFAULT_THROTTLE = {"slack": 300.0, "pagerduty": 300.0}


@dataclass
class Sink:
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    session: aiohttp.ClientSession | None = None
    timeout: float = 5.0
    throttle: float = 0.0               # seconds; 0 = every alert

    def render(self, alert: dict) -> dict:
        return to_ocsf(alert) if self.options.get("format") == "ocsf" else alert

    async def deliver(self, alert: dict) -> None:          # pragma: no cover - abstract
        raise NotImplementedError

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        assert self.session is not None
        try:
            async with self.session.post(url, data=body, headers={"Content-Type": "application/json", **headers},
                                         timeout=aiohttp.ClientTimeout(total=self.timeout)) as r:
                if r.status // 100 != 2:
                    raise DeliveryError(f"HTTP {r.status}")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise DeliveryError(f"{type(e).__name__}: {e}") from None

    async def close(self) -> None:
        pass


class StdoutSink(Sink):
    async def deliver(self, alert: dict) -> None:
        sys.stdout.buffer.write(orjson.dumps(self.render(alert)) + b"\n")
        sys.stdout.flush()


class JsonlSink(Sink):
    """Appends one line per alert and fsyncs it (the line is durable when delivery returns)."""

    async def deliver(self, alert: dict) -> None:
        with open(self.options["path"], "ab") as fh:
            fh.write(orjson.dumps(self.render(alert)) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())


class WebhookSink(Sink):
    async def deliver(self, alert: dict) -> None:
        await self._post(self.options["url"], orjson.dumps(self.render(alert)),
                         {"Idempotency-Key": alert["dlp"]["dedup_id"], **self.options.get("headers", {})})


def incident_line(d: dict) -> str:
    inc = d.get("incident") or {}
    if not inc.get("alerts"):
        return ""
    return (f"incident `{inc['id']}`: alert {inc['alerts']} ({inc.get('trips', 0)} trips) "
            f"since {inc.get('first_seen', '?')}\n")


class SlackSink(Sink):
    """Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat): text + a few fields."""

    async def deliver(self, alert: dict) -> None:
        d = alert["dlp"]
        counts = ", ".join(f"{k}: {n}" for k, n in d["findings"].items()) or "-"
        text = (f":rotating_light: *{alert['rule']['name']}* — {d['action'].replace('_', ' ')}\n"
                f"`{alert['url'].get('original', d['resource'])}` · {d['records']} records · {counts}\n"
                + incident_line(d) +
                f"sensor `{d['sensor_id']}` · exchange `{d['exchange_id']}` · dedup `{d['dedup_id']}`")
        await self._post(self.options["url"], orjson.dumps({"text": text}), {})


class PagerDutySink(Sink):
    """PagerDuty Events API v2: ``dedup_key`` is the incident id, so every download of one leaking
    resource (from any sensor of the fleet) and every retry land in one PagerDuty incident."""

    async def deliver(self, alert: dict) -> None:
        d = alert["dlp"]
        key = (d.get("incident") or {}).get("id") or d["dedup_id"]
        body = {"routing_key": self.options["routing_key"], "event_action": "trigger", "dedup_key": key,
                "payload": {"summary": f"{alert['rule']['name']}: {d['resource']} ({d['records']} records)"[:1024],
                            "source": d["sensor_id"], "severity": "critical" if d["verdict"] == "trip" else "warning",
                            "timestamp": alert["@timestamp"], "component": d["resource"][:255],
                            "class": alert["rule"]["id"], "custom_details": d}}
        await self._post(self.options.get("url", PAGERDUTY_URL), orjson.dumps(body), {})


class SplunkHecSink(Sink):
    async def deliver(self, alert: dict) -> None:
        body = {"event": self.render(alert), "sourcetype": self.options.get("sourcetype", "dlp:alert"),
                "source": "dlp-sensor", "host": alert["dlp"]["sensor_id"]}
        if "index" in self.options:
            body["index"] = self.options["index"]
        url = self.options["url"].rstrip("/")
        if not url.endswith("/services/collector/event"):
            url += "/services/collector/event"
        await self._post(url, orjson.dumps(body), {"Authorization": f"Splunk {self.options['token']}",
                                                   "X-Splunk-Request-Channel": alert["dlp"]["dedup_id"]})


def _cef_escape(v: object, header: bool = False) -> str:
    s = str(v).replace("\\", "\\\\").replace("\r", " ").replace("\n", " ")
    return s.replace("|", "\\|") if header else s.replace("=", "\\=")


def cef_line(alert: dict, hostname: str) -> bytes:
    d = alert["dlp"]
    sev = 10 if d["verdict"] == "trip" else 6
    ext = {"rt": alert["@timestamp"], "request": alert["url"].get("original", ""),
           "requestMethod": alert["http"]["request"]["method"], "act": d["action"], "externalId": d["dedup_id"],
           "cs1Label": "resource", "cs1": d["resource"], "cs2Label": "exchangeId", "cs2": d["exchange_id"],
           "cs3Label": "findings", "cs3": ",".join(f"{k}:{n}" for k, n in d["findings"].items()),
           "cn1Label": "records", "cn1": d["records"], "dvchost": d["sensor_id"]}
    if "ip" in alert.get("source", {}):
        ext["src"] = alert["source"]["ip"]
    header = "|".join(_cef_escape(x, True) for x in ("CEF:0", "dlp-sensor", "dlp-sensor", alert["observer"]["version"],
                                                     alert["rule"]["id"], alert["rule"]["name"], sev))
    pri = 20 * 8 + (2 if d["verdict"] == "trip" else 4)            # local4, crit / warning
    msg = header + "|" + " ".join(f"{k}={_cef_escape(v)}" for k, v in ext.items())
    return f"<{pri}>1 {alert['@timestamp']} {hostname} dlp-sensor - - - {msg}".encode()


class SyslogSink(Sink):
    async def deliver(self, alert: dict) -> None:
        line = cef_line(alert, socket.gethostname())
        host, port = self.options.get("host", "127.0.0.1"), int(self.options.get("port", 514))
        proto = self.options.get("protocol", "udp")
        try:
            if proto == "udp":
                loop = asyncio.get_running_loop()
                transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                                   remote_addr=(host, port))
                try:
                    transport.sendto(line)
                finally:
                    transport.close()
            else:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), self.timeout)
                try:
                    writer.write(f"{len(line)} ".encode() + line)
                    await asyncio.wait_for(writer.drain(), self.timeout)
                finally:
                    writer.close()
        except (OSError, asyncio.TimeoutError) as e:
            raise DeliveryError(f"{type(e).__name__}: {e}") from None


_CLASSES = {"stdout": StdoutSink, "jsonl": JsonlSink, "webhook": WebhookSink, "slack": SlackSink,
            "pagerduty": PagerDutySink, "splunk_hec": SplunkHecSink, "syslog": SyslogSink}
_REQUIRED = {"jsonl": ("path",), "webhook": ("url",), "slack": ("url",), "pagerduty": ("routing_key",),
             "splunk_hec": ("url", "token"), "syslog": ()}


def make_sink(raw: Any, where: str) -> Sink:
    """A sink from its config mapping; errors name the key."""
    if not isinstance(raw, dict) or "type" not in raw:
        raise ValueError(f"{where}: needs 'type' (one of {', '.join(SINK_TYPES)})")
    kind = raw["type"]
    if kind not in _CLASSES:
        raise ValueError(f"{where}.type: unknown sink {kind!r}; known: {', '.join(SINK_TYPES)}")
    for k in _REQUIRED.get(kind, ()):
        if not raw.get(k):
            raise ValueError(f"{where}.{k}: required for a {kind} sink")
    if kind == "syslog" and raw.get("protocol", "udp") not in ("udp", "tcp"):
        raise ValueError(f"{where}.protocol: must be udp or tcp")
    if raw.get("format", "ecs") not in ("ecs", "ocsf"):
        raise ValueError(f"{where}.format: must be ecs or ocsf")
    throttle = raw.get("throttle", DEFAULT_THROTTLE.get(kind, 0.0))
    if isinstance(throttle, bool) or not isinstance(throttle, (int, float)) or throttle < 0:
        raise ValueError(f"{where}.throttle: seconds per incident, a number >= 0 (0 = every alert); got {throttle!r}")
    opts = {k: v for k, v in raw.items() if k not in ("type", "name", "throttle")}
    return _CLASSES[kind](name=str(raw.get("name") or kind), options=opts, throttle=float(throttle))
