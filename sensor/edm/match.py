"""Count EDM records during a scan: a record whose values match >= ``min_fields`` fields of the
*same* indexed row.

The scanner hands each finished record's candidate values (signature kind, raw bytes) to
:meth:`EdmMatcher.record`; they are queued for at most ``BATCH`` records (in memory, within the
scan), then normalised at the byte level, hashed under the index key, looked up, and dropped. Only row ids (numbers in the protected table, not personal values) are kept, at most
``ROW_CAP`` per index per scan; past it matches are counted only.

:class:`EdmMatcher` is the reference. When the compiled matcher (``sensor/edm/_edmcore.pyx``) is
built, :meth:`EdmSet.matcher` hands out that one instead: the same steps in C on the same batches
(~0.7-0.9 us a dense record replayed alone instead of ~7-8 us), held to identical counts, row ids
and per-call answers by ``tests/test_edm_compiled.py``.
"""
from __future__ import annotations

import logging
import os
import weakref
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sensor.edm.indexfile import HASH_BYTES, Hasher, IndexFile, IndexFileError, open_index
from sensor.edm.normalise import address, bytes_normaliser, date, identifier, name, normaliser

log = logging.getLogger("dlp.edm")

# The compiled matcher (sensor/edm/_edmcore.pyx, OpenSSL libcrypto) is used when it was built;
# ``DLP_SENSOR_PYTHON_EDM=1`` forces this module's reference matcher (debugging, the differential
# test). Closed set of reasons (a metric label): why the compiled matcher is or is not in use.
ENV_FORCE_PYTHON = "DLP_SENSOR_PYTHON_EDM"
REASONS = ("compiled", "forced-python", "not-built")
try:
    from sensor.edm import _edmcore
except ImportError:               # not built (no libcrypto headers or no compiler at install)
    _edmcore = None  # type: ignore[assignment]
_warned = False
_gauges: "weakref.WeakSet[Any]" = weakref.WeakSet()

ROW_CAP = 10_000
MEMO_MAX = 200_000
BATCH = 64                      # records queued before a lookup pass (see EdmMatcher)
# kinds whose values repeat within a scan (many people share a name or a birth date): their hashes
# are memoised per scan. Identifiers and streets are one person's: a memo of them would only grow
# (a large dict is a cache miss per record), so they are hashed each time
MEMO_KINDS = frozenset({"name", "dob", "date"})
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
    """Where an index is and how to use it (``--index FILE`` or a config ``indexes:`` entry).

    ``key``: the index's own HMAC key (config ``key``/``key_file``/``key_env``), when the data owner
    builds it with a key of its own instead of every sensor's state-dir key; None: the sensor's key.
    Kept out of ``repr`` (a spec may be logged or shown in a reload message)."""
    path: str
    name: str | None = None
    min_fields: int = DEFAULT_MIN_FIELDS
    trip: int = DEFAULT_TRIP
    alert: int = DEFAULT_ALERT
    key: bytes | None = field(default=None, repr=False)


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


# lookup order: selective and cheap first (identifiers match one row), dates last (a birth date is
# shared by ~1 in 20,000 people: in a large table every date hits, so it rarely decides alone)
_COST = {"name": 1, "address": 2, "dob": 3, "date": 3}


def _cost(kind: str) -> int:
    return _COST.get(kind, 0)


@dataclass
class EdmSet:
    """The loaded indexes, shared by every scan (read-only; swapped whole on reload)."""
    indexes: tuple[LoadedIndex, ...]

    def __post_init__(self) -> None:
        self.hashers = [Hasher(i.key) for i in self.indexes]
        self.kinds = frozenset(k for i in self.indexes for k in i.file.fields)
        # what a lookup needs, resolved once: the kinds in lookup order, and per index its
        # ``min_fields``, the outer hash state, and per kind (the field's directory, shift, hashes and row
        # ids as in Field.rows, the bytes normaliser, the inner hash state, memoise?)
        self.order = tuple(sorted(self.kinds, key=_cost))
        self.min_need = min((i.min_fields for i in self.indexes), default=1)
        norms = {k: bytes_normaliser(k) for k in self.kinds}
        self.plans = [
            (ix, ix.min_fields, h.outer.copy, tuple(k for k in self.order if k in ix.file.fields),
             {k: (f.directory, 64 - f.bits, f.hashes, f.ids, norms[k], h.kind_state(k).copy, k in MEMO_KINDS)
              for k, f in ix.file.fields.items()})
            for ix, h in zip(self.indexes, self.hashers)]
        self._plan = None
        if compiled_reason() == "compiled":
            self._plan = _edmcore.Plan(self, {k: _norm_code(k) for k in self.kinds}, norms)

    def matcher(self) -> "EdmMatcher":
        """A per-scan matcher: the compiled one when built, else the Python reference."""
        if self._plan is not None:
            return _edmcore.Matcher(self, self._plan, ROW_CAP, BATCH)
        return EdmMatcher(self)

    def close(self) -> None:
        self._plan = None                          # its views of the mapped index go with it...
        for i in self.indexes:
            try:
                i.file.close()
            except BufferError:                    # ...unless a compiled matcher still holds it: that
                pass                               # one keeps working, the mapping is freed after it


