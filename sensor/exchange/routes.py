"""The route table: what one URL path gets, decided in one place for every tap and the scan.

A route says how the sensor treats a path: ``mode`` (monitor or enforce), ``on_error`` (the
scanner overloaded or failed), ``on_decode_limit`` (a body that could not be fully inspected),
``holdback`` (bytes held until scanned) and the detection ``policy`` for the path (trip and alert
thresholds, signatures allowed). The configuration keeps its two historical places —
``proxy.routes`` (mode, on_error, hold-back) and ``policy.routes`` (thresholds, allow) — and both
are resolved here together, once per exchange, so no tap looks either up on its own and the scan
uses the thresholds of the same path the session routed.
"""
from __future__ import annotations

from dataclasses import dataclass

from sensor.config import Config
from sensor.detect.policy import Policy


@dataclass(frozen=True)
class Route:
    """Everything decided for one path (``match``: the ``proxy.routes`` glob that applied, or ``*``)."""
    match: str
    mode: str
    on_error: str
    on_decode_limit: str
    holdback: int
    policy: Policy

    @property
    def enforce(self) -> bool:
        return self.mode == "enforce"


def route_for(config: Config, policy: Policy, path: str) -> Route:
    """The route of ``path`` (the URL path, no query): the first matching ``proxy.routes`` entry
    (else the proxy section's defaults) with the first matching ``policy.routes`` thresholds."""
    r = config.proxy.route(path)
    return Route(match=r.match, mode=r.mode, on_error=r.on_error, on_decode_limit=r.on_decode_limit,
                 holdback=r.holdback, policy=policy.for_path(path))
