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
import multiprocessing
import os
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable

from sensor.edm.indexfile import Hasher, write_index
from sensor.edm.normalise import _ID_DROP, KNOWN_KINDS, bytes_normaliser, identifier, normalise, normaliser
from sensor.edm.sources import SourceError, _delimiter, read_table

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
            # the header is not echoed: in a file without one, the "header" is a person's row
            raise SourceError(f"{source}: no column {c!r} for field {spec.kind!r} in its header row "
                              f"({len(by_lower)} columns; the first row must name them)")
        out.append(by_lower[c.lower()])
    return tuple(out)


class _Digest:
    """Normalise and hash batches of values: in this process, or spread over ``jobs`` forked workers.

    The pool is forked before any Arrow reader runs (a fork after Arrow's threads start is not
    safe); workers only run :meth:`Hasher.many` (Python normalisers and hashlib), never Arrow."""

    def __init__(self, key: bytes, jobs: int):
        self.hasher = Hasher(key)
        self.pool = multiprocessing.get_context("fork").Pool(jobs, initializer=_worker_init, initargs=(key,)) \
            if jobs > 1 else None

    def run(self, tasks: list[tuple[str, list, bool]]) -> list[tuple[bytes, bytearray]]:
        """``(kind, values, normalised already)`` -> per task (hashes, ok) as :meth:`Hasher.many`."""
        pieces = [(n, kind, values[i:i + CHUNK_VALUES], pre) for n, (kind, values, pre) in enumerate(tasks)
                  for i in range(0, len(values), CHUNK_VALUES)]
        if self.pool is not None and len(pieces) > 1:
            done = self.pool.map(_digest_piece, [p[1:] for p in pieces], chunksize=1)
        else:
            done = [_digest_piece(p[1:], self.hasher) for p in pieces]
        hashes: list[list[bytes]] = [[] for _ in tasks]
        oks: list[bytearray] = [bytearray() for _ in tasks]
        for (n, *_), (h, ok) in zip(pieces, done):
            hashes[n].append(h)
            oks[n] += ok
        return [(b"".join(h), ok) for h, ok in zip(hashes, oks)]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


CHUNK_VALUES = 50_000                # values per hashing task (a worker's unit)
_W: dict = {}


def _worker_init(key: bytes) -> None:
    _W["hasher"] = Hasher(key)


def _plain(fn: Callable[[bytes], bytes | None]) -> Callable[[bytes], bytes | None]:
    """The normaliser without its LRU cache: a build sees each distinct value once. (The bytes
    normalisers give exactly the bytes of the text ones; a test compares them.)"""
    return getattr(fn, "__wrapped__", fn)


def _digest_piece(piece: tuple[str, list[bytes], bool], hasher: Hasher | None = None) -> tuple[bytes, bytearray]:
    kind, values, pre = piece
    return (hasher or _W["hasher"]).many(kind, values, None if pre else _plain(bytes_normaliser(kind)))


class _Out:
    """Per field kind, the (hashes, row ids) chunks of the sources read so far (Arrow arrays)."""

    def __init__(self, specs: list[ColumnSpec]):
        self.chunks: dict[str, list[tuple]] = {s.kind: [] for s in specs}

    def add(self, kind: str, hashes, ids) -> None:
        self.chunks[kind].append((hashes, ids))

    def merged(self) -> dict[str, tuple]:
        import pyarrow as pa
        out = {}
        for kind, ch in self.chunks.items():
            out[kind] = (pa.chunked_array([h for h, _ in ch], pa.uint64()),
                         pa.chunked_array([i for _, i in ch], pa.uint32()))
        return out


def _arrays(hashes: bytes, ok: bytearray):
    import pyarrow as pa
    n = len(ok)
    return (pa.Array.from_buffers(pa.uint64(), n, [None, pa.py_buffer(hashes)]),
            pa.Array.from_buffers(pa.uint8(), n, [None, pa.py_buffer(bytes(ok))]))


# -- CSV/TSV: Arrow's C reader, one column at a time ------------------------------------------------
BATCH_BYTES = 16 << 20               # Arrow block size: rows come in batches of about this many bytes
CSV_SUFFIXES = (".csv", ".tsv", ".txt", ".tab")
COLUMNAR = True                      # tests turn it off to compare with the row reader


class _NotColumnar(Exception):
    """This source is read by the row reader instead (a ragged row, bad UTF-8, duplicate names…)."""


