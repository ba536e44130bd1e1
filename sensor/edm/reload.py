"""The Kafka worker's EDM indexes, reloaded when a file changes (issue 20: "reload on change, atomic
swap, no pause").

The sidecar watches its index files with its configuration (``sensor.runtime``: modification times
polled once a second, the new set loaded off the event loop, swapped by one assignment). The worker
has no reload of its configuration, so it holds its indexes here, with the same mechanism:

- the files' modification times (and sizes, inodes) are compared with those of the set in use at
  most once per ``interval``: by a watch thread (``watch=True``, the worker: a change is picked up
  within a second with or without traffic), and by :meth:`IndexHolder.current`, called where a scan
  starts (a few ``stat`` calls);
- on a change the new set is loaded in a thread (a 1M-row index takes ~0.1-0.5 s: filters built,
  fields copied), so no scan waits for it; when it is ready it replaces the old one in one
  assignment. A scan in flight keeps the set it started with (its matcher holds it; the mapping is
  freed after it);
- a file that cannot be loaded (half written, wrong key, corrupt) is refused with one log line
  naming the file, and the set in use keeps serving; its next change is tried again.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from sensor.config_reload import FileStamp, file_stamps
from sensor.edm.indexfile import IndexFileError
from sensor.edm.match import EdmSet, IndexSpec, load_indexes

log = logging.getLogger("dlp.edm")

RELOAD_INTERVAL = 1.0          # seconds between checks of the files (the sidecar's watch period)


class IndexHolder:
    """The index set in use and the files it came from; :meth:`current` hands out the set and starts
    a reload when a file changed. ``on_reload(result)`` is called with ``"ok"`` or ``"error"`` after
    each reload attempt (the worker counts them in ``dlp_reloads_total``)."""

    def __init__(self, specs: Sequence[IndexSpec], key: bytes, *, interval: float = RELOAD_INTERVAL,
                 background: bool = True, watch: bool = False,
                 on_reload: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.specs = list(specs)
        self.key = key
        self.interval = interval
        self.background = background
        self.on_reload = on_reload
        self._clock = clock
        self._seen = self._mtimes()              # before the load: a change during it is seen next time
        self.edm: EdmSet | None = load_indexes(self.specs, key)   # at start a bad file is an error
        self._next = clock() + interval
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        if watch and self.specs:
            self._watcher = threading.Thread(target=self._watch, name="edm-index-watch", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:                    # (stat errors are a missing file: -1) never end the watch
                log.exception("index watch failed; will retry")

    def close(self) -> None:
        """Stop the watch thread (a reload in progress finishes)."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)

    def current(self) -> EdmSet | None:
        """The set to scan with (None: no index); checks the files when ``interval`` has passed."""
        if self.specs:
            now = self._clock()
            if now >= self._next:
                self._next = now + self.interval
                self.check()
        return self.edm

    def check(self) -> bool:
        """Compare the files with the set in use; on a change load the new set (in a thread unless
        ``background`` is off). True when a reload was started."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return False                     # one reload at a time; the next check sees later changes
            now = self._mtimes()
            if now == self._seen:
                return False
            self._seen = now
            if not self.background:
                self._load()
                return True
            self._thread = threading.Thread(target=self._load, name="edm-index-reload", daemon=True)
            self._thread.start()
            return True

    def join(self, timeout: float | None = None) -> None:
        """Wait for a reload in progress (tests, shutdown)."""
        t = self._thread
        if t is not None:
            t.join(timeout)

    def _load(self) -> None:
        try:
            edm = load_indexes(self.specs, self.key)
        except (IndexFileError, OSError, ValueError) as e:   # the message names the file, never a value
            log.error("index reload refused, the indexes loaded before keep serving: %s", e)
            result = "error"
        else:
            self.edm = edm                       # one assignment: scans started from now use it
            n = len(edm.indexes) if edm is not None else 0
            log.info("indexes reloaded: %d index(es), %s", n,
                     ", ".join(i.name for i in edm.indexes) if edm is not None else "none")
            result = "ok"
        if self.on_reload is not None:
            try:
                self.on_reload(result)
            except Exception:                    # a metric must not stop the reload thread's report
                log.exception("index reload callback failed")

    def _mtimes(self) -> dict[str, FileStamp]:
        return file_stamps(s.path for s in self.specs)
