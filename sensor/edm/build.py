"""Build an index from source tables: pick the columns, normalise per kind, hash, write.

Columns are given as ``KIND`` (a column of that name) or ``KIND=COLUMN[+COLUMN…]`` (a column of
another name, or several joined with a space — ``name=first_name+last_name``). The kind selects the
normaliser (see :mod:`sensor.edm.normalise`) and must equal the ``kind`` of the signatures that
find such values in content (``name``, ``dob``, ``address``, ``dl``, ``ssn`` …).

Row ids are the 0-based data-row numbers across the sources in the order given (the header is not
a row): the data owner maps them back to people offline.
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from sensor.edm.indexfile import HASH_BYTES, write_index
from sensor.edm.normalise import KNOWN_KINDS, normaliser
from sensor.edm.sources import SourceError, read_rows

MAX_ROWS = 0xFFFFFFFF


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
    """Read every source, write ``out``. ``progress`` is told the rows done (in batches)."""
    packed: dict[str, list[int]] = {s.kind: [] for s in specs}
    norm = [(s.kind, normaliser(s.kind), f"{s.kind}:".encode()) for s in specs]
    digest = hmac.digest
    row_id = 0
    for source in sources:
        rows: Iterator[dict[str, object]] = read_rows(source)
        cols: list[tuple[str, ...]] | None = None
        done = 0
        for row in rows:
            if cols is None:
                cols = [_resolve(row.keys(), s, source) for s in specs]
            for (kind, fn, prefix), names in zip(norm, cols):
                if len(names) == 1:
                    raw = row.get(names[0])
                else:
                    raw = " ".join(str(row.get(n) or "") for n in names)
                if raw is None or raw == "":
                    continue
                if not isinstance(raw, str):
                    from sensor.edm.normalise import normalise
                    canon = normalise(kind, raw)
                else:
                    canon = fn(raw)
                if canon is None:
                    continue
                h = int.from_bytes(digest(key, prefix + canon.encode(), "sha256")[:HASH_BYTES], "little")
                packed[kind].append(h << 32 | row_id)
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
