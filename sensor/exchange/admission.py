"""Admission: how many bodies this process scans at once, in total and per client.

Every scan holds a Hyperscan stream, decoder state and (enforce) the hold-back, so the number in
flight is capped: ``proxy.max_scans`` for the whole process (all taps together) and
``proxy.max_scans_per_client`` for one client address. A client past its own cap is refused
(``503`` + ``Retry-After``) whatever the route's ``on_error``: one client's slow downloads must not
push another's leak past the scanner, nor let its own next download through unscanned. Past the
global cap the route's ``on_error`` decides (closed: 503; open: forwarded unscanned, counted).
An exchange whose client is unknown (no address) counts only against the global cap.
"""
from __future__ import annotations

from collections import Counter


class Admission:
    """Scans in flight, in total and by client address (one per process, shared by its taps)."""

    def __init__(self) -> None:
        self.active = 0
        self.by_client: Counter[str] = Counter()

    def refusal(self, client: str, max_scans: int, per_client: int) -> str | None:
        """Why a new scan for ``client`` may not start: ``client``, ``global``, or None (admit)."""
        if client and self.by_client[client] >= per_client:
            return "client"
        if self.active >= max_scans:
            return "global"
        return None

    def enter(self, client: str) -> None:
        self.active += 1
        if client:
            self.by_client[client] += 1

    def leave(self, client: str) -> None:
        self.active -= 1
        if client:
            self.by_client[client] -= 1
            if self.by_client[client] <= 0:
                del self.by_client[client]
