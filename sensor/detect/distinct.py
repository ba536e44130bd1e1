"""Distinct counting in bounded memory: exact up to a cap, then HyperLogLog.

The scanner counts distinct values and records by the 64-bit keyed hashes it already computes
(Python's ``hash`` of bytes is SipHash under a per-process random key). A Python set of them costs
about 60-70 bytes per entry, so a dense leak of ten million people would need gigabytes. A
:class:`DistinctCounter` keeps the set while it holds at most ``cap`` hashes; past that it folds
them into a HyperLogLog sketch of 2**16 one-byte registers (64 KiB, standard error
1.04/sqrt(65536) ≈ 0.41 %) and frees the set.

Why hand-written: the sketch is forty lines over hashes that are already keyed and 64 bits wide,
and the libraries on PyPI either hash their input themselves (paying a second hash per value in
the hot path) or bring a C build for a structure that is touched only past the cap. The estimator
is Ertl's improved raw estimator ("New cardinality estimation algorithms for HyperLogLog
sketches", 2017): unbiased over the whole range without HLL++'s empirical bias tables, so the
count stays right just past the cap as well as at ten million.
"""
from __future__ import annotations

import math

EXACT_CAP = 100_000              # distinct hashes kept exactly per counter
HLL_P = 16                       # 2**16 registers
_M64 = (1 << 64) - 1


def _mix(h: int) -> int:
    """MurmurHash3's 64-bit finaliser: Python's hashes of tuples and small ints are not uniform in
    every bit, and HyperLogLog reads both the top bits (register) and the run of zeros below."""
    h &= _M64
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _M64
    h ^= h >> 33
    return h


class HyperLogLog:
    """A HyperLogLog sketch over 64-bit hashes (registers in a bytearray)."""

    def __init__(self, p: int = HLL_P):
        self.p = p
        self.m = 1 << p
        self.q = 64 - p
        self._low = (1 << self.q) - 1
        self.registers = bytearray(self.m)

    def add(self, h: int) -> bool:
        """Add one hash; True when a register grew (the value was new to the sketch)."""
        x = _mix(h)
        idx = x >> self.q
        rank = self.q - (x & self._low).bit_length() + 1
        if rank > self.registers[idx]:
            self.registers[idx] = rank
            return True
        return False

    def counts(self) -> list[int]:
        """How many registers hold each rank 0 .. q + 1: the estimator's histogram. (The compiled
        core's sketches count it in C, in one pass: sensor/detect/_hscore.pyx, Distinct._switch.)"""
        regs = self.registers
        return [regs.count(k) for k in range(self.q + 2)]

    def estimate(self) -> float:
        """Ertl's improved raw estimator (section 4 of the paper)."""
        m, q = self.m, self.q
        counts = self.counts()
        z = m * _tau(1.0 - counts[q + 1] / m)
        for k in range(q, 0, -1):
            z = 0.5 * (z + counts[k])
        z += m * _sigma(counts[0] / m)
        return m * m / (2.0 * math.log(2.0)) / z


def _sigma(x: float) -> float:
    if x == 1.0:
        return math.inf
    y, z = 1.0, x
    while True:
        x *= x
        z_old = z
        z += x * y
        y += y
        if z == z_old:
            return z


def _tau(x: float) -> float:
    if x == 0.0 or x == 1.0:
        return 0.0
    y, z = 1.0, 1.0 - x
    while True:
        x = math.sqrt(x)
        z_old = z
        y *= 0.5
        z -= (1.0 - x) ** 2 * y
        if z == z_old:
            return z / 3.0


class DistinctCounter:
    """Distinct hashes: a set up to ``cap``, then a HyperLogLog sketch (see the module docstring).

    ``add`` answers whether the hash is new — exactly below the cap; past it, whether the sketch
    changed (an undercount: a new value that lands in a register already as high says "not new").
    """

    __slots__ = ("cap", "exact", "hll", "_n", "_cached", "_cached_at")

    def __init__(self, cap: int = EXACT_CAP):
        self.cap = cap
        self.exact: set[int] | None = set()
        self.hll: HyperLogLog | None = None
        self._n = 0                 # adds since the cached estimate
        self._cached = 0
        self._cached_at = -1

    @property
    def approximate(self) -> bool:
        return self.hll is not None

    def add(self, h: int) -> bool:
        s = self.exact
        if s is not None:
            if h in s:
                return False
            s.add(h)
            if len(s) > self.cap:
                self._switch()
            return True
        self._n += 1
        return self.hll.add(h)  # type: ignore[union-attr]

    def __contains__(self, h: int) -> bool:
        """Exact membership below the cap; past it always False (callers then ask :meth:`add`)."""
        s = self.exact
        return s is not None and h in s

    def _switch(self) -> None:
        hll = HyperLogLog()
        for h in self.exact:  # type: ignore[union-attr]
            hll.add(h)
        self.hll = hll
        self.exact = None
        self._n = 0
        self._cached_at = -1

    def __len__(self) -> int:
        s = self.exact
        if s is not None:
            return len(s)
        # the estimate reads 64 KiB of registers: refresh it only after ~0.1 % more adds
        if self._cached_at < 0 or self._n - self._cached_at > max(64, self._cached // 1000):
            self._cached = round(self.hll.estimate())  # type: ignore[union-attr]
            self._cached_at = self._n
        return self._cached

    def __bool__(self) -> bool:
        return self.hll is not None or bool(self.exact)
