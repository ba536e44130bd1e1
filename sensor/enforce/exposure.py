"""Exposure across responses: distinct records given out per resource and per client, over a window.

One response of five people is below any sensible trip threshold; four hundred pages of them are
two thousand people. The scanner hands every result the identities of its strong and person
records (``ScanResult.strong_ids`` / ``person_ids``: a hash of the record's value hashes under
this process's hash secret — never a value). :class:`ExposureTracker` keeps, for each resource
(pagination folded: sensor.enforce.resource) and for each client on a route, the identities it
has seen in the last ``window_s`` seconds, and says when the distinct count crosses the policy's
trip thresholds (``strong_records`` / ``person_records``). A record served twice counts once.
A response with fewer than ``min_response_records`` records (one person: often the user's own,
``/api/me``) counts only for its client, and only while each resource shows that client the same
records, so that many users behind one address fetching their own record never add up.

Bounded memory, whatever the traffic: at most ``max_resources`` resource keys and ``max_clients``
client keys (least recently used ones are forgotten first), at most ``max_records`` identities of
each kind per key (past it the oldest are forgotten and the count stays at the cap, noted as
approximate), and at most ``max_ids`` identities over all keys (least recently used keys are
dropped to stay under it; about 100 bytes each). Everything is in memory: a restart starts every
window afresh, and identities mean nothing to another process (the fleet does not share them).
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Iterable

KINDS = ("strong", "person")


@dataclass(frozen=True)
class ExposureSettings:
    """``exposure:`` in the configuration file."""
    enabled: bool = True
    window_s: float = 3600.0
    max_resources: int = 10_000
    max_clients: int = 10_000
    max_records: int = 1_000
    max_ids: int = 1_000_000
    min_response_records: int = 2


@dataclass(frozen=True)
class Crossing:
    """A key whose distinct records crossed a trip threshold (reported once per key)."""
    scope: str                      # "resource" | "client"
    key: str                        # the resource, or the route for a client
    records: int                    # distinct records of either kind
    strong_records: int
    person_records: int
    responses: int                  # responses in the window that carried counted records
    approximate: bool               # some identities were left out (caps): the counts are lower bounds


@dataclass
class _Seen:
    """The identities one key saw, oldest first, with when each was last seen."""
    ids: dict[str, OrderedDict[int, float]] = field(default_factory=lambda: {k: OrderedDict() for k in KINDS})
    responses: deque = field(default_factory=deque)     # when each contributing response was seen
    approximate: bool = False
    tripped: bool = False
    # client keys: resource -> the records of its small responses to this client (None: it gave
    # the client different ones, as a page that shows each user behind one address their own does)
    singles: OrderedDict[str, int | None] = field(default_factory=OrderedDict)

    def size(self) -> int:
        return sum(len(d) for d in self.ids.values()) + len(self.singles)

    def expire(self, before: float) -> int:
        """Forget what was last seen before ``before``; the number of identities forgotten."""
        gone = 0
        for d in self.ids.values():
            while d and next(iter(d.values())) < before:
                d.popitem(last=False)
                gone += 1
        while self.responses and self.responses[0] < before:
            self.responses.popleft()
        if not any(self.ids.values()):
            gone += len(self.singles)
            self.singles.clear()
            self.approximate = self.tripped = False     # a new window: it may cross (and report) again
        return gone


class ExposureTracker:
    """Not thread-safe: one per sensor process, used from its event loop."""

    def __init__(self, settings: ExposureSettings = ExposureSettings()):
        self.settings = settings
        self._keys: dict[str, OrderedDict[object, _Seen]] = {"resource": OrderedDict(), "client": OrderedDict()}
        self._total = 0                                  # identities held over all keys

    def __len__(self) -> int:
        return self._total

    def keys(self, scope: str) -> int:
        return len(self._keys[scope])

    def add(self, *, resource: str, route: str, client: str | None, strong: Iterable[int],
            person: Iterable[int], capped: bool, now: float, strong_trip: int,
            person_trip: int) -> list[Crossing]:
        """Count one response's records; the keys that crossed ``strong_trip`` / ``person_trip``
        (0 = that measure never trips) for the first time in their window."""
        s = self.settings
        strong, person = list(strong), list(person)
        if not s.enabled or not (strong or person):
            return []
        out = []
        small = len(set(strong) | set(person)) < s.min_response_records
        keys = [] if small else [("resource", resource, resource, s.max_resources)]
        if client:
            keys.append(("client", (route, client), route, s.max_clients))
        for scope, k, name, cap in keys:
            seen = self._seen(scope, k, cap, now)
            if small and not self._single(seen, resource, hash(frozenset(strong) | frozenset(person))):
                continue
            self._count(seen, {"strong": strong, "person": person}, capped, now)
            n_strong, n_person = len(seen.ids["strong"]), len(seen.ids["person"])
            hit = (strong_trip > 0 and n_strong >= strong_trip) or (person_trip > 0 and n_person >= person_trip)
            if hit and not seen.tripped:
                seen.tripped = True
                both = len(seen.ids["strong"].keys() | seen.ids["person"].keys())
                out.append(Crossing(scope, name, both, n_strong, n_person, len(seen.responses), seen.approximate))
        self._budget()
        return out

    # -- internals -------------------------------------------------------------------------------
    def _seen(self, scope: str, k: object, cap: int, now: float) -> _Seen:
        table = self._keys[scope]
        seen = table.get(k)
        if seen is None:
            seen = table[k] = _Seen()
            while len(table) > cap:                      # least recently used key out
                self._total -= table.popitem(last=False)[1].size()
        else:
            table.move_to_end(k)
            self._total -= seen.expire(now - self.settings.window_s)
        return seen

    def _single(self, seen: _Seen, resource: str, sig: int) -> bool:
        """Does a small response (fewer records than ``min_response_records``) count for this client?
        Yes while each resource shows the client one set of records (a client walking
        ``/api/person/1``, ``/2``…); no once a resource has shown it different ones (``/api/me``
        behind a shared address: each user their own record)."""
        prev = seen.singles.get(resource, self)
        if prev is self:
            seen.singles[resource] = sig
            self._total += 1
            if len(seen.singles) > self.settings.max_records:
                seen.singles.popitem(last=False)
                self._total -= 1
            return True
        seen.singles.move_to_end(resource)
        if prev == sig:
            return True
        seen.singles[resource] = None
        return False

    def _count(self, seen: _Seen, ids: dict[str, list[int]], capped: bool, now: float) -> None:
        limit = self.settings.max_records
        for kind, values in ids.items():
            d = seen.ids[kind]
            for i in values:
                if i in d:
                    d.move_to_end(i)
                else:
                    self._total += 1
                    if len(d) >= limit:                  # the oldest goes; the count stays at the cap
                        d.popitem(last=False)
                        self._total -= 1
                        seen.approximate = True
                d[i] = now
        seen.responses.append(now)
        if len(seen.responses) > limit:
            seen.responses.popleft()
            seen.approximate = True
        seen.approximate |= capped

    def _budget(self) -> None:
        """Drop least recently used keys (clients first) while over ``max_ids``."""
        for scope in ("client", "resource"):
            table = self._keys[scope]
            while self._total > self.settings.max_ids and len(table) > 1:
                self._total -= table.popitem(last=False)[1].size()
