"""The alert spool: every alert is on disk (fsynced) for every sink before anyone is told.

One row per alert and one delivery row per (alert, sink). A dispatcher leases due rows, delivers
them and deletes the delivery on success, or pushes ``next_at`` back with exponential backoff on
failure. Delivery is at-least-once: a process killed between a successful POST and the delete
sends the alert again after restart, with the same ``dlp.dedup_id``, and receivers drop it.
"""
from __future__ import annotations

import time
from pathlib import Path

import orjson

from sensor.enforce.registry import Transaction, connect

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
"""
LEASE_SECONDS = 30.0


class Spool:
    def __init__(self, path: Path):
        self.db = connect(Path(path))
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def put(self, alert: dict, sinks: list[str], now: float | None = None) -> int:
        now = time.time() if now is None else now
        with Transaction(self.db):
            seq = self.db.execute("INSERT INTO alerts(dedup_id, created, body) VALUES (?,?,?)",
                                  (alert["dlp"]["dedup_id"], now, orjson.dumps(alert))).lastrowid
            self.db.executemany("INSERT INTO deliveries(seq, sink, next_at) VALUES (?,?,?)",
                                [(seq, s, now) for s in sinks])
        return seq

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
            self.db.execute("DELETE FROM alerts WHERE seq = ? AND NOT EXISTS "
                            "(SELECT 1 FROM deliveries WHERE seq = ?)", (seq, seq))

    def failed(self, seq: int, sink: str, error: str, retry_at: float) -> None:
        with Transaction(self.db):
            self.db.execute("UPDATE deliveries SET attempts = attempts + 1, next_at = ?, last_error = ? "
                            "WHERE seq = ? AND sink = ?", (retry_at, error[:500], seq, sink))

    def release_leases(self, now: float | None = None) -> None:
        """At start-up: deliveries leased by a process that died are due again at once."""
        now = time.time() if now is None else now
        with Transaction(self.db):
            self.db.execute("UPDATE deliveries SET next_at = ? WHERE next_at > ? AND next_at - ? <= ?",
                            (now, now, now, LEASE_SECONDS))

    def depth(self, sink: str | None = None) -> int:
        if sink is None:
            return self.db.execute("SELECT count(*) FROM deliveries").fetchone()[0]
        return self.db.execute("SELECT count(*) FROM deliveries WHERE sink = ?", (sink,)).fetchone()[0]

    def next_due(self, sink: str) -> float | None:
        return self.db.execute("SELECT min(next_at) FROM deliveries WHERE sink = ?", (sink,)).fetchone()[0]
