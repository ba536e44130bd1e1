"""The sensor's configuration file (YAML): one declarative schema, defaults, and errors that name the key.

Command-line flags override the file; the file overrides defaults. Every section is optional::

    sensor_id: web-1                 # defaults to the host name
    log_format: text                 # text | json (one JSON object per line); --log-format overrides
    state_dir: /var/lib/dlp-sensor   # registry, ledger, alert spool, HMAC key, admin token
    start_empty: false               # true: a damaged database there is moved aside, not refused
    hmac_key_file: /run/secrets/hmac # hex; or hmac_key_env: VAR; else $DLP_SENSOR_HMAC_KEY; else generated
    signatures: []                   # extra packs (files or directories)
    default_signatures: true
    policy: null                     # a policy file path, or the policy mapping inline
    scan_workers: null               # threads that scan bodies off the event loop; null: one per core, 0: none
    scan_sched: auto                 # scan threads below the event loop: auto (idle while not starved, else nice) | nice (scan_nice steps) | idle (SCHED_IDLE)
    scan_nice: 10                    # with scan_sched nice (auto's nice threads), this many nice steps below the loop (0: same priority)
    proxy: {listen, upstream, mode, holdback_kib, on_error, upstream_timeout, connect_timeout,
            max_scans, block_page, tls: {cert, key}, trust_forwarded, routes: [{match, mode, on_error, holdback_kib}],
            idle_timeout: 15, max_connections: 4096, http10_buffer_mib: 64}
    extproc: {listen: 127.0.0.1:50051}
    icap: {listen: 127.0.0.1:1344, max_connections: 512, options_ttl: 300, preview: 4096, holdback_kib: 32}
    takedown: {query: ignore|keep|[names], page_params: [page, offset, cursor, ...], fingerprint_kib: 64}
    site: {hosts: [www.example.gov, example.gov], unknown_host: fold|refuse}
    exposure: {enabled: true, window_s: 3600, max_resources, max_clients, max_records, max_ids}
    ledger: {client_retention_days: 90}
    clients: {trusted_proxies: [10.0.0.0/8, ...], header: x-forwarded-for}   # forwarded headers: off by default
    metrics: 127.0.0.1:9102          # also serves /healthz and /readyz
    admin: {listen: 127.0.0.1:9103, token_file: /run/secrets/admin-token}
    alerts: {source_ip: hashed, retry_initial: 0.5, retry_max: 10, sinks: [{type: stdout}, ...]}
    kafka: {bootstrap, topic_prefix, security_protocol, sasl_mechanism, sasl_username, sasl_password_env, ...}

Design. The file is described by pydantic models (``ConfigFile`` and its sections, the sinks a
union discriminated by ``type``): they give the checks, the defaults, the JSON Schema
(:func:`json_schema`, ``dlp-sensor config schema``) and the reference (docs/config-reference.md)
from one place. The rest of the code keeps using the plain dataclasses below (``Config``,
``ProxyConfig``…): their shape differs from the file's on purpose (sizes in bytes not KiB, the
proxy's TLS pair flattened, ``admin`` a HOST:PORT, the Kafka mirror a flag) and code and tests
build and ``replace()`` them directly, so a validated file is converted into them rather than
every call site being rewritten. Fields with the same name in a section model and its dataclass
are copied over without further code, so a new key needs its model field and its dataclass field.

Secrets (``hmac_key``, ``admin.token``, ``kafka.sasl_password``, every sink credential) are never
required inline: each ``NAME`` also takes ``NAME_file: /path`` (the file's contents, one trailing
newline stripped) or ``NAME_env: VARIABLE``; at most one of the three. Errors name the key that
failed and never print a secret's value.
"""
from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union
from urllib.parse import urlsplit

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError,
                      ValidationInfo, WrapValidator, field_validator, model_validator)
from pydantic_core import PydanticCustomError

