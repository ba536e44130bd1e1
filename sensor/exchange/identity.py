"""Who the client is: one rule for every tap.

The address a tap sees is the peer of its connection (for ICAP: the address the proxy reports for
its client). A forwarded header is believed only when configured to be.
"""
from __future__ import annotations

from collections.abc import Mapping

from sensor.config import Config


def client_address(config: Config, peer: str, headers: Mapping[str, str]) -> str:
    """The client's address for ``peer`` (the connection's remote address) and the request's
    ``headers`` (lower-case keys)."""
    if config.proxy.trust_forwarded:
        xff = headers.get("x-forwarded-for", "")
        if xff:
            return xff.split(",")[0].strip()
    return peer or ""
