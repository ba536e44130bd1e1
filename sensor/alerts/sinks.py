"""Alert sinks: where the SOC receives alerts. Each one delivers one alert or raises DeliveryError.

HTTP sinks (webhook, slack, pagerduty, splunk_hec) use the dispatcher's aiohttp session, which
honours HTTPS_PROXY/NO_PROXY; ``ca_file`` names a CA bundle to verify the receiver with. A 2xx
answer is success; 408, 429, 5xx and network errors are retried from the spool (``Retry-After``
honoured); any other 4xx is permanent and the dispatcher dead-letters the alert. Syslog sends
RFC 5424 messages carrying ArcSight CEF over UDP, TCP (octet counting, RFC 6587) or TLS
(RFC 5425). docs/alert-formats.md describes every wire format.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import os
import socket
import ssl
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from sensor.alerts.schema import epoch, to_ocsf

SINK_TYPES = ("stdout", "jsonl", "webhook", "slack", "pagerduty", "splunk_hec", "syslog")
HTTP_SINKS = ("webhook", "slack", "pagerduty", "splunk_hec")
PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
RETRY_AFTER_MAX = 3600.0            # a receiver cannot park an alert for longer than this per attempt
TRANSIENT_4XX = (408, 429)


class DeliveryError(Exception):
    """A failed delivery. ``permanent``: the receiver will refuse this alert every time (4xx other
    than 408/429). ``retry_after``: seconds the receiver asked us to wait (Retry-After)."""

    def __init__(self, message: str, *, permanent: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP date), capped; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_MAX)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    now = dt.datetime.now(dt.timezone.utc).timestamp() if now is None else now
    return min(max(0.0, when.timestamp() - now), RETRY_AFTER_MAX)


# Paging and chat sinks hear of an incident at most once per window by default (first alert at once,
# the latest one when the window closes), on top of the incident rule (sensor/alerts/incidents.py).
DEFAULT_THROTTLE = {"slack": 300.0, "pagerduty": 300.0}
# Sinks that get every alert of an incident (a SIEM correlates them); the others hear of an incident
# when it opens, escalates to a trip, and at 10, 100, 1000, ... requests.
EVERY_ALERT = {"stdout": True, "jsonl": True, "splunk_hec": True, "syslog": True}


def _tls_context(opts: dict[str, Any]) -> ssl.SSLContext | None:
    """A verifying client context from ``ca_file`` (and ``certfile``/``keyfile`` for mutual TLS)."""
    if not (opts.get("ca_file") or opts.get("certfile")):
        return None
    ctx = ssl.create_default_context(cafile=opts.get("ca_file") or None)
    if opts.get("certfile"):
        ctx.load_cert_chain(opts["certfile"], opts.get("keyfile") or None)
    return ctx


@dataclass
class Sink:
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    session: aiohttp.ClientSession | None = None
    timeout: float = 5.0
    throttle: float = 0.0               # seconds; 0 = every alert the incident rule lets through
    every_alert: bool = False           # repeats of an incident too
    dead_letter: bool = True            # a permanently refused alert goes to the dead-letter file
    tls: ssl.SSLContext | None = None   # from ca_file / certfile / keyfile

    def render(self, alert: dict) -> dict:
        return to_ocsf(alert) if self.options.get("format") == "ocsf" else alert

    async def deliver(self, alert: dict) -> None:          # pragma: no cover - abstract
        raise NotImplementedError

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        assert self.session is not None
        try:
            async with self.session.post(url, data=body, headers={"Content-Type": "application/json", **headers},
                                         ssl=self.tls if self.tls is not None else True,
                                         timeout=aiohttp.ClientTimeout(total=self.timeout)) as r:
                if r.status // 100 == 2:
                    return
                detail = (await r.content.read(200)).decode(errors="replace").replace("\n", " ").strip()
                msg = f"HTTP {r.status}" + (f": {detail}" if detail else "")
                if 400 <= r.status < 500 and r.status not in TRANSIENT_4XX:
                    raise DeliveryError(msg, permanent=True)
                wait = retry_after(r.headers.get("Retry-After")) if r.status in (429, 503) else None
                raise DeliveryError(msg, retry_after=wait)
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
    if not inc.get("count"):
        return ""
    return (f"incident `{inc['id']}` ({inc.get('state', '?')}): {inc['count']} requests "
            f"({inc.get('trips', 0)} trips, {inc.get('refusals', 0)} refused) "
            f"since {inc.get('first_seen', '?')}, last {inc.get('last_seen', '?')}\n")


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


PD_SEVERITIES = ("critical", "error", "warning", "info")


def pagerduty_event(alert: dict, routing_key: str) -> dict:
    """A PagerDuty Events API v2 trigger. ``dedup_key`` is the incident id, so every alert of one
    leaking resource (from any sensor of the fleet) and every retry land in one PagerDuty alert."""
    d = alert["dlp"]
    inc = d.get("incident") or {}
    if inc.get("state") == "summary":
        summary = (f"{alert['rule']['name']}: {d['resource']} requested {inc['count']} times "
                   f"since {inc['first_seen']}")
    else:
        summary = f"{alert['rule']['name']}: {d['resource']} ({d['records']} records)"
    return {"routing_key": routing_key, "event_action": "trigger", "dedup_key": (inc.get("id") or d["dedup_id"])[:255],
            "client": "dlp-sensor",
            "payload": {"summary": summary[:1024], "source": d["sensor_id"],
                        "severity": "critical" if d["verdict"] == "trip" else "warning",
                        "timestamp": alert["@timestamp"], "component": d["resource"][:255],
                        "group": alert["url"].get("domain", "")[:255], "class": alert["rule"]["id"],
                        "custom_details": d}}


class PagerDutySink(Sink):
    async def deliver(self, alert: dict) -> None:
        await self._post(self.options.get("url", PAGERDUTY_URL),
                         orjson.dumps(pagerduty_event(alert, self.options["routing_key"])), {})


def hec_event(alert: dict, rendered: dict, options: dict[str, Any]) -> dict:
    """The HEC /services/collector/event envelope: ``time`` is the alert's own time (epoch seconds,
    millisecond precision), so a redelivery from the spool is indexed when the alert happened."""
    body: dict[str, Any] = {"time": round(epoch(alert["@timestamp"]), 3), "host": alert["dlp"]["sensor_id"],
                            "source": "dlp-sensor", "sourcetype": options.get("sourcetype", "dlp:alert"),
                            "event": rendered}
    if options.get("index"):
        body["index"] = options["index"]
    return body


@dataclass
class SplunkHecSink(Sink):
    """Splunk HTTP Event Collector. One ``X-Splunk-Request-Channel`` per sink instance (a UUID made
    at start-up), as HEC indexer acknowledgement expects: not a new channel per alert."""
    channel: str = field(default_factory=lambda: str(uuid.uuid4()))

    async def deliver(self, alert: dict) -> None:
        url = self.options["url"].rstrip("/")
        if not url.endswith("/services/collector/event"):
            url += "/services/collector/event"
        await self._post(url, orjson.dumps(hec_event(alert, self.render(alert), self.options)),
                         {"Authorization": f"Splunk {self.options['token']}", "X-Splunk-Request-Channel": self.channel})


def cef_header_escape(v: object) -> str:
    """CEF header field: backslash and pipe escaped; a header cannot span lines, so CR/LF become spaces."""
    s = str(v).replace("\\", "\\\\").replace("|", "\\|")
    return s.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


def cef_ext_escape(v: object) -> str:
    """CEF extension value: backslash and equals sign escaped, line breaks written as \\n / \\r."""
    s = str(v).replace("\\", "\\\\").replace("=", "\\=")
    return s.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r")


def cef_time(timestamp: str) -> int:
    """A CEF date: milliseconds since the epoch."""
    return round(epoch(timestamp) * 1000)


def cef_message(alert: dict) -> str:
    """The CEF:0 record for an alert (header | extension)."""
    d = alert["dlp"]
    inc = d.get("incident") or {}
    sev = 10 if d["verdict"] == "trip" else 6
    ext: dict[str, object] = {
        "rt": cef_time(alert["@timestamp"]), "request": alert["url"].get("original", ""),
        "requestMethod": alert["http"]["request"]["method"], "act": d["action"], "externalId": d["dedup_id"],
        "cs1Label": "resource", "cs1": d["resource"], "cs2Label": "exchangeId", "cs2": d["exchange_id"],
        "cs3Label": "findings", "cs3": ",".join(f"{k}:{n}" for k, n in d["findings"].items()),
        "cn1Label": "records", "cn1": d["records"], "dvchost": d["sensor_id"]}
    if inc.get("id"):
        ext.update(cs5Label="incidentId", cs5=inc["id"])
    if inc.get("count"):
        ext["cnt"] = inc["count"]
    if inc.get("state") == "summary":
        ext.update(start=cef_time(inc["first_seen"]), end=cef_time(inc["last_seen"]))
    if "ip" in alert.get("source", {}):
        ext["src"] = alert["source"]["ip"]
    elif d.get("client", {}).get("hash"):
        ext.update(cs4Label="clientHash", cs4=d["client"]["hash"])
    header = "|".join(cef_header_escape(x) for x in ("dlp-sensor", "dlp-sensor", alert["observer"]["version"],
                                                      alert["rule"]["id"], alert["rule"]["name"], sev))
    return "CEF:0|" + header + "|" + " ".join(f"{k}={cef_ext_escape(v)}" for k, v in ext.items())


def cef_line(alert: dict, hostname: str) -> bytes:
    """The RFC 5424 syslog message carrying the CEF record (facility local4; crit for a trip, else warning)."""
    pri = 20 * 8 + (2 if alert["dlp"]["verdict"] == "trip" else 4)
    return f"<{pri}>1 {alert['@timestamp']} {hostname} dlp-sensor - - - {cef_message(alert)}".encode()


class SyslogSink(Sink):
    """UDP (one datagram per message), TCP (RFC 6587 octet counting) or TLS (RFC 5425: the same
    octet-counted framing inside TLS, verified against ``ca_file`` or the system CAs)."""

    async def deliver(self, alert: dict) -> None:
        line = cef_line(alert, socket.gethostname())
        tls = bool(self.options.get("tls"))
        host = self.options.get("host", "127.0.0.1")
        port = int(self.options.get("port", 6514 if tls else 514))
        proto = "tcp" if tls else self.options.get("protocol", "udp")
        try:
            if proto == "udp":
                loop = asyncio.get_running_loop()
                transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                                   remote_addr=(host, port))
                try:
                    transport.sendto(line)
                finally:
                    transport.close()
                return
            ctx = (self.tls or ssl.create_default_context()) if tls else None
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx, server_hostname=host if tls else None), self.timeout)
            try:
                writer.write(f"{len(line)} ".encode() + line)
                await asyncio.wait_for(writer.drain(), self.timeout)
            finally:
                writer.close()
                try:
                    await asyncio.wait_for(writer.wait_closed(), self.timeout)
                except (OSError, asyncio.TimeoutError, ssl.SSLError):
                    pass
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as e:
            raise DeliveryError(f"{type(e).__name__}: {e}") from None


_CLASSES = {"stdout": StdoutSink, "jsonl": JsonlSink, "webhook": WebhookSink, "slack": SlackSink,
            "pagerduty": PagerDutySink, "splunk_hec": SplunkHecSink, "syslog": SyslogSink}
_REQUIRED = {"jsonl": ("path",), "webhook": ("url",), "slack": ("url",), "pagerduty": ("routing_key",),
             "splunk_hec": ("url", "token"), "syslog": ()}
_OWN_KEYS = ("type", "name", "throttle", "every_alert", "dead_letter")


def _flag(raw: dict, key: str, default: bool, where: str) -> bool:
    v = raw.get(key, default)
    if not isinstance(v, bool):
        raise ValueError(f"{where}.{key}: must be true or false; got {v!r}")
    return v


def _readable(raw: dict, key: str, where: str) -> None:
    v = raw.get(key)
    if v is None:
        return
    if not isinstance(v, str) or not os.path.isfile(v) or not os.access(v, os.R_OK):
        raise ValueError(f"{where}.{key}: not a readable file: {v!r}")


def make_sink(raw: Any, where: str) -> Sink:
    """A sink from its config mapping; errors name the key."""
    if not isinstance(raw, dict) or "type" not in raw:
        raise ValueError(f"{where}: needs 'type' (one of {', '.join(SINK_TYPES)})")
    raw = {k: v for k, v in raw.items() if v is not None}      # an explicit null means "the default"
    kind = raw["type"]
    if kind not in _CLASSES:
        raise ValueError(f"{where}.type: unknown sink {kind!r}; known: {', '.join(SINK_TYPES)}")
    for k in _REQUIRED.get(kind, ()):
        if not raw.get(k):
            raise ValueError(f"{where}.{k}: required for a {kind} sink")
    if kind == "syslog" and raw.get("protocol", "udp") not in ("udp", "tcp"):
        raise ValueError(f"{where}.protocol: must be udp or tcp")
    if kind == "syslog" and raw.get("tls") and raw.get("protocol", "tcp") != "tcp":
        raise ValueError(f"{where}.protocol: syslog over TLS (RFC 5425) runs over tcp")
    if raw.get("format", "ecs") not in ("ecs", "ocsf"):
        raise ValueError(f"{where}.format: must be ecs or ocsf")
    throttle = raw.get("throttle", DEFAULT_THROTTLE.get(kind, 0.0))
    if isinstance(throttle, bool) or not isinstance(throttle, (int, float)) or throttle < 0:
        raise ValueError(f"{where}.throttle: seconds per incident, a number >= 0 (0 = every alert); got {throttle!r}")
    tls_keys = ("ca_file",) if kind in HTTP_SINKS else ("ca_file", "certfile", "keyfile") if kind == "syslog" else ()
    for k in tls_keys:
        _readable(raw, k, where)
    if raw.get("keyfile") and not raw.get("certfile"):
        raise ValueError(f"{where}.keyfile: needs certfile")
    if kind == "syslog":
        _flag(raw, "tls", False, where)
    try:
        tls = _tls_context({k: raw.get(k) for k in tls_keys})
    except (ssl.SSLError, OSError) as e:
        raise ValueError(f"{where}.{'certfile' if raw.get('certfile') else 'ca_file'}: unusable: {e}") from None
    opts = {k: v for k, v in raw.items() if k not in _OWN_KEYS}
    return _CLASSES[kind](name=str(raw.get("name") or kind), options=opts, throttle=float(throttle),
                          every_alert=_flag(raw, "every_alert", EVERY_ALERT.get(kind, False), where),
                          dead_letter=_flag(raw, "dead_letter", True, where), tls=tls)