from sensor.alerts.schema import SOURCE_IP_MODES
from sensor.alerts.sinks import PAGERDUTY_URL, SINK_TYPES
from sensor.enforce.exposure import ExposureSettings
from sensor.enforce.resource import PAGE_PARAMS, UNKNOWN_HOST, QueryRule, SiteRule
from sensor.yamlfile import read_yaml


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and says why."""


MODES = ("monitor", "enforce")
ON_ERROR = ("open", "closed")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
OVERFLOW = ("local", "drop")
SECRET_SUFFIXES = ("_file", "_env")


# ---------------------------------------------------------------------------------------------
# The runtime configuration: what the rest of the code reads.
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProxyRoute:
    match: str
    mode: str
    on_error: str
    holdback: int
    on_error_explicit: bool = False     # on_error was written in the file (route or proxy section)
    trip: tuple[tuple[str, int], ...] = ()      # threshold overrides on this route (policy keys)
    alert: tuple[tuple[str, int], ...] = ()
    allow: frozenset[str] = frozenset()         # signature ids not counted on this route

    @property
    def on_decode_limit(self) -> str:
        """What a body that could not be fully inspected gets: ``on_error`` when the operator chose
        it, else closed on an enforce route (a leak must not hide behind a decode limit) and open on
        a monitor route (the same as ``on_error``'s own default)."""
        if self.on_error_explicit:
            return self.on_error
        return "closed" if self.mode == "enforce" else "open"


def default_on_error(mode: str) -> str:
    """``on_error`` when neither the route nor the proxy section sets it: an enforce route fails
    closed (an overload or a scanner fault must not turn enforcement off), a monitor route fails
    open (it never delays a byte)."""
    return "closed" if mode == "enforce" else "open"


@dataclass
class ProxyConfig:
    listen: str = "127.0.0.1:8000"
    upstream: str = "http://127.0.0.1:8080"
    mode: str = "enforce"
    holdback: int = 64 << 10
    on_error: str | None = None         # None: default_on_error(the route's mode); read routes, not this
    on_error_explicit: bool = False
    upstream_timeout: float = 30.0
    connect_timeout: float = 5.0
    max_scans: int = 512
    max_scans_per_client: int = 64      # one client's scans in flight; past it 503 + Retry-After
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
        return ProxyRoute("*", self.mode, self.on_error or default_on_error(self.mode), self.holdback,
                          self.on_error_explicit)


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
class ClientsConfig:
    """Who the client is (sensor.exchange.identity): forwarded headers are read only from a
    trusted proxy. ``trust_any_peer`` is the deprecated ``proxy.trust_forwarded``: every peer is
    trusted for one hop."""
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    header: str = "x-forwarded-for"
    trust_any_peer: bool = False


@dataclass
class ExtProcConfig:
    listen: str = "127.0.0.1:50051"


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
    roles: tuple[str, ...] = ("scan", "ledger")  # what a worker runs (sensor.stream.worker): scan, ledger or both

    def topic(self, name: str) -> str:
        return self.topic_prefix + name


@dataclass
class Config:
    sensor_id: str = field(default_factory=socket.gethostname)
    log_format: str = "text"                # text | json
    state_dir: Path | None = None
    start_empty: bool = False               # a damaged state database is moved aside instead of refused
    hmac_key: str | None = None
    signatures: list[str] = field(default_factory=list)
    default_signatures: bool = True
    policy: Any = None                      # path (str) or inline mapping
    scan_workers: int | None = None         # scan threads (sensor.exchange.workers); None: one per core, 0: on the loop
    scan_sched: str = "auto"                # how they run below the loop: auto | nice | idle (sensor.exchange.workers)
    scan_nice: int = 10                     # their CPU priority below the loop's with scan_sched "nice"
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    icap: IcapConfig = field(default_factory=IcapConfig)
    extproc: ExtProcConfig = field(default_factory=ExtProcConfig)
    clients: ClientsConfig = field(default_factory=ClientsConfig)
    query: QueryRule = QueryRule()
    site: SiteRule = SiteRule()
    exposure: ExposureSettings = ExposureSettings()
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
    indexes: list = field(default_factory=list)   # EDM: sensor.edm.match.IndexSpec, from `indexes:` and --index
    flags: dict | None = None               # the command-line flags given (with_overrides), re-applied on reload


# ---------------------------------------------------------------------------------------------
# Value types: each one checks, says why in the project's words, and exports to JSON Schema.
# ---------------------------------------------------------------------------------------------

def _problem(why: str, key: str | None = None) -> PydanticCustomError:
    """An error whose text is ours; ``key`` names a key below the one pydantic reports."""
    ctx: dict[str, Any] = {"why": why}
    if key:
        ctx["key"] = key
    return PydanticCustomError("config", "{why}", ctx)


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _described(why: str, echo: bool = True):
    """Replace pydantic's wording for a value by ``why (got VALUE)``; ``echo=False`` where it may be a secret."""
    def wrap(v: Any, handler: Any) -> Any:
        try:
            return handler(v)
        except ValidationError:
            raise _problem(f"{why} (got {_show(v)})" if echo else why) from None
    return WrapValidator(wrap)


def _resolving(info: ValidationInfo) -> bool:
    """False under ``parse_config(..., resolve=False)``: files and environment are not consulted."""
    return not (info.context or {}).get("offline", False)


def whole(ge: int | None = None, gt: int | None = None, le: int | None = None) -> Any:
    """An integer in range; a YAML float or string is refused (``max_scans: 1.5`` is a mistake, not 1)."""
    bound = " and ".join(b for b in (f">= {ge}" if ge is not None else "", f"> {gt}" if gt is not None else "",
                                     f"<= {le}" if le is not None else "") if b)
    return Annotated[int, Field(ge=ge, gt=gt, le=le), _described(f"must be a whole number {bound}".strip())]


def number(ge: float | None = None, gt: float | None = None) -> Any:
    """A float or integer in range (seconds, days, MiB); strings such as ``5m`` are refused."""
    bound = f">= {ge:g}" if ge is not None else f"> {gt:g}" if gt is not None else ""
    return Annotated[float, Field(ge=ge, gt=gt), _described(f"must be a number {bound}".strip())]


def choice(values: tuple[str, ...]) -> Any:
    """One of a few words; the JSON Schema lists them as an enum."""
    return Annotated[Literal[values], _described(f"must be one of {', '.join(values)}")]


Flag = Annotated[bool, _described("must be true or false")]
Text = Annotated[str, Field(min_length=1), _described("must be a non-empty string")]
Mode = choice(MODES)
OnError = choice(ON_ERROR)


def hostport_problem(v: Any) -> str | None:
    """Why ``v`` is not HOST:PORT, or None (shared by the file's keys and the command-line flags)."""
    if not (isinstance(v, str) and ":" in v):
        return f"must be HOST:PORT (got {_show(v)})"
    port = v.rpartition(":")[2]
    if not (port.isdigit() and 0 < int(port) < 65536):
        return f"port must be 1-65535 (got {port!r})"
    return None


def _hostport(v: Any) -> str:
    why = hostport_problem(v)
    if why:
        raise _problem(why)
    return v


def url_problem(v: Any, secret: bool = False) -> str | None:
    """Why ``v`` is not an http(s) URL with a host, or None; a secret URL is never quoted back."""
    got = "" if secret else f" (got {_show(v)})"
    if not isinstance(v, str):
        return "must be an http:// or https:// URL" + got
    try:
        parts = urlsplit(v)
        parts.port                                              # raises on a port that is not 0-65535
    except ValueError:
        return "must be an http:// or https:// URL with a numeric port" + got
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL" + got
    return None


def _url(v: Any) -> str:
    why = url_problem(v)
    if why:
        raise _problem(why)
    return v


def _existing_file(v: Any, info: ValidationInfo) -> str:
    if _resolving(info) and not Path(v).is_file():
        raise _problem(f"no such file {v!r}")
    return v


HostPort = Annotated[str, Field(pattern=r"^.*:[0-9]{1,5}$"),
                     _described("must be HOST:PORT"), AfterValidator(_hostport)]
HttpUrl = Annotated[str, Field(pattern=r"^https?://", json_schema_extra={"format": "uri"}),
                    _described("must be an http:// or https:// URL"), AfterValidator(_url)]
PortNumber = whole(ge=1, le=65535)
FilePath = Annotated[str, _described("must be a file path"), AfterValidator(_existing_file)]


def _none_is_empty(v: Any) -> Any:
    return [] if v is None else v


def _off_is_none(v: Any) -> Any:
    return None if v is False else v


# ---------------------------------------------------------------------------------------------
# The file's sections.
# ---------------------------------------------------------------------------------------------

class Section(BaseModel):
    """A mapping of the file: unknown (typo'd) keys are refused, values are taken as YAML typed them."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=False, defer_build=True)
    # Secrets: name -> required? Each takes NAME, NAME_file or NAME_env (fields declared per model).
    secrets: ClassVar[dict[str, bool]] = {}

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise _problem(f"must be a mapping (got {_show(data)})")
        known = sorted(f.alias or n for n, f in cls.model_fields.items())
        for k in data:
            if k not in known:
                near = difflib.get_close_matches(str(k), known, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise _problem(f"unknown key{hint} (known: {', '.join(known)})", key=str(k))
        return data

    @field_validator("*", mode="after")
    @classmethod
    def _check_secret_field(cls, v: Any, info: ValidationInfo) -> Any:
        """Each secret form on its own, so that its errors come with every other key's."""
        for secret in cls.secrets:
            if v is None or info.field_name not in (secret, secret + "_file", secret + "_env"):
                continue
            if info.field_name == secret:
                why = cls.check_secret(secret, v)
            elif not _resolving(info):
                return v
            else:
                why = cls.check_secret(secret, read_secret(info.field_name, v))
                why = why and f"the value it gives {why}"
            if why:
                raise _problem(why)
        return v

    @model_validator(mode="after")
    def _resolve_secrets(self, info: ValidationInfo) -> Any:
        for name, required in self.secrets.items():
            given = [k for k in (name, name + "_file", name + "_env") if getattr(self, k) is not None]
            if len(given) > 1:
                raise _problem(f"give one of {', '.join(given)}, not several", key=given[1])
            if not given:
                if required:
                    raise _problem(f"required: {name}, {name}_file (a file holding it) or {name}_env "
                                   f"(an environment variable holding it)", key=name)
                continue
            if given[0] != name and _resolving(info):          # checked by _check_secret_field
                setattr(self, name, read_secret(given[0], getattr(self, given[0]), key=given[0]))
        return self

    @classmethod
    def check_secret(cls, name: str, value: str) -> str | None:
        """Why a resolved secret is unusable (without quoting it), or None."""
        return None

    def model_dump_runtime(self) -> dict:
        """Values with resolved secrets, without the ``*_file``/``*_env`` references and unset options."""
        drop = {n + s for n in self.secrets for s in SECRET_SUFFIXES}
        return {k: v for k, v in self.model_dump(exclude=drop).items() if v is not None}


def read_secret(source: str, ref: str, key: str | None = None) -> str:
    """The secret that ``NAME_file: PATH`` or ``NAME_env: VAR`` points at; errors never quote it."""
    if source.endswith("_file"):
        try:
            text = Path(ref).read_text(encoding="utf-8")
        except OSError as e:
            raise _problem(f"cannot read {ref!r}: {e.strerror}", key=key) from None
        except UnicodeDecodeError:
            raise _problem(f"{ref!r} is not UTF-8 text", key=key) from None
        text = text[:-1] if text.endswith("\n") else text
        text = text[:-1] if text.endswith("\r") else text
        if not text:
            raise _problem(f"{ref!r} is empty", key=key)
        return text
    if not ref:
        raise _problem("must name an environment variable", key=key)
    value = os.environ.get(ref)
    if not value:
        raise _problem(f"environment variable {ref} is not set or empty", key=key)
    return value


def _secret_doc(name: str, what: str) -> dict[str, Any]:
    return {"description": f"{what} Secret: or {name}_file / {name}_env."}


def _secret_text(v: Any, handler: Any) -> Any:
    try:
        return handler(v)
    except ValidationError:
        raise _problem("must be a string (quote it in YAML)") from None      # never quote a secret back


SecretText = Annotated[str, WrapValidator(_secret_text)]
SecretRef = Annotated[str, Field(min_length=1), _described("must be a non-empty string")]


class ThresholdsSection(Section):
    """Counts in one response at which it trips (or alerts); a key left out keeps the policy's."""
    strong_records: whole(ge=0) | None = Field(None, description="Records with a strong identifier and a "
                                                                 "quasi-identifier (0: never).")
    person_records: whole(ge=0) | None = Field(None, description="Records with a name and a DOB or address "
                                                                 "(0: never).")
    strong_values: whole(ge=0) | None = Field(None, description="Validated strong identifiers on their own "
                                                                "(0: never).")
    contact_values: whole(ge=0) | None = Field(None, description="Distinct contact values (0: never).")


class RouteSection(Section):
    """A per-path override of the proxy's mode, error behaviour, hold-back and detection thresholds;
    the first match wins. Thresholds here apply over the policy's (and over a matching
    ``policy.routes`` entry's), so one table can say everything about a path."""
    match: Text = Field(description="Path glob (fnmatch), e.g. /exports/*.")
    mode: Mode | None = Field(None, description="monitor or enforce; default: proxy.mode.")
    on_error: OnError | None = Field(None, description="open or closed; default: proxy.on_error, else closed on "
                                                       "an enforce route and open on a monitor route.")
    holdback_kib: whole(ge=0) | None = Field(None, description="KiB held back until scanned; "
                                                               "default: proxy.holdback_kib.")
    trip: ThresholdsSection | None = Field(None, description="Trip thresholds on this route; default: the policy's.")
    alert: ThresholdsSection | None = Field(None, description="Alert thresholds on this route; default: the "
                                                              "policy's.")
    allow: Annotated[list[Text], BeforeValidator(_none_is_empty)] | None = Field(
        None, description="Signature ids not counted on this route (added to the policy's allow).")


class TlsSection(Section):
    cert: FilePath = Field(description="PEM certificate chain the proxy serves.")
    key: FilePath = Field(description="PEM private key of the certificate.")


class ProxySection(Section):
    """The inline reverse proxy (``dlp-sensor proxy``)."""
    listen: HostPort = Field("127.0.0.1:8000", description="Where clients connect.")
    upstream: HttpUrl = Field("http://127.0.0.1:8080", description="The app behind the sidecar.")
    mode: Mode = Field("enforce", description="Default route mode: enforce holds back and cuts; monitor only alerts.")
    holdback_kib: whole(ge=0) = Field(64, description="KiB of each response held back until scanned (enforce).")
    on_error: OnError | None = Field(None, description="When the scanner is overloaded or fails: open forwards "
                                                       "(unscanned, with an alert), closed refuses (503) or cuts. "
                                                       "Unset: closed on enforce routes, open on monitor routes; "
                                                       "a body that hit a decode limit follows the same default.")
    upstream_timeout: number(gt=0) = Field(30.0, description="Seconds to wait for the upstream's answer.")
    connect_timeout: number(gt=0) = Field(5.0, description="Seconds to connect to the upstream.")
    max_scans: whole(ge=1) = Field(512, description="Responses scanned at once; above it on_error applies.")
    max_scans_per_client: whole(ge=1) = Field(64, description="Responses scanned at once for one client address; "
                                               "above it 503 + Retry-After, whatever on_error says.")
    block_page: FilePath | None = Field(None, description="HTML file served with the 451 of a taken-down resource.")
    tls: TlsSection | None = Field(None, description="Serve HTTPS with this certificate and key.")
    trust_forwarded: Flag = Field(False, description="Deprecated (a warning at start): every peer is a trusted "
                                                      "proxy for one hop, so the right-most X-Forwarded-For entry is "
                                                      "the client. Use clients.trusted_proxies.")
    routes: Annotated[list[RouteSection], BeforeValidator(_none_is_empty)] = Field(
        default_factory=list, description="Per-path overrides, first match wins.")
    idle_timeout: number(gt=0) = Field(15.0, description="Seconds a connection may go without a complete request "
                                                         "head (new, slow, half-open or idle keep-alive) before "
                                                         "it is closed.")
    max_connections: whole(ge=1) = Field(4096, description="Client connections; past it the oldest idle one is "
                                                           "closed, else 503. Lowered to (file limit - 128) / 2.")
    http10_buffer_mib: number(ge=0) = Field(64, description="Enforce routes: a body without a length for an "
                                                            "HTTP/1.0 client is buffered up to this, scanned and "
                                                            "sent with a Content-Length; larger: 505.")


class IcapSection(Section):
    """The ICAP RESPMOD server (``dlp-sensor icap``); mode, routes and block page are the proxy's."""
    listen: HostPort = Field("127.0.0.1:1344", description="Where squid or the gateway connects.")
    max_connections: whole(ge=1) = Field(512, description="Concurrent ICAP connections.")
    options_ttl: whole(ge=1) = Field(300, description="Seconds a client may cache the OPTIONS answer.")
    preview: whole(ge=1) = Field(4096, description="Preview bytes asked of the client.")
    holdback_kib: whole(ge=0) = Field(32, description="KiB echoed back only once scanned.")
    idle_timeout: number(gt=0) = Field(60.0, description="Seconds a connection may wait for its next request.")
    read_timeout: number(gt=0) = Field(30.0, description="Seconds a started request may stall (heads, each body "
                                                         "piece) or the client may stop reading the answer.")


class ExtProcSection(Section):
    """The Envoy ext_proc gRPC server (``dlp-sensor extproc``)."""
    listen: HostPort = Field("127.0.0.1:50051", description="Where Envoy connects.")


def _query(v: Any, handler: Any) -> Any:
    if v is None:
        return "ignore"
    try:
        QueryRule.parse(v, "")
    except ValueError:
        raise _problem(f"must be 'ignore', 'keep' or a list of parameter names (got {_show(v)})") from None
    return handler(v)


Query = Annotated[Union[Literal["ignore", "keep"], list[Text]], WrapValidator(_query)]


class TakedownSection(Section):
    query: Query = Field("ignore", description="How a takedown treats the query string: ignore, keep, "
                                               "or a list of parameter names kept.")
    page_params: Annotated[list[Text], BeforeValidator(_none_is_empty)] = Field(
        default_factory=lambda: list(PAGE_PARAMS),
        description="Query parameters that select a page of a listing, folded out of the resource key even "
                    "when the query is kept (compared in lower case without _ - . $ or a [..] suffix); "
                    "replaces the default list, [] folds none.")
    fingerprint_kib: whole(ge=1) = Field(64, description="Content takedowns recorded before prefix prints are "
                                                         "head prints: the keyed hash of this many KiB of a body. "
                                                         "A trip's print covers the body up to the trip.")


def _host_list(v: Any) -> Any:
    if isinstance(v, list):
        for h in v:
            if not isinstance(h, str) or not h.strip() or "/" in h or " " in h.strip():
                raise _problem(f"must be a list of host names such as www.example.gov (got {_show(h)})")
    return v


class SiteSection(Section):
    """The site the sensor protects: resource keys use its canonical name, never the client's Host."""
    hosts: Annotated[list[Text], BeforeValidator(_none_is_empty), AfterValidator(_host_list)] = Field(
        default_factory=list, description="Public host names of the site, canonical first (case, port and "
                                          "trailing dot ignored). Empty: every Host is the one site '*'.")
    unknown_host: choice(UNKNOWN_HOST) = Field("fold", description="A Host not in hosts: fold (keyed as the "
                                                                   "canonical host) or refuse (421).")


class ExposureSection(Section):
    """Records that add up across responses (pages of an API, ranges of a file) and trip."""
    enabled: Flag = Field(True, description="Count distinct records per resource and per client across "
                                            "responses against the policy's trip thresholds.")
    window_s: number(gt=0) = Field(3600.0, description="Seconds a record counts after it was last served.")
    max_resources: whole(ge=1) = Field(10_000, description="Resources tracked at once (least recently used "
                                                           "forgotten first).")
    max_clients: whole(ge=1) = Field(10_000, description="Clients (per route) tracked at once.")
    max_records: whole(ge=1) = Field(1_000, description="Distinct records kept per resource or client and "
                                                         "kind; keep it above the trip thresholds.")
    max_ids: whole(ge=1) = Field(1_000_000, description="Record identities kept over all keys (about 100 "
                                                         "bytes each).")
    min_response_records: whole(ge=1) = Field(2, description="Records a response needs to add to its resource's "
                                                              "count; smaller ones count per client while each "
                                                              "resource shows the client the same records.")


class LedgerSection(Section):
    client_retention_days: number(gt=0) = Field(90.0, description="Days a client's keyed hash is kept "
                                                                  "(the counts stay).")


def _network(v: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(v, strict=False)
    except ValueError:
        raise _problem(f"must be an IP address or CIDR such as 10.0.0.0/8 or fd00::/8 (got {_show(v)})") from None


Cidr = Annotated[str, Field(min_length=1), _described("must be an IP address or CIDR"), AfterValidator(_network)]
FORWARDED_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip")


class ClientsSection(Section):
    """Who the client is, for every tap. Forwarded headers are ignored unless the connection's peer
    is a trusted proxy (docs/configuration.md)."""
    trusted_proxies: Annotated[list[Cidr], BeforeValidator(_none_is_empty)] = Field(
        default_factory=list, description="Addresses or CIDRs of the proxies and load balancers in front of the "
                                          "sensor (for ext_proc without source.address: Envoy's own). Only a peer "
                                          "in them is believed about the client; empty: no header is believed.")
    header: choice(FORWARDED_HEADERS) = Field("x-forwarded-for", description="The header the trusted proxies set: "
                                              "x-forwarded-for or forwarded (RFC 7239), walked right to left past "
                                              "trusted proxies; x-real-ip, one address.")


class AdminSection(Section):
    """The takedown admin API."""
    secrets: ClassVar[dict[str, bool]] = {"token": False}
    listen: HostPort = Field("127.0.0.1:9103", description="Where the admin API listens.")
    token: SecretText | None = Field(None, **_secret_doc(
        "token", "Bearer token (>= 16 characters); default: $DLP_SENSOR_ADMIN_TOKEN, else generated in state_dir."))
    token_file: SecretRef | None = Field(None, description="File holding admin.token.")
    token_env: SecretRef | None = Field(None, description="Environment variable holding admin.token.")

    @classmethod
    def check_secret(cls, name: str, value: str) -> str | None:
        return None if len(value) >= 16 else "must be a string of at least 16 characters"


# -- alert sinks --------------------------------------------------------------------------------

class SinkBase(Section):
    name: Text | None = Field(None, description="Unique sink name (metrics label); default: the type.")
    throttle: number(ge=0) | None = Field(None, description="Seconds per incident: at most one alert per window "
                                                            "(0 = every alert); default 300 for slack and "
                                                            "pagerduty, else 0.")
    format: choice(("ecs", "ocsf")) = Field("ecs", description="Alert document: ECS-shaped JSON or OCSF 2006.")
    every_alert: Flag | None = Field(None, description="Also send repeats of an open incident (every download); "
                                                       "default true for stdout, jsonl, splunk_hec and syslog, "
                                                       "false for webhook, slack and pagerduty (they get the page, "
                                                       "escalations and summaries).")


class HttpSinkBase(SinkBase):
    ca_file: FilePath | None = Field(None, description="PEM CA bundle to verify the server with (default: system).")
    dead_letter: Flag = Field(True, description="Move an alert the server refuses for good (4xx other than "
                                                "408/429) to the dead-letter file instead of retrying.")


class StdoutSinkSection(SinkBase):
    """One JSON line per alert on standard output."""
    type: Literal["stdout"]


class JsonlSinkSection(SinkBase):
    """Appends one JSON line per alert to a file (fsynced); relative paths are under state_dir."""
    type: Literal["jsonl"]
    path: Text = Field(description="The file.")


class WebhookSinkSection(HttpSinkBase):
    """POSTs each alert as JSON."""
    secrets: ClassVar[dict[str, bool]] = {"url": True, "authorization": False}
    type: Literal["webhook"]
    url: SecretText | None = Field(None, **_secret_doc("url", "Where alerts are POSTed (a URL may carry a token, "
                                                             "so it is a secret)."))
    url_file: SecretRef | None = Field(None, description="File holding the webhook URL.")
    url_env: SecretRef | None = Field(None, description="Environment variable holding the webhook URL.")
    headers: Annotated[dict[str, str], _described("must be a mapping of header names to strings", echo=False)] = Field(
        default_factory=dict, description="Extra request headers (not secret; use authorization for credentials).")
    authorization: SecretText | None = Field(None, **_secret_doc("authorization", "Authorization header value, "
                                                                                  "e.g. 'Bearer …'."))
    authorization_file: SecretRef | None = Field(None, description="File holding the Authorization header value.")
    authorization_env: SecretRef | None = Field(None, description="Environment variable holding it.")

    @classmethod
    def check_secret(cls, name: str, value: str) -> str | None:
        return url_problem(value, secret=True) if name == "url" else None

    def model_dump_runtime(self) -> dict:
        d = super().model_dump_runtime()
        if "authorization" in d:
            d["headers"] = {**d.get("headers", {}), "Authorization": d.pop("authorization")}
        return d


class SlackSinkSection(HttpSinkBase):
    """A Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat); its URL is the secret."""
    secrets: ClassVar[dict[str, bool]] = {"url": True}
    type: Literal["slack"]
    url: SecretText | None = Field(None, **_secret_doc("url", "Incoming-webhook URL."))
    url_file: SecretRef | None = Field(None, description="File holding the webhook URL.")
    url_env: SecretRef | None = Field(None, description="Environment variable holding the webhook URL.")

    @classmethod
    def check_secret(cls, name: str, value: str) -> str | None:
        return url_problem(value, secret=True)


class PagerDutySinkSection(HttpSinkBase):
    """PagerDuty Events API v2; one PagerDuty incident per leak."""
    secrets: ClassVar[dict[str, bool]] = {"routing_key": True}
    type: Literal["pagerduty"]
    routing_key: SecretText | None = Field(None, **_secret_doc("routing_key", "Integration (routing) key."))
    routing_key_file: SecretRef | None = Field(None, description="File holding the routing key.")
    routing_key_env: SecretRef | None = Field(None, description="Environment variable holding the routing key.")
    url: HttpUrl = Field(PAGERDUTY_URL, description="Events API endpoint.")


class SplunkHecSinkSection(HttpSinkBase):
    """Splunk HTTP Event Collector."""
    secrets: ClassVar[dict[str, bool]] = {"token": True}
    type: Literal["splunk_hec"]
    url: HttpUrl = Field(description="https://splunk:8088 (/services/collector/event is added).")
    token: SecretText | None = Field(None, **_secret_doc("token", "HEC token."))
    token_file: SecretRef | None = Field(None, description="File holding the HEC token.")
    token_env: SecretRef | None = Field(None, description="Environment variable holding the HEC token.")
    sourcetype: Text = Field("dlp:alert", description="Splunk sourcetype.")
    index: Text | None = Field(None, description="Splunk index (default: the token's).")


class SyslogSinkSection(SinkBase):
    """RFC 5424 lines carrying ArcSight CEF, over UDP, TCP or TLS (RFC 5425)."""
    type: Literal["syslog"]
    host: Text = Field("127.0.0.1", description="Syslog server.")
    port: PortNumber | None = Field(None, description="Syslog port; default 514, or 6514 with tls.")
    protocol: choice(("udp", "tcp")) = Field("udp", description="udp, or tcp (octet-counted framing).")
    tls: Flag = Field(False, description="TLS (RFC 5425) over TCP.")
    ca_file: FilePath | None = Field(None, description="PEM CA bundle to verify the server with.")
    certfile: FilePath | None = Field(None, description="PEM client certificate (mutual TLS).")
    keyfile: FilePath | None = Field(None, description="PEM key of the client certificate.")


_SINK_MODELS = (StdoutSinkSection, JsonlSinkSection, WebhookSinkSection, SlackSinkSection, PagerDutySinkSection,
                SplunkHecSinkSection, SyslogSinkSection)
SinkSection = Annotated[Union[_SINK_MODELS], Field(discriminator="type")]
if {m.model_fields["type"].annotation.__args__[0] for m in _SINK_MODELS} != set(SINK_TYPES):
    raise ImportError("sensor.alerts.sinks.SINK_TYPES and the sink config models disagree")


def _sink_name(s: Any) -> str:
    return s.name or s.type


class AlertsSection(Section):
    source_ip: choice(SOURCE_IP_MODES) = Field("hashed", description="The client address in alerts: "
                                                                     + ", ".join(SOURCE_IP_MODES) + ".")
    retry_initial: number(gt=0) = Field(0.5, description="Seconds before the first redelivery.")
    retry_max: number(gt=0) = Field(10.0, description="Longest pause between redeliveries, seconds.")
    sinks: Annotated[list[SinkSection], BeforeValidator(_none_is_empty)] = Field(
        default_factory=lambda: [StdoutSinkSection(type="stdout")], description="Where alerts go.")

    @model_validator(mode="after")
    def _unique_names(self) -> "AlertsSection":
        seen: set[str] = set()
        for i, s in enumerate(self.sinks):
            if _sink_name(s) in seen:
                raise _problem(f"two sinks are called {_sink_name(s)!r}; give one a 'name'", key=f"sinks[{i}].name")
            seen.add(_sink_name(s))
        return self


# -- kafka --------------------------------------------------------------------------------------

def _bootstrap_check(v: Any) -> str:
    if not (isinstance(v, str) and v.strip()):
        raise _problem("must be HOST:PORT[,HOST:PORT...]")
    for hp in v.split(","):
        why = hostport_problem(hp.strip())
        if why:
            raise _problem(why)
    return ",".join(hp.strip() for hp in v.split(","))


class MirrorSection(Section):
    enabled: Flag = Field(False, description="Monitor routes publish exchanges to Kafka instead of scanning here.")
    queue_mib: number(gt=0) = Field(64.0, description="MiB of exchanges queued for the broker.")
    overflow: choice(OVERFLOW) = Field("local", description="When the queue is full: local (scan here) or drop.")


WORKER_ROLES = ("scan", "ledger")


def _worker_roles(v: list[str]) -> list[str]:
    """Roles of a worker: at least one, each known, each once (``dlp-sensor worker --roles`` checks the same)."""
    why = worker_roles_problem(v)
    if why:
        raise _problem(why)
    return v


def worker_roles_problem(v: Any) -> str | None:
    """Why ``v`` is not a list of worker roles, or None (shared by the file's key and ``--roles``)."""
    if not isinstance(v, (list, tuple)) or not v:
        return f"must name at least one role of {', '.join(WORKER_ROLES)} (got {_show(v)})"
    bad = [r for r in v if r not in WORKER_ROLES]
    if bad:
        return f"unknown role {_show(bad[0])}: must be {' or '.join(WORKER_ROLES)}"
    if len(set(v)) != len(v):
        return f"names a role twice (got {_show(v)})"
    return None


class WorkerSection(Section):
    group: Text = Field("dlp-sensor-worker", description="Consumer group of the workers.")
    partitions: whole(ge=1) = Field(8, description="Partitions of the exchanges topic.")
    exchange_timeout: number(gt=0) = Field(60.0, description="Seconds an exchange may stay incomplete.")
    web_port: PortNumber = Field(6066, description="Faust's web port.")
    roles: Annotated[list[str], AfterValidator(_worker_roles)] = Field(
        default_factory=lambda: list(WORKER_ROLES),
        description="What a worker runs: scan (exchanges -> findings, alerts, takedowns), ledger (findings -> "
                    "the exposure table), or both. Scan-only workers start no faust app; run one ledger worker.")


class KafkaSection(Section):
    """Fleet takedowns and scale-out; off unless bootstrap (or $DLP_KAFKA_BOOTSTRAP) is set."""
    secrets: ClassVar[dict[str, bool]] = {"sasl_password": False}
    bootstrap: Annotated[str, AfterValidator(_bootstrap_check)] | None = Field(
        None, description="HOST:PORT[,HOST:PORT...]; default $DLP_KAFKA_BOOTSTRAP.")
    topic_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]*$"),
                            _described("must use only letters, digits, '.', '_' and '-'")] = Field(
        "dlp.", description="Prefix of every topic name.")
    security_protocol: choice(SECURITY_PROTOCOLS) = Field("PLAINTEXT", description="Kafka security protocol.")
    sasl_mechanism: choice(SASL_MECHANISMS) | None = Field(None, description="Required with SASL_*.")
    sasl_username: Text | None = Field(None, description="Default $DLP_KAFKA_SASL_USERNAME.")
    sasl_password: SecretText | None = Field(None, **_secret_doc("sasl_password", "SASL password; default "
                                                                                  "$DLP_KAFKA_SASL_PASSWORD."))
    sasl_password_file: SecretRef | None = Field(None, description="File holding the SASL password.")
    sasl_password_env: SecretRef | None = Field(None, description="Environment variable holding the SASL password.")
    ssl_cafile: FilePath | None = Field(None, description="PEM CA bundle.")
    ssl_certfile: FilePath | None = Field(None, description="PEM client certificate.")
    ssl_keyfile: FilePath | None = Field(None, description="PEM client key.")
    fleet: Flag = Field(True, description="Apply the fleet's takedowns topic and publish this sensor's own.")
    catchup_timeout: number(ge=0) = Field(30.0, description="Seconds to read the takedowns topic before serving.")
    mirror: MirrorSection = Field(default_factory=MirrorSection, description="Publishing exchanges to workers.")
    worker: WorkerSection = Field(default_factory=WorkerSection, description="dlp-sensor worker.")

    @model_validator(mode="after")
    def _sasl(self) -> "KafkaSection":
        if self.security_protocol.startswith("SASL") and self.sasl_mechanism is None:
            raise _problem(f"required when security_protocol is {self.security_protocol}", key="sasl_mechanism")
        return self


