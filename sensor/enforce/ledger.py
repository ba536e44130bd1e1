"""The exposure ledger: per resource, who got what and when — the facts a breach notice needs.

For every resource: first and last served, responses served (and completed), bytes, when it first
tripped and when it was taken down, how many responses and distinct clients (keyed hash, never the
address) came before each, refusals afterwards, and the most records seen in one response.

The proxy's hot path only adds to in-memory deltas (and trip/takedown marks); a background task
flushes them on the ledger's disk thread every half second, and at once after a mark, as
``served = served + ?`` updates, so several sidecar processes can share one ledger file without
losing counts.

Client hashes are pseudonymous personal data of the site's visitors, so the ledger keeps as few as
the report needs: only for responses that carried at least one person record (a breach notice
counts the people who received data, not every visitor of every page), and each for at most
``client_retention_days`` (default 90). The distinct count is a column incremented when a new
client row is inserted, so pruning old rows never lowers a reported figure; a client seen again
after its row was pruned counts again.

A flush the disk refuses (full, failing) keeps its deltas and marks in memory, in order, for the
next flush: the counts are late, not lost (unless the process stops first). The fault is logged
once when it starts and once when it ends, not every half second.
"""
from __future__ import annotations

import logging
import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from sensor.enforce.diskthread import DiskThread
from sensor.enforce.registry import DISK_ERRORS, Transaction as _tx, connect, disk_fault
from sensor.enforce.statefiles import open_database
from sensor.exchange.identity import CLIENT_HASH_PREFIX

