"""Prometheus metrics: one registry per sensor process, served on their own port.

Labels are small closed sets (verdict, signature id, sink name, reason, tap, mode); never a URL,
path, client or personal value — cardinality stays bounded and nothing is re-leaked.

Every counter whose label values are known exists at 0 from start-up (the closed sets in
:data:`KNOWN` at construction, the deployment's taps, sinks, signatures, Kafka components and
topics through :meth:`Metrics.expect`). A series that first appears at 1 makes ``increase()`` and
``rate()`` read 0 over its first increment: the first leak on a pod would page nobody. Label
values that come from the data (decoder reasons, ICAP statuses, a signature added by a reload) and
the labelled histograms appear at their first observation; gauges are never primed (a
``dlp_kafka_up`` at 0 would read "broker down").

Every name carries the ``dlp_`` prefix except the standard process and platform collectors'
(``process_*``, ``python_*``), which keep the names every Prometheus tool expects. No ``_created``
series: they double every counter and nothing here reads them.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import (CollectorRegistry, Counter, Gauge, GCCollector, Histogram, Info, PlatformCollector,
                               ProcessCollector, disable_created_metrics)
from prometheus_client import generate_latest, CONTENT_TYPE_LATEST  # noqa: F401  (re-exported)
from prometheus_client.core import CounterMetricFamily

from sensor import __version__

disable_created_metrics()           # process-wide, as PROMETHEUS_DISABLE_CREATED_SERIES would

_FAST = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)

# Closed label sets, by Metrics attribute and label name. Every string literal passed to
# ``.labels()`` in sensor/ must be listed here (tests/test_metrics_prom.py reads the code to check).
TAPS = ("proxy", "icap", "extproc", "kafka")
SCANNED_VERDICTS = ("pass", "alert", "trip")
MODES = ("monitor", "enforce")
ON_ERROR = ("open", "closed")
# Keys of the configuration file (by their path in the file) that a reload cannot apply: a reload
# that changes one is refused whole (sensor/config_reload.py classifies every key); "other" is a key
# this list does not name yet (refused too, to be safe).
RESTART_KEYS = ("sensor_id", "log_format", "state_dir", "start_empty", "hmac_key", "metrics", "admin.listen",
                "proxy.listen", "proxy.upstream", "proxy.tls", "proxy.idle_timeout", "proxy.max_connections",
                "icap.listen", "icap.max_connections", "icap.options_ttl", "icap.idle_timeout", "icap.read_timeout",
                "extproc.listen", "kafka.bootstrap", "kafka.topic_prefix", "kafka.security_protocol",
                "kafka.sasl_mechanism", "kafka.sasl_username", "kafka.sasl_password", "kafka.ssl_cafile",
                "kafka.ssl_certfile", "kafka.ssl_keyfile", "kafka.fleet", "kafka.catchup_timeout",
                "kafka.mirror.enabled", "kafka.mirror.queue_mib", "kafka.mirror.overflow", "kafka.worker.group",
                "kafka.worker.partitions", "kafka.worker.exchange_timeout", "kafka.worker.web_port", "kafka.worker.roles",
                "other")
KNOWN: dict[str, dict[str, tuple[str, ...]]] = {
    "trips": {"mode": MODES},
    "takedowns": {"source": ("trip", "admin", "fleet")},
    "refusals": {"reason": ("resource", "content", "host")},   # host: not the site's (site.unknown_host: refuse)
    "upstream_errors": {"kind": ("timeout", "down", "body")},
    "failures": {"reason": ("overload", "client_overload", "internal", "decode_limit", "unverified_range"),
                 "action": ON_ERROR},
    "reloads": {"result": ("ok", "error", "restart_required")},
    "reload_restart_keys": {"key": RESTART_KEYS},
    "alert_delivery_failures": {"sink": ("spool",)},       # the spool itself; configured sinks via expect()
}
# Label values that only some processes ever see: primed by expect() when the process has the part.
BY_TAP = {"exchanges": {"verdict": SCANNED_VERDICTS + ("mirrored", "unscanned")}}
KAFKA_KNOWN: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "fleet": {"fleet_applied": {"action": ("takedown", "lift")}, "fleet_published": {"action": ("add", "lift")},
              "kafka_errors": {"op": ("connect", "consume", "malformed", "apply", "publish", "finding")}},
    "mirror": {"mirror_overflow": {"action": ("local", "drop")}, "kafka_errors": {"op": ("connect", "publish")}},
    "worker": {"worker_duplicates": {"kind": ("exchange", "orphan", "chunk", "finding")}},
}
SINK_COUNTERS = ("alert_delivery_failures", "alerts_delivered", "alerts_throttled", "alerts_dead_lettered")
TOPIC_COUNTERS = ("worker_rewinds", "worker_skipped", "deadletters")


class _SchedSwitches:
    """``dlp_scan_sched_switches_total{to}``: read from the process's auto pools at each scrape (the
    pools count under their own lock; a Counter here would need a callback into the metrics)."""

    def __init__(self, pools: Callable[[], list]) -> None:
        self.pools = pools

    def collect(self) -> Iterable[CounterMetricFamily]:
        c = CounterMetricFamily("dlp_scan_sched_switches", "Times scan_sched auto moved the scans to its nice "
                                "threads (to=nice: the idle ones starved) or back (to=idle).", labels=["to"])
        for to in ("nice", "idle"):
            c.add_metric([to], sum(p.router.switches[to] for p in self.pools()))
        yield c


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)            # RSS, open fds, CPU seconds, start time
        PlatformCollector(registry=r)           # python_info
        GCCollector(registry=r)                 # python_gc_*: collections by generation
        Info("dlp_build", "Build information.", registry=r).info({"version": __version__})
        self.bytes_scanned = Counter("dlp_bytes_scanned", "Response body bytes scanned (as received, before decoding).",
                                     ["tap"], registry=r)
        self.exchanges = Counter("dlp_exchanges", "Exchanges finished, by verdict.", ["tap", "verdict"], registry=r)
        self.findings = Counter("dlp_findings", "Distinct values found, by signature.", ["signature"], registry=r)
        self.trips = Counter("dlp_trips", "Responses that tripped the policy, by route mode.", ["mode"], registry=r)
        self.takedowns_active = Gauge("dlp_takedowns_active", "Resources currently taken down.", registry=r)
        self.takedowns = Counter("dlp_takedowns", "Takedowns added, by who added them.", ["source"], registry=r)
        self.refusals = Counter("dlp_refusals", "Requests refused because the resource is taken down (by key: "
                                "resource, content), or because their Host is not one of site.hosts (host).",
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
        self.reloads = Counter("dlp_reloads", "Configuration reloads (SIGHUP or a watched file changed), by result: "
                               "ok, error (invalid: nothing applied), restart_required (a key that needs a "
                               "restart changed: nothing applied).", ["result"], registry=r)
        self.reload_restart_keys = Counter("dlp_reload_restart_required", "Reloads refused because this key of "
                                           "the configuration file changed and needs a restart, by key.",
                                           ["key"], registry=r)
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
        # 1 (reason "compiled") while scans run on sensor/detect/_hscore; else 0 and why (sensor.detect.core.REASONS)
        self.compiled_core = Gauge("dlp_sensor_compiled_core", "1 while scans run on the compiled core; 0 with "
                                   "the reason the Python reference scanner runs instead.", ["reason"], registry=r)
        from sensor.detect import core as _core
        _core.export_to(self.compiled_core)
        # 1 (reason "compiled") while EDM lookups run on sensor/edm/_edmcore; else 0 and why
        self.compiled_edm = Gauge("dlp_sensor_compiled_edm", "1 while EDM lookups run on the compiled matcher; 0 "
                                  "with the reason the Python reference matcher runs instead.", ["reason"], registry=r)
        from sensor.edm import match as _edm_match
        _edm_match.export_to(self.compiled_edm)
        # scan_sched auto (sensor/exchange/autopool): which threads the scans run on, and how often that changed
        self.scan_threads_starved = Gauge("dlp_scan_threads_starved", "1 while scan_sched auto runs scans on its "
                                          "nice threads (its SCHED_IDLE ones waited for a CPU most of a job's "
                                          "time: other work saturates the cores), else 0.", registry=r)
        from sensor.exchange import workers as _workers
        self.scan_threads_starved.set_function(lambda: float(_workers.scans_starved()))
        r.register(_SchedSwitches(_workers.auto_pools))
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
        for attr, labels in KNOWN.items():
            self._prime(attr, labels)

    def expect(self, *, taps: Iterable[str] = (), sinks: Iterable[str] = (), signatures: Iterable[str] = (),
               kafka: Iterable[str] = (), topics: Iterable[str] = ()) -> None:
        """Create at 0 the series of what this process runs (its taps, alert sinks, signature ids,
        Kafka components ``fleet``/``mirror``/``worker`` and the topics a worker reads); call it
        before the metrics port opens, so that the first scrape already holds them."""
        for tap in taps:
            self._prime("bytes_scanned", {"tap": (tap,)})
            verdicts = SCANNED_VERDICTS if tap == "kafka" else BY_TAP["exchanges"]["verdict"]
            self._prime("exchanges", {"tap": (tap,), "verdict": verdicts})
        sinks = tuple(sinks)
        for attr in SINK_COUNTERS:
            self._prime(attr, {"sink": sinks})
        self._prime("findings", {"signature": tuple(signatures)})
        for component in kafka:
            for attr, labels in KAFKA_KNOWN[component].items():
                self._prime(attr, {"component": (component,), **labels} if attr == "kafka_errors" else labels)
        for attr in TOPIC_COUNTERS:
            self._prime(attr, {"topic": tuple(topics)})

    def _prime(self, attr: str, labels: Mapping[str, tuple[str, ...]]) -> None:
        """``.labels()`` for every combination: the child exists (at 0) from now on."""
        metric = getattr(self, attr)
        names = list(labels)
        for combo in itertools.product(*(labels[n] for n in names)):
            metric.labels(**dict(zip(names, combo)))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
