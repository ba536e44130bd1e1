"""What "the same resource" means: one key per page or file of the *site*, never whatever the client sent.

A resource key is ``SITE/path[?query]``. ``SITE`` is not the request's Host: a client chooses its
Host header, and keying on it let one file be taken down once per Host value (300 Host headers,
300 takedowns, 300 incidents) and come out again under a new one. With ``site.hosts`` configured,
``SITE`` is the first (canonical) name and every listed name maps to it; a Host that is not listed
maps to the same key (``unknown_host: fold``, the default) or is refused by the tap
(``unknown_host: refuse``, see :func:`host_allowed`). With no ``site.hosts`` every Host folds to the
one site ``*``: a sensor then protects one site (the proxy's upstream, or whatever the gateway in
front sends it), and the Host sent is kept only in the alert's ``url``.

``/exports/../exports//Roster.csv?x=1`` and ``/exports/Roster.csv`` are one resource when the
query is ignored (the default: a leak behind ``?page=2`` is still the leak). When the query is kept
(``takedown.query: keep`` or a list), pagination parameters (``page``, ``offset``, ``limit``,
``cursor``… :data:`PAGE_PARAMS`, ``takedown.page_params``) are still folded out: the pages of one
API are one resource, so the records they give out add up (sensor.enforce.exposure). Paths keep
their case (most origins are case-sensitive); hosts lose their case, port and trailing dot.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

QUERY_MODES = ("ignore", "keep")
UNKNOWN_HOST = ("fold", "refuse")
ANY_SITE = "*"                       # the site key when no site.hosts are configured

# Query parameters that select a page of a listing rather than another resource, compared after
# :func:`param_name` (lower case; ``_``, ``-``, ``.``, a leading ``$`` and a ``[...]`` suffix dropped:
# ``per_page``, ``perPage`` and ``page[size]`` are all caught).
PAGE_PARAMS: tuple[str, ...] = (
    "page", "p", "pg", "pageno", "pagenum", "pagenumber", "pageindex", "perpage", "pagesize", "size",
    "offset", "start", "startindex", "startrow", "limit", "rows", "top", "skip", "take", "from",
    "cursor", "after", "before", "next", "marker", "startafter", "skiptoken", "maxresults",
    "pagetoken", "nextpagetoken", "nexttoken", "continuation", "continuationtoken",
)
_NAME_JUNK = re.compile(r"[_.\-]")


def param_name(name: str) -> str:
    """The comparable form of a query parameter name (see :data:`PAGE_PARAMS`)."""
    name = name.strip().lower().lstrip("$").split("[", 1)[0]
    return _NAME_JUNK.sub("", name)


@dataclass(frozen=True)
class QueryRule:
    """``ignore`` every parameter, ``keep`` all (sorted), or keep only the named ones; pagination
    parameters (``paging``, compared by :func:`param_name`) are dropped in every mode."""
    mode: str = "ignore"
    params: frozenset[str] = frozenset()
    paging: frozenset[str] = frozenset(PAGE_PARAMS)

    @classmethod
    def parse(cls, raw: object, where: str = "takedown.query", paging: object = None) -> "QueryRule":
        pages = frozenset(PAGE_PARAMS) if paging is None else _paging(paging)
        if raw in (None, "ignore"):
            return cls(paging=pages)
        if raw == "keep":
            return cls("keep", paging=pages)
        if isinstance(raw, list) and raw and all(isinstance(x, str) and x for x in raw):
            return cls("only", frozenset(raw), paging=pages)
        raise ValueError(f"{where}: must be 'ignore', 'keep' or a list of parameter names (got {raw!r})")


def _paging(raw: object) -> frozenset[str]:
    if not isinstance(raw, (list, tuple)) or not all(isinstance(x, str) and x.strip() for x in raw):
        raise ValueError(f"takedown.page_params: must be a list of parameter names (got {raw!r})")
    return frozenset(param_name(x) for x in raw)


def host_name(host: str) -> str:
    """A Host (or netloc) as compared: lower case, no port, no trailing dot, no userinfo."""
    host = host.strip().rsplit("@", 1)[-1].lower()
    if host.startswith("["):                                   # [v6]:port
        return host[: host.find("]") + 1] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


@dataclass(frozen=True)
class SiteRule:
    """The public names of the site (``site.hosts``, canonical first) and what an unlisted Host gets."""
    hosts: tuple[str, ...] = ()
    unknown_host: str = "fold"

    @classmethod
    def parse(cls, hosts: object = None, unknown_host: str = "fold") -> "SiteRule":
        names = []
        for h in hosts or ():
            n = host_name(str(h))
            if not n:
                raise ValueError(f"site.hosts: empty host name in {hosts!r}")
            if n not in names:
                names.append(n)
        if unknown_host not in UNKNOWN_HOST:
            raise ValueError(f"site.unknown_host: must be one of {', '.join(UNKNOWN_HOST)} (got {unknown_host!r})")
        return cls(tuple(names), unknown_host)

    @property
    def key(self) -> str:
        """The site part of every resource key."""
        return self.hosts[0] if self.hosts else ANY_SITE

    def knows(self, host: str) -> bool:
        return host_name(host) in self.hosts


@lru_cache(maxsize=4096)          # pure; every request of a sidecar asks (its pages repeat)
def _path_key(target: str, rule: QueryRule) -> str:
    """``/path[?query]`` of a request target (path + query, or an absolute URL). An origin-form
    target is never read as a URL: ``//other.example/x`` is the path ``/other.example/x``."""
    parts = urlsplit(target) if not target.startswith("/") else \
        urlsplit("http://site" + target)._replace(netloc="")
    path = unquote(parts.path or "/")
    path = posixpath.normpath("/" + path.lstrip("/"))
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    if parts.path.endswith("/") and path != "/":
        path += "/"
    key = quote(path, safe="/:@!$&'()*+,;=-._~")
    if rule.mode != "ignore" and parts.query:
        pairs = sorted(p for p in parse_qsl(parts.query, keep_blank_values=True)
                       if param_name(p[0]) not in rule.paging)
        if rule.mode == "only":
            pairs = [p for p in pairs if p[0] in rule.params]
        if pairs:
            key += "?" + urlencode(pairs)
    return key


