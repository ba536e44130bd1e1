"""What a reload may change: every key of the configuration either reloads or needs a restart.

A reload (SIGHUP, or a watched file changing) re-reads the file, re-applies the command-line flags
the process was started with, and compares the result with the running configuration key by key.
If any key that needs a restart changed (a listener, TLS, the state dir, the HMAC key, Kafka…) the
whole reload is refused — nothing is applied, one log line names the keys, and
``dlp_reloads_total{result="restart_required"}`` and ``dlp_reload_restart_required_total{key}``
count it — so the running process never half-applies a file and never claims to serve one it does
not. Otherwise everything reloads: signatures, policy, indexes, routes and modes, hold-back, error
behaviour, timeouts read per request, the block page, the query rule, retention, the alert sinks.

Keys are named by their path in the file (``proxy.holdback_kib``), from the runtime dataclasses'
fields (``Config.proxy.holdback``) through :data:`RELOADS` and :data:`RESTART`. A field neither table
names (a key added later) needs a restart — the safe side — and counts as ``other``; a test keeps
the tables complete.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from sensor.config import Config, load_config, with_overrides
from sensor.metrics import RESTART_KEYS

# runtime field path -> the file's key path
RELOADS: dict[str, str] = {
    "signatures": "signatures", "default_signatures": "default_signatures", "policy": "policy",
    "scan_workers": "scan_workers",                                     # (h/offloop) read per exchange
    "scan_nice": "scan_nice",                                           # (h/latency) read per exchange
    "scan_sched": "scan_sched",                                         # (h/sched) read per exchange: a new pool
    "indexes": "indexes", "query": "takedown.query", "fingerprint_bytes": "takedown.fingerprint_kib",
    "client_retention_days": "ledger.client_retention_days", "admin_token": "admin.token",
    "source_ip": "alerts.source_ip", "retry_initial": "alerts.retry_initial", "retry_max": "alerts.retry_max",
    "sinks": "alerts.sinks",
    "proxy.mode": "proxy.mode", "proxy.holdback": "proxy.holdback_kib", "proxy.on_error": "proxy.on_error",
    "proxy.on_error_explicit": "proxy.on_error", "proxy.upstream_timeout": "proxy.upstream_timeout",
    "proxy.connect_timeout": "proxy.connect_timeout", "proxy.max_scans": "proxy.max_scans",
    "proxy.max_scans_per_client": "proxy.max_scans_per_client",     # (h/session) read per exchange
    "proxy.block_page": "proxy.block_page", "proxy.trust_forwarded": "proxy.trust_forwarded",
    "proxy.routes": "proxy.routes", "proxy.http10_buffer": "proxy.http10_buffer_mib",
    "icap.preview": "icap.preview", "icap.holdback": "icap.holdback_kib",
    "clients.trusted_proxies": "clients.trusted_proxies", "clients.header": "clients.header",
    "clients.trust_any_peer": "proxy.trust_forwarded",                      # read per request
    "site.hosts": "site.hosts", "site.unknown_host": "site.unknown_host",      # read per request
    **{f"exposure.{k}": f"exposure.{k}" for k in ("enabled", "window_s", "max_resources", "max_clients",
                                                  "max_records", "max_ids", "min_response_records")},
}
RESTART: dict[str, str] = {
    "sensor_id": "sensor_id", "log_format": "log_format", "state_dir": "state_dir", "start_empty": "start_empty",
    "hmac_key": "hmac_key", "metrics": "metrics", "admin": "admin.listen",
    "proxy.listen": "proxy.listen", "proxy.upstream": "proxy.upstream", "proxy.tls_cert": "proxy.tls",
    "proxy.tls_key": "proxy.tls", "proxy.idle_timeout": "proxy.idle_timeout",
    "proxy.max_connections": "proxy.max_connections",
    **{f"icap.{k}": f"icap.{k}" for k in ("listen", "max_connections", "options_ttl", "idle_timeout",
                                            "read_timeout")},
    "extproc.listen": "extproc.listen",
    **{f"kafka.{k}": f"kafka.{k}" for k in ("bootstrap", "topic_prefix", "security_protocol", "sasl_mechanism",
                                             "sasl_username", "sasl_password", "ssl_cafile", "ssl_certfile",
                                             "ssl_keyfile", "fleet", "catchup_timeout")},
    "kafka.mirror": "kafka.mirror.enabled", "kafka.queue_bytes": "kafka.mirror.queue_mib",
    "kafka.overflow": "kafka.mirror.overflow", "kafka.group": "kafka.worker.group",
    "kafka.partitions": "kafka.worker.partitions", "kafka.exchange_timeout": "kafka.worker.exchange_timeout",
    "kafka.web_port": "kafka.worker.web_port", "kafka.roles": "kafka.worker.roles",
}
NOT_KEYS = frozenset({"path", "flags"})     # where the configuration came from, not what it says


def leaves(c: Any, prefix: str = "") -> dict[str, Any]:
    """Runtime field path -> value, through the nested section dataclasses (routes, sinks and
    indexes are values: compared whole)."""
    out: dict[str, Any] = {}
    for f in fields(c):
        path = prefix + f.name
        if not prefix and f.name in NOT_KEYS:
            continue
        v = getattr(c, f.name)
        if is_dataclass(v) and not isinstance(v, type) and path not in RELOADS and path not in RESTART:
            out.update(leaves(v, path + "."))
        else:
            out[path] = v
    return out


def changed(old: Config, new: Config) -> list[str]:
    """Runtime field paths whose value differs between two configurations."""
    a, b = leaves(old), leaves(new)
    return [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]


def restart_keys(old: Config, new: Config) -> list[str]:
    """The file's key paths that changed and need a restart (unknown fields by their runtime path)."""
    out = [RESTART.get(k, k) for k in changed(old, new) if k not in RELOADS]
    return list(dict.fromkeys(out))


def metric_key(key: str) -> str:
    """The ``key`` label of ``dlp_reload_restart_required_total``: a declared key path, else ``other``."""
    return key if key in RESTART_KEYS else "other"


def reread(current: Config, extra_indexes: list | tuple = ()) -> Config:
    """The configuration file as the process would read it now: the file, then the flags it was
    started with (``--listen``, ``--index``, ``--state-dir``…) on top. ConfigError names the key.
    A configuration built in code (no recorded flags) keeps its state dir and ``extra_indexes``."""
    fresh = load_config(current.path)
    if current.flags is not None:
        return with_overrides(fresh, **current.flags)
    c = with_overrides(fresh, state_dir=str(current.state_dir))
    c.indexes = [*c.indexes, *extra_indexes]
    c.flags = None
    return c


FileStamp = tuple[int, int, int] | int


def file_stamps(paths: Iterable[str | Path]) -> dict[str, FileStamp]:
    """What a watcher compares between two looks at its files: modification time, size and inode
    (a file replaced by a rename can keep its mtime), or -1 for a file that cannot be read. Used by
    the sidecar's watch (configuration, pack, policy, indexes) and the Kafka worker's index holder."""
    out: dict[str, FileStamp] = {}
    for path in paths:
        try:
            st = Path(path).stat()
            out[str(path)] = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            out[str(path)] = -1
    return out
