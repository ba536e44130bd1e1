"""One SOC alert when bytes leave unscanned, aggregated so that an overload is one incident.

Why: a response forwarded without a scan (the scanner saturated on an ``on_error: open`` route,
the scanner failed, a decode limit on an ``on_decode_limit: open`` route) is a hole in the
sensor's watch, and a metric alone is read by nobody at 3 a.m. But an overload comes in bursts:
520 slow downloads would be 520 alerts about the same thing. So, per reason:

- the first unscanned exchange raises an alert at once (leading edge) and opens a window of
  :data:`WINDOW` seconds;
- the exchanges that follow within the window are only counted;
- when the window closes with a count, one alert carries it (trailing edge, ``dlp.unscanned.exchanges``)
  and opens the next window; a window that closes empty ends the episode.

Every alert of one reason on one UTC day belongs to one incident (``dlp.incident.id``, keyed on
``unscanned|<reason>|<date>``, the same on every sensor of a fleet), so the spool's incident
tracker pages once (the opening alert), sends the window alerts to the sinks that want every alert,
and summarises at 10, 100, … alerts. The counts of an open window live in memory: a ``kill -9``
loses at most one window's count, never the opening alert (spooled like any other).
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sensor.alerts.schema import AlertContext, build_alert, incident_id
from sensor.detect.scanner import ScanResult

if TYPE_CHECKING:
    from sensor.enforce.parts import AlertingState

WINDOW = 60.0                       # seconds an episode's follow-up exchanges are folded into one alert
REASONS = {"overload": "the scanner was saturated",
           "scanner-error": "the scanner failed and the route is on_error: open",
           "decode-limit": "a decode limit stopped the scan and the route is on_decode_limit: open",
           # refused, not forwarded: the SOC hears that clients are turned away (an overload may be an
           # attack on the sensor itself, and either way legitimate downloads fail)
           "overload-refused": "the scanner was saturated and the route is on_error: closed",
           "unverified-range": "a range of a body never scanned whole and clean was asked for"}
REFUSED = frozenset({"overload-refused", "unverified-range"})    # reasons whose responses did not leave


@dataclass
class _Window:
    """One reason's open window: when it ends, how many exchanges came since its alert, the latest one."""
    end: float
    count: int = 0
    latest: AlertContext | None = None
    timer: asyncio.TimerHandle | None = None


class UnscannedAlerts:
    """Per reason, one alert at once and then one per :data:`WINDOW` with the count (module docstring)."""

    def __init__(self, sensor: "AlertingState", window: float = WINDOW):
        self.sensor = sensor
        self.window = window
        self._open: dict[str, _Window] = {}

    def add(self, ctx: AlertContext, reason: str, now: float | None = None) -> dict | None:
        """Count one exchange that left unscanned; returns the alert it raised, if it raised one."""
        now = time.time() if now is None else now
        w = self._open.get(reason)
        if w is not None and now >= w.end:          # no loop ran its timer (a CLI, a test): close it now
            self._close(reason)
            w = self._open.get(reason)
        if w is None:
            return self._raise(reason, ctx, 1, now)
        w.count += 1
        w.latest = ctx
        return None

    def close(self) -> None:
        """At stop: the open windows' counts go out now (they would be lost with the process)."""
        for reason in list(self._open):
            w = self._open[reason]
            if w.timer is not None:
                w.timer.cancel()
            if w.count and w.latest is not None:
                self._submit(reason, w.latest, w.count, time.time())
            del self._open[reason]

    def _close(self, reason: str) -> None:
        w = self._open.pop(reason)
        if w.count and w.latest is not None:
            self._raise(reason, w.latest, w.count, max(time.time(), w.end))

    def _raise(self, reason: str, ctx: AlertContext, count: int, now: float) -> dict:
        w = self._open[reason] = _Window(end=now + self.window)
        try:
            w.timer = asyncio.get_running_loop().call_later(self.window, self._close, reason)
        except RuntimeError:
            pass                                    # no loop: the next add() closes the window
        return self._submit(reason, ctx, count, now)

    def _submit(self, reason: str, ctx: AlertContext, count: int, now: float) -> dict:
        alert = self.build(reason, ctx, count, now)
        self.sensor.dispatcher.submit(alert)
        return alert

    def build(self, reason: str, ctx: AlertContext, count: int, now: float) -> dict:
        """The alert for ``count`` exchanges of ``reason`` (``ctx``: the latest of them)."""
        s = self.sensor
        why = REASONS.get(reason, reason)
        refused = reason in REFUSED
        note = (f"unscanned: {reason} ({why}); {count} exchange(s) {'refused' if refused else 'left unscanned'}"
                + (f" in the last {self.window:g} s, this one the latest" if count > 1 else ""))
        ctx = dataclasses.replace(ctx, action="refused_unscanned" if refused else "forwarded_unscanned",
                                  ruleset=s.detector.generation, takedown_id=None)
        alert = build_alert(ctx, ScanResult(verdict="alert", notes=[note]), key=s.key,
                            source_ip=s.config.source_ip, now=now)
        day = dt.datetime.fromtimestamp(now, dt.timezone.utc).date().isoformat()
        alert["event"].update(action="dlp-unscanned", type=["info", "denied"] if refused else ["info"])
        alert["rule"].update(id="dlp.unscanned", name=f"Responses {'refused' if refused else 'left'} without a scan: {reason}")
        alert["dlp"]["incident"] = {"id": incident_id(s.key, f"unscanned|{reason}|{day}")}
        alert["dlp"]["unscanned"] = {"reason": reason, "exchanges": count, "window_seconds": self.window}
        return alert
