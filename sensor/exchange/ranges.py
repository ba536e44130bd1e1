"""Range requests on enforce routes: a range is served only of a body scanned whole and clean.

Why: a scan of a 512-byte range sees a few rows, never the whole file, so a file fetched in ranges
(download managers, resumed downloads, a segmented download over several connections) would leave
row by row with no trip; and a range of a gzip body cannot even be decoded. RFC 9110 (section
14.2) lets a server ignore ``Range`` and answer ``200`` with the whole representation, so on an
enforce route the sensor does that until it has scanned that representation clean:

- :class:`CleanVerdicts` remembers, per resource and request target, the *validator* of the last
  full representation (``200``, complete, scanned, verdict ``pass``) — a strong ``ETag``, else
  ``Last-Modified`` with the length — and its Content-Encoding. It is bounded (LRU) and belongs to
  the :class:`~sensor.runtime.Sensor` (one per process); a takedown of the resource forgets it.
- :func:`plan` (request head): no ``Range``/``If-Range``, or a monitor route → ``AS_ASKED``; a clean
  verdict is known → ``RANGED`` (the range goes upstream as asked); else → ``WHOLE`` (``Range`` and
  ``If-Range`` are removed from the upstream request, the full ``200`` is scanned like any
  exchange and the client receives it whole).
- :func:`range_allowed` (response head): a ``206`` on an enforce route passes (scanned as partial)
  only when its validator equals the clean one; an unasked ``206``, one without a validator, or one
  of another version is not served (the proxy asks again for the whole body; ICAP and ext_proc,
  which cannot, answer ``503`` + ``Retry-After``).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping

RANGE_HEADERS = ("range", "if-range")     # what a WHOLE fetch removes from the upstream request
CLEAN_VERDICTS = 10_000                   # entries kept (LRU): a few hundred bytes each

AS_ASKED = "as-asked"     # no range asked, or a monitor route: the request goes upstream unchanged
RANGED = "ranged"         # a clean verdict is known: the range goes upstream, its 206 is checked
WHOLE = "whole"           # no clean verdict: ask for the whole body, scan it, answer 200 whole


def asks_range(headers: Mapping[str, str]) -> bool:
    """Whether the request asks for part of the body (``Range``, or ``If-Range``)."""
    return any(k.lower() in RANGE_HEADERS for k in headers.keys())


def _get(headers: Mapping[str, str], name: str) -> str:
    for k, v in headers.items():
        if k.lower() == name:
            return v.strip()
    return ""


def validator_of(status: int, headers: Mapping[str, str]) -> str | None:
    """The representation's validator, or None when it has none a range can be checked against.

    A strong ETag (a weak one, ``W/``, does not promise byte-identical content, RFC 9110 8.8.3);
    else ``Last-Modified`` with the full length (a ``200``'s Content-Length, a ``206``'s
    Content-Range total). The Content-Encoding is part of it: a range counts bytes of that coding."""
    coding = _get(headers, "content-encoding").lower() or "identity"
    etag = _get(headers, "etag")
    if etag and not etag.startswith("W/"):
        return f"etag {etag} {coding}"
    modified = _get(headers, "last-modified")
    if not modified:
        return None
    if status == 206:
        total = _get(headers, "content-range").rpartition("/")[2].strip()
    else:
        total = _get(headers, "content-length")
    if not total.isdigit():
        return None
    return f"lm {modified} {total} {coding}"


class CleanVerdicts:
    """Validators of full representations scanned clean, keyed by (resource, target); bounded (LRU).

    Thread-safe (one lock): every tap of the process shares it."""

    def __init__(self, limit: int = CLEAN_VERDICTS):
        self.limit = limit
        self._entries: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._by_resource: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, resource: str, target: str, validator: str) -> None:
        """A full representation of ``target`` with ``validator`` was scanned clean."""
        with self._lock:
            key = (resource, target)
            self._entries[key] = validator
            self._entries.move_to_end(key)
            self._by_resource.setdefault(resource, set()).add(target)
            while len(self._entries) > self.limit:
                (r, t), _ = self._entries.popitem(last=False)
                self._drop_index(r, t)

    def known(self, resource: str, target: str) -> bool:
        """Whether a clean verdict is held for ``target`` (of some version)."""
        with self._lock:
            return (resource, target) in self._entries

    def clean(self, resource: str, target: str, validator: str | None) -> bool:
        """Whether the version with ``validator`` was scanned clean (None never is)."""
        if validator is None:
            return False
        with self._lock:
            hit = self._entries.get((resource, target)) == validator
            if hit:
                self._entries.move_to_end((resource, target))
            return hit

    def forget(self, resource: str, target: str | None = None) -> None:
        """Drop the verdict of ``target``, or (a takedown) every verdict of ``resource``."""
        with self._lock:
            targets = [target] if target is not None else list(self._by_resource.get(resource, ()))
            for t in targets:
                self._entries.pop((resource, t), None)
                self._drop_index(resource, t)

    def _drop_index(self, resource: str, target: str) -> None:
        ts = self._by_resource.get(resource)
        if ts is not None:
            ts.discard(target)
            if not ts:
                del self._by_resource[resource]


def plan(cache: CleanVerdicts, *, enforce: bool, resource: str, target: str, headers: Mapping[str, str]) -> str:
    """How the request goes upstream: ``AS_ASKED``, ``RANGED`` or ``WHOLE`` (see the module doc)."""
    if not enforce or not asks_range(headers):
        return AS_ASKED
    return RANGED if cache.known(resource, target) else WHOLE


def range_allowed(cache: CleanVerdicts, *, resource: str, target: str, headers: Mapping[str, str]) -> bool:
    """Whether a ``206`` (enforce route) may be served: its version was scanned whole and clean."""
    return cache.clean(resource, target, validator_of(206, headers))
