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
        self.alerts_throttled = Counter("dlp_alerts_throttled", "Alerts a sink's per-incident throttle folded into "
                                        "a later alert of the same incident, by sink.", ["sink"], registry=r)
        self.alerts_dead_lettered = Counter("dlp_alerts_dead_lettered", "Alerts a sink refused for good (HTTP 4xx "
                                            "other than 408/429), moved to the dead-letter file, by sink.",
                                            ["sink"], registry=r)
        self.icap_errors = Counter("dlp_icap_errors", "Malformed or refused ICAP requests, by ICAP status.",
                                   ["status"], registry=r)
        self.active_exchanges = Gauge("dlp_active_exchanges", "Exchanges being scanned now.", registry=r)
        # scale-out over Kafka (sensor/stream)
        self.kafka_up = Gauge("dlp_kafka_up", "1 while the Kafka broker answers metadata requests, by component.",
                              ["component"], registry=r)
        self.kafka_errors = Counter("dlp_kafka_errors", "Kafka operations that failed (and were retried), by "
                                    "component and operation.", ["component", "op"], registry=r)
        self.mirror_queue_bytes = Gauge("dlp_mirror_queue_bytes", "Body bytes waiting to be published to Kafka.",
                                        registry=r)
        self.mirror_bytes = Counter("dlp_mirror_bytes", "Body bytes published to the exchanges topic.", registry=r)
        self.mirror_exchanges = Counter("dlp_mirror_exchanges", "Exchanges mirrored to Kafka.", registry=r)
        self.mirror_overflow = Counter("dlp_mirror_overflow", "Exchanges the mirror queue had no room for, by what "
                                       "happened instead (local = scanned here, drop = not scanned).",
                                       ["action"], registry=r)
        self.fleet_applied = Counter("dlp_fleet_takedowns_applied", "Takedown/lift records from the fleet topic "
                                     "applied to the local registry, by action.", ["action"], registry=r)
        self.fleet_published = Counter("dlp_fleet_takedowns_published", "Local takedowns/lifts published to the "
                                       "fleet topic, by action.", ["action"], registry=r)
        self.fleet_lag = Histogram("dlp_fleet_takedown_lag_seconds", "From a takedown record's creation anywhere "
                                   "in the fleet to its being enforced here.", buckets=_FAST, registry=r)
        self.worker_open = Gauge("dlp_worker_exchanges_open", "Exchanges a worker is scanning now.", registry=r)
        self.worker_held = Gauge("dlp_worker_records_uncommitted", "Exchange records scanned but not yet "
                                 "committable (their exchange, or an earlier one on the partition, is still open). "
                                 "A worker that dies reads them again.", registry=r)
        self.worker_expired = Counter("dlp_worker_exchanges_expired", "Exchanges finished by the idle timeout "
                                      "(their end record never came).", registry=r)
        self.worker_duplicates = Counter("dlp_worker_duplicates", "Redelivered records or findings ignored "
                                         "(at-least-once delivery), by kind.", ["kind"], registry=r)
        self.worker_rewinds = Counter("dlp_worker_rewinds", "Partitions sought back because the consumer "
                                      "skipped records (delivered a later offset first, or stalled), by topic.",
                                      ["topic"], registry=r)
        self.worker_skipped = Counter("dlp_worker_offsets_skipped", "Offsets given up on after repeated rewinds "
                                      "(missing on the broker), by topic.", ["topic"], registry=r)
        self.deadletters = Counter("dlp_deadletters", "Malformed records sent to the dead-letter topic, by topic.",
                                   ["topic"], registry=r)
        self.assigned_partitions = Gauge("dlp_kafka_assigned_partitions", "Partitions this worker owns now, by "
                                         "topic.", ["topic"], registry=r)
        self.consumer_lag = Gauge("dlp_kafka_consumer_lag", "Records not yet consumed (high-water mark minus "
                                  "position), summed over assigned partitions, by topic.", ["topic"], registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
