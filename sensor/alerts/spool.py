"""The alert spool: every alert is on disk (fsynced) for every sink before anyone is told.

One row per alert and one delivery row per (alert, sink). A dispatcher leases due rows, delivers
them and deletes the delivery on success, or pushes ``next_at`` back with exponential backoff on
failure. Delivery is at-least-once: a process killed between a successful POST and the delete
sends the alert again after restart, with the same ``dlp.dedup_id``, and receivers drop it.

Incidents: every alert about one resource belongs to one incident (``dlp.incident.id``), and the
incident tracker (:mod:`sensor.alerts.incidents`) counts it in the same transaction that stores
the alert. It decides who hears of it: an alert that opens or escalates an incident goes to every
sink; a repeat goes only to the sinks that want every alert; when the incident's count reaches
10, 100, 1000, … a summary alert goes to every sink. On top of that, a sink with a ``throttle``
gets at most one alert per incident per window: the first at once (leading edge), and the latest
of those that came during the window when it closes (trailing edge, so the counts it carries are
the final ones). The pending trailing alert is an ordinary delivery row scheduled at the window's
end, replaced by each newer alert; nothing is lost by a ``kill -9``.

Trips: the alert of a trip is stored before the tap answers (``Sensor.take_down``), from the
counts at the trip, with its deliveries held for at most ``hold`` seconds; when the exchange ends
(milliseconds after the answer), :meth:`Spool.amend` writes its final counts into the stored alert
(same dedup id) and makes the held deliveries due at once. A sink never gets a trip twice: one
that had it already (the hold ran out) keeps the counts at the trip. A restart makes held
deliveries due at once (:meth:`release_leases`).

Dead letters: a delivery the receiver refused for good (an HTTP 4xx other than 408/429) is moved
out of the spool into ``alerts.dead-letter.jsonl`` beside it (0600, one JSON line per alert and
sink, fsynced), so it is neither retried forever nor lost.
"""
from __future__ import annotations

import os
import time
from collections.abc import Collection
from pathlib import Path

import orjson

