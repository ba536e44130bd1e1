"""One incident per leak: the incident tracker.

Every alert about one resource belongs to one incident (``dlp.incident.id``, a keyed hash of the
resource, the same on every sensor of a fleet). The tracker keeps, per incident, how many
exchanges raised an alert (and how many of them tripped), how many requests were refused while
the resource was taken down, and when it was first and last seen. It lives in the alert spool's
SQLite file and runs inside the spool's transaction, so the counts survive a restart and an
alert is never stored without being counted.

What it decides (the spool acts on it):

- the first alert of an incident **opens** it, and the first trip of an incident opened by a
  lesser alert **escalates** it: both go to every sink (they page);
- every later alert is a **repeat**: it updates the incident (count, last seen) and goes only to
  the sinks that want every alert (``every_alert``; SIEM-style sinks by default);
- a **summary** alert is raised, to every sink, when the incident's count (alerts + refusals)
  reaches 10, 100, 1000, … (each power of ten from 10 up, once): a leak downloaded 2,734 times
  is one page and three summaries, not 2,734 pages.
"""
from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass

import orjson

from sensor.alerts.schema import iso

OPENED, ESCALATED, REPEAT, SUMMARY = "opened", "escalated", "repeat", "summary"
_ADDED_COLUMNS = {"refusals": "INTEGER NOT NULL DEFAULT 0", "template": "BLOB"}


def crossed(old: int, new: int) -> int | None:
    """The largest power of ten from 10 up in (old, new], if any: the summary rule."""
    best, p = None, 10
    while p <= new:
        if p > old:
            best = p
        p *= 10
    return best


@dataclass
class Update:
    """What one event did to its incident."""
    state: str                       # opened | escalated | repeat
    summary: dict | None = None      # a summary alert to send to every sink, when a power of ten was crossed


class IncidentTracker:
    """Counts per incident in the spool's ``incidents`` table (see the module docstring)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db
        have = {r[1] for r in db.execute("PRAGMA table_info(incidents)")}
        for col, decl in _ADDED_COLUMNS.items():       # spools written before these columns existed
            if col not in have:
                db.execute(f"ALTER TABLE incidents ADD COLUMN {col} {decl}")

    def on_alert(self, alert: dict, now: float) -> Update:
        """Count an alert into its incident; fills ``dlp.incident`` in the alert. Call inside a transaction."""
        d = alert["dlp"]
        inc = d["incident"]
        trip = d["verdict"] == "trip"
        row = self.db.execute("SELECT alerts, trips, refusals FROM incidents WHERE id = ?", (inc["id"],)).fetchone()
        if row is None:
            self.db.execute("INSERT INTO incidents(id, first_at, last_at, alerts, trips, refusals) "
                            "VALUES (?,?,?,1,?,0)", (inc["id"], now, now, int(trip)))
            state, old = OPENED, 0
        else:
            alerts, trips, refusals = row
            state, old = (ESCALATED if trip and trips == 0 else REPEAT), alerts + refusals
            self.db.execute("UPDATE incidents SET alerts = alerts + 1, trips = trips + ?, last_at = ? WHERE id = ?",
                            (int(trip), now, inc["id"]))
        inc.update(self._fields(inc["id"]), state=state)
        self.db.execute("UPDATE incidents SET template = ? WHERE id = ?", (orjson.dumps(alert), inc["id"]))
        threshold = crossed(old, inc["count"])
        return Update(state, self._summary(inc["id"], threshold, now) if threshold else None)

    def on_refusals(self, incident: str, n: int, now: float) -> dict | None:
        """Count ``n`` refused requests of a taken-down resource into its incident (nothing if the
        resource never alerted here); returns a summary alert when a power of ten was crossed."""
        row = self.db.execute("SELECT alerts + refusals FROM incidents WHERE id = ?", (incident,)).fetchone()
        if row is None:
            return None
        self.db.execute("UPDATE incidents SET refusals = refusals + ?, last_at = ? WHERE id = ?", (n, now, incident))
        threshold = crossed(row[0], row[0] + n)
        return self._summary(incident, threshold, now) if threshold else None

    def _fields(self, incident: str) -> dict:
        first, last, alerts, trips, refusals = self.db.execute(
            "SELECT first_at, last_at, alerts, trips, refusals FROM incidents WHERE id = ?", (incident,)).fetchone()
        return {"count": alerts + refusals, "alerts": alerts, "trips": trips, "refusals": refusals,
                "first_seen": iso(first), "last_seen": iso(last)}

    def _summary(self, incident: str, threshold: int, now: float) -> dict | None:
        """The incident's latest alert, re-dated and re-labelled as its summary at ``threshold``."""
        row = self.db.execute("SELECT template FROM incidents WHERE id = ?", (incident,)).fetchone()
        if row is None or row[0] is None:
            return None
        a = orjson.loads(row[0])
        fields = self._fields(incident)
        did = hashlib.sha256(f"{incident}|summary|{threshold}|{fields['first_seen']}".encode()).hexdigest()[:32]
        a["@timestamp"] = iso(now)
        a.pop("source", None)                       # a summary is about the resource, not one client
        a["event"].update(action="dlp-incident-summary", id=did, start=fields["first_seen"], end=fields["last_seen"])
        a["rule"].update(id="dlp.incident", name=f"Personal-data leak incident: {threshold} requests of one resource")
        d = a["dlp"]
        d.pop("client", None)
        d["dedup_id"] = did
        d["incident"] = {"id": incident, **fields, "state": SUMMARY, "threshold": threshold}
        return a
