"""Prometheus metrics: one registry per sensor process, served on their own port.

Labels are small closed sets (verdict, signature id, sink name, reason, tap, mode); never a URL,
path, client or personal value — cardinality stays bounded and nothing is re-leaked.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client import generate_latest, CONTENT_TYPE_LATEST  # noqa: F401  (re-exported)

from sensor import __version__

_FAST = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        Info("dlp_sensor_build", "Build information.", registry=r).info({"version": __version__})
        self.bytes_scanned = Counter("dlp_bytes_scanned", "Response body bytes scanned (as received, before decoding).",
                                     ["tap"], registry=r)
        self.exchanges = Counter("dlp_exchanges", "Exchanges finished, by verdict.", ["tap", "verdict"], registry=r)
        self.findings = Counter("dlp_findings", "Distinct values found, by signature.", ["signature"], registry=r)
        self.trips = Counter("dlp_trips", "Responses that tripped the policy, by route mode.", ["mode"], registry=r)
        self.takedowns_active = Gauge("dlp_takedowns_active", "Resources currently taken down.", registry=r)
        self.takedowns = Counter("dlp_takedowns", "Takedowns added, by who added them.", ["source"], registry=r)
        self.refusals = Counter("dlp_refusals", "Requests refused because the resource is taken down, by key.",
                                ["reason"], registry=r)
        self.scan_seconds = Histogram("dlp_scan_seconds", "Scanner CPU time per exchange.", ["tap"],
                                      buckets=_FAST, registry=r)
        self.detection_to_takedown = Histogram(
            "dlp_detection_to_takedown_seconds",
            "From the trip verdict to the takedown being durable and enforced.", buckets=_FAST, registry=r)
        self.request_duration = Histogram("dlp_proxy_request_duration_seconds",
                                          "Proxy request duration, first byte in to last byte out.",
                                          ["outcome"], buckets=_FAST, registry=r)
        self.decode_limits = Counter("dlp_decode_limits", "Decoding stopped early, by reason.", ["reason"], registry=r)
        self.upstream_errors = Counter("dlp_upstream_errors", "Upstream failures, by kind.", ["kind"], registry=r)
        self.failures = Counter("dlp_scan_failures", "Scanner overload or internal error, by reason and the "
                                "route's choice (open = forwarded unscanned, closed = refused/cut).",
                                ["reason", "action"], registry=r)
        self.websockets = Counter("dlp_websocket_upgrades", "WebSocket upgrades passed through unscanned.",
                                  registry=r)
        self.partial = Counter("dlp_partial_responses", "206 responses scanned (only the range that was sent).",
                               registry=r)
        self.reloads = Counter("dlp_reloads", "Signature/policy reloads, by result.", ["result"], registry=r)
        self.alert_spool_depth = Gauge("dlp_alert_spool_depth", "Alert deliveries waiting in the spool.", registry=r)
        self.alert_delivery_failures = Counter("dlp_alert_delivery_failures", "Failed alert deliveries, by sink.",
                                               ["sink"], registry=r)
        self.alerts_delivered = Counter("dlp_alerts_delivered", "Alerts delivered, by sink.", ["sink"], registry=r)
        self.icap_errors = Counter("dlp_icap_errors", "Malformed or refused ICAP requests, by ICAP status.",
                                   ["status"], registry=r)
        self.active_exchanges = Gauge("dlp_active_exchanges", "Exchanges being scanned now.", registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
