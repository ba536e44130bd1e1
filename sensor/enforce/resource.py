"""What "the same resource" means: one normalised key per URL, so a takedown cannot be dodged.

``/exports/../exports//Roster.csv?x=1`` and ``/exports/Roster.csv`` are one resource when the
query is ignored (the default: a leak behind ``?page=2`` is still the leak). Paths keep their case
(most origins are case-sensitive); hosts lose theirs and their default port.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

QUERY_MODES = ("ignore", "keep")


@dataclass(frozen=True)
class QueryRule:
    """``ignore`` every parameter, ``keep`` all (sorted), or keep only the named ones."""
    mode: str = "ignore"
    params: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, raw: object, where: str = "takedown.query") -> "QueryRule":
        if raw in (None, "ignore"):
            return cls()
        if raw == "keep":
            return cls("keep")
        if isinstance(raw, list) and raw and all(isinstance(x, str) and x for x in raw):
            return cls("only", frozenset(raw))
        raise ValueError(f"{where}: must be 'ignore', 'keep' or a list of parameter names (got {raw!r})")


def _host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    for default in (":80", ":443"):
        if host.endswith(default):
            host = host[: -len(default)]
    return host


def normalize(host: str, target: str, rule: QueryRule = QueryRule()) -> str:
    """``host/path[?query]`` for a request target (path + query, or an absolute URL)."""
    parts = urlsplit(target)
    if parts.netloc:
        host = parts.netloc
    path = unquote(parts.path or "/")
    path = posixpath.normpath("/" + path.lstrip("/"))
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    if parts.path.endswith("/") and path != "/":
        path += "/"
    key = _host(host) + quote(path, safe="/:@!$&'()*+,;=-._~")
    if rule.mode != "ignore" and parts.query:
        pairs = sorted(parse_qsl(parts.query, keep_blank_values=True))
        if rule.mode == "only":
            pairs = [p for p in pairs if p[0] in rule.params]
        if pairs:
            key += "?" + urlencode(pairs)
    return key


def resource_for_url(url: str, rule: QueryRule = QueryRule()) -> str:
    """The resource key for an operator-typed URL (``https://host/path`` or ``host/path``)."""
    u = url if "://" in url else "http://" + url
    return normalize(u.split("://", 1)[1].split("/", 1)[0], u, rule)


def public_url(scheme: str, host: str, target: str) -> dict[str, str]:
    """ECS ``url.*`` without the query string or fragment (query values may carry secrets)."""
    parts = urlsplit(target)
    path = parts.path or "/"
    h = parts.netloc or host
    return {"scheme": scheme, "domain": h.split(":")[0].lower(), "path": path,
            "original": f"{scheme}://{h}{path}"}


def resource_of(config, host: str, target: str) -> str:
    """The resource key of a request, for every tap: the site's page or file, never whatever Host
    the client sent. (``config``: the sensor's :class:`~sensor.config.Config`.)"""
    return normalize(host, target, config.query)
