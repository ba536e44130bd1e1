"""One thread per store for its SQLite writes, so a slow disk never stops the event loop.

Why: every takedown and alert is fsynced before it is acknowledged, and an fsync is not always
quick. On this project's VM, fsyncs stalled for 0.5–7 s under load; done on the event loop, each
stall froze the whole sidecar — every other request, the metrics endpoint, and the fleet consumer
that applies other sidecars' takedowns (the cause of the 2–6 s outliers in fleet enforcement).
Now the request that needs the write waits for it, and nothing else does.

One thread per store (not a pool) keeps each store's writes in submission order and its write
connection on a single thread; reads that the hot path needs stay on the loop, on a connection of
their own (WAL readers do not wait for a writer).
"""
from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class DiskThread:
    def __init__(self, name: str):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"dlp-{name}-disk")

    def submit(self, fn: Callable[..., T], /, *args: Any, **kw: Any) -> "asyncio.Future[T]":
        """Queue ``fn`` now (writes land in the order they were submitted); the future resolves on the loop."""
        return asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kw))

    async def __call__(self, fn: Callable[..., T], /, *args: Any, **kw: Any) -> T:
        """Run ``fn`` on the store's thread and wait for it; the loop serves others meanwhile.

        Shielded: a cancelled caller (a client that hung up) stops waiting, but the write it
        queued still lands.
        """
        return await asyncio.shield(self.submit(fn, *args, **kw))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