class IndexSection(Section):
    """An exact-data-match index (docs/edm.md). Its key is the sensor's (``hmac_key`` or the state
    dir's) unless the entry gives one: a data owner may key its index apart from the sensors' own."""
    secrets: ClassVar[dict[str, bool]] = {"key": False}

    path: Text = Field(description="Index file built by `dlp-sensor index build` with this sensor's key "
                                   "(or with this entry's key).")
    name: Text | None = Field(None, description="Name in alerts and counts; default: the name given at build time.")
    min_fields: whole(ge=1) = Field(2, description="Fields of one indexed row a record must match.")
    trip: whole(ge=0) = Field(3, description="EDM records in one response that trip (0: never).")
    alert: whole(ge=0) = Field(1, description="EDM records in one response that alert (0: never).")
    key: SecretText | None = Field(None, **_secret_doc("key", "This index's HMAC key (hex, >= 32 digits), when it "
                                                             "was built with `index build --key-file` instead of "
                                                             "the sensor's key; default: the sensor's key."))
    key_file: SecretRef | None = Field(None, description="File holding this index's key.")
    key_env: SecretRef | None = Field(None, description="Environment variable holding this index's key.")

    @classmethod
    def check_secret(cls, name: str, value: str) -> str | None:
        return hmac_key_problem(value)


