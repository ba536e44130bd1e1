"""A body's content print, checked against the takedown registry as the body streams.

The same file under another URL is the same leak: a tripped body's print is stored with its
takedown, and a later body with that print is refused. The print of a trip is the keyed hash of the
body's prefix up to and including the bytes the scan had seen when it tripped (``L`` bytes, written
``"L:hexdigest"``): those bytes hold the leaked records, so a later body whose first ``L`` bytes hash
the same holds them too. A clean body that merely shares the tripped file's first 64 KiB (a header, a
template, a common preamble) differs before ``L`` and is never refused by content.

One running keyed hash per body (HMAC-SHA256 with the HMAC key, truncated to 128 bits; SHA-256 runs
on the CPU's SHA instructions, about twice BLAKE2b's speed here): at each registry length the body
crosses, a ``copy()`` of the running hash is finished and looked up — O(1) per length, a handful of
lengths (one per active content takedown at most), constant memory whatever the body size. A print
added while a body is already past its length is not checked against that body (its resource key
and its own scan still are).

Head prints (takedowns recorded before prefix prints: keyed BLAKE2b of the first ``size`` bytes, see
:func:`sensor.detect.keys.content_fingerprint`) are checked the way they were made: at ``size``
bytes, or at the end of a body shorter than that; only those first bytes are hashed for them.
"""
from __future__ import annotations

import hashlib
import hmac
from bisect import bisect_left

from sensor.enforce.registry import Registry, join_print

DIGEST_HEX = 32             # 128 bits of HMAC-SHA256


def prefix_hasher(key: bytes) -> "hmac.HMAC":
    """The running hash of a prefix print (``copy()`` it to read a digest and go on)."""
    return hmac.new(key, digestmod=hashlib.sha256)


def head_hasher(key: bytes) -> "hashlib.blake2b":
    """The running form of :func:`sensor.detect.keys.content_fingerprint` (head prints)."""
    return hashlib.blake2b(key=key[:64], digest_size=16)


def prefix_print(key: bytes, prefix: bytes) -> str:
    """The print of a body whose trip came after ``prefix`` (tools and tests; taps use BodyPrint)."""
    h = prefix_hasher(key)
    h.update(prefix)
    return join_print(h.hexdigest()[:DIGEST_HEX], len(prefix)) if prefix else ""


class BodyPrint:
    """One body's print. Feed every chunk in order; ``feed``/``finish`` answer the id of the
    takedown whose content this body is (0: still committing), or None."""

    def __init__(self, key: bytes, registry: Registry | None, size: int):
        """``registry`` None (or a stand-in without :meth:`Registry.print_lengths`, such as the Kafka
        worker's, which only publishes prints) makes a record-only print: nothing is looked up."""
        self.key, self.registry, self.size = key, registry, size
        self._lengths = getattr(registry, "print_lengths", None) or (lambda: ())
        self.hash = prefix_hasher(key)
        self.head = head_hasher(key)    # the first ``size`` bytes only, for head prints
        self.seen = 0                   # bytes fed (the print of a trip now covers exactly these)
        self.matched: int | None = None
        self.finished = False
        self.lengths: tuple[int, ...] = ()

    def _look(self, at: int) -> int | None:
        """Look the prefix hashed so far (``at`` bytes) up as a prefix print and, at ``size``, a head print."""
        tid = None
        if at in self.lengths:
            tid = self.registry.blocked_content(join_print(self.hash.copy().hexdigest()[:DIGEST_HEX], at))
        if tid is None and at == self.size and self._head_prints():
            tid = self.registry.blocked_content(self.head.copy().hexdigest())
        return tid

    def _head_prints(self) -> bool:
        return bool(getattr(self.registry, "head_prints", False))

    def feed(self, chunk: bytes) -> int | None:
        if self.matched is not None or self.finished:
            return self.matched
        self.lengths = self._lengths()
        bounds = tuple(sorted({*self.lengths, self.size})) if self._head_prints() else self.lengths
        start, end = self.seen, self.seen + len(chunk)
        view = memoryview(chunk)
        if start < self.size:
            self.head.update(view[:self.size - start])
        i = bisect_left(bounds, start + 1)      # boundaries in (start, end]: crossed by this chunk
        pos = 0
        while i < len(bounds) and bounds[i] <= end:
            cut = bounds[i] - start
            self.hash.update(view[pos:cut])
            pos = cut
            if (tid := self._look(bounds[i])) is not None:
                self.matched = tid
                break
            i += 1
        self.hash.update(view[pos:])
        self.seen = end
        return self.matched

    def finish(self) -> int | None:
        """End of the body: a body shorter than ``size`` is checked against head prints now (prefix
        prints were checked as the body crossed their lengths)."""
        if self.matched is not None or self.finished:
            return self.matched
        self.finished = True
        if self.seen and self.seen < self.size and self._head_prints():
            tid = self.registry.blocked_content(self.head.copy().hexdigest())
            if tid is not None:
                self.matched = tid
        return self.matched

    @property
    def length(self) -> int:
        """The prefix a print made now covers (the bytes fed so far)."""
        return self.seen

    def value(self) -> str | None:
        """The print to store with a takedown made now (a trip): ``"L:hexdigest"`` of the bytes fed."""
        return join_print(self.hash.copy().hexdigest()[:DIGEST_HEX], self.seen) if self.seen else None
