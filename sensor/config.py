"""The sensor's configuration file (YAML), with defaults and errors that name the key.

Command-line flags override the file; the file overrides defaults. Every section is optional::

    sensor_id: web-1                 # defaults to the host name
    state_dir: /var/lib/dlp-sensor   # registry, ledger, alert spool, HMAC key, admin token
    hmac_key: null                   # hex; else $DLP_SENSOR_HMAC_KEY; else generated in state_dir
    signatures: []                   # extra packs (files or directories)
    default_signatures: true
    policy: null                     # a policy file path, or the policy mapping inline
    proxy: {listen, upstream, mode, holdback_kib, on_error, upstream_timeout, connect_timeout,
            max_scans, block_page, tls: {cert, key}, trust_forwarded, routes: [{match, mode, on_error, holdback_kib}],
            idle_timeout: 15, max_connections: 4096, http10_buffer_mib: 64}
    extproc: {listen: 127.0.0.1:50051}                                        # the Envoy ext_proc tap
    icap: {listen: 127.0.0.1:1344, max_connections: 512, options_ttl: 300, preview: 4096, holdback_kib: 32,
           idle_timeout: 60, read_timeout: 30}   # mode/routes/block page: proxy's
    takedown: {query: ignore|keep|[names], fingerprint_kib: 64}
    ledger: {client_retention_days: 90}   # how long a client hash is kept (the counts stay)
    metrics: 127.0.0.1:9102          # also serves /healthz and /readyz
    admin: {listen: 127.0.0.1:9103, token: null}
    alerts: {source_ip: hashed, retry_initial: 0.5, retry_max: 10, sinks: [{type: stdout}, ...]}
    kafka: {bootstrap, topic_prefix: "dlp.", security_protocol, sasl_mechanism, sasl_username, sasl_password,
            ssl_cafile, ssl_certfile, ssl_keyfile, fleet: true, catchup_timeout: 30,
            mirror: {enabled: false, queue_mib: 64, overflow: local|drop},
            worker: {group: dlp-sensor-worker, partitions: 8, exchange_timeout: 60, web_port: 6066}}
"""
from __future__ import annotations

import fnmatch
import os
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sensor.yamlfile import read_yaml

