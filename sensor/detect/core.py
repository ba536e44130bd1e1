"""Which scanning core runs: the compiled one (sensor/detect/_hscore.pyx) or the Python reference.

The compiled core is used when its module imports and it supports the engine's pack (every
validator the pack names has a C twin or is on the module's list of validators it calls in Python,
and Debian's libhs compiles every expression). Otherwise the sensor runs the Python reference
scanner, logs a warning once and exports ``dlp_sensor_compiled_core{reason}`` = 0.
``DLP_SENSOR_PYTHON_CORE=1`` forces the Python reference (debugging, the differential test).

Databases are compiled here with the module's own libhs and cached next to the engine's, keyed by
pack digest, engine format AND libhs version: a database serialized by the PyPI wheel's libhs is
never handed to Debian's, nor one from an older libhs.
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import weakref
from typing import Any

from sensor.detect.engine import ENGINE_FORMAT, Engine, _cache_dir

log = logging.getLogger("dlp.core")

ENV_FORCE_PYTHON = "DLP_SENSOR_PYTHON_CORE"
# Closed set of reasons (a metric label): why the compiled core is or is not in use.
REASONS = ("compiled", "forced-python", "not-built", "validator", "compile-error")

try:
    from sensor.detect import _hscore
except ImportError:               # not built (no libhs or no compiler when the package was installed)
    _hscore = None  # type: ignore[assignment]

_lock = threading.Lock()
_status: dict[str, Any] = {"reason": None}
_warned: set[str] = set()
_gauges: "weakref.WeakSet[Any]" = weakref.WeakSet()   # every Metrics' gauge (tests make many)


class Core:
    """An engine's compiled databases (Debian libhs) and its patterns as C arrays."""

    def __init__(self, engine: Engine):
        assert _hscore is not None
        self.info = _hscore.Info(engine)            # raises CoreError on a validator with no twin
        gated = {i for i, (_, p) in enumerate(engine.origin) if p.gated}
        main = [i for i in range(engine.n_ids) if i not in gated]
        self.nsig = len(engine.signatures)
        self.main = _load_or_compile(engine, main, "main")
        self.gated = _load_or_compile(engine, sorted(gated), "gated") if gated else None
        self.gate_ids = self.info.gate_ids

    def part(self) -> Any:
        """A fresh PartScan: the streams and C state of one part of one exchange."""
        return _hscore.PartScan(self.main, self.gated, self.nsig)


def _load_or_compile(engine: Engine, ids: list[int], part: str) -> Any:
    ver = re.sub(r"[^0-9A-Za-z.]+", "_", _hscore.version())[:40]
    path = _cache_dir() / f"db-{engine.pack.digest[:32]}-{ENGINE_FORMAT}-libhs{ver}-core-{part}.hsdb"
    if path.is_file():
        try:
            return _hscore.load_stream(path.read_bytes())
        except (OSError, _hscore.CoreError):
            pass                                  # corrupt or foreign: rebuild it
    db = _hscore.compile_stream([engine.expressions[i] for i in ids],
                                [engine.expression_flags[i] for i in ids], ids)
    _store(path, db)
    return db


def _store(path: Any, db: Any) -> None:
    """Cache the database; failing to (read-only or full disk, a serialization error) only means
    compiling next time: it never turns a compiled database into a fallback to the Python core."""
    tmp = None
    try:
        blob = db.serialize()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".db-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        os.replace(tmp, path)
        tmp = None
    except (OSError, _hscore.CoreError):
        pass
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)                    # no half-written temporary left in the cache
            except OSError:
                pass


def core_for(engine: Engine) -> Core | None:
    """The engine's compiled core, built once per engine; None means: use the Python reference."""
    c = engine.__dict__.get("_core", False)
    if c is not False:
        return c
    with _lock:
        c = engine.__dict__.get("_core", False)
        if c is not False:
            return c
        reason, c = _build(engine)
        engine.__dict__["_core"] = c
        _set_status(reason)
    return c


def _build(engine: Engine) -> tuple[str, Core | None]:
    if os.environ.get(ENV_FORCE_PYTHON, "") not in ("", "0"):
        return "forced-python", None
    if _hscore is None:
        return "not-built", None
    try:
        return "compiled", Core(engine)
    except _hscore.CoreError as e:
        return ("compile-error" if "validator" not in str(e) else "validator"), None
    except Exception as e:        # noqa: BLE001 - any failure to build: the reference scans, never no scan
        # (the type only: a message could quote the pack)
        log.error("building the compiled core failed (%s): falling back to the Python reference",
                  type(e).__name__)
        return "compile-error", None


def _set_status(reason: str) -> None:
    _status["reason"] = reason
    if reason != "compiled" and reason not in _warned:
        _warned.add(reason)
        log.warning("compiled scanning core not in use (%s): scanning with the Python reference "
                    "scanner, several times slower on dense data", reason)
    for g in list(_gauges):
        _export(g)


def status() -> str | None:
    """The reason of the last selection (one of REASONS), or None before any engine was built."""
    return _status["reason"]


def _export(gauge: Any) -> None:
    reason = _status["reason"]
    if reason is None:
        return
    gauge.clear()                                 # one series: the reason in force
    gauge.labels(reason=reason).set(1 if reason == "compiled" else 0)


def export_to(gauge: Any) -> None:
    """Keep a ``dlp_sensor_compiled_core{reason}`` gauge in step with the selection: one series,
    1 with reason ``compiled``, else 0 with the reason the Python reference runs."""
    _gauges.add(gauge)
    _export(gauge)
