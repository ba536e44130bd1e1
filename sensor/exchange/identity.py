"""Who the client is, and its keyed hash: one rule and one hash for every tap.

The rule (docs/configuration.md, ``clients``). The address a tap sees is the peer of its
connection: the proxy's TCP peer; for ext_proc the downstream address Envoy reports in the
``source.address`` attribute (else Envoy's own address, the gRPC peer); for ICAP the address
squid reports for its client (``X-Client-IP``: the ICAP client is trusted as much as the ICAP
connection, which can forge the whole response anyway). A forwarded header is believed only when
the peer is a configured trusted proxy: then the header's hops are walked right to left (the
right-most hop was added by the peer itself); each hop is believed only while the address that
added it is a trusted proxy, and the first address that is not one is the client. A malformed or
hidden hop (``unknown``, ``_obfuscated``, garbage) stops the walk at the last good address. With
no trusted proxy configured (the default) every forwarded header is ignored: a client cannot put
another address in the alerts or the ledger by sending one.

Addresses are returned in one canonical form (no port or brackets, IPv6 compressed, an
IPv4-mapped IPv6 address as IPv4) so that one client has one keyed hash whichever tap saw it.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:                   # no import of the config at run time: the alert schema imports this
    from sensor.config import Config

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip")
MAX_HOPS = 64               # a header with more hops is walked over its last 64 only (each costs a parse)
CLIENT_HASH_PREFIX = "hmac-sha256:"
# Per-exchange work is paid on the event loop for every request: the few clients (and proxies) a
# sidecar sees repeat, so their parse and keyed hash are remembered (bounded; both are pure).
CACHED_ADDRESSES = 4096


@lru_cache(maxsize=CACHED_ADDRESSES)
def client_hash(key: bytes, address: str) -> str:
    """The client's keyed hash, the same in the alert (``dlp.client.hash``), the exposure ledger, the
    fleet finding and the reports, so that a SOC analyst can join them: HMAC-SHA256 under the
    sensor's key (a fleet shares it) of the canonical address, 24 hex digits (96 bits)."""
    return CLIENT_HASH_PREFIX + hmac.new(key, canonical(address).encode(), hashlib.sha256).hexdigest()[:24]


def canonical(address: str) -> str:
    """``address`` in the one form that is hashed; a value that is not an IP address is kept as it is."""
    ip = parse_node(address)
    return str(ip) if ip is not None else address


def client_address(config: "Config", peer: str, headers: Mapping[str, Any], *,
                   peer_trusted: bool | None = None) -> str:
    """The client's address for ``peer`` (the connection's remote address, in any of the forms
    :func:`parse_node` reads) and the request's ``headers`` (lower-case keys; a multi-dict's
    repeated lines are read in order). ``peer_trusted`` overrides the trusted-proxy test of the
    peer (tests; a tap that knows better). An empty or unparsable peer gives ``""``/the peer as
    it is, and the headers are ignored: an unknown peer is not a trusted proxy."""
    c = config.clients
    current = parse_node(peer) if peer else None
    if current is None:
        return peer or ""
    trusted = peer_trusted if peer_trusted is not None else (c.trust_any_peer or _trusted(current, c.trusted_proxies))
    if not trusted:
        return str(current)
    hops = forwarded_hops(headers, c.header)
    first = True
    for hop in reversed(hops[-MAX_HOPS:]):
        if not first and not _trusted(current, c.trusted_proxies):
            break
        first = False
        ip = parse_node(hop) if hop is not None else None
        if ip is None:
            break                                   # malformed: stop at the last good address
        current = ip
    return str(current)


def _trusted(ip: IpAddress, nets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    return any(ip in n for n in nets)               # a v4 address is never "in" a v6 network


def _lines(headers: Mapping[str, Any], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:                          # aiohttp / multidict: every line of the header
        return [str(v) for v in getall(name, ())]
    v = headers.get(name)
    if v is None:
        return []
    return [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)]


def forwarded_hops(headers: Mapping[str, Any], header: str) -> list[str | None]:
    """The hops of the configured forwarded header, left (farthest) to right (nearest); ``None``
    for a hop that names no usable address (RFC 7239 ``for`` missing, ``unknown``, obfuscated)."""
    lines = _lines(headers, header)
    if header == "x-real-ip":
        return [lines[-1].strip()] if lines else []
    text = ",".join(lines)
    if not text.strip():
        return []
    if header == "forwarded":
        return [_forwarded_for(el) for el in _split(text, ",")]
    return [h.strip() for h in text.split(",")]


_PAIR = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,"\s]*)\s*')


def _split(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside RFC 7230 quoted strings (elements at ``,``, pairs at ``;``)."""
    out: list[str] = []
    cur: list[str] = []
    quoted = esc = False
    for ch in text:
        if esc:
            esc = False
        elif ch == "\\" and quoted:
            esc = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur))
    return out


def _forwarded_for(element: str) -> str | None:
    """The ``for=`` node of one RFC 7239 element (``None`` when absent or the element is malformed)."""
    found = None
    for pair in _split(element, ";"):
        if not pair.strip():
            continue
        m = _PAIR.fullmatch(pair)
        if m is None:
            return None
        name, value = m.group(1).lower(), m.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        if name == "for":
            if found is not None:
                return None                         # two for= in one element: malformed
            found = value
    return found


_PORT = re.compile(r"[0-9]{1,5}")


@lru_cache(maxsize=CACHED_ADDRESSES)
def parse_node(node: str) -> IpAddress | None:
    """An address from one hop or peer: ``203.0.113.7``, ``203.0.113.7:4711``, ``2001:db8::1``,
    ``[2001:db8::1]``, ``[2001:db8::1]:4711``, gRPC's ``ipv4:1.2.3.4:5`` / ``ipv6:[::1]:5``, quoted
    or not; an IPv4-mapped IPv6 address is returned as IPv4. ``None`` for anything else (``unknown``,
    ``_hidden``, host names, garbage)."""
    s = node.strip().strip('"').strip()
    if s.startswith(("ipv4:", "ipv6:")):
        s = s[5:]
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            return None
        rest, s = s[end + 1:], s[1:end]
        if rest and not (rest.startswith(":") and _PORT.fullmatch(rest[1:])):
            return None
        if "%" in s:
            s = s.split("%", 1)[0]                  # a zone index does not identify a client
        try:
            ip: IpAddress = ipaddress.IPv6Address(s)
        except ValueError:
            return None
    elif s.count(":") == 1:                         # IPv4 with a port
        host, port = s.split(":")
        if not _PORT.fullmatch(port):
            return None
        try:
            ip = ipaddress.IPv4Address(host)
        except ValueError:
            return None
    else:
        if "%" in s:
            s = s.split("%", 1)[0]
        try:
            ip = ipaddress.ip_address(s)
        except ValueError:
            return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def envoy_peer(request: Any, grpc_peer: str) -> str:
    """The peer of an ext_proc stream, from its ``request_headers`` message: the downstream address
    Envoy reports in the ``source.address`` attribute (the filter's ``request_attributes:
    [source.address]``, as deploy/envoy/envoy.yaml asks), else the gRPC peer — Envoy itself, so
    the header Envoy forwards counts only when Envoy's address is a configured trusted proxy."""
    attrs = getattr(request, "attributes", None)
    ext = attrs.get("envoy.filters.http.ext_proc") if attrs is not None else None
    if ext is not None and "source.address" in ext.fields:
        value = ext.fields["source.address"].string_value
        if value:
            return value
    return grpc_peer or ""