def _norm_code(kind: str) -> int:
    """The compiled matcher's normaliser for a kind (codes of sensor/edm/_edmcore.pyx); 4: it calls
    the Python bytes normaliser for every value of the kind."""
    fn = normaliser(kind)
    return {identifier: 0, address: 1, name: 2, date: 3}.get(fn, 4)


def compiled_reason() -> str:
    """Why the compiled matcher is (``compiled``) or is not in use (one of REASONS)."""
    if os.environ.get(ENV_FORCE_PYTHON, "") not in ("", "0"):
        return "forced-python"
    return "compiled" if _edmcore is not None else "not-built"


def _announce() -> None:
    """Once per process, when indexes are loaded without the compiled matcher: say so."""
    global _warned
    reason = compiled_reason()
    if reason != "compiled" and not _warned:
        _warned = True
        log.warning("compiled EDM matcher not in use (%s): matching with the Python reference, "
                    "several times slower on dense data", reason)
    for g in list(_gauges):
        _export(g)


def _export(gauge: Any) -> None:
    reason = compiled_reason()
    gauge.clear()                                 # one series: the reason in force
    gauge.labels(reason=reason).set(1 if reason == "compiled" else 0)


def export_to(gauge: Any) -> None:
    """Keep a ``dlp_sensor_compiled_edm{reason}`` gauge in step: one series, 1 with reason
    ``compiled``, else 0 with the reason the Python reference matcher runs."""
    _gauges.add(gauge)
    _export(gauge)


def load_indexes(specs: list[IndexSpec], key: bytes) -> EdmSet | None:
    """Open every index with its own key when the spec gives one, else ``key`` (the state dir's);
    refuse one built with another key (IndexFileError names the file and both key ids, never a key)."""
    if not specs:
        return None
    _announce()
    loaded = []
    names: set[str] = set()
    for s in specs:
        own = s.key is not None
        k = s.key if own else key
        f = open_index(Path(s.path), k, key_source="the key given for this index" if own else None)
        name = s.name or f.name
        if name in names:
            raise IndexFileError(f"index {s.path}: name {name!r} used twice (give each index a name)")
        names.add(name)
        loaded.append(LoadedIndex(name, f, k, s.min_fields, s.trip, s.alert))
    return EdmSet(tuple(loaded))