log = logging.getLogger("dlp_sensor")

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    resource TEXT PRIMARY KEY,
    first_served REAL, last_served REAL,
    served INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    partial INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    refused INTEGER NOT NULL DEFAULT 0,
    max_records INTEGER NOT NULL DEFAULT 0,
    alerts INTEGER NOT NULL DEFAULT 0,
    trips INTEGER NOT NULL DEFAULT 0,
    first_alert REAL,
    tripped_at REAL, served_at_trip INTEGER, clients_at_trip INTEGER,
    taken_down_at REAL, served_at_takedown INTEGER, clients_at_takedown INTEGER,
    clients INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS clients (
    resource TEXT NOT NULL, client TEXT NOT NULL, first_seen REAL NOT NULL,
    PRIMARY KEY (resource, client)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS clients_age ON clients(first_seen);
"""
DEFAULT_CLIENT_RETENTION_DAYS = 90.0
CLIENT_HASH_VERSION = 2             # PRAGMA user_version: clients are the alerts' HMAC (client_hash)

Mark = tuple                  # (resource, "tripped" | "taken_down", when[, this response served, its client])
COUNTERS = ("served", "completed", "partial", "bytes", "refused", "alerts", "trips")


@dataclass
class _Delta:
    first: float = 0.0
    last: float = 0.0
    max_records: int = 0
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    clients: dict[str, float] = field(default_factory=dict)


class Ledger:
    def __init__(self, path: Path, client_retention_days: float = DEFAULT_CLIENT_RETENTION_DAYS, *,
                 start_empty: bool = False):
        self.path = Path(path)
        open_database(self.path, SCHEMA, "resources", "exposure ledger", start_empty=start_empty)
        self.db = connect(self.path)
        self.db.execute("PRAGMA synchronous=NORMAL")     # survives kill -9 (page cache), cheap
        self._migrate()
        self.db.executescript(SCHEMA)
        self.client_retention = client_retention_days * 86400.0
        self._pending: dict[str, _Delta] = {}
        self._marked: list[tuple[dict[str, _Delta], Mark]] = []     # deltas up to a mark, then the mark
        self.disk = DiskThread("ledger")
        self.on_mark = lambda: None             # a server wakes its flush task (see Sensor._flush_loop)
        self.disk_fault: str | None = None      # why the last flush failed, while the disk refuses them

    def _migrate(self) -> None:
        """Ledgers written before the ``clients`` column counted with count(*) over the rows.
        Ledgers before version 2 (``PRAGMA user_version``) hashed clients with a truncated BLAKE2b
        that no alert carries; a keyed hash cannot be converted to another, so those rows are
        forgotten (the counts stay): a client seen before the upgrade and again after counts twice
        in ``unique_clients`` of that resource, an upper bound, as after the retention."""
        cols = [r[1] for r in self.db.execute("PRAGMA table_info(resources)")]
        if cols and "clients" not in cols:
            with _tx(self.db):
                self.db.execute("ALTER TABLE resources ADD COLUMN clients INTEGER NOT NULL DEFAULT 0")
                self.db.execute("UPDATE resources SET clients = "
                                "(SELECT count(*) FROM clients c WHERE c.resource = resources.resource)")
        if self.db.execute("PRAGMA user_version").fetchone()[0] < CLIENT_HASH_VERSION:
            tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            with _tx(self.db):
                gone = 0
                if "clients" in tables:
                    gone = self.db.execute("DELETE FROM clients WHERE client NOT LIKE ?",
                                           (CLIENT_HASH_PREFIX + "%",)).rowcount
                if "evidence" in tables:
                    self.db.execute("UPDATE evidence SET client = NULL WHERE client NOT LIKE ?",
                                    (CLIENT_HASH_PREFIX + "%",))
                self.db.execute(f"PRAGMA user_version = {CLIENT_HASH_VERSION}")
            if gone:
                log.warning("exposure ledger %s: forgot %d client hashes of the old form (BLAKE2b, not the "
                            "alerts' HMAC); the counts stay, a returning client counts again", self.path, gone)

    def close(self) -> None:
        self.disk.close()
        try:
            self.flush()
        except DISK_ERRORS as e:
            log.error("exposure ledger %s: the last counts could not be written (%s) and are lost with this stop",
                      self.path, e)
        self.db.close()

    # -- hot path (memory only) -----------------------------------------------------------------
    def served(self, resource: str, client: str | None, *, sent: int, completed: bool, partial: bool,
               records: int, verdict: str, now: float | None = None, trip_counted: bool = False) -> None:
        """Count one response (memory only). ``trip_counted``: :meth:`commit_trip` counted its trip already."""
        now = time.time() if now is None else now
        d = self._delta(resource, now)
        c = d.counts
        if sent > 0 or completed:
            c["served"] += 1
            if client and (records > 0 or verdict in ("alert", "trip")):
                d.clients.setdefault(client, now)
        c["completed"] += completed
        c["partial"] += partial
        c["bytes"] += sent
        c["alerts"] += verdict == "alert"
        c["trips"] += verdict == "trip" and not trip_counted
        if records > d.max_records:
            d.max_records = records

    def refused(self, resource: str, now: float | None = None) -> None:
        self._delta(resource, time.time() if now is None else now).counts["refused"] += 1

    def _delta(self, resource: str, now: float) -> _Delta:
        d = self._pending.get(resource)
        if d is None:
            d = self._pending[resource] = _Delta(first=now)
        d.last = now
        return d

    def mark(self, resource: str, event: str, now: float | None = None) -> None:
        """Record the first trip (``tripped``) or takedown (``taken_down``) of a resource. Written by
        the next flush right after the counts that came before it: they are its snapshot."""
        if event not in ("tripped", "taken_down"):
            raise ValueError(f"unknown ledger event {event!r}")
        self._marked.append((self._pending, (resource, event, time.time() if now is None else now)))
        self._pending = {}
        self.on_mark()

    # -- durable ---------------------------------------------------------------------------------
    async def commit_trip(self, resource: str, *, client: str | None, served: bool, taken_down: bool,
                          evidence: dict | None = None, now: float | None = None) -> bool:
        """The trip, on disk before the tap answers: the counts so far, the trip counter, the
        ``tripped`` (and ``taken_down``) marks and the alert's evidence, in one transaction on the
        disk thread, fsynced (``synchronous=FULL`` for it: trips are rare, the half-second flushes
        stay cheap). ``served``: bytes of the tripping response have left (a cut, not a 451), so the
        marks' "before" counts include it and its ``client``, as they would once the response is
        counted at its end (:meth:`served` with ``trip_counted``). A disk fault keeps the batches in
        memory for the next flush (logged once) and returns False."""
        now = time.time() if now is None else now
        trip = _Delta(first=now, last=now)
        trip.counts["trips"] = 1
        batches = self._take()
        batches.append(({resource: trip}, (resource, "tripped", now, served, client)))
        if taken_down:
            batches.append(({}, (resource, "taken_down", now, served, client)))
        row = self._evidence_row(resource, evidence, now) if evidence is not None else None
        try:
            await self.disk(self._write_trip, batches, row)
        except BaseException as e:
            self._keep(batches, e)
            if not disk_fault(e):
                raise
            return False
        self._recovered()
        return True

    def _write_trip(self, batches: list, evidence: tuple | None) -> None:
        self.db.execute("PRAGMA synchronous=FULL")
        try:
            with _tx(self.db):
                self._write_batches(batches)
                if evidence is not None:
                    self._insert_evidence(evidence)
        finally:
            self.db.execute("PRAGMA synchronous=NORMAL")

    def flush(self) -> None:
        batches = self._take()
        try:
            self._write(batches)
        except BaseException as e:
            self._keep(batches, e)
            raise
        self._recovered()

    async def flush_async(self) -> None:
        """The same, with the write on the disk thread; the swap stays on the loop, where the deltas grow.
        A disk fault keeps the batches for the next flush and is logged once (not raised)."""
        if batches := self._take():
            try:
                await self.disk(self._write, batches)
            except BaseException as e:
                self._keep(batches, e)
                if not disk_fault(e):
                    raise
                return
        self._recovered()

    def _keep(self, batches: list, e: BaseException) -> None:
        """Put a failed flush's batches back in front of what came since (order matters for the marks)."""
        self._marked[:0] = batches
        if disk_fault(e) and self.disk_fault is None:
            self.disk_fault = f"{type(e).__name__}: {e}"
            log.error("exposure ledger %s: cannot write (%s); counts are kept in memory and written when the "
                      "disk takes them", self.path, self.disk_fault)

    def _recovered(self) -> None:
        if self.disk_fault is not None:
            self.disk_fault = None
            log.warning("exposure ledger %s: writable again; the counts kept in memory are written", self.path)

    def _take(self) -> list[tuple[dict[str, _Delta], Mark | None]]:
        batches: list[tuple[dict[str, _Delta], Mark | None]] = [*self._marked, (self._pending, None)]
        self._pending, self._marked = {}, []
        return [(p, m) for p, m in batches if p or m]

    def _write(self, batches: list[tuple[dict[str, _Delta], Mark | None]]) -> None:
        if not batches:
            return
        with _tx(self.db):
            self._write_batches(batches)

    def _write_batches(self, batches: list[tuple[dict[str, _Delta], Mark | None]]) -> None:
        for pending, mark in batches:
            self._write_counts(pending)
            if mark is not None:
                self._write_mark(*mark)

    def _write_counts(self, pending: dict[str, _Delta]) -> None:
        sets = ", ".join(f"{k} = {k} + ?" for k in COUNTERS)
        for res, d in pending.items():
            self.db.execute("INSERT OR IGNORE INTO resources(resource, first_served) VALUES (?, ?)",
                            (res, d.first))
            self.db.execute(
                f"UPDATE resources SET {sets}, last_served = max(coalesce(last_served, 0), ?), "
                "first_served = min(coalesce(first_served, ?), ?), max_records = max(max_records, ?), "
                "first_alert = CASE WHEN ? > 0 THEN coalesce(first_alert, ?) ELSE first_alert END "
                "WHERE resource = ?",
                (*(d.counts.get(k, 0) for k in COUNTERS), d.last, d.first, d.first, d.max_records,
                 d.counts.get("alerts", 0) + d.counts.get("trips", 0), d.last, res))
            if d.clients:
                new = self.db.executemany("INSERT OR IGNORE INTO clients(resource, client, first_seen) "
                                          "VALUES (?,?,?)", [(res, c, t) for c, t in d.clients.items()]).rowcount
                self.db.execute("UPDATE resources SET clients = clients + ? WHERE resource = ?", (new, res))

    def _write_mark(self, res: str, event: str, now: float, served: bool = False, client: str | None = None) -> None:
        """``served``/``client``: the tripping response, not counted yet, belongs in the snapshot."""
        col = {"tripped": "tripped_at", "taken_down": "taken_down_at"}[event]
        snap = {"tripped": ("served_at_trip", "clients_at_trip"),
                "taken_down": ("served_at_takedown", "clients_at_takedown")}[event]
        new_client = int(served and client is not None and self.db.execute(
            "SELECT 1 FROM clients WHERE resource = ? AND client = ?", (res, client)).fetchone() is None)
        self.db.execute("INSERT OR IGNORE INTO resources(resource) VALUES (?)", (res,))
        self.db.execute(
            f"UPDATE resources SET {snap[0]} = coalesce({snap[0]}, served + ?), "
            f"{snap[1]} = coalesce({snap[1]}, clients + ?), "
            f"{col} = coalesce({col}, ?) WHERE resource = ?", (int(served), new_client, now, res))

    def prune(self, now: float | None = None) -> int:
        """Forget client hashes older than the retention (the counts stay); returns how many."""
        cutoff = (time.time() if now is None else now) - self.client_retention
        with _tx(self.db):
            return self.db.execute("DELETE FROM clients WHERE first_seen < ?", (cutoff,)).rowcount

    # -- reading ---------------------------------------------------------------------------------
    def incidents(self) -> list[dict]:
        """Every resource that alerted, tripped or was taken down, worst first (what is on disk, when
        the disk refuses the pending counts)."""
        try:
            self.flush()
        except DISK_ERRORS:
            pass
        self.db.row_factory = sqlite3.Row
        try:
            rows = self.db.execute(
                "SELECT r.* FROM resources r WHERE alerts > 0 OR trips > 0 OR taken_down_at IS NOT NULL "
                "ORDER BY (tripped_at IS NULL), coalesce(tripped_at, first_alert)").fetchall()
            return [dict(r) for r in rows]
        finally:
            self.db.row_factory = None

    def resource(self, resource: str) -> dict | None:
        return next((r for r in self.incidents() if r["resource"] == resource), None)


    # -- evidence for the incident page (``dlp-sensor report --format html``) --------------------
    # What the SOC alert said about each response that alerted or tripped — counts per signature,
    # redacted samples with keyed fingerprints, the client's keyed hash; never a raw value — so the
    # page can show people by signature and samples after the alert itself has left the spool.
    # Rare (one row per alerting response, the first EVIDENCE_PER_RESOURCE per resource), written
    # on the ledger's disk thread in a server; best effort: the counts above stay authoritative.
    # The client hash has its own column and, like the clients table, is forgotten after the retention.
    EVIDENCE_SCHEMA = ("CREATE TABLE IF NOT EXISTS evidence (resource TEXT NOT NULL, at REAL NOT NULL, "
                       "verdict TEXT NOT NULL, client TEXT, doc BLOB NOT NULL)")
    EVIDENCE_PER_RESOURCE = 200

    def note_evidence(self, resource: str, doc: dict, at: float) -> None:
        import asyncio
        import logging

        import orjson
        row = self._evidence_row(resource, doc, at)
        try:
            asyncio.get_running_loop()
        except RuntimeError:                     # the CLI, a test: no loop to keep free
            self._write_evidence(row)
            return

        def failed(f: "asyncio.Future[None]") -> None:
            if not f.cancelled() and f.exception() is not None:
                logging.getLogger(__name__).warning("ledger: evidence not written: %s", type(f.exception()).__name__)

        self.disk.submit(self._write_evidence, row).add_done_callback(failed)

    def amend_evidence(self, resource: str, doc: dict, at: float) -> None:
        """Final counts of an exchange whose evidence :meth:`commit_trip` wrote at its trip: that row
        is rewritten (the trip's time stays), or the row is added if the trip's commit did not land."""
        import asyncio
        row = self._evidence_row(resource, doc, at)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._rewrite_evidence(row, doc.get("exchange_id"))
            return
        fut = self.disk.submit(self._rewrite_evidence, row, doc.get("exchange_id"))
        fut.add_done_callback(lambda f: None if f.cancelled() or f.exception() is None else log.warning(
            "ledger: evidence not written: %s", type(f.exception()).__name__))

    def _rewrite_evidence(self, row: tuple, exchange_id: str | None) -> None:
        import orjson
        with _tx(self.db):
            self.db.execute(self.EVIDENCE_SCHEMA)
            for rowid, doc in self.db.execute("SELECT rowid, doc FROM evidence WHERE resource = ?",
                                              (row[0],)).fetchall():
                if exchange_id is not None and orjson.loads(doc).get("exchange_id") == exchange_id:
                    self.db.execute("UPDATE evidence SET verdict = ?, doc = ? WHERE rowid = ?", (row[2], row[4], rowid))
                    return
            self._insert_evidence(row)

    @staticmethod
    def _evidence_row(resource: str, doc: dict, at: float) -> tuple:
        import orjson
        doc = dict(doc)
        return (resource, at, str(doc.get("verdict", "")), doc.pop("client", None), orjson.dumps(doc))

    def _write_evidence(self, row: tuple) -> None:
        with _tx(self.db):
            self._insert_evidence(row)

    def _insert_evidence(self, row: tuple) -> None:
        self.db.execute(self.EVIDENCE_SCHEMA)
        (n,) = self.db.execute("SELECT count(*) FROM evidence WHERE resource = ?", (row[0],)).fetchone()
        if n < self.EVIDENCE_PER_RESOURCE:
            self.db.execute("INSERT INTO evidence(resource, at, verdict, client, doc) VALUES (?,?,?,?,?)", row)
        self.db.execute("UPDATE evidence SET client = NULL WHERE at < ? AND client IS NOT NULL",
                        (time.time() - self.client_retention,))

    def evidence(self, resource: str) -> list[tuple[float, dict]]:
        """(when, evidence) of the resource's alerting responses, oldest first; ``client`` is None
        once the retention has passed."""
        import orjson
        self.flush()
        self.db.execute(self.EVIDENCE_SCHEMA)
        cutoff = time.time() - self.client_retention
        return [(at, {**orjson.loads(doc), "client": client if at >= cutoff else None})
                for at, client, doc in self.db.execute(
                    "SELECT at, client, doc FROM evidence WHERE resource = ? ORDER BY at", (resource,))]

    # -- exact data match: which rows of a protected table a resource exposed --------------------
    # Row ids are numbers in the data owner's table (``dlp-sensor index build``), not personal
    # values: the owner turns them into the notification list offline (``report --rows``). Kept
    # for as long as the incident (they are the point of it), at most EDM_ROWS_PER_INDEX each.
    EDM_SCHEMA = ("CREATE TABLE IF NOT EXISTS edm_rows (resource TEXT NOT NULL, idx TEXT NOT NULL, "
                  "row_id INTEGER NOT NULL, first_seen REAL NOT NULL, "
                  "PRIMARY KEY (resource, idx, row_id)) WITHOUT ROWID")
    EDM_ROWS_PER_INDEX = 1_000_000

    def note_edm_rows(self, resource: str, rows: dict[str, list[int]], at: float | None = None) -> None:
        """Remember the matched row ids of one response (on the disk thread in a server)."""
        import asyncio
        item = (resource, {k: list(v) for k, v in rows.items()}, time.time() if at is None else at)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._write_edm_rows(*item)
            return

        def failed(f: "asyncio.Future[None]") -> None:
            if not f.cancelled() and f.exception() is not None:
                log.warning("ledger: EDM row ids not written: %s", type(f.exception()).__name__)

        self.disk.submit(self._write_edm_rows, *item).add_done_callback(failed)

    def _write_edm_rows(self, resource: str, rows: dict[str, list[int]], at: float) -> None:
        with _tx(self.db):
            self.db.execute(self.EDM_SCHEMA)
            for idx, ids in rows.items():
                (n,) = self.db.execute("SELECT count(*) FROM edm_rows WHERE resource = ? AND idx = ?",
                                       (resource, idx)).fetchone()
                room = self.EDM_ROWS_PER_INDEX - n
                if room > 0:
                    self.db.executemany("INSERT OR IGNORE INTO edm_rows(resource, idx, row_id, first_seen) "
                                        "VALUES (?,?,?,?)", [(resource, idx, int(r), at) for r in ids[:room]])

    def edm_rows(self, resource: str) -> dict[str, list[int]]:
        """Index name -> exposed row ids (ascending) of one resource."""
        self.db.execute(self.EDM_SCHEMA)
        out: dict[str, list[int]] = {}
        for idx, row_id in self.db.execute("SELECT idx, row_id FROM edm_rows WHERE resource = ? "
                                           "ORDER BY idx, row_id", (resource,)):
            out.setdefault(idx, []).append(row_id)
        return out

    def clients_of(self, resource: str) -> list[tuple[str, float]]:
        """(keyed client hash, first seen) still within the retention, first seen first."""
        return list(self.db.execute("SELECT client, first_seen FROM clients WHERE resource = ? "
                                    "ORDER BY first_seen", (resource,)))
