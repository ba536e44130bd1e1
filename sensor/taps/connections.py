"""Connection limits shared by the taps: the file-descriptor budget, a connection cap for the
aiohttp proxy, and accept errors logged once per interval instead of once per failure.

Why: a flood of half-open connections used to exhaust the process's file limit; every failed
``accept()`` then logged a traceback (hundreds of thousands of lines), and the probes of real
clients timed out. Now the soft file limit is raised to the hard one at start, each listener caps
its connections below it, idle connections are closed after a timeout, and what still goes wrong
at accept time is one log line per interval with a count.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import resource
import time
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("dlp_sensor.connections")

FD_RESERVE = 128            # descriptors kept for files, the admin and metrics ports, upstream pools
LOG_INTERVAL = 10.0         # s between two lines about the same kind of accept failure
REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 20\r\n"
           b"Retry-After: 1\r\nConnection: close\r\n\r\ntoo many connections")
_RESOURCE_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as servers do); returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_budget(wanted: int, *, share: int = 2) -> int:
    """The connection cap a listener can keep: ``wanted``, but never so many that client connections
    (each may hold an upstream one too: ``share``) plus the reserve exceed the file limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    room = max(16, (soft - FD_RESERVE) // share)
    if wanted > room:
        log.warning("connection cap lowered from %d to %d: the file limit is %d", wanted, room, soft)
    return min(wanted, room)


class RateLimited:
    """One line per ``interval`` per key, saying how many were folded into it; never a traceback."""

    def __init__(self, logger: logging.Logger, interval: float = LOG_INTERVAL):
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._folded: dict[str, int] = {}

    def warn(self, key: str, message: str) -> bool:
        """Log ``message`` unless ``key`` was logged less than ``interval`` ago; True when logged."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._folded[key] = self._folded.get(key, 0) + 1
            return False
        folded = self._folded.pop(key, 0)
        self._last[key] = now
        suffix = f" ({folded} more in the last {now - last:.0f} s)" if folded and last is not None else ""
        self.logger.warning("%s%s", message, suffix)
        return True


def install_accept_error_handler(loop: asyncio.AbstractEventLoop) -> RateLimited:
    """asyncio logs a traceback for every failed ``accept()`` (and retries a second later); under a
    connection flood that is a flood of the log. Resource errors become one counted line per
    interval; everything else goes to the handler that was there before."""
    limited = RateLimited(log)
    previous = loop.get_exception_handler()

    def handler(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS:
            limited.warn(f"accept:{exc.errno}", f"accept() failed: {errno.errorcode.get(exc.errno, exc.errno)} "
                         f"({exc.strerror}); new connections wait in the backlog")
            return
        if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
            limited.warn(f"conn:{type(exc).__name__}", f"connection error: {type(exc).__name__}")
            return
        if previous is not None:
            previous(lp, context)
        else:
            lp.default_exception_handler(context)

    loop.set_exception_handler(handler)
    return limited


def _idle(h: RequestHandler) -> bool:
    """No request in progress: none parsed yet, or waiting for the next head of a kept-alive one.
    Reads aiohttp's (3.14) private handler state; if a later aiohttp renames it, nothing counts as
    idle and the cap refuses with 503 instead of closing idle connections."""
    if getattr(h, "_messages", True):
        return False
    waiter = getattr(h, "_waiter", None)        # set while the handler waits for a request head
    return getattr(h, "_request_count", 1) == 0 or (waiter is not None and not waiter.done())


def accept_backlog(cap: int, wanted: int = 1024) -> int:
    """asyncio accepts up to ``backlog`` sockets in one go before any of them is handed over (and
    counted against the cap): keep that burst a fraction of the cap, so it cannot exhaust the
    file limit the cap was sized for."""
    return max(16, min(wanted, cap // 4))


class CappedServer(web.Server):
    """aiohttp's low-level server with a connection cap.

    At the cap, a new connection first takes the place of the oldest *idle* one (no request in
    progress: waiting for a request head, whether new or kept alive) — half-open connections are
    the cheapest to lose, and a real client is then served at once. When every connection is busy
    the new one is answered 503 and closed, before any request is read.
    """

    def __init__(self, handler, *, max_connections: int, **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.max_connections = max_connections
        self.live: dict[RequestHandler, None] = {}      # insertion order: oldest first
        self.evicted = 0
        self.refused = 0
        self._log = RateLimited(log)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        if len(self.live) >= self.max_connections and not self._evict_idle():
            self.refused += 1
            self._log.warn("refused", f"connection cap {self.max_connections} reached, all busy: refusing with 503")
            try:
                transport.write(REFUSAL)
            finally:
                transport.close()
            return
        self.live[handler] = None
        super().connection_made(handler, transport)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        self.live.pop(handler, None)
        super().connection_lost(handler, exc)

    def _evict_idle(self) -> bool:
        for h in self.live:
            if _idle(h):
                del self.live[h]
                self.evicted += 1
                self._log.warn("evicted", f"connection cap {self.max_connections} reached: "
                               "closing the oldest idle connections")
                h.force_close()
                return True
        return False
