"""Decode limits and what happens when one is hit.

Outcome of every limit (documented in docs/detection.md): decoding of that body stops at once, what was
already decoded stays scanned, the verdict gets a note ``decode-limit:<reason>`` and the tap
applies its route's fail-open / fail-closed choice. Corrupt or truncated input gives a
``decode-error:`` / ``truncated:`` note the same way; nothing is raised to the caller.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecodeLimits:
    max_decoded_bytes: int = 1 << 30        # per body, after all decoding
    max_ratio: float = 200.0                # decoded / received, checked past ratio_grace_bytes
    ratio_grace_bytes: int = 8 << 20
    max_depth: int = 4                      # nested encodings + containers
    max_members: int = 10_000               # archive members per container
    max_container_bytes: int = 512 << 20    # a zip is spooled (memory, then disk) up to this size
    piece: int = 64 << 10                   # decoded output is handed on in pieces of this size


class DecodeProblem(Exception):
    """Base: decoding stopped; ``note`` is what goes on the verdict (never carries body bytes)."""

    kind = "decode-error"

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    @property
    def note(self) -> str:
        return f"{self.kind}:{self.reason}" + (f" ({self.detail})" if self.detail else "")


class LimitExceeded(DecodeProblem):
    kind = "decode-limit"


class CorruptInput(DecodeProblem):
    kind = "decode-error"


class Budget:
    """Shared meter for one body: bytes received vs bytes decoded, and nesting depth."""

    def __init__(self, limits: DecodeLimits):
        self.limits = limits
        self.received = 0
        self.decoded = 0

    def take(self, n: int) -> None:
        self.decoded += n
        lim = self.limits
        if self.decoded > lim.max_decoded_bytes:
            raise LimitExceeded("decoded-bytes", f"more than {lim.max_decoded_bytes} bytes decoded")
        if self.decoded > lim.ratio_grace_bytes and self.decoded > lim.max_ratio * max(self.received, 1):
            raise LimitExceeded("ratio", f"expansion above {lim.max_ratio:g}:1")

    def check_depth(self, depth: int) -> None:
        if depth > self.limits.max_depth:
            raise LimitExceeded("depth", f"nesting deeper than {self.limits.max_depth}")