# -- the file -----------------------------------------------------------------------------------

class ConfigFile(Section):
    """The dlp-sensor configuration file. Every section is optional."""
    model_config = ConfigDict(title="dlp-sensor configuration")
    secrets: ClassVar[dict[str, bool]] = {"hmac_key": False}

    sensor_id: Text | None = Field(None, description="This sensor's name in alerts and the fleet; default: host name.")
    log_format: choice(("text", "json")) = Field("text", description="Log lines as text, or one JSON object per "
                                                                     "line (time, level, logger, message); "
                                                                     "--log-format overrides.")
    start_empty: Flag = Field(False, description="A 0-byte or damaged takedown registry, ledger or alert spool in "
                                                 "state_dir is moved aside (NAME.bad-TIMESTAMP) and started empty, "
                                                 "instead of refusing to start.")
    state_dir: Text | None = Field(None, description="Registry, ledger, alert spool, HMAC key, admin token; "
                                                     "default $DLP_SENSOR_STATE_DIR, else ~/.local/state/dlp-sensor.")
    hmac_key: SecretText | None = Field(None, **_secret_doc("hmac_key", "Key (hex, >= 32 digits) of every keyed "
                                                                        "hash; default $DLP_SENSOR_HMAC_KEY, else "
                                                                        "generated in state_dir."))
    hmac_key_file: SecretRef | None = Field(None, description="File holding hmac_key.")
    hmac_key_env: SecretRef | None = Field(None, description="Environment variable holding hmac_key.")
    signatures: Annotated[list[Text], BeforeValidator(_none_is_empty)] = Field(
        default_factory=list, description="Extra signature packs (files or directories).")
    default_signatures: Flag = Field(True, description="Load the built-in pack.")
    policy: Annotated[Union[str, dict[str, Any]], _described("must be a file path or a mapping")] | None = Field(
        None, description="A policy file path, or the policy inline.")
    scan_workers: whole(ge=0) | None = Field(None, description="Threads that scan response bodies, so the event "
                                                               "loop only moves bytes; null: one per CPU core the "
                                                               "process may use, 0: scans run on the event loop. "
                                                               "Read per exchange.")
    scan_sched: choice(("auto", "nice", "idle")) = Field(
        "auto", description="How the scan threads run below the event loop. auto (the default): on "
                            "SCHED_IDLE threads while they get the CPU (a woken loop pre-empts them at once: "
                            "other clients' p99 during a dense leak ~4.5 ms against ~5.7 ms with nice), on "
                            "threads scan_nice steps down while they wait for a CPU most of a job's time "
                            "(other processes saturate the cores), back when the cores have room "
                            "(sensor.exchange.autopool). nice: always scan_nice steps below the loop. idle: "
                            "always SCHED_IDLE; while other processes of the sidecar's scheduling group keep "
                            "the cores busy, a starved scan thread that holds the Python GIL keeps the loop "
                            "waiting (other clients' p99 111 against 26 ms under nice) and scanned downloads "
                            "crawl (0.16 against 5.1 MB/s). Measured in docs/benchmarks.md (latency). Read "
                            "per exchange: a change makes a new scan pool.")
    scan_nice: whole(ge=0, le=19) = Field(10, description="With scan_sched nice (or auto, on its nice threads), "
                                                           "how many nice steps below the "
                                                           "event loop the scan threads run (the scheduler then "
                                                           "weighs a scan against a woken loop); 0: the same "
                                                           "priority. Not used with scan_sched idle. Read per "
                                                           "exchange.")
    proxy: ProxySection = Field(default_factory=ProxySection)
    icap: IcapSection = Field(default_factory=IcapSection)
    extproc: ExtProcSection = Field(default_factory=ExtProcSection)
    takedown: TakedownSection = Field(default_factory=TakedownSection)
    site: SiteSection = Field(default_factory=SiteSection, description="The site's public host names: "
                                                                      "what a resource key is made of.")
    exposure: ExposureSection = Field(default_factory=ExposureSection, description="Distinct records added up "
                                                                                  "across responses.")
    ledger: LedgerSection = Field(default_factory=LedgerSection)
    clients: ClientsSection = Field(default_factory=ClientsSection)
    metrics: Annotated[HostPort | None, BeforeValidator(_off_is_none)] = Field(
        "127.0.0.1:9102", description="HOST:PORT of /metrics, /healthz, /readyz; null or false: off.")
    admin: Annotated[AdminSection | None, BeforeValidator(_off_is_none)] = Field(
        default_factory=AdminSection, description="The admin API; null or false: off.")
    alerts: AlertsSection = Field(default_factory=AlertsSection)
    kafka: KafkaSection = Field(default_factory=KafkaSection)
    indexes: Annotated[list[IndexSection], BeforeValidator(_none_is_empty)] = Field(
        default_factory=list, description="Exact-data-match indexes (docs/edm.md); --index adds more.")

    @model_validator(mode="before")
    @classmethod
    def _empty_is_unset(cls, data: Any) -> Any:
        if isinstance(data, dict):          # `state_dir:` / `hmac_key: ""` left blank mean "the default"
            data = {k: v for k, v in data.items() if not (k in ("state_dir", "hmac_key") and v in (None, ""))}
        return data

    @classmethod
    def check_secret(cls, name: str, value: str) -> str | None:
        return hmac_key_problem(value)