from sensor.alerts.incidents import OPENED, ESCALATED, IncidentTracker
from sensor.alerts.schema import iso
from sensor.enforce.diskthread import DiskThread
from sensor.enforce.registry import Transaction, connect
from sensor.enforce.statefiles import open_database

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    dedup_id TEXT NOT NULL,
    created REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER NOT NULL,
    sink TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    last_error TEXT,
    PRIMARY KEY (seq, sink)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(sink, next_at);
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY,
    first_at REAL NOT NULL,
    last_at REAL NOT NULL,
    alerts INTEGER NOT NULL,
    trips INTEGER NOT NULL,
    refusals INTEGER NOT NULL DEFAULT 0,
    template BLOB                  -- the latest alert: what a summary is made from
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS throttles (
    sink TEXT NOT NULL,
    incident TEXT NOT NULL,
    window_end REAL NOT NULL,      -- the sink hears nothing more of this incident before then...
    pending INTEGER,               -- ...except this alert (seq), due at window_end
    PRIMARY KEY (sink, incident)
) WITHOUT ROWID;
"""
LEASE_SECONDS = 30.0
TRIP_HOLD = 2.0             # at most this long a trip's alert waits for the final counts of its exchange
INCIDENT_RETENTION = 30 * 86400.0
DEAD_LETTER_FILE = "alerts.dead-letter.jsonl"


class Spool:
    def __init__(self, path: Path, *, start_empty: bool = False):
        self.path = Path(path)
        open_database(self.path, SCHEMA, "alerts", "alert spool", start_empty=start_empty)
        self.db = connect(self.path)
        self.db.executescript(SCHEMA)
        self.incidents = IncidentTracker(self.db)
        self.dead_letter_path = self.path.parent / DEAD_LETTER_FILE
        self._throttled: dict[str, int] = {}
        self.disk = DiskThread("alerts")        # a server does everything here on it (Dispatcher)

    def close(self) -> None:
        self.disk.close()
        self.db.close()

    def put(self, alert: dict, sinks: dict[str, float], now: float | None = None,
            every: Collection[str] = (), hold: float = 0.0) -> int:
        """Store the alert and its deliveries; ``sinks`` maps each sink to its throttle window (0: none),
        ``every`` names the sinks that get repeats of an incident too. ``hold``: deliveries due now
        wait that long for :meth:`amend` (which makes them due at once). Returns the alert's seq
        (0 when no sink gets it: the incident was counted, nothing else is kept)."""
        now = time.time() if now is None else now
        with Transaction(self.db):
            if alert["dlp"].get("incident") is None:
                return self._store(alert, sinks, now, hold)
            update = self.incidents.on_alert(alert, now)
            to = sinks if update.state in (OPENED, ESCALATED) else {s: w for s, w in sinks.items() if s in every}
            seq = self._store(alert, to, now, hold)
            if update.summary is not None:
                self._store(update.summary, sinks, now)
        return seq

    def amend(self, alert: dict, now: float | None = None, hold: float = TRIP_HOLD) -> int:
        """Write an exchange's final counts into its alert, stored at the trip under the same dedup id,
        for the sinks that have not had it yet; returns how many stored alerts it changed (0: every
        sink has it already, and nothing is sent again: one alert per trip). The stored alert's
        time, incident counts and notes stay (the incident already counted it). Its deliveries held
        by :meth:`put` (``hold``) are due at once."""
        did = alert["dlp"]["dedup_id"]
        now = time.time() if now is None else now
        n = 0
        with Transaction(self.db):
            for seq, created, body in self.db.execute("SELECT seq, created, body FROM alerts WHERE dedup_id = ?",
                                                      (did,)).fetchall():
                old = orjson.loads(body)
                new = dict(alert, **{"@timestamp": old["@timestamp"]})
                d = new["dlp"] = dict(alert["dlp"])
                d["incident"] = old["dlp"]["incident"]
                d["notes"] = [*d["notes"], *(x for x in old["dlp"]["notes"] if x not in d["notes"]
                                             and not x.startswith("counts-unknown:"))]
                self.db.execute("UPDATE alerts SET body = ? WHERE seq = ?", (orjson.dumps(new), seq))
                self.db.execute("UPDATE deliveries SET next_at = ? WHERE seq = ? AND attempts = 0 AND next_at > ? "
                                "AND next_at <= ?", (now, seq, now, created + hold))     # held for this: due now
                n += 1
        return n

    def refusals(self, counts: dict[str, int], sinks: dict[str, float], now: float | None = None) -> int:
        """Count refused requests into their incidents (``counts``: incident id -> n); a crossed power
        of ten stores a summary alert for every sink. Returns how many summaries were stored."""
        now = time.time() if now is None else now
        n = 0
        with Transaction(self.db):
            for incident, k in counts.items():
                if (summary := self.incidents.on_refusals(incident, k, now)) is not None:
                    self._store(summary, sinks, now)
                    n += 1
        return n

    def _store(self, alert: dict, sinks: dict[str, float], now: float, hold: float = 0.0) -> int:
        if not sinks:
            return 0
        inc = alert["dlp"].get("incident")
        seq = self.db.execute("INSERT INTO alerts(dedup_id, created, body) VALUES (?,?,?)",
                              (alert["dlp"]["dedup_id"], now, orjson.dumps(alert))).lastrowid
        for sink, window in sinks.items():
            due = now if inc is None or window <= 0 else self._throttle(sink, inc["id"], seq, window, now)
            if hold > 0 and due <= now:
                due = now + hold
            self.db.execute("INSERT INTO deliveries(seq, sink, next_at) VALUES (?,?,?)", (seq, sink, due))
        return seq

    def _throttle(self, sink: str, incident: str, seq: int, window: float, now: float) -> float:
        """When this alert is due at a throttled sink (see the module docstring)."""
        row = self.db.execute("SELECT window_end, pending FROM throttles WHERE sink = ? AND incident = ?",
                              (sink, incident)).fetchone()
        waiting = row is not None and self._waiting(row[1], sink)
        if row is None or now >= row[0] and not waiting:        # leading edge: now, and a window opens
            self.db.execute("INSERT OR REPLACE INTO throttles(sink, incident, window_end, pending) "
                            "VALUES (?,?,?,NULL)", (sink, incident, now + window))
            return now
        end = row[0]
        if waiting:                                             # a newer alert takes the waiting one's place
            self.db.execute("DELETE FROM deliveries WHERE seq = ? AND sink = ?", (row[1], sink))
            self._drop_orphan(row[1])
            self._throttled[sink] = self._throttled.get(sink, 0) + 1
            due = end - window
        else:                                                   # trailing edge, which opens the next window
            due, end = end, end + window
        self.db.execute("UPDATE throttles SET window_end = ?, pending = ? WHERE sink = ? AND incident = ?",
                        (end, seq, sink, incident))
        return due

    def _waiting(self, seq: int | None, sink: str) -> bool:
        return seq is not None and self.db.execute("SELECT 1 FROM deliveries WHERE seq = ? AND sink = ?",
                                                   (seq, sink)).fetchone() is not None

    def _drop_orphan(self, seq: int) -> None:
        self.db.execute("DELETE FROM alerts WHERE seq = ? AND NOT EXISTS (SELECT 1 FROM deliveries WHERE seq = ?)",
                        (seq, seq))

    def take_throttled(self) -> dict[str, int]:
        """Per sink, alerts a throttle folded into a later one since the last call (for the metric)."""
        n, self._throttled = self._throttled, {}
        return n

    def lease(self, sink: str, limit: int = 50, now: float | None = None) -> list[tuple[int, int, dict]]:
        """Due deliveries for a sink, leased so that another process sharing the spool skips them."""
        now = time.time() if now is None else now
        with Transaction(self.db):
            rows = self.db.execute(
                "SELECT d.seq, d.attempts, a.body FROM deliveries d JOIN alerts a USING (seq) "
                "WHERE d.sink = ? AND d.next_at <= ? ORDER BY d.seq LIMIT ?", (sink, now, limit)).fetchall()
            self.db.executemany("UPDATE deliveries SET next_at = ? WHERE seq = ? AND sink = ?",
                                [(now + LEASE_SECONDS, seq, sink) for seq, _, _ in rows])
        return [(seq, attempts, orjson.loads(body)) for seq, attempts, body in rows]

    def delivered(self, seq: int, sink: str) -> None:
        with Transaction(self.db):
            self.db.execute("DELETE FROM deliveries WHERE seq = ? AND sink = ?", (seq, sink))
            self._drop_orphan(seq)

    def dead_letter(self, seq: int, sink: str, alert: dict, error: str, now: float | None = None) -> None:
        """Move a delivery the receiver refused for good to the dead-letter file (fsynced first)."""
        now = time.time() if now is None else now
        line = orjson.dumps({"dead_lettered_at": iso(now), "sink": sink, "error": error[:500], "alert": alert})
        fd = os.open(self.dead_letter_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        self.delivered(seq, sink)

    def defer(self, seqs: list[int], sink: str, at: float) -> None:
        """Push leased deliveries back to ``at`` without counting an attempt (the receiver asked us to wait)."""
        with Transaction(self.db):
            self.db.executemany("UPDATE deliveries SET next_at = ? WHERE seq = ? AND sink = ?",
                                [(at, seq, sink) for seq in seqs])

    def failed(self, seq: int, sink: str, error: str, retry_at: float) -> None:
        with Transaction(self.db):
            self.db.execute("UPDATE deliveries SET attempts = attempts + 1, next_at = ?, last_error = ? "
                            "WHERE seq = ? AND sink = ?", (retry_at, error[:500], seq, sink))

    def release_leases(self, now: float | None = None) -> None:
        """At start-up: deliveries leased by a process that died are due again at once (and
        incidents quiet for INCIDENT_RETENTION are forgotten: the next alert opens a new one)."""
        now = time.time() if now is None else now
        with Transaction(self.db):
            self.db.execute("DELETE FROM incidents WHERE last_at < ?", (now - INCIDENT_RETENTION,))
            self.db.execute("DELETE FROM throttles WHERE window_end < ? AND (pending IS NULL OR NOT EXISTS "
                            "(SELECT 1 FROM deliveries d WHERE d.seq = pending AND d.sink = throttles.sink))",
                            (now - INCIDENT_RETENTION,))
            self.db.execute("UPDATE deliveries SET next_at = ? WHERE next_at > ? AND next_at - ? <= ?",
                            (now, now, now, LEASE_SECONDS))

    def depth(self, sink: str | None = None) -> int:
        if sink is None:
            return self.db.execute("SELECT count(*) FROM deliveries").fetchone()[0]
        return self.db.execute("SELECT count(*) FROM deliveries WHERE sink = ?", (sink,)).fetchone()[0]

    def next_due(self, sink: str) -> float | None:
        return self.db.execute("SELECT min(next_at) FROM deliveries WHERE sink = ?", (sink,)).fetchone()[0]
