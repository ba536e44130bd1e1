"""Count EDM records during a scan: a record whose values match >= ``min_fields`` fields of the
*same* indexed row.

The scanner hands each finished record's candidate values (signature kind, raw bytes) to
:meth:`EdmMatcher.record`; the raw bytes are normalised, hashed under the index key, looked up,
and dropped. Only row ids (numbers in the protected table, not personal values) are kept, at most
``ROW_CAP`` per index per scan; past it matches are counted only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sensor.edm.indexfile import Hasher, IndexFile, IndexFileError, open_index
from sensor.edm.normalise import normaliser

ROW_CAP = 10_000
MEMO_MAX = 200_000
DEFAULT_MIN_FIELDS = 2
DEFAULT_TRIP = 3
DEFAULT_ALERT = 1


@dataclass
class LoadedIndex:
    """One index as the scanner uses it, with its thresholds (EDM records per scan)."""
    name: str
    file: IndexFile
    key: bytes
    min_fields: int = DEFAULT_MIN_FIELDS
    trip: int = DEFAULT_TRIP
    alert: int = DEFAULT_ALERT


@dataclass(frozen=True)
class IndexSpec:
    """Where an index is and how to use it (``--index FILE`` or a config ``indexes:`` entry)."""
    path: str
    name: str | None = None
    min_fields: int = DEFAULT_MIN_FIELDS
    trip: int = DEFAULT_TRIP
    alert: int = DEFAULT_ALERT


def parse_index_specs(raw: object, where: str = "indexes") -> list[IndexSpec]:
    """The config key ``indexes: [{path, name, min_fields, trip, alert}]``; errors name the key."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ValueError(f"{where}: must be a list of {{path, name, min_fields, trip, alert}}")
    out = []
    for i, e in enumerate(raw):
        w = f"{where}[{i}]"
        if isinstance(e, str):
            e = {"path": e}
        if not isinstance(e, dict) or not isinstance(e.get("path"), str):
            raise ValueError(f"{w}: needs 'path' (an index file built by `dlp-sensor index build`)")
        bad = set(e) - {"path", "name", "min_fields", "trip", "alert"}
        if bad:
            raise ValueError(f"{w}: unknown key(s) {sorted(bad)}")
        for k in ("min_fields", "trip", "alert"):
            v = e.get(k)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < (1 if k == "min_fields" else 0)):
                raise ValueError(f"{w}.{k}: must be a whole number >= {1 if k == 'min_fields' else 0} (got {v!r})")
        out.append(IndexSpec(e["path"], e.get("name"), e.get("min_fields") or DEFAULT_MIN_FIELDS,
                             DEFAULT_TRIP if e.get("trip") is None else e["trip"],
                             DEFAULT_ALERT if e.get("alert") is None else e["alert"]))
    return out


@dataclass
class EdmSet:
    """The loaded indexes, shared by every scan (read-only; swapped whole on reload)."""
    indexes: tuple[LoadedIndex, ...]

    def __post_init__(self) -> None:
        self.hashers = [Hasher(i.key) for i in self.indexes]
        self.kinds = frozenset(k for i in self.indexes for k in i.file.fields)

    def matcher(self) -> "EdmMatcher":
        return EdmMatcher(self)

    def close(self) -> None:
        for i in self.indexes:
            i.file.close()


def load_indexes(specs: list[IndexSpec], key: bytes) -> EdmSet | None:
    """Open every index; refuse one built with another key (IndexFileError names the file)."""
    if not specs:
        return None
    loaded = []
    names: set[str] = set()
    for s in specs:
        f = open_index(Path(s.path), key)
        name = s.name or f.name
        if name in names:
            raise IndexFileError(f"index {s.path}: name {name!r} used twice (give each index a name)")
        names.add(name)
        loaded.append(LoadedIndex(name, f, key, s.min_fields, s.trip, s.alert))
    return EdmSet(tuple(loaded))


# lookup order: selective and cheap first (identifiers match one row), dates last (a birth date is
# shared by ~1 in 20,000 people: in a large table every date hits, so it rarely decides alone)
_COST = {"name": 1, "address": 2, "dob": 3, "date": 3}


def _cost(kind: str) -> int:
    return _COST.get(kind, 0)


@dataclass
class EdmMatcher:
    """Per-scan state: matched row ids and counts per index."""
    edm: EdmSet
    counts: dict[str, int] = field(default_factory=dict)
    rows: dict[str, set[int]] = field(default_factory=dict)
    # per index, per kind: raw value -> keyed hash (-1: not a value of the kind), for this scan
    # only: dense content repeats names and dates; the memo dies with the scan
    _memo: list[dict[str, dict[bytes, int]]] = field(default_factory=list)

    def record(self, values: list[tuple[str, bytes]]) -> bool:
        """Look one record's candidate values up; True when it matched a row of some index.

        Values are looked up most selective kind first (identifiers, names, addresses, dates), and the
        lookups stop as soon as the kinds left cannot reach ``min_fields`` (a record of other people
        costs a few hashes, not one per value) or as soon as a row reaches it (a record is one
        person: the rows that reached ``min_fields`` first are its matches)."""
        by_kind: dict[str, list[bytes]] = {}
        for k, raw in values:
            got = by_kind.get(k)
            if got is None:
                by_kind[k] = [raw]
            elif raw not in got:
                got.append(raw)
        order = sorted(by_kind, key=_cost) if len(by_kind) > 1 else list(by_kind)
        hit = False
        for n, ix in enumerate(self.edm.indexes):
            fields = ix.file.fields
            kinds = [k for k in order if k in fields]
            need = ix.min_fields
            left = len(kinds)
            if left < need:
                continue
            hasher = self.edm.hashers[n]
            memos = self._memo[n] if n < len(self._memo) else self._new_memo(n)
            nfound = 0                             # kinds with at least one hit
            per_row: dict[int, int] = {}
            matched: list[int] = []
            for k in kinds:
                if nfound + left < need:
                    break                          # even a hit on every kind left cannot make it
                left -= 1
                f = fields[k]
                memo = memos.get(k)
                if memo is None:
                    memo = memos[k] = {}
                rows: list[int] = []
                for raw in by_kind[k]:
                    h = memo.get(raw)
                    if h is None:
                        canon = normaliser(k)(raw.decode("utf-8", "replace"))
                        h = -1 if canon is None else hasher(k, canon)
                        if len(memo) < MEMO_MAX:
                            memo[raw] = h
                    if h >= 0:
                        rows += f.rows(h)
                if not rows:
                    continue
                nfound += 1
                for r in (set(rows) if len(rows) > 1 else rows):
                    c = per_row.get(r, 0) + 1
                    per_row[r] = c
                    if c == need:
                        matched.append(r)
                if matched:
                    break                          # this record is that row's person: no more lookups
            if not matched:
                continue
            hit = True
            got_rows = self.rows.setdefault(ix.name, set())
            for r in matched:
                if r in got_rows:
                    continue
                if len(got_rows) < ROW_CAP:
                    got_rows.add(r)
                self.counts[ix.name] = self.counts.get(ix.name, 0) + 1
        return hit

    def _new_memo(self, n: int) -> dict[str, dict[bytes, int]]:
        while len(self._memo) <= n:
            self._memo.append({})
        return self._memo[n]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def verdict(self) -> str:
        """pass / alert / trip from the per-index EDM thresholds (0 = that level never fires)."""
        v = "pass"
        for ix in self.edm.indexes:
            n = self.counts.get(ix.name, 0)
            if ix.trip > 0 and n >= ix.trip:
                return "trip"
            if ix.alert > 0 and n >= ix.alert:
                v = "alert"
        return v