def hmac_key_problem(value: str) -> str | None:
    try:
        key = bytes.fromhex(value.strip())
    except ValueError:
        return "must be hex (e.g. `openssl rand -hex 32`)"
    return None if len(key) >= 16 else "must be at least 16 bytes (32 hex digits)"


# ---------------------------------------------------------------------------------------------
# Errors, the runtime conversion, and the public functions.
# ---------------------------------------------------------------------------------------------

_SECRET_KEYS = {n for m in (ConfigFile, AdminSection, KafkaSection, WebhookSinkSection, SlackSinkSection,
                            PagerDutySinkSection, SplunkHecSinkSection, IndexSection) for n in m.secrets}


def _key_path(where: str, loc: tuple) -> str:
    out = where
    prev: list[Any] = []
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif len(prev) >= 2 and prev[-2] == "sinks" and isinstance(prev[-1], int) and part in SINK_TYPES:
            pass                                            # the union's tag, not a key of the file
        else:
            out += f".{part}" if out else str(part)
        prev.append(part)
    return out


_WORDING = {
    "missing": "required",
    "string_type": "must be a string", "bool_type": "must be true or false",
    "int_type": "must be a whole number", "float_type": "must be a number",
    "list_type": "must be a list", "dict_type": "must be a mapping",
    "model_type": "must be a mapping", "model_attributes_type": "must be a mapping",
    "extra_forbidden": "unknown key",
}


