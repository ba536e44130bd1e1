"""Whether the app behind the sidecar can be reached, for ``/readyz``.

A sidecar whose app is down answers every client with 502; while it reports ready, Kubernetes
keeps sending it traffic instead of shifting it to healthy pods. So the proxy's readiness includes
a TCP connect to the upstream. The connect is cheap for the app (no request is sent), bounded by a
short timeout, and its result is cached for a few seconds and shared by concurrent callers, so that
kubelet probes, load-balancer health checks and people with curl never add up to load on the app.
"""
from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import dataclass, field

from yarl import URL

PROBE_TIMEOUT = 1.0       # seconds for the connect: well under the kubelet's usual 2 s probe timeout
PROBE_CACHE = 2.0         # seconds a result is reused: a kubelet probing every 5 s causes one connect each


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str           # "upstream 127.0.0.1:8080 reachable" or why not (no request data in it)


@dataclass
class UpstreamProbe:
    """Connects to ``host:port`` at most once per ``cache`` seconds; callers in between get the
    last result, callers during a connect wait for that same connect."""
    host: str
    port: int
    timeout: float = PROBE_TIMEOUT
    cache: float = PROBE_CACHE
    _last: ProbeResult | None = field(default=None, init=False, repr=False)
    _at: float = field(default=float("-inf"), init=False, repr=False)
    _running: asyncio.Future | None = field(default=None, init=False, repr=False)

    @classmethod
    def for_url(cls, url: str, **kw: float) -> UpstreamProbe:
        """The probe for a proxy upstream URL (``http://127.0.0.1:8080``); the port defaults by scheme."""
        u = URL(url)
        if not u.host:
            raise ValueError(f"upstream {url!r} has no host")
        return cls(u.host, u.port or (443 if u.scheme == "https" else 80), **kw)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def check(self) -> ProbeResult:
        if self._last is not None and time.monotonic() - self._at < self.cache:
            return self._last
        if self._running is None:
            self._running = asyncio.ensure_future(self._connect())
        # shield: a caller that gives up (client hung up) must not cancel the connect others wait on
        return await asyncio.shield(self._running)

    async def _connect(self) -> ProbeResult:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)
            writer.transport.abort()                     # no request, no lingering FIN_WAIT on our side
            result = ProbeResult(True, f"upstream {self.address} reachable")
        except asyncio.TimeoutError:
            result = ProbeResult(False, f"upstream {self.address} did not accept a connection within {self.timeout:g}s")
        except OSError as e:
            result = ProbeResult(False, f"upstream {self.address} unreachable: {_reason(e)}")
        finally:
            self._running = None
        self._last, self._at = result, time.monotonic()
        return result


def _reason(e: OSError) -> str:
    """"Connection refused" rather than asyncio's "Connect call failed ('127.0.0.1', 8080)"."""
    if e.errno and e.errno > 0 and not isinstance(e, socket.gaierror):
        return os.strerror(e.errno)
    return e.strerror or type(e).__name__
