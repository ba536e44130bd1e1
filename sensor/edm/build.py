"""Build an index from source tables: pick the columns, normalise per kind, hash, write.

Columns are given as ``KIND`` (a column of that name) or ``KIND=COLUMN[+COLUMN…]`` (a column of
another name, or several joined with a space — ``name=first_name+last_name``). The kind selects the
normaliser (see :mod:`sensor.edm.normalise`) and must equal the ``kind`` of the signatures that
find such values in content (``name``, ``dob``, ``address``, ``dl``, ``ssn`` …).

Row ids are the 0-based data-row numbers across the sources in the order given (the header is not
a row): the data owner maps them back to people offline.
"""
from __future__ import annotations

import csv
import io
import multiprocessing
import os
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator

from sensor.edm.indexfile import Hasher, write_index
from sensor.edm.normalise import KNOWN_KINDS, normalise, normaliser
from sensor.edm.sources import SourceError, _delimiter, read_table

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
            # the header is not echoed: in a file without one, the "header" is a person's row
            raise SourceError(f"{source}: no column {c!r} for field {spec.kind!r} in its header row "
                              f"({len(by_lower)} columns; the first row must name them)")
        out.append(by_lower[c.lower()])
    return tuple(out)


def _plan(specs: list[ColumnSpec]) -> list[tuple[str, Callable[[str], str | None], dict[str, int] | None]]:
    # names and dates repeat a lot in a real table: their hashes are memoised for the build
    return [(s.kind, normaliser(s.kind), {} if s.kind in ("name", "dob", "date") else None) for s in specs]


def _hash_rows(rows: Iterable[list], idxs: list[tuple[int, ...]], width: int, plan, hasher: Hasher,
               appends: list[Callable[[int], None]], row_id: int, source: Path,
               progress: Callable[[int], None] | None = None) -> int:
    """Normalise, hash and append ``hash << 32 | row id`` for every indexed value; returns the next row id."""
    done = 0
    for row in rows:
        if len(row) < width:
            row = list(row) + [None] * (width - len(row))
        for (kind, fn, memo), ix, append in zip(plan, idxs, appends):
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
    return row_id


# -- parallel CSV/TSV: blocks of lines parsed and hashed in forked workers -------------------------
BLOCK_LINES = 20_000
_W: dict = {}


def _worker_init(specs: list[ColumnSpec], key: bytes, idxs, width: int, delim: str, source: Path) -> None:
    _W.update(plan=_plan(specs), hasher=Hasher(key), idxs=idxs, width=width, delim=delim, source=source)


def _worker_block(text: str) -> tuple[int, list[list[int]]]:
    """One block: (rows, per field ``hash << 32 | row`` with row ids from 0 within the block)."""
    out: list[list[int]] = [[] for _ in _W["plan"]]
    n = _hash_rows(csv.reader(io.StringIO(text, newline=""), delimiter=_W["delim"]), _W["idxs"], _W["width"],
                   _W["plan"], _W["hasher"], [o.append for o in out], 0, _W["source"])
    return n, out


def _blocks(fh: Iterator[str]) -> Iterator[str]:
    """Blocks of whole CSV records: a block whose quotes are unbalanced (a quoted newline) takes
    the next lines until they balance."""
    while True:
        lines = list(islice(fh, BLOCK_LINES))
        if not lines:
            return
        text = "".join(lines)
        quotes = text.count('"')
        while quotes % 2:
            nxt = next(fh, None)
            if nxt is None:
                break
            text += nxt
            quotes += nxt.count('"')
        yield text


def _csv_parallel(source: Path, specs: list[ColumnSpec], key: bytes, jobs: int, packed: dict[str, list[int]],
                  row_id: int, progress: Callable[[int], None] | None) -> int | None:
    """Hash a CSV/TSV source in ``jobs`` processes; None when the source is not CSV/TSV."""
    if source.suffix.lower() not in (".csv", ".tsv", ".txt", ".tab"):
        return None
    with open(source, encoding="utf-8-sig", errors="replace", newline="") as fh:
        first = fh.readline()
        if first.lstrip().startswith("{"):
            return None
        delim = _delimiter(first)
        header = next(csv.reader([first], delimiter=delim), [])
        cols = [_resolve(header, s, source) for s in specs]
        pos = {h: i for i, h in enumerate(header)}
        idxs = [tuple(pos[c] for c in names) for names in cols]
        ctx = multiprocessing.get_context("fork")
        lists = [packed[s.kind] for s in specs]
        with ctx.Pool(jobs, initializer=_worker_init, initargs=(specs, key, idxs, len(header), delim, source)) as pool:
            for n, out in pool.imap(_worker_block, _blocks(fh), chunksize=1):
                for dst, got in zip(lists, out):
                    dst.extend([p + row_id for p in got] if row_id else got)
                row_id += n
                if row_id > MAX_ROWS:
                    raise SourceError(f"{source}: more than {MAX_ROWS} rows")
                if progress is not None:
                    progress(n)
    return row_id


def build_index(sources: list[Path], specs: list[ColumnSpec], out: Path, key: bytes, *,
                name: str | None = None, progress: Callable[[int], None] | None = None,
                jobs: int | None = None) -> BuildStats:
    """Read every source, write ``out``. ``progress`` is told the rows done (in batches).

    CSV/TSV sources are split into blocks of lines hashed in ``jobs`` forked processes (default:
    one per CPU core; normalising and hashing is Python, one core's work per block); the other
    formats are read in this process. Row ids are the same either way."""
    packed: dict[str, list[int]] = {s.kind: [] for s in specs}
    jobs = jobs if jobs is not None else (os.cpu_count() or 1)
    hasher = Hasher(key)
    plan = _plan(specs)
    appends = [packed[s.kind].append for s in specs]
    row_id = 0
    for source in sources:
        if jobs > 1:
            nxt = _csv_parallel(source, specs, key, jobs, packed, row_id, progress)
            if nxt is not None:
                row_id = nxt
                continue
        header, rows = read_table(source)
        cols = [_resolve(header, s, source) for s in specs]
        pos = {h: i for i, h in enumerate(header)}
        row_id = _hash_rows(rows, [tuple(pos[c] for c in names) for names in cols], len(header), plan, hasher,
                            appends, row_id, source, progress)
    size = write_index(out, name=name or out.stem, key=key, rows=row_id, fields=packed)
    return BuildStats(rows=row_id, values={k: len(v) for k, v in packed.items()}, size=size)