def _describe(err: dict) -> tuple[str, str]:
    """(key path suffix, why) of one pydantic error, in the project's words."""
    kind, ctx, loc = err["type"], err.get("ctx") or {}, tuple(err["loc"])
    if kind == "config":
        key = ctx.get("key")
        return (f"{'.'.join(filter(None, [_key_path('', loc), key]))}", ctx["why"]) if key else \
            (_key_path("", loc), ctx["why"])
    if kind == "union_tag_invalid":
        return _key_path("", loc) + ".type", f"unknown sink {ctx.get('tag')!r}; known: {', '.join(SINK_TYPES)}"
    if kind == "union_tag_not_found":
        return _key_path("", loc), f"needs 'type' (one of {', '.join(SINK_TYPES)})"
    why = _WORDING.get(kind) or err["msg"].removeprefix("Value error, ")
    secret = any(isinstance(p, str) and (p in _SECRET_KEYS or p == "headers") for p in loc)
    if kind != "missing" and not secret and not isinstance(err.get("input"), (dict, list)):
        why += f" (got {_show(err.get('input'))})"
    return _key_path("", loc), why


def _errors(e: ValidationError, where: str) -> ConfigError:
    lines = []
    for err in e.errors(include_url=False):
        suffix, why = _describe(err)
        path = where + ("" if not suffix else suffix if suffix.startswith("[") else "." + suffix)
        lines.append(f"{path}: {why}")
    return ConfigError("\n".join(dict.fromkeys(lines)))


