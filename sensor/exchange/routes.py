"""The route table: what one URL path gets, decided in one place for every tap and the scan.

A route says how the sensor treats a path: ``mode`` (monitor or enforce), ``on_error`` (the
scanner overloaded or failed), ``on_decode_limit`` (a body that could not be fully inspected),
``holdback`` (bytes held until scanned) and the detection ``policy`` for the path (trip and alert
thresholds, signatures allowed). One ``proxy.routes`` entry can say all of it; the older
``policy.routes`` (thresholds, allow) are still read, and both are resolved here together, once
per exchange, so no tap looks either up on its own and the scan uses the thresholds of the same
path the session routed.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

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


CACHED_ROUTES = 4096
# (id(policy), the proxy section's route inputs, path) -> (policy, Route). Resolving a route costs
# more than a dict look-up (a glob per route, two dataclass replaces): a sidecar's paths repeat,
# and every exchange resolves one on the event loop. A reload makes a new policy (and config), so
# its routes are resolved afresh; the policy kept with each entry pins its id.
_ROUTES: dict[tuple, tuple[Policy, Route]] = {}


def route_for(config: Config, policy: Policy, path: str) -> Route:
    """:func:`resolve_route`, remembered per policy, proxy section and path (bounded)."""
    px = config.proxy
    key = (id(policy), px.routes, px.mode, px.on_error, px.on_error_explicit, px.holdback, path)
    hit = _ROUTES.get(key)
    if hit is not None and hit[0] is policy:
        return hit[1]
    route = resolve_route(config, policy, path)
    if len(_ROUTES) >= CACHED_ROUTES:
        _ROUTES.clear()
    _ROUTES[key] = (policy, route)
    return route


def resolve_route(config: Config, policy: Policy, path: str) -> Route:
    """The route of ``path`` (the URL path, no query): the first matching ``proxy.routes`` entry
    (else the proxy section's defaults); its thresholds and allow apply over the first matching
    ``policy.routes`` entry's, which apply over the policy's. The policy returned is fully
    resolved (no routes left), so the scan cannot look the path up again differently."""
    r = config.proxy.route(path)
    p = policy.for_path(path)
    p = replace(p, trip=replace(p.trip, **dict(r.trip)), alert=replace(p.alert, **dict(r.alert)),
                allow=p.allow | r.allow, routes=())
    return Route(match=r.match, mode=r.mode, on_error=r.on_error, on_decode_limit=r.on_decode_limit,
                 holdback=r.holdback, policy=p)
