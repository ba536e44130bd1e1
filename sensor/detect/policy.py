"""Policy: when a stream of findings becomes an alert or a trip, per route.

The unit is the *record* (values that belong to one person). Defaults:

- trip  at >= 10 records with a strong identifier and a quasi-identifier, or >= 25 records with
  a name and a DOB or address;
- alert at >= 1 such strong record, >= 3 name+DOB/address records, >= 1 validated strong
  identifier on its own, or >= 1000 distinct contact values (a mailing-list dump);
- a contact page (a few phones and emails) passes.

Exact data match (``sensor.edm``) has its own thresholds per index (EDM records: trip at 3,
alert at 1 by default; set on the index, ``indexes: [{path, trip, alert}]``). They are applied
before the signature thresholds: the verdict is the stronger of the two (:func:`stronger`).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sensor.yamlfile import read_yaml

VERDICTS = ("pass", "alert", "trip")


def stronger(a: str, b: str) -> str:
    """The more severe of two verdicts."""
    return a if VERDICTS.index(a) >= VERDICTS.index(b) else b


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the key."""


@dataclass(frozen=True)
class Thresholds:
    strong_records: int
    person_records: int
    strong_values: int = 0          # 0 = this measure never fires
    contact_values: int = 0


@dataclass(frozen=True)
class Route:
    match: str                                   # glob on the URL path, e.g. /profile/*
    trip: Thresholds | None = None
    alert: Thresholds | None = None
    allow: frozenset[str] = frozenset()          # signature ids not counted on this route


@dataclass(frozen=True)
class Policy:
    trip: Thresholds = Thresholds(strong_records=10, person_records=25)
    alert: Thresholds = Thresholds(strong_records=1, person_records=3, strong_values=1, contact_values=1000)
    allow: frozenset[str] = frozenset()
    routes: tuple[Route, ...] = ()
    hotword_window: int = 64                     # characters before a value where a hotword counts
    max_record_bytes: int = 4096                 # a longer line is split into windows this size

    def for_path(self, path: str | None) -> "Policy":
        """The policy with the first matching route's overrides applied."""
        for r in self.routes:
            if path is not None and fnmatch.fnmatchcase(path, r.match):
                return replace(self, trip=r.trip or self.trip, alert=r.alert or self.alert,
                               allow=self.allow | r.allow, routes=())
        return self

    def decide(self, strong_records: int, person_records: int, strong_values: int, contact_values: int) -> str:
        def hit(t: Thresholds) -> bool:
            return ((t.strong_records > 0 and strong_records >= t.strong_records)
                    or (t.person_records > 0 and person_records >= t.person_records)
                    or (t.strong_values > 0 and strong_values >= t.strong_values)
                    or (t.contact_values > 0 and contact_values >= t.contact_values))
        if hit(self.trip):
            return "trip"
        if hit(self.alert):
            return "alert"
        return "pass"


_TH_KEYS = {"strong_records", "person_records", "strong_values", "contact_values"}


def _thresholds(raw: Any, base: Thresholds, where: str) -> Thresholds:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: must be a mapping of {sorted(_TH_KEYS)}")
    bad = set(raw) - _TH_KEYS
    if bad:
        raise PolicyError(f"{where}: unknown key(s) {sorted(bad)}; known: {sorted(_TH_KEYS)}")
    for k, v in raw.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise PolicyError(f"{where}.{k}: must be a whole number >= 0 (got {v!r})")
    return replace(base, **raw)


def _ids(raw: Any, where: str, known: set[str] | None) -> frozenset[str]:
    if raw is None:
        return frozenset()
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise PolicyError(f"{where}: must be a list of signature ids")
    if known is not None:
        unknown = [x for x in raw if x not in known]
        if unknown:
            raise PolicyError(f"{where}: unknown signature id(s) {unknown}")
    return frozenset(raw)


def parse_policy(raw: Any, where: str = "policy", known_ids: set[str] | None = None) -> Policy:
    if raw is None:
        return Policy()
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: must be a mapping")
    known = {"trip", "alert", "allow", "routes", "hotword_window", "max_record_bytes"}
    bad = set(raw) - known
    if bad:
        raise PolicyError(f"{where}: unknown key(s) {sorted(bad)}; known: {sorted(known)}")
    p = Policy()
    trip = _thresholds(raw["trip"], p.trip, f"{where}.trip") if "trip" in raw else p.trip
    alert = _thresholds(raw["alert"], p.alert, f"{where}.alert") if "alert" in raw else p.alert
    for k in ("hotword_window", "max_record_bytes"):
        if k in raw and (not isinstance(raw[k], int) or raw[k] <= 0):
            raise PolicyError(f"{where}.{k}: must be a positive whole number (got {raw[k]!r})")
    routes = []
    for i, r in enumerate(raw.get("routes") or []):
        rw = f"{where}.routes[{i}]"
        if not isinstance(r, dict) or not isinstance(r.get("match"), str):
            raise PolicyError(f"{rw}: needs 'match' (a path glob such as /profile/*)")
        bad = set(r) - {"match", "trip", "alert", "allow"}
        if bad:
            raise PolicyError(f"{rw}: unknown key(s) {sorted(bad)}")
        routes.append(Route(match=r["match"],
                            trip=_thresholds(r["trip"], trip, f"{rw}.trip") if "trip" in r else None,
                            alert=_thresholds(r["alert"], alert, f"{rw}.alert") if "alert" in r else None,
                            allow=_ids(r.get("allow"), f"{rw}.allow", known_ids)))
    return Policy(trip=trip, alert=alert, allow=_ids(raw.get("allow"), f"{where}.allow", known_ids),
                  routes=tuple(routes), hotword_window=raw.get("hotword_window", p.hotword_window),
                  max_record_bytes=raw.get("max_record_bytes", p.max_record_bytes))


def load_policy(path: Path | None, known_ids: set[str] | None = None) -> Policy:
    if path is None:
        return Policy()
    raw = read_yaml(Path(path), PolicyError)
    if isinstance(raw, dict) and "policy" in raw and len(raw) == 1:
        raw = raw["policy"]
    return parse_policy(raw, str(path), known_ids)