def validate_file(raw: Any, where: str = "config", *, resolve: bool = True) -> ConfigFile:
    """The validated file model. ``resolve=False`` checks the shape only: secrets referenced by
    ``*_file``/``*_env`` are not read and named files need not exist (a chart's rendered config)."""
    try:
        return ConfigFile.model_validate({} if raw is None else raw, context={"offline": not resolve})
    except ValidationError as e:
        raise _errors(e, where) from None


def _common(model: BaseModel, cls: type, **extra: Any) -> Any:
    """A dataclass from a section: same-named fields copied, the rest given by the caller."""
    names = {f.name for f in fields(cls)}
    values = {k: getattr(model, k) for k in type(model).model_fields if k in names and k not in extra}
    return cls(**values, **extra)


def _overrides(t: ThresholdsSection | None) -> tuple[tuple[str, int], ...]:
    """The threshold keys a route sets (the others keep the policy's)."""
    return tuple((k, getattr(t, k)) for k in sorted(t.model_fields_set)) if t is not None else ()


def to_config(m: ConfigFile) -> Config:
    """The runtime dataclasses of a validated file."""
    p = m.proxy
    explicit = p.on_error is not None
    proxy = _common(p, ProxyConfig, upstream=p.upstream.rstrip("/"), holdback=p.holdback_kib << 10,
                    tls_cert=p.tls.cert if p.tls else None, tls_key=p.tls.key if p.tls else None,
                    on_error_explicit=explicit, http10_buffer=int(p.http10_buffer_mib * (1 << 20)),
                    routes=tuple(ProxyRoute(r.match, r.mode or p.mode,
                                            r.on_error or p.on_error or default_on_error(r.mode or p.mode),
                                            (p.holdback_kib if r.holdback_kib is None else r.holdback_kib) << 10,
                                            r.on_error is not None or explicit, trip=_overrides(r.trip),
                                            alert=_overrides(r.alert), allow=frozenset(r.allow or ()))
                                 for r in p.routes))
    k = m.kafka
    kafka = _common(k, KafkaConfig, mirror=k.mirror.enabled, queue_bytes=int(k.mirror.queue_mib * (1 << 20)),
                    overflow=k.mirror.overflow, group=k.worker.group, partitions=k.worker.partitions,
                    exchange_timeout=k.worker.exchange_timeout, web_port=k.worker.web_port,
                    roles=tuple(k.worker.roles))
    if p.trust_forwarded:
        logging.getLogger(__name__).warning(
            "proxy.trust_forwarded is deprecated: every peer is trusted for one hop (the right-most "
            "X-Forwarded-For entry is the client); set clients.trusted_proxies to your proxies instead")
    clients = ClientsConfig(tuple(m.clients.trusted_proxies), m.clients.header, trust_any_peer=p.trust_forwarded)
    extra: dict[str, Any] = {}
    if m.sensor_id is not None:
        extra["sensor_id"] = m.sensor_id
    return Config(
        state_dir=Path(m.state_dir) if m.state_dir else None, hmac_key=m.hmac_key,
        log_format=m.log_format, start_empty=m.start_empty,
        signatures=list(m.signatures), default_signatures=m.default_signatures, policy=m.policy,
        scan_workers=m.scan_workers, scan_sched=m.scan_sched, scan_nice=m.scan_nice,
        proxy=proxy, icap=_common(m.icap, IcapConfig, holdback=m.icap.holdback_kib << 10),
        extproc=_common(m.extproc, ExtProcConfig), clients=clients,
        query=QueryRule.parse(m.takedown.query, paging=m.takedown.page_params),
        site=SiteRule.parse(m.site.hosts, m.site.unknown_host), exposure=_common(m.exposure, ExposureSettings),
        fingerprint_bytes=m.takedown.fingerprint_kib << 10,
        client_retention_days=m.ledger.client_retention_days, metrics=m.metrics,
        admin=m.admin.listen if m.admin else None, admin_token=m.admin.token if m.admin else None,
        source_ip=m.alerts.source_ip, retry_initial=m.alerts.retry_initial, retry_max=m.alerts.retry_max,
        sinks=[s.model_dump_runtime() for s in m.alerts.sinks], kafka=kafka,
        indexes=[_index_spec(i) for i in m.indexes], **extra)