@dataclass
class EdmMatcher:
    """Per-scan state: matched row ids and counts per index.

    Records are queued and looked up ``BATCH`` at a time (and whenever a count, the rows or the
    verdict is read): one tight loop over many records keeps the lookup code, the hash states and
    the index pages warm between the scanner's own work — measured ~15 % of the matcher's cost in
    dense content. A match is therefore reported up to ``BATCH - 1`` records late (``record``
    returns True at the call that looked it up); the final counts and rows are exact."""
    edm: EdmSet
    _counts: dict[str, int] = field(default_factory=dict)
    _rows: dict[str, set[int]] = field(default_factory=dict)
    # per index, per kind: raw value -> keyed hash (-1: not a value of the kind), for this scan
    # only: dense content repeats names and dates; the memo dies with the scan
    _memo: list[dict[str, dict[bytes, int]]] = field(default_factory=list)
    _pending: list[list[tuple[str, bytes]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._memo = [{k: {} for k in steps} for *_, steps in self.edm.plans]
        self._plans = [p + (m,) for p, m in zip(self.edm.plans, self._memo)]

    def record(self, values: list[Any]) -> bool:
        """Queue one record's candidate values: (kind, raw bytes) pairs, or the same flat (kind, raw,
        kind, raw, ...) as the scanner hands them; True when the batch this call completed matched
        a row of some index."""
        if values and not isinstance(values[0], tuple):
            values = list(zip(values[::2], values[1::2]))
        if len(values) < self.edm.min_need:
            return False                           # fewer values than any index needs fields
        p = self._pending
        p.append(values)
        return len(p) >= BATCH and self.flush()

    def flush(self) -> bool:
        """Look the queued records up now; True when one matched."""
        p = self._pending
        if not p:
            return False
        self._pending = []
        lookup = self._lookup
        hit = False
        for values in p:
            if lookup(values):
                hit = True
        return hit

    @property
    def counts(self) -> dict[str, int]:
        """Index name -> EDM records so far."""
        self.flush()
        return self._counts

    @property
    def rows(self) -> dict[str, set[int]]:
        """Index name -> matched row ids so far (at most ``ROW_CAP``)."""
        self.flush()
        return self._rows

    def _lookup(self, values: list[tuple[str, bytes]]) -> bool:
        """Look one record's candidate values up; True when it matched a row of some index.

        Values are looked up most selective kind first (identifiers, names, addresses, dates), and the
        lookups stop as soon as the kinds left cannot reach ``min_fields`` (a record of other people
        costs a few hashes, not one per value) or as soon as a row reaches it (a record is one
        person: the rows that reached ``min_fields`` first are its matches). Every step is inlined
        (HMAC from precomputed pad states, per-scan memo of raw value -> hash): this runs once per
        record of dense content, and its cost is counted in bytecodes."""
        by_kind: dict[str, list[bytes]] = {}
        for k, raw in values:
            if k in by_kind:
                if raw not in by_kind[k]:
                    by_kind[k].append(raw)
            else:
                by_kind[k] = [raw]
        if len(by_kind) < self.edm.min_need:
            return False
        hit = False
        present = by_kind.__contains__
        for ix, need, oc, order, steps, mk in self._plans:
            kinds = list(filter(present, order))   # (no comprehension frame: this runs per record)
            left = len(kinds)
            if left < need:
                continue
            nfound = 0                             # kinds with at least one hit
            per_row: dict[int, int] = {}
            matched: list[int] = []
            for k in kinds:
                if nfound + left < need:
                    break                          # even a hit on every kind left cannot make it
                left -= 1
                d, shift, hs, ids, norm, ic, keep = steps[k]
                memo = mk[k]
                rows: list[int] | None = None
                for raw in by_kind[k]:
                    h = memo.get(raw)
                    if h is None:
                        canon = norm(raw)
                        if canon is None:
                            if keep:
                                memo[raw] = -1
                            continue
                        i = ic()
                        i.update(canon)
                        o = oc()
                        o.update(i.digest())
                        h = int.from_bytes(o.digest()[:HASH_BYTES], "little")
                        if keep and len(memo) < MEMO_MAX:
                            memo[raw] = h
                    elif h < 0:
                        continue
                    b = h >> shift                 # Field.rows, inlined
                    lo = d[b]
                    hi = d[b + 1]
                    if lo >= hi:
                        continue
                    j = bisect_left(hs, h, lo, hi)
                    if j == hi or hs[j] != h:
                        continue
                    e = j + 1
                    while e < hi and hs[e] == h:
                        e += 1
                    got = ids[j:e].tolist()
                    # one value's rows are distinct and sorted (the index sorts equal hashes by
                    # row id); a union is sorted too: the compiled matcher counts in the same order
                    rows = got if rows is None else sorted(set(rows).union(got))
                if rows is None:
                    continue
                nfound += 1
                if nfound == 1 and need > 1:       # the first kind that hit: its rows have one field
                    if left + 1 >= need:
                        per_row = dict.fromkeys(rows, 1)
                    continue
                if left + 1 >= need:               # a row first seen here can still reach min_fields
                    for r in rows:
                        c = per_row.get(r, 0) + 1
                        per_row[r] = c
                        if c == need:
                            matched.append(r)
                else:                              # only rows already counted can: check them alone
                    # (a date of birth hits dozens of rows of a large table; the candidates are few)
                    for r, c in list(per_row.items()):
                        if c + 1 + left >= need and r in rows:
                            per_row[r] = c + 1
                            if c + 1 == need:
                                matched.append(r)
                if matched:
                    break                          # this record is that row's person: no more lookups
            if not matched:
                continue
            hit = True
            name = ix.name
            got_rows = self._rows.setdefault(name, set())
            counts = self._counts
            for r in matched:
                if r in got_rows:
                    continue
                if len(got_rows) < ROW_CAP:
                    got_rows.add(r)
                counts[name] = counts.get(name, 0) + 1
        return hit

    @property
    def total(self) -> int:
        return sum(self.counts.values())       # (counts flushes the queue)

    def verdict(self) -> str:
        """pass / alert / trip from the per-index EDM thresholds (0 = that level never fires)."""
        self.flush()
        v = "pass"
        for ix in self.edm.indexes:
            n = self._counts.get(ix.name, 0)
            if ix.trip > 0 and n >= ix.trip:
                return "trip"
            if ix.alert > 0 and n >= ix.alert:
                v = "alert"
        return v
