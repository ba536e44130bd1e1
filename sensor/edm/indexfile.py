"""The index file: per field kind, a sorted array of truncated keyed hashes and their row ids.

Layout (little-endian)::

    b"DLPEDM\\x00\\x02"        magic + format version 2 (version 1 files are refused: rebuild them)
    u32 header length, then the header as JSON (version, name, key_id, rows, fields, created)
    per field, 8-byte aligned: a directory of ``2**bits + 1`` u32 (where the hashes whose top
    ``bits`` bits are ``b`` start: ``dir[b]`` .. ``dir[b + 1]``), then ``count`` u64 hashes
    (sorted; equal hashes by row id), then ``count`` u32 row ids

A hash is the first 8 bytes of HMAC-SHA256(key, kind ":" canonical value). No raw value and no
unkeyed hash is written: without the key a hash cannot be tested against a guess. ``key_id`` is
HMAC-SHA256(key, a constant), truncated — it tells which key built the file, never the key.

Why a sorted array read through ``mmap``: 1,000,000 rows x 5 fields is 63 MB on disk, opens in
milliseconds, and only the pages a lookup touches become resident (a dict of the same would take
~500 MB of RSS and seconds to build). The directory (about 4 hashes per bucket) makes a lookup
two reads and a ``bisect`` over a handful of entries; an empty bucket — most misses — is a miss
without touching the hashes.
"""
from __future__ import annotations

import bisect
import hashlib
import hmac
import json
import mmap
import os
import struct
import sys
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

MAGIC = b"DLPEDM\x00\x02"
VERSION = 2
MAX_DIR_BITS = 24
HASH_BYTES = 8
_KEY_ID_CONST = b"dlp-sensor edm key id v1"


class IndexFileError(ValueError):
    """An index file that cannot be used; the message names the file."""


def key_id(key: bytes) -> str:
    """Which key an index was built with, without revealing the key."""
    return hmac.new(key, _KEY_ID_CONST, "sha256").hexdigest()[:16]


class Hasher:
    """HMAC-SHA256 with the key's inner and outer pads hashed once (RFC 2104), then copied per value.

    Why not ``hmac.digest``: with OpenSSL 3 each one-shot call fetches the algorithm again, ~3x the
    cost of two ``sha256().copy()`` — and the build hashes millions of values. The output is the
    same HMAC-SHA256 (tests compare it with :func:`hmac.digest`), truncated to ``HASH_BYTES``."""

    def __init__(self, key: bytes):
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
        self._per_kind: dict[str, "hashlib._Hash"] = {}      # inner state after "kind:"

    def kind_state(self, kind: str) -> "hashlib._Hash":
        """The inner hash state after ``kind:`` (copy it, then add the canonical value)."""
        i = self._per_kind.get(kind)
        if i is None:
            i = self._per_kind[kind] = self._inner.copy()
            i.update(f"{kind}:".encode())
        return i

    @property
    def outer(self) -> "hashlib._Hash":
        """The outer hash state after the key's outer pad (copy it, then add the inner digest)."""
        return self._outer

    def many(self, kind: str, values: list[bytes], norm: Callable[[bytes], bytes | None] | None = None
             ) -> tuple[bytes, bytearray]:
        """Normalise (with ``norm``, bytes -> canonical bytes) and hash a batch: (``HASH_BYTES`` per
        value, little-endian as :meth:`__call__` gives it; zeros where the value is empty or not of
        the kind, and a 0 in the second result there, 1 elsewhere). One tight loop: the build hashes
        millions of values."""
        ic = self.kind_state(kind).copy
        oc = self._outer.copy
        parts: list[bytes] = []
        add = parts.append
        ok = bytearray(len(values))
        zero = bytes(HASH_BYTES)
        for j, v in enumerate(values):
            if v and norm is not None:
                v = norm(v)
            if not v:
                add(zero)
                continue
            i = ic()
            i.update(v)
            o = oc()
            o.update(i.digest())
            add(o.digest()[:HASH_BYTES])
            ok[j] = 1
        return b"".join(parts), ok

    def __call__(self, kind: str, canonical: str) -> int:
        """The keyed, truncated hash of a canonical value (the kind is mixed in: a date indexed as
        a DOB never meets the same date under another kind)."""
        i = self._per_kind.get(kind)
        if i is None:
            i = self._per_kind[kind] = self._inner.copy()
            i.update(f"{kind}:".encode())
        i = i.copy()
        i.update(canonical.encode())
        o = self._outer.copy()
        o.update(i.digest())
        return int.from_bytes(o.digest()[:HASH_BYTES], "little")


def value_hash(key: bytes, kind: str, canonical: str) -> int:
    """:class:`Hasher` for one value (tests, tools)."""
    d = hmac.digest(key, f"{kind}:{canonical}".encode(), "sha256")
    return int.from_bytes(d[:HASH_BYTES], "little")