def _index_spec(i: "IndexSection") -> Any:
    from sensor.edm.match import IndexSpec
    return IndexSpec(i.path, i.name, i.min_fields, i.trip, i.alert,
                     key=bytes.fromhex(i.key.strip()) if i.key is not None else None)


def parse_config(raw: Any, where: str = "config", *, resolve: bool = True) -> Config:
    """A ``Config`` from the file's parsed YAML; ConfigError names the key and says why."""
    return to_config(validate_file(raw, where, resolve=resolve))


def _section_models() -> list[type[Section]]:
    """Every model of the file, the root first."""
    seen: list[type[Section]] = []

    def walk(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, Section):
            if tp in seen:
                return
            seen.append(tp)
            for f in tp.model_fields.values():
                walk(f.annotation)
        for arg in getattr(tp, "__args__", ()) or ():
            walk(arg)
        for arg in getattr(tp, "__metadata__", ()) or ():
            walk(arg)
        if getattr(tp, "__origin__", None) is not None:
            walk(tp.__origin__)

    walk(ConfigFile)
    return seen


def json_schema() -> dict:
    """The JSON Schema (draft 2020-12) of the configuration file, for editors, CI and the chart.

    pydantic's ``model_json_schema`` plus what the models check in code: ``false`` turns
    ``metrics``/``admin`` off, and each secret is given at most once (and at least once when the
    sink needs it) as NAME, NAME_file or NAME_env."""
    schema = ConfigFile.model_json_schema(mode="validation")
    defs = schema.get("$defs", {})
    for name in ("metrics", "admin"):
        schema["properties"][name]["anyOf"].append({"const": False})
    for model in _section_models():
        target = schema if model is ConfigFile else defs[model.__name__]
        rules = []
        for secret, required in model.secrets.items():
            forms = [secret, secret + "_file", secret + "_env"]
            rules.append({"not": {"anyOf": [{"required": [a, b]} for i, a in enumerate(forms) for b in forms[i + 1:]]}})
            if required:
                rules.append({"anyOf": [{"required": [f]} for f in forms]})
        if rules:
            target["allOf"] = rules
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def parse_hostport(v: Any, where: str) -> str:
    why = hostport_problem(v)
    if why:
        raise ConfigError(f"{where}: {why}")
    return v


def _bootstrap(v: Any, where: str) -> str:
    if not (isinstance(v, str) and v.strip()):
        raise ConfigError(f"{where}: must be HOST:PORT[,HOST:PORT...]")
    for hp in v.split(","):
        parse_hostport(hp.strip(), where)
    return ",".join(hp.strip() for hp in v.split(","))


def load_config(path: Path | None, *, resolve: bool = True) -> Config:
    if path is None:
        return Config()
    raw = read_yaml(Path(path), ConfigError)
    c = parse_config(raw, str(path), resolve=resolve)
    c.path = Path(path)
    return c


def with_overrides(c: Config, **flags: Any) -> Config:
    """Apply command-line flags (None = not given) and the environment's defaults on top of the file."""
    proxy = c.proxy
    if flags.get("upstream"):
        why = url_problem(flags["upstream"])
        if why:
            raise ConfigError(f"--upstream: {why}")
        proxy = replace(proxy, upstream=flags["upstream"].rstrip("/"))
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
    if flags.get("start_empty"):
        c = replace(c, start_empty=True)
    if flags.get("indexes"):
        from sensor.edm.match import IndexSpec
        c = replace(c, indexes=[*c.indexes, *(IndexSpec(p) for p in flags["indexes"])])
    if flags.get("metrics"):
        c = replace(c, metrics=None if flags["metrics"] == "off" else parse_hostport(flags["metrics"], "--metrics"))
    if flags.get("roles"):
        roles = [r.strip() for r in flags["roles"].split(",") if r.strip()]
        why = worker_roles_problem(roles)
        if why:
            raise ConfigError(f"--roles: {why}")
        c = replace(c, kafka=replace(c.kafka, roles=tuple(roles)))
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
    if c.hmac_key is None and os.environ.get("DLP_SENSOR_HMAC_KEY"):
        why = hmac_key_problem(os.environ["DLP_SENSOR_HMAC_KEY"])
        if why:
            raise ConfigError(f"$DLP_SENSOR_HMAC_KEY: {why}")
    if c.state_dir is None:
        from sensor.detect.keys import default_state_dir
        c = replace(c, state_dir=Path(os.environ.get("DLP_SENSOR_STATE_DIR") or default_state_dir()))
    return replace(c, flags={k: v for k, v in flags.items() if v})