def _csv_columnar(source: Path, specs: list[ColumnSpec], digest: _Digest, out: _Out, row_id: int,
                  progress: Callable[[int], None] | None) -> int | None:
    """Hash a CSV/TSV source read by Arrow: per batch and field, the distinct values are normalised
    and hashed once (in the pool) and spread back to their rows by Arrow's ``take``. Returns the
    next row id, or None when the row reader must read this source (nothing was added then)."""
    if not COLUMNAR or source.suffix.lower() not in CSV_SUFFIXES:
        return None
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    with open(source, encoding="utf-8-sig", errors="replace", newline="") as fh:
        first = fh.readline()
    if first.lstrip().startswith("{"):
        return None
    delim = _delimiter(first)
    header = next(csv.reader([first], delimiter=delim), [])
    cols = [_resolve(header, s, source) for s in specs]
    if len(set(header)) != len(header):
        return None
    needed = sorted({c for names in cols for c in names})
    try:
        reader = pacsv.open_csv(
            source,
            read_options=pacsv.ReadOptions(block_size=BATCH_BYTES, column_names=header, skip_rows=1),
            parse_options=pacsv.ParseOptions(delimiter=delim, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(include_columns=needed, column_types={c: pa.string() for c in needed},
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False))
        got: list[tuple[str, object, object]] = []
        start = row_id
        for batch in reader:
            n = batch.num_rows
            tasks, encs = [], []
            for spec, names in zip(specs, cols):
                col = batch.column(names[0]) if len(names) == 1 else \
                    pc.binary_join_element_wise(*[batch.column(c) for c in names], " ")
                pre = normaliser(spec.kind) is identifier
                if pre:                      # identifiers: separators dropped, upper case, in C
                    col = pc.ascii_upper(pc.replace_substring_regex(col, _ID_DROP.pattern, ""))
                enc = pc.dictionary_encode(col)
                tasks.append((spec.kind, enc.dictionary.cast(pa.binary()).to_pylist(), pre))
                encs.append(enc.indices)
            for spec, idx, (hashes, ok) in zip(specs, encs, digest.run(tasks)):
                hq, okq = _arrays(hashes, ok)
                mask = pc.equal(pc.take(okq, idx), 1)
                ids = pc.cast(pc.add(pc.indices_nonzero(mask), row_id), pa.uint32())
                got.append((spec.kind, pc.filter(pc.take(hq, idx), mask), ids))
            row_id += n
            if row_id > MAX_ROWS:
                raise SourceError(f"{source}: more than {MAX_ROWS} rows")
            if progress is not None:
                progress(n)
    except (pa.ArrowException, UnicodeError) as e:
        if progress is not None and row_id > start:
            progress(start - row_id)         # the row reader counts them again
        raise _NotColumnar(type(e).__name__) from None
    for kind, h, i in got:
        out.add(kind, h, i)
    return row_id


# -- every other source (and a CSV Arrow cannot read): rows as lists ------------------------------
ROW_BLOCK = 65_536


def _hash_rows(rows: Iterable[list], idxs: list[tuple[int, ...]], width: int, specs: list[ColumnSpec],
               digest: _Digest, out: _Out, row_id: int, source: Path,
               progress: Callable[[int], None] | None = None) -> int:
    """Normalise and hash every indexed value of ``rows`` (blocks of ``ROW_BLOCK``); returns the next row id."""
    it = iter(rows)
    while True:
        block = list(islice(it, ROW_BLOCK))
        if not block:
            return row_id
        tasks, where = [], []
        for spec, ix in zip(specs, idxs):
            kind = spec.kind
            canon: list[str] = []
            rids: list[int] = []
            for r, row in enumerate(block):
                if len(row) < width:
                    row = list(row) + [None] * (width - len(row))
                raw = row[ix[0]] if len(ix) == 1 else " ".join(str(row[i] or "") for i in ix)
                if raw is None or raw == "":
                    continue
                c = normalise(kind, raw)
                if c is not None:
                    canon.append(c)
                    rids.append(row_id + r)
            uniq = list(dict.fromkeys(canon))
            tasks.append((kind, [u.encode() for u in uniq], True))
            where.append((kind, canon, rids, uniq))
        for (kind, canon, rids, uniq), (hashes, _ok) in zip(where, digest.run(tasks)):
            import pyarrow as pa
            of = {u: hashes[8 * j:8 * j + 8] for j, u in enumerate(uniq)}
            out.add(kind, pa.Array.from_buffers(pa.uint64(), len(canon), [None, pa.py_buffer(b"".join(of[c] for c in canon))]),
                    pa.array(rids, pa.uint32()))
        row_id += len(block)
        if row_id > MAX_ROWS:
            raise SourceError(f"{source}: more than {MAX_ROWS} rows")
        if progress is not None:
            progress(len(block))


def build_index(sources: list[Path], specs: list[ColumnSpec], out: Path, key: bytes, *,
                name: str | None = None, progress: Callable[[int], None] | None = None,
                jobs: int | None = None) -> BuildStats:
    """Read every source, write ``out``. ``progress`` is told the rows done (in batches).

    CSV/TSV sources are read by Arrow's C reader; per batch and field the distinct values are
    normalised and hashed (Python: the keyed hash and the normalisers) in ``jobs`` forked processes
    (default: one per CPU core), and sorted by Arrow. Other formats (and a CSV Arrow refuses: a
    ragged row, bad UTF-8) are read row by row in this process. Row ids are the same either way;
    a blank line is not a row."""
    jobs = jobs if jobs is not None else (os.cpu_count() or 1)
    digest = _Digest(key, jobs)
    got = _Out(specs)
    row_id = 0
    try:
        for source in sources:
            try:
                nxt = _csv_columnar(source, specs, digest, got, row_id, progress)
            except _NotColumnar:
                nxt = None
            if nxt is not None:
                row_id = nxt
                continue
            header, rows = read_table(source)
            cols = [_resolve(header, s, source) for s in specs]
            pos = {h: i for i, h in enumerate(header)}
            row_id = _hash_rows(rows, [tuple(pos[c] for c in names) for names in cols], len(header), specs,
                                digest, got, row_id, source, progress)
    finally:
        digest.close()
    fields = got.merged()
    size = write_index(out, name=name or out.stem, key=key, rows=row_id, fields=fields)
    return BuildStats(rows=row_id, values={k: len(h) for k, (h, _) in fields.items()}, size=size)
