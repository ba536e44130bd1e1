"""The index file: per field kind, a sorted array of truncated keyed hashes and their row ids.

Layout (little-endian)::

    b"DLPEDM\\x00\\x01"        magic + format version 1
    u32 header length, then the header as JSON (version, name, key_id, rows, fields, created)
    per field, 8-byte aligned: ``count`` u64 hashes (sorted), then ``count`` u32 row ids

A hash is the first 8 bytes of HMAC-SHA256(key, kind ":" canonical value). No raw value and no
unkeyed hash is written: without the key a hash cannot be tested against a guess. ``key_id`` is
HMAC-SHA256(key, a constant), truncated — it tells which key built the file, never the key.

Why a sorted array read through ``mmap``: 1,000,000 rows x 5 fields is 60 MB on disk, opens in
milliseconds, and only the pages a lookup touches become resident (a dict of the same would take
~500 MB of RSS and seconds to build). A lookup is a ``bisect`` over a ``memoryview`` (about 20
probes), a few microseconds — paid only per record that carries candidate values.
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

MAGIC = b"DLPEDM\x00\x01"
VERSION = 1
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


def write_index(path: Path, *, name: str, key: bytes, rows: int,
                fields: dict[str, list[int]]) -> int:
    """Write the index atomically. ``fields`` maps a kind to a list of ``hash << 32 | row id``
    (sorted here). Returns the file size."""
    header: dict = {"version": VERSION, "name": name, "key_id": key_id(key), "rows": rows,
                    "created": int(time.time()), "hash_bytes": HASH_BYTES, "fields": []}
    blobs: list[tuple[array, array]] = []
    for kind, packed in fields.items():
        packed.sort()
        hashes = array("Q", [p >> 32 for p in packed])
        ids = array("I", [p & 0xFFFFFFFF for p in packed])
        if sys.byteorder != "little":
            hashes.byteswap()
            ids.byteswap()
        blobs.append((hashes, ids))
        header["fields"].append({"kind": kind, "count": len(packed)})
    # offsets depend on the header length: compute with placeholders, then fix them
    for _ in range(2):
        hb = json.dumps(header, sort_keys=True).encode()
        off = _align(len(MAGIC) + 4 + len(hb))
        for f, (hashes, ids) in zip(header["fields"], blobs):
            f["offset"] = off
            off = _align(off + len(hashes) * 8 + len(ids) * 4)
    hb = json.dumps(header, sort_keys=True).encode()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(MAGIC + struct.pack("<I", len(hb)) + hb)
        for f, (hashes, ids) in zip(header["fields"], blobs):
            fh.write(b"\0" * (f["offset"] - fh.tell()))
            hashes.tofile(fh)
            ids.tofile(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path.stat().st_size


def _align(n: int) -> int:
    return (n + 7) & ~7


@dataclass
class Field:
    kind: str
    hashes: "memoryview | array"
    ids: "memoryview | array"

    def rows(self, h: int) -> list[int]:
        """Row ids whose value of this kind hashes to ``h``."""
        hs = self.hashes
        i = bisect.bisect_left(hs, h)
        n = len(hs)
        if i >= n or hs[i] != h:
            return []
        j = i + 1
        if j == n or hs[j] != h:
            return [self.ids[i]]
        while j < n and hs[j] == h:
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
            if isinstance(f.hashes, memoryview):
                f.hashes.release()
                f.ids.release()
        self.fields.clear()
        if self._mm is not None:
            self._mm.close()
            self._mm = None


def open_index(path: Path, key: bytes | None = None) -> IndexFile:
    """Open and check an index. With ``key``, refuse one built with another key (it could match
    nothing, and a silent no-op index is worse than a refused start)."""
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
                                 f"not supported (this sensor reads {VERSION})")
        (hlen,) = struct.unpack("<I", head[8:12])
        if hlen > size:
            raise IndexFileError(f"index {path}: header length {hlen} beyond end of file (truncated?)")
        try:
            header = json.loads(fh.read(hlen))
            specs = [(str(f["kind"]), int(f["count"]), int(f["offset"])) for f in header["fields"]]
            int(header["rows"]), str(header["key_id"])
        except (ValueError, KeyError, TypeError) as e:
            raise IndexFileError(f"index {path}: damaged header ({type(e).__name__})") from None
        for kind, count, off in specs:
            if off % 8 or off + count * 12 > size:
                raise IndexFileError(f"index {path}: field {kind!r} runs past the end of the file (truncated?)")
        if key is not None and header["key_id"] != key_id(key):
            raise IndexFileError(f"index {path}: built with another key (key id {header['key_id']}, "
                                 f"this sensor's is {key_id(key)}); rebuild it with this sensor's state dir")
        idx = IndexFile(path, header, size=size)
        if not specs or size == 0:
            return idx
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    idx._mm = mm
    view = memoryview(mm)
    for kind, count, off in specs:
        hv = view[off:off + count * 8]
        iv = view[off + count * 8:off + count * 12]
        if sys.byteorder == "little":
            hashes, ids = hv.cast("Q"), iv.cast("I")
        else:                                # rare: byte-swapped copies
            hashes, ids = array("Q", hv.tobytes()), array("I", iv.tobytes())
            hashes.byteswap()
            ids.byteswap()
        idx.fields[kind] = Field(kind, hashes, ids)
    view.release()
    return idx


def verify_index(path: Path, key: bytes) -> list[str]:
    """Problems found in the structure (sorted hashes, row ids in range) and the key; [] when sound."""
    try:
        idx = open_index(path)
    except IndexFileError as e:
        return [str(e)]
    problems = []
    if idx.key_id != key_id(key):
        problems.append(f"key id {idx.key_id} does not match this state dir's key ({key_id(key)})")
    rows = idx.rows
    for f in idx.fields.values():
        hs = f.hashes
        if any(hs[i] > hs[i + 1] for i in range(len(hs) - 1)):
            problems.append(f"field {f.kind!r}: hashes not sorted")
        if len(f.ids) and max(f.ids) >= rows:
            problems.append(f"field {f.kind!r}: row id beyond the row count {rows}")
    idx.close()
    return problems