def dir_bits(count: int) -> int:
    """Directory size for ``count`` hashes: about 4 per bucket (a few KB up to 64 MB, 1 MB at 1,000,000)."""
    return max(0, min(MAX_DIR_BITS, (count >> 2).bit_length()))


def _directory(hashes, bits: int):
    """u32 ``dir[b]`` = index of the first sorted hash whose top ``bits`` bits are >= ``b`` (Arrow counts)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    n = 1 << bits
    counts = array("I", bytes(4 * (n + 1)))
    if len(hashes):
        vc = pc.value_counts(pc.shift_right(hashes, pa.scalar(64 - bits, pa.uint64())) if bits else
                             pc.multiply(hashes, pa.scalar(0, pa.uint64())))
        for b, c in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()):
            counts[b + 1] = c
    total = 0
    for b in range(n + 1):
        total += counts[b]
        counts[b] = total
    return counts


def write_index(path: Path, *, name: str, key: bytes, rows: int, fields: dict[str, tuple]) -> int:
    """Write the index atomically. ``fields`` maps a kind to (hashes, row ids) as Arrow arrays
    (uint64, uint32; any order: sorted here by hash, then row id). Returns the file size."""
    import pyarrow as pa
    header: dict = {"version": VERSION, "name": name, "key_id": key_id(key), "rows": rows,
                    "created": int(time.time()), "hash_bytes": HASH_BYTES, "fields": []}
    blobs: list[tuple[bytes, bytes, bytes]] = []
    for kind, (hashes, ids) in fields.items():
        t = pa.table({"h": hashes, "r": ids}).sort_by([("h", "ascending"), ("r", "ascending")]).combine_chunks()
        h, r = t.column("h").chunk(0) if t.num_rows else pa.array([], pa.uint64()), \
            t.column("r").chunk(0) if t.num_rows else pa.array([], pa.uint32())
        bits = dir_bits(len(h))
        d = _directory(h, bits)
        hb, rb = _le(h, "Q"), _le(r, "I")
        if sys.byteorder != "little":
            d.byteswap()
        blobs.append((d.tobytes(), hb, rb))
        header["fields"].append({"kind": kind, "count": len(h), "dir_bits": bits})
    # offsets depend on the header length: compute with placeholders, then fix them
    for _ in range(2):
        hb = json.dumps(header, sort_keys=True).encode()
        off = _align(len(MAGIC) + 4 + len(hb))
        for f, (d, hashes, ids) in zip(header["fields"], blobs):
            f["offset"] = off
            off = _align(off + _align(len(d)) + len(hashes) + len(ids))
    hb = json.dumps(header, sort_keys=True).encode()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(MAGIC + struct.pack("<I", len(hb)) + hb)
        for f, (d, hashes, ids) in zip(header["fields"], blobs):
            fh.write(b"\0" * (f["offset"] - fh.tell()))
            fh.write(d)
            fh.write(b"\0" * (_align(len(d)) - len(d)))
            fh.write(hashes)
            fh.write(ids)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path.stat().st_size


def _le(arr, code: str) -> bytes:
    """The values of an Arrow array as little-endian bytes."""
    width = array(code).itemsize
    buf = arr.buffers()[1]
    data = buf.to_pybytes()[arr.offset * width:(arr.offset + len(arr)) * width] if buf is not None else b""
    if sys.byteorder != "little":
        a = array(code, data)
        a.byteswap()
        data = a.tobytes()
    return data


def _align(n: int) -> int:
    return (n + 7) & ~7


@dataclass
class Field:
    kind: str
    hashes: "memoryview | array"
    ids: "memoryview | array"
    directory: "memoryview | array"
    bits: int

    def __post_init__(self) -> None:
        self._shift = 64 - self.bits

    def rows(self, h: int) -> list[int]:
        """Row ids whose value of this kind hashes to ``h``."""
        d = self.directory
        b = h >> self._shift
        lo = d[b]
        hi = d[b + 1]
        if lo >= hi:
            return []
        hs = self.hashes
        i = bisect.bisect_left(hs, h, lo, hi)
        if i == hi or hs[i] != h:
            return []
        j = i + 1
        if j == hi or hs[j] != h:
            return [self.ids[i]]
        while j < hi and hs[j] == h:
            j += 1
        return list(self.ids[i:j])


@dataclass
class IndexFile:
    """An opened index (memory-mapped). ``header`` is the JSON header."""
    path: Path
    header: dict
    fields: dict[str, Field] = field(default_factory=dict)
    size: int = 0
    _mm: mmap.mmap | None = None

    @property
    def name(self) -> str:
        return self.header.get("name") or self.path.stem

    @property
    def rows(self) -> int:
        return int(self.header["rows"])

    @property
    def key_id(self) -> str:
        return str(self.header["key_id"])

    def close(self) -> None:
        for f in self.fields.values():
            for v in (f.hashes, f.ids, f.directory):
                if isinstance(v, memoryview):
                    v.release()
        self.fields.clear()
        if self._mm is not None:
            self._mm.close()
            self._mm = None


def open_index(path: Path, key: bytes | None = None, *, key_source: str | None = None) -> IndexFile:
    """Open and check an index. With ``key``, refuse one built with another key (it could match
    nothing, and a silent no-op index is worse than a refused start). ``key_source`` names where
    ``key`` came from in that error (default: this sensor's state dir); only key ids are shown."""
    path = Path(path)
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise IndexFileError(f"index {path}: {e.strerror}") from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(len(MAGIC) + 4)
        if len(head) < len(MAGIC) + 4 or head[:6] != MAGIC[:6]:
            raise IndexFileError(f"index {path}: not a dlp-sensor EDM index (bad magic)")
        if head[6:8] != MAGIC[6:8]:
            raise IndexFileError(f"index {path}: format version {int.from_bytes(head[6:8], 'big')} "
                                 f"not supported (this sensor reads version {VERSION}); rebuild it with `dlp-sensor index build`")
        (hlen,) = struct.unpack("<I", head[8:12])
        if hlen > size:
            raise IndexFileError(f"index {path}: header length {hlen} beyond end of file (truncated?)")
        try:
            header = json.loads(fh.read(hlen))
            specs = [(str(f["kind"]), int(f["count"]), int(f["offset"]), int(f["dir_bits"])) for f in header["fields"]]
            int(header["rows"]), str(header["key_id"])
        except (ValueError, KeyError, TypeError) as e:
            raise IndexFileError(f"index {path}: damaged header ({type(e).__name__})") from None
        for kind, count, off, bits in specs:
            if not 0 <= bits <= MAX_DIR_BITS:
                raise IndexFileError(f"index {path}: damaged header (field {kind!r}: directory of {bits} bits)")
            if off % 8 or off + _align(4 * ((1 << bits) + 1)) + count * 12 > size:
                raise IndexFileError(f"index {path}: field {kind!r} runs past the end of the file (truncated?)")
        if key is not None and header["key_id"] != key_id(key):
            if key_source is None:
                raise IndexFileError(f"index {path}: built with another key (key id {header['key_id']}, "
                                     f"this sensor's is {key_id(key)}); rebuild it with this sensor's state dir")
            raise IndexFileError(f"index {path}: built with another key (key id {header['key_id']}, "
                                 f"{key_source} has key id {key_id(key)}); rebuild it with that key "
                                 "(`dlp-sensor index build --key-file`) or give the key it was built with")
        idx = IndexFile(path, header, size=size)
        if not specs or size == 0:
            return idx
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    idx._mm = mm
    view = memoryview(mm)
    for kind, count, off, bits in specs:
        dlen = 4 * ((1 << bits) + 1)
        dv = view[off:off + dlen]
        off += _align(dlen)
        hv = view[off:off + count * 8]
        iv = view[off + count * 8:off + count * 12]
        if sys.byteorder == "little":
            d, hashes, ids = dv.cast("I"), hv.cast("Q"), iv.cast("I")
        else:                                # rare: byte-swapped copies
            d, hashes, ids = array("I", dv.tobytes()), array("Q", hv.tobytes()), array("I", iv.tobytes())
            for a in (d, hashes, ids):
                a.byteswap()
        idx.fields[kind] = Field(kind, hashes, ids, d, bits)
    view.release()
    return idx


def verify_index(path: Path, key: bytes, key_source: str = "this state dir's key") -> list[str]:
    """Problems found in the structure (sorted hashes, row ids in range) and the key; [] when sound."""
    try:
        idx = open_index(path)
    except IndexFileError as e:
        return [str(e)]
    problems = []
    if idx.key_id != key_id(key):
        problems.append(f"key id {idx.key_id} does not match {key_source} ({key_id(key)})")
    import pyarrow as pa
    import pyarrow.compute as pc
    rows = idx.rows
    for f in idx.fields.values():            # checked by Arrow over copies of the bytes (no Python loop)
        n = len(f.hashes)
        hs = pa.Array.from_buffers(pa.uint64(), n, [None, pa.py_buffer(bytes(f.hashes))]) if n else pa.array([], pa.uint64())
        ids = pa.Array.from_buffers(pa.uint32(), n, [None, pa.py_buffer(bytes(f.ids))]) if n else pa.array([], pa.uint32())
        if n > 1 and not pc.all(pc.less_equal(hs.slice(0, n - 1), hs.slice(1))).as_py():
            problems.append(f"field {f.kind!r}: hashes not sorted")
        elif bytes(f.directory) != _directory(hs, f.bits).tobytes():
            problems.append(f"field {f.kind!r}: directory does not match the hashes")
        if n and pc.max(ids).as_py() >= rows:
            problems.append(f"field {f.kind!r}: row id beyond the row count {rows}")
    idx.close()
    return problems