def _host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    for default in (":80", ":443"):
        if host.endswith(default):
            host = host[: -len(default)]
    return host


def normalize(host: str, target: str, rule: QueryRule = QueryRule()) -> str:
    """``host/path[?query]`` keyed on the host given (no site folding: see :func:`resource_of`)."""
    netloc = "" if target.startswith("/") else urlsplit(target).netloc
    return _host(netloc or host) + _path_key(target, rule)


def _site(config: Any) -> SiteRule:
    return getattr(config, "site", None) or SiteRule()


def resource_of(config, host: str, target: str) -> str:
    """The resource key of a request, for every tap: the site's page or file, never whatever Host
    the client sent. (``config``: the sensor's :class:`~sensor.config.Config`.) An unlisted Host
    gets the site's key too, even under ``unknown_host: refuse`` (the tap refuses it: see
    :func:`host_allowed`), so no request can mint a new resource."""
    return _site(config).key + _path_key(target, config.query)


def host_allowed(config, host: str, target: str = "") -> bool:
    """False when the tap must refuse the request (421 Misdirected Request) because its Host (or
    an absolute-form target's host) is not one of ``site.hosts`` and ``unknown_host`` is refuse."""
    site = _site(config)
    if not site.hosts or site.unknown_host == "fold":
        return True
    netloc = urlsplit(target).netloc if "://" in target[:16] else ""
    return site.knows(host) and (not netloc or site.knows(netloc))


def resource_for_url(url: str, rule: QueryRule = QueryRule(), site: SiteRule | None = None) -> str:
    """The resource key for an operator-typed URL (``https://host/path`` or ``host/path``); with
    ``site`` the same key a request for it gets (use :func:`resource_of_url` with a config)."""
    u = url if "://" in url else "http://" + url
    if site is None:
        return normalize(u.split("://", 1)[1].split("/", 1)[0], u, rule)
    return site.key + _path_key(u, rule)


def resource_of_url(config, url: str) -> str:
    """The key a request for ``url`` gets on this sensor: what ``takedown add URL`` and the admin
    API take down."""
    return resource_for_url(url, config.query, _site(config))


def rekey(config, resource: str) -> str:
    """A stored or published key (``host/path?query``, from another sensor, an older version or an
    operator) as this sensor keys it, so that a fleet takedown or an admin ``resource`` refuses
    what requests here are keyed as. Idempotent."""
    host, sep, rest = resource.partition("/")
    return resource_of(config, host, "/" + rest if sep else "/")


def public_url(scheme: str, host: str, target: str) -> dict[str, str]:
    """ECS ``url.*`` without the query string or fragment (query values may carry secrets)."""
    parts = urlsplit(target)
    path = parts.path or "/"
    h = parts.netloc or host
    return {"scheme": scheme, "domain": h.split(":")[0].lower(), "path": path,
            "original": f"{scheme}://{h}{path}"}