from sensor.alerts.schema import SOURCE_IP_MODES
from sensor.alerts.sinks import make_sink
from sensor.enforce.resource import QueryRule


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and says why."""


MODES = ("monitor", "enforce")
ON_ERROR = ("open", "closed")


@dataclass(frozen=True)
class ProxyRoute:
    match: str
    mode: str
    on_error: str
    holdback: int
    on_error_explicit: bool = False     # on_error was written in the file (route or proxy section)

    @property
    def on_decode_limit(self) -> str:
        """What a body that could not be fully inspected gets: ``on_error`` when the operator chose
        it, else closed on an enforce route (a leak must not hide behind a decode limit) and open on
        a monitor route."""
        if self.on_error_explicit:
            return self.on_error
        return "closed" if self.mode == "enforce" else "open"


@dataclass
class ProxyConfig:
    listen: str = "127.0.0.1:8000"
    upstream: str = "http://127.0.0.1:8080"
    mode: str = "enforce"
    holdback: int = 64 << 10
    on_error: str = "open"
    on_error_explicit: bool = False
    upstream_timeout: float = 30.0
    connect_timeout: float = 5.0
    max_scans: int = 512
    block_page: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    trust_forwarded: bool = False
    routes: tuple[ProxyRoute, ...] = ()
    idle_timeout: float = 15.0          # s without a complete request head (new or keep-alive) before close
    max_connections: int = 4096         # client connections; past it the oldest idle one is closed, else 503
    http10_buffer: int = 64 << 20       # enforce: an unframed body for an HTTP/1.0 client is buffered up to this

    def route(self, path: str) -> ProxyRoute:
        for r in self.routes:
            if fnmatch.fnmatchcase(path, r.match):
                return r
        return ProxyRoute("*", self.mode, self.on_error, self.holdback, self.on_error_explicit)


@dataclass
class IcapConfig:
    listen: str = "127.0.0.1:1344"
    preview: int = 4096          # squid stalls when the preview reaches its 64 KiB read buffer
    holdback: int = 32 << 10     # echo hold-back: squid stops sending at 64 KiB not yet answered
    max_connections: int = 512   # advertised in OPTIONS and enforced: past it a connection gets 503
    options_ttl: int = 300
    idle_timeout: float = 60.0   # s a connection may wait for the next ICAP head
    read_timeout: float = 30.0   # s a started request may stall (encapsulated heads, each body piece)


@dataclass
class ExtProcConfig:
    listen: str = "127.0.0.1:50051"


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
OVERFLOW = ("local", "drop")


@dataclass
class KafkaConfig:
    """Scale-out over Kafka; off unless ``bootstrap`` (or $DLP_KAFKA_BOOTSTRAP) is set."""
    bootstrap: str | None = None
    topic_prefix: str = "dlp."
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None         # else $DLP_KAFKA_SASL_USERNAME
    sasl_password: str | None = None         # else $DLP_KAFKA_SASL_PASSWORD
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    fleet: bool = True                       # sidecars apply dlp.takedowns and publish their own
    catchup_timeout: float = 30.0            # wait this long for the takedown topic before serving
    mirror: bool = False                     # monitor routes publish exchanges instead of scanning here
    queue_bytes: int = 64 << 20
    overflow: str = "local"
    group: str = "dlp-sensor-worker"
    partitions: int = 8
    exchange_timeout: float = 60.0
    web_port: int = 6066

    def topic(self, name: str) -> str:
        return self.topic_prefix + name


@dataclass
class Config:
    sensor_id: str = field(default_factory=socket.gethostname)
    state_dir: Path | None = None
    hmac_key: str | None = None
    signatures: list[str] = field(default_factory=list)
    default_signatures: bool = True
    policy: Any = None                      # path (str) or inline mapping
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    icap: IcapConfig = field(default_factory=IcapConfig)
    extproc: ExtProcConfig = field(default_factory=ExtProcConfig)
    query: QueryRule = QueryRule()
    fingerprint_bytes: int = 64 << 10
    client_retention_days: float = 90.0
    metrics: str | None = "127.0.0.1:9102"
    admin: str | None = "127.0.0.1:9103"
    admin_token: str | None = None
    source_ip: str = "hashed"
    retry_initial: float = 0.5
    retry_max: float = 10.0
    sinks: list[dict] = field(default_factory=lambda: [{"type": "stdout"}])
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    path: Path | None = None                # the file this came from (watched for changes)


def _check(cond: bool, where: str, why: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {why}")


def _keys(raw: Any, where: str, known: set[str]) -> dict:
    _check(isinstance(raw, dict), where, "must be a mapping")
    bad = set(raw) - known
    _check(not bad, where, f"unknown key(s) {sorted(bad)}; known: {sorted(known)}")
    return raw


def parse_hostport(v: Any, where: str) -> str:
    _check(isinstance(v, str) and ":" in v, where, f"must be HOST:PORT (got {v!r})")
    host, _, port = v.rpartition(":")
    _check(port.isdigit() and 0 < int(port) < 65536, where, f"port must be 1-65535 (got {port!r})")
    return v


def _num(v: Any, where: str, positive: bool = True) -> float:
    _check(isinstance(v, (int, float)) and not isinstance(v, bool) and (v > 0 if positive else v >= 0), where,
           f"must be a {'positive' if positive else 'non-negative'} number (got {v!r})")
    return float(v)


def _proxy(raw: dict, where: str) -> ProxyConfig:
    raw = _keys(raw, where, {"listen", "upstream", "mode", "holdback_kib", "on_error", "upstream_timeout",
                             "connect_timeout", "max_scans", "block_page", "tls", "trust_forwarded", "routes",
                             "idle_timeout", "max_connections", "http10_buffer_mib"})
    p = ProxyConfig()
    if "listen" in raw:
        p.listen = parse_hostport(raw["listen"], f"{where}.listen")
    if "upstream" in raw:
        u = raw["upstream"]
        _check(isinstance(u, str) and u.startswith(("http://", "https://")), f"{where}.upstream",
               f"must be an http:// or https:// URL (got {u!r})")
        p.upstream = u.rstrip("/")
    if "mode" in raw:
        _check(raw["mode"] in MODES, f"{where}.mode", f"must be one of {MODES} (got {raw['mode']!r})")
        p.mode = raw["mode"]
    if "on_error" in raw:
        _check(raw["on_error"] in ON_ERROR, f"{where}.on_error", f"must be one of {ON_ERROR}")
        p.on_error = raw["on_error"]
        p.on_error_explicit = True
    if "holdback_kib" in raw:
        p.holdback = int(_num(raw["holdback_kib"], f"{where}.holdback_kib", positive=False)) << 10
    for k in ("upstream_timeout", "connect_timeout", "idle_timeout"):
        if k in raw:
            setattr(p, k, _num(raw[k], f"{where}.{k}"))
    for k in ("max_scans", "max_connections"):
        if k in raw:
            setattr(p, k, int(_num(raw[k], f"{where}.{k}")))
    if "http10_buffer_mib" in raw:
        p.http10_buffer = int(_num(raw["http10_buffer_mib"], f"{where}.http10_buffer_mib", positive=False) * (1 << 20))
    if "block_page" in raw:
        _check(Path(str(raw["block_page"])).is_file(), f"{where}.block_page", f"no such file {raw['block_page']!r}")
        p.block_page = str(raw["block_page"])
    if "tls" in raw:
        tls = _keys(raw["tls"], f"{where}.tls", {"cert", "key"})
        for k in ("cert", "key"):
            _check(isinstance(tls.get(k), str) and Path(tls[k]).is_file(), f"{where}.tls.{k}",
                   f"must name a readable PEM file (got {tls.get(k)!r})")
        p.tls_cert, p.tls_key = tls["cert"], tls["key"]
    if "trust_forwarded" in raw:
        _check(isinstance(raw["trust_forwarded"], bool), f"{where}.trust_forwarded", "must be true or false")
        p.trust_forwarded = raw["trust_forwarded"]
    routes = []
    for i, r in enumerate(raw.get("routes") or []):
        rw = f"{where}.routes[{i}]"
        r = _keys(r, rw, {"match", "mode", "on_error", "holdback_kib"})
        _check(isinstance(r.get("match"), str), f"{rw}.match", "required: a path glob such as /exports/*")
        mode = r.get("mode", p.mode)
        _check(mode in MODES, f"{rw}.mode", f"must be one of {MODES}")
        onerr = r.get("on_error", p.on_error)
        _check(onerr in ON_ERROR, f"{rw}.on_error", f"must be one of {ON_ERROR}")
        hb = int(_num(r["holdback_kib"], f"{rw}.holdback_kib", positive=False)) << 10 if "holdback_kib" in r \
            else p.holdback
        routes.append(ProxyRoute(r["match"], mode, onerr, hb, "on_error" in r or p.on_error_explicit))
    p.routes = tuple(routes)
    return p


def parse_config(raw: Any, where: str = "config") -> Config:
    if raw is None:
        raw = {}
    raw = _keys(raw, where, {"sensor_id", "state_dir", "hmac_key", "signatures", "default_signatures", "policy",
                             "proxy", "icap", "extproc", "takedown", "ledger", "metrics", "admin",
                             "alerts", "kafka"})
    c = Config()
    if "sensor_id" in raw:
        _check(isinstance(raw["sensor_id"], str) and raw["sensor_id"], f"{where}.sensor_id", "must be a string")
        c.sensor_id = raw["sensor_id"]
    if raw.get("state_dir"):
        c.state_dir = Path(str(raw["state_dir"]))
    if raw.get("hmac_key"):
        c.hmac_key = str(raw["hmac_key"])
    if "signatures" in raw:
        sigs = raw["signatures"] or []
        _check(isinstance(sigs, list) and all(isinstance(s, str) for s in sigs), f"{where}.signatures",
               "must be a list of paths")
        c.signatures = sigs
    if "default_signatures" in raw:
        c.default_signatures = bool(raw["default_signatures"])
    c.policy = raw.get("policy")
    _check(c.policy is None or isinstance(c.policy, (str, dict)), f"{where}.policy",
           "must be a file path or a mapping")
    if "proxy" in raw:
        c.proxy = _proxy(raw["proxy"], f"{where}.proxy")
    if "icap" in raw:
        ic = _keys(raw["icap"], f"{where}.icap", {"listen", "max_connections", "options_ttl", "preview", "holdback_kib",
                                                  "idle_timeout", "read_timeout"})
        if "listen" in ic:
            c.icap.listen = parse_hostport(ic["listen"], f"{where}.icap.listen")
        for k in ("max_connections", "options_ttl", "preview"):
            if k in ic:
                setattr(c.icap, k, int(_num(ic[k], f"{where}.icap.{k}")))
        for k in ("idle_timeout", "read_timeout"):
            if k in ic:
                setattr(c.icap, k, _num(ic[k], f"{where}.icap.{k}"))
        if "holdback_kib" in ic:
            c.icap.holdback = int(_num(ic["holdback_kib"], f"{where}.icap.holdback_kib", positive=False)) << 10
    if "extproc" in raw:
        ep = _keys(raw["extproc"], f"{where}.extproc", {"listen"})
        if "listen" in ep:
            c.extproc.listen = parse_hostport(ep["listen"], f"{where}.extproc.listen")
    if "takedown" in raw:
        t = _keys(raw["takedown"], f"{where}.takedown", {"query", "fingerprint_kib"})
        try:
            c.query = QueryRule.parse(t.get("query"), f"{where}.takedown.query")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if "fingerprint_kib" in t:
            c.fingerprint_bytes = int(_num(t["fingerprint_kib"], f"{where}.takedown.fingerprint_kib")) << 10
    if "ledger" in raw:
        led = _keys(raw["ledger"], f"{where}.ledger", {"client_retention_days"})
        if "client_retention_days" in led:
            c.client_retention_days = _num(led["client_retention_days"], f"{where}.ledger.client_retention_days")
            _check(c.client_retention_days > 0, f"{where}.ledger.client_retention_days",
                   "must be > 0 (days a client hash is kept)")
    if "metrics" in raw:
        c.metrics = None if raw["metrics"] in (None, False) else parse_hostport(raw["metrics"], f"{where}.metrics")
    if "admin" in raw:
        a = raw["admin"]
        if a in (None, False):
            c.admin = None
        else:
            a = _keys(a, f"{where}.admin", {"listen", "token"})
            if "listen" in a:
                c.admin = parse_hostport(a["listen"], f"{where}.admin.listen")
            if a.get("token"):
                _check(isinstance(a["token"], str) and len(a["token"]) >= 16, f"{where}.admin.token",
                       "must be a string of at least 16 characters")
                c.admin_token = a["token"]
    if "alerts" in raw:
        a = _keys(raw["alerts"], f"{where}.alerts", {"source_ip", "retry_initial", "retry_max", "sinks"})
        if "source_ip" in a:
            _check(a["source_ip"] in SOURCE_IP_MODES, f"{where}.alerts.source_ip",
                   f"must be one of {SOURCE_IP_MODES}")
            c.source_ip = a["source_ip"]
        for k in ("retry_initial", "retry_max"):
            if k in a:
                setattr(c, k, _num(a[k], f"{where}.alerts.{k}"))
        if "sinks" in a:
            sinks = a["sinks"] or []
            _check(isinstance(sinks, list), f"{where}.alerts.sinks", "must be a list")
            names = set()
            for i, s in enumerate(sinks):
                try:
                    name = make_sink(s, f"{where}.alerts.sinks[{i}]").name
                except ValueError as e:
                    raise ConfigError(str(e)) from None
                _check(name not in names, f"{where}.alerts.sinks[{i}].name",
                       f"two sinks are called {name!r}; give one a 'name'")
                names.add(name)
            c.sinks = sinks
    if "kafka" in raw:
        c.kafka = _kafka(raw["kafka"], f"{where}.kafka")
    return c


def _kafka(raw: Any, where: str) -> KafkaConfig:
    raw = _keys(raw, where, {"bootstrap", "topic_prefix", "security_protocol", "sasl_mechanism", "sasl_username",
                             "sasl_password", "ssl_cafile", "ssl_certfile", "ssl_keyfile", "fleet",
                             "catchup_timeout", "mirror", "worker"})
    k = KafkaConfig()
    if raw.get("bootstrap"):
        k.bootstrap = _bootstrap(raw["bootstrap"], f"{where}.bootstrap")
    if "topic_prefix" in raw:
        _check(isinstance(raw["topic_prefix"], str) and all(ch.isalnum() or ch in "._-" for ch in raw["topic_prefix"]),
               f"{where}.topic_prefix", "must use only letters, digits, '.', '_' and '-'")
        k.topic_prefix = raw["topic_prefix"]
    if "security_protocol" in raw:
        _check(raw["security_protocol"] in SECURITY_PROTOCOLS, f"{where}.security_protocol",
               f"must be one of {SECURITY_PROTOCOLS}")
        k.security_protocol = raw["security_protocol"]
    if raw.get("sasl_mechanism") is not None:
        _check(raw["sasl_mechanism"] in SASL_MECHANISMS, f"{where}.sasl_mechanism", f"must be one of {SASL_MECHANISMS}")
        k.sasl_mechanism = raw["sasl_mechanism"]
    for f in ("sasl_username", "sasl_password"):
        if raw.get(f) is not None:
            _check(isinstance(raw[f], str), f"{where}.{f}", "must be a string")
            setattr(k, f, raw[f])
    for f in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        if raw.get(f) is not None:
            _check(isinstance(raw[f], str) and Path(raw[f]).is_file(), f"{where}.{f}",
                   f"must name a readable PEM file (got {raw[f]!r})")
            setattr(k, f, raw[f])
    if k.security_protocol.startswith("SASL"):
        _check(k.sasl_mechanism is not None, f"{where}.sasl_mechanism",
               f"required when security_protocol is {k.security_protocol}")
    if "fleet" in raw:
        _check(isinstance(raw["fleet"], bool), f"{where}.fleet", "must be true or false")
        k.fleet = raw["fleet"]
    if "catchup_timeout" in raw:
        k.catchup_timeout = _num(raw["catchup_timeout"], f"{where}.catchup_timeout", positive=False)
    if "mirror" in raw:
        m = _keys(raw["mirror"], f"{where}.mirror", {"enabled", "queue_mib", "overflow"})
        if "enabled" in m:
            _check(isinstance(m["enabled"], bool), f"{where}.mirror.enabled", "must be true or false")
            k.mirror = m["enabled"]
        if "queue_mib" in m:
            k.queue_bytes = int(_num(m["queue_mib"], f"{where}.mirror.queue_mib") * (1 << 20))
        if "overflow" in m:
            _check(m["overflow"] in OVERFLOW, f"{where}.mirror.overflow", f"must be one of {OVERFLOW}")
            k.overflow = m["overflow"]
    if "worker" in raw:
        w = _keys(raw["worker"], f"{where}.worker", {"group", "partitions", "exchange_timeout", "web_port"})
        if "group" in w:
            _check(isinstance(w["group"], str) and w["group"], f"{where}.worker.group", "must be a non-empty string")
            k.group = w["group"]
        if "partitions" in w:
            k.partitions = int(_num(w["partitions"], f"{where}.worker.partitions"))
        if "exchange_timeout" in w:
            k.exchange_timeout = _num(w["exchange_timeout"], f"{where}.worker.exchange_timeout")
        if "web_port" in w:
            k.web_port = int(_num(w["web_port"], f"{where}.worker.web_port"))
    return k


def _bootstrap(v: Any, where: str) -> str:
    _check(isinstance(v, str) and v.strip(), where, "must be HOST:PORT[,HOST:PORT...]")
    for hp in v.split(","):
        parse_hostport(hp.strip(), where)
    return ",".join(hp.strip() for hp in v.split(","))


def load_config(path: Path | None) -> Config:
    if path is None:
        return Config()
    raw = read_yaml(Path(path), ConfigError)
    c = parse_config(raw, str(path))
    c.path = Path(path)
    return c


def with_overrides(c: Config, **flags: Any) -> Config:
    """Apply command-line flags (None = not given) on top of the file."""
    proxy = c.proxy
    if flags.get("upstream"):
        proxy = replace(proxy, upstream=_proxy({"upstream": flags["upstream"]}, "--upstream").upstream)
    if flags.get("listen"):
        proxy = replace(proxy, listen=parse_hostport(flags["listen"], "--listen"))
    if flags.get("extproc_listen"):
        c = replace(c, extproc=replace(c.extproc, listen=parse_hostport(flags["extproc_listen"], "--listen")))
    if flags.get("icap_listen"):
        c = replace(c, icap=replace(c.icap, listen=parse_hostport(flags["icap_listen"], "--listen")))
    if flags.get("mode"):
        proxy = replace(proxy, mode=flags["mode"])
    c = replace(c, proxy=proxy)
    if flags.get("state_dir"):
        c = replace(c, state_dir=Path(flags["state_dir"]))
    if flags.get("metrics"):
        c = replace(c, metrics=None if flags["metrics"] == "off" else parse_hostport(flags["metrics"], "--metrics"))
    if flags.get("admin"):
        c = replace(c, admin=None if flags["admin"] == "off" else parse_hostport(flags["admin"], "--admin"))
    kafka = c.kafka
    boot = flags.get("kafka") or (None if kafka.bootstrap else os.environ.get("DLP_KAFKA_BOOTSTRAP"))
    if boot:
        kafka = replace(kafka, bootstrap=_bootstrap(boot, "--kafka" if flags.get("kafka") else "$DLP_KAFKA_BOOTSTRAP"))
    for f in ("sasl_username", "sasl_password"):
        env = os.environ.get(f"DLP_KAFKA_{f.upper()}")
        if getattr(kafka, f) is None and env:
            kafka = replace(kafka, **{f: env})
    c = replace(c, kafka=kafka)
    if c.state_dir is None:
        from sensor.detect.keys import default_state_dir
        c = replace(c, state_dir=Path(os.environ.get("DLP_SENSOR_STATE_DIR") or default_state_dir()))
    return c
