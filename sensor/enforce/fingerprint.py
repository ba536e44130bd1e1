"""A body's content fingerprint, checked against the takedown registry as the body streams.

The same file under another URL is the same leak: a tripped body's fingerprint is stored with its
takedown, and a later body with that fingerprint is refused.
"""
from __future__ import annotations

from sensor.detect.keys import content_fingerprint
from sensor.enforce.registry import Registry


class BodyPrint:
    """One body's fingerprint. Feed every chunk in order; ``feed``/``finish`` answer the id of the
    takedown whose content this body is (0: still committing), or None."""

    def __init__(self, key: bytes, registry: Registry, size: int):
        self.key, self.registry, self.size = key, registry, size
        self.head = bytearray()
        self.checked = False

    def feed(self, chunk: bytes) -> int | None:
        if self.checked:
            return None
        self.head += chunk[: self.size - len(self.head)]
        if len(self.head) < self.size:
            return None
        self.checked = True
        return self.registry.blocked_content(content_fingerprint(self.key, bytes(self.head)))

    def finish(self) -> int | None:
        """End of the body: a body shorter than the print is checked now."""
        if self.checked or not self.head:
            return None
        self.checked = True
        return self.registry.blocked_content(content_fingerprint(self.key, bytes(self.head)))

    @property
    def wants(self) -> int:
        """Bytes the print still needs before a trip can record it (the tap may read them unsent)."""
        return max(0, self.size - len(self.head))

    def value(self) -> str | None:
        """The fingerprint to store with a takedown made now (a trip)."""
        return content_fingerprint(self.key, bytes(self.head)) if self.head else None
