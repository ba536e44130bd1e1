"""Build an index from source tables: pick the columns, normalise per kind, hash, write.

Columns are given as ``KIND`` (a column of that name) or ``KIND=COLUMN[+COLUMN…]`` (a column of
another name, or several joined with a space — ``name=first_name+last_name``). The kind selects the
normaliser (see :mod:`sensor.edm.normalise`) and must equal the ``kind`` of the signatures that
find such values in content (``name``, ``dob``, ``address``, ``dl``, ``ssn`` …).

Row ids are the 0-based data-row numbers across the sources in the order given (the header is not
a row): the data owner maps them back to people offline.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from sensor.edm.indexfile import Hasher, write_index
from sensor.edm.normalise import KNOWN_KINDS, normalise, normaliser
from sensor.edm.sources import SourceError, read_table

MAX_ROWS = 0xFFFFFFFF
MEMO_MAX = 1 << 20


@dataclass(frozen=True)
class ColumnSpec:
    kind: str
    columns: tuple[str, ...]


def parse_columns(text: str) -> list[ColumnSpec]:
    """``name=first_name+last_name,dob,dl=driver_license`` -> specs; a clear error otherwise."""
    specs: list[ColumnSpec] = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        kind, _, cols = part.partition("=")
        kind = kind.strip().lower()
        if kind not in KNOWN_KINDS:
            raise ValueError(f"--columns: unknown field kind {kind!r}; known: {', '.join(KNOWN_KINDS)}")
        columns = tuple(c.strip() for c in (cols or kind).split("+") if c.strip())
        if not columns:
            raise ValueError(f"--columns: {part!r} names no column")
        if any(s.kind == kind for s in specs):
            raise ValueError(f"--columns: kind {kind!r} given twice")
        specs.append(ColumnSpec(kind, columns))
    if len(specs) < 1:
        raise ValueError("--columns: name at least one field (e.g. name,dob,dl)")
    return specs


@dataclass
class BuildStats:
    rows: int = 0
    values: dict[str, int] = None  # type: ignore[assignment]
    size: int = 0


def _resolve(header: Iterable[str], spec: ColumnSpec, source: Path) -> tuple[str, ...]:
    by_lower = {h.strip().lower(): h for h in header}
    out = []
    for c in spec.columns:
        if c.lower() not in by_lower:
            raise SourceError(f"{source}: no column {c!r} for field {spec.kind!r} "
                              f"(columns: {', '.join(sorted(by_lower))})")
        out.append(by_lower[c.lower()])
    return tuple(out)


def build_index(sources: list[Path], specs: list[ColumnSpec], out: Path, key: bytes, *,
                name: str | None = None, progress: Callable[[int], None] | None = None) -> BuildStats:
    """Read every source, write ``out``. ``progress`` is told the rows done (in batches).

    Per value: normalise, hash, append ``hash << 32 | row``. Names and dates repeat a lot in a
    real table, so their hashes are memoised for the build (the memo dies with it)."""
    packed: dict[str, list[int]] = {s.kind: [] for s in specs}
    hasher = Hasher(key)
    plan = []
    for s in specs:
        memo: dict[str, int] | None = {} if s.kind in ("name", "dob", "date") else None
        plan.append((s.kind, normaliser(s.kind), packed[s.kind].append, memo))
    row_id = 0
    for source in sources:
        header, rows = read_table(source)
        cols = [_resolve(header, s, source) for s in specs]
        pos = {h: i for i, h in enumerate(header)}
        idxs = [tuple(pos[c] for c in names) for names in cols]
        width = len(header)
        done = 0
        for row in rows:
            if len(row) < width:
                row = list(row) + [None] * (width - len(row))
            for (kind, fn, append, memo), ix in zip(plan, idxs):
                if len(ix) == 1:
                    raw = row[ix[0]]
                else:
                    raw = " ".join(str(row[i] or "") for i in ix)
                if raw is None or raw == "":
                    continue
                if memo is not None and raw in memo:
                    append(memo[raw] << 32 | row_id)
                    continue
                canon = fn(raw) if isinstance(raw, str) else normalise(kind, raw)
                if canon is None:
                    continue
                h = hasher(kind, canon)
                if memo is not None and isinstance(raw, str) and len(memo) < MEMO_MAX:
                    memo[raw] = h
                append(h << 32 | row_id)
            row_id += 1
            done += 1
            if progress is not None and done % 10000 == 0:
                progress(10000)
            if row_id > MAX_ROWS:
                raise SourceError(f"{source}: more than {MAX_ROWS} rows")
        if progress is not None:
            progress(done % 10000)
    size = write_index(out, name=name or out.stem, key=key, rows=row_id, fields=packed)
    return BuildStats(rows=row_id, values={k: len(v) for k, v in packed.items()}, size=size)
