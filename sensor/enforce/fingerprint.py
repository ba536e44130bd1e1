"""A body's content print, checked against the takedown registry as the body streams.

The same file under another URL is the same leak: a tripped body's print is stored with its
takedown, and a later body with that print is refused. The print of a trip is the keyed hash of the
body's prefix up to and including the bytes the scan had seen when it tripped (``L`` bytes, written
``"L:hexdigest"``): those bytes hold the leaked records, so a later body whose first ``L`` bytes hash
the same holds them too. A clean body that merely shares the tripped file's first 64 KiB (a header, a
template, a common preamble) differs before ``L`` and is never refused by content.

One incremental hash per body (BLAKE2b keyed with the HMAC key, as :func:`content_fingerprint`):
at each registry length the body crosses, a ``copy()`` of the running hash is finished and looked
up — O(1) per length, a handful of lengths (one per active content takedown at most), constant
memory whatever the body size. A print added while a body is already past its length is not
checked against that body (its resource key and its own scan still are).

Head prints (takedowns recorded before prefix prints) are checked the way they were made: at
``size`` bytes, or at the end of a body shorter than that.
"""
from __future__ import annotations

import hashlib
from bisect import bisect_left

from sensor.enforce.registry import Registry, join_print


def content_hasher(key: bytes) -> "hashlib.blake2b":
    """The running form of :func:`sensor.detect.keys.content_fingerprint` (same key, same digest)."""
    return hashlib.blake2b(key=key[:64], digest_size=16)


class BodyPrint:
    """One body's print. Feed every chunk in order; ``feed``/``finish`` answer the id of the
    takedown whose content this body is (0: still committing), or None."""

    def __init__(self, key: bytes, registry: Registry, size: int):
        self.key, self.registry, self.size = key, registry, size
        self.hash = content_hasher(key)
        self.seen = 0                   # bytes fed (the print of a trip now covers exactly these)
        self.matched: int | None = None
        self.finished = False

    def _look(self, at: int) -> int | None:
        """Look the prefix hashed so far (``at`` bytes) up as a prefix print and, at ``size``, a head print."""
        digest = self.hash.copy().hexdigest()
        tid = self.registry.blocked_content(join_print(digest, at))
        if tid is None and at == self.size and self.registry.head_prints:
            tid = self.registry.blocked_content(digest)
        return tid

    def feed(self, chunk: bytes) -> int | None:
        if self.matched is not None or self.finished:
            return self.matched
        lengths = self.registry.print_lengths()
        if self.registry.head_prints:
            lengths = tuple(sorted({*lengths, self.size}))
        start, end = self.seen, self.seen + len(chunk)
        i = bisect_left(lengths, start + 1)     # boundaries in (start, end]: crossed by this chunk
        view = memoryview(chunk)
        pos = 0
        while i < len(lengths) and lengths[i] <= end:
            cut = lengths[i] - start
            self.hash.update(view[pos:cut])
            pos = cut
            if (tid := self._look(lengths[i])) is not None:
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
        if self.seen and self.seen < self.size and self.registry.head_prints:
            tid = self.registry.blocked_content(self.hash.copy().hexdigest())
            if tid is not None:
                self.matched = tid
        return self.matched

    @property
    def wants(self) -> int:
        """Bytes the print still needs before a trip can record it (the tap may read them unsent):
        none — a trip's print covers the bytes seen so far, whatever their number."""
        return 0

    @property
    def length(self) -> int:
        """The prefix a print made now covers (the bytes fed so far)."""
        return self.seen

    def value(self) -> str | None:
        """The print to store with a takedown made now (a trip): ``"L:hexdigest"`` of the bytes fed."""
        return join_print(self.hash.copy().hexdigest(), self.seen) if self.seen else None
