"""The takedown registry: durable (SQLite, WAL, synchronous=FULL) and shared by every process.

A takedown is committed — on disk, fsynced — before the tripped response is cut, so a sidecar
killed with ``kill -9`` the instant after a trip still refuses the resource when it comes back.
Several sidecar processes on one host (SO_REUSEPORT workers, or the CLI) share the file; each
process keeps an in-memory copy for the per-request check and reloads it when SQLite's
``data_version`` says another connection committed (a few microseconds per request).

In a server, commits run on the registry's disk thread (``sensor.enforce.diskthread``): the
request that tripped waits for its fsync, the rest of the sidecar does not. A takedown being
committed is refused at once (``add_soon``), so a slow disk delays nobody's refusal — which is
how a fleet takedown from the topic is applied.

On a full (or failing) disk a takedown still refuses: its keys stay in memory, refused like one
being committed, :class:`TakedownNotDurable` tells the caller (the trip is answered 451 and its
alert says the takedown is not on disk yet), and the commit is retried in the background with
backoff until the disk takes it. Only a stop before that loses it (logged).

Two keys block: the normalised resource (``host/path``) and a content print, so the same file
served under another URL is refused as well. A print is a keyed hash of the tripped body's first
``L`` bytes — the bytes the scan had seen when it tripped, so they hold the leaked records — stored
with ``L`` (``fingerprint_len``); a later body is refused by content only when its own first ``L``
bytes hash the same (:class:`sensor.enforce.fingerprint.BodyPrint`). In memory and on the wire a
print is written ``"L:hexdigest"``. Rows from before prefix prints (``fingerprint_len`` NULL) are
*head prints*: the hash of the first ``takedown.fingerprint_kib`` of a body (or of the whole body
when shorter); they keep refusing as they did (a clean body that shares that head is refused too:
lift such a takedown and let the next trip record a prefix print).
Every add and lift is written to an audit table with actor and reason.
"""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sensor.enforce.diskthread import DiskThread
from sensor.enforce.statefiles import open_database

log = logging.getLogger("dlp_sensor")

SCHEMA = """
CREATE TABLE IF NOT EXISTS takedowns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    resource TEXT NOT NULL,
    fingerprint TEXT,
    created REAL NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    exchange_id TEXT,
    lifted REAL,
    lifted_by TEXT,
    lift_reason TEXT,
    fingerprint_len INTEGER
);
CREATE INDEX IF NOT EXISTS takedowns_active ON takedowns(resource) WHERE lifted IS NULL;
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    action TEXT NOT NULL,
    takedown_id INTEGER,
    resource TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
BUSY_RETRIES = 2                # a locked file (busy_timeout is 10 s) is tried this many more times
FLEET_ACTOR = "fleet:"          # changes applied from the fleet topic; never published back
RETRY_INITIAL, RETRY_MAX = 0.25, 5.0    # seconds between commit attempts of a takedown the disk refused
DISK_ERRORS = (sqlite3.OperationalError, OSError)   # full, read-only, I/O error (SQLite) or ENOSPC, EIO (files)


def split_print(value: str) -> tuple[str, int | None]:
    """``"L:hexdigest"`` -> (hexdigest, L); anything else is a head print -> (value, None)."""
    n, sep, digest = value.partition(":")
    if sep and n.isdigit() and digest:
        return digest, int(n)
    return value, None


def join_print(digest: str | None, length: int | None) -> str | None:
    """The print as the registry, the taps and the fleet pass it around (see :func:`split_print`)."""
    if not digest:
        return None
    return f"{int(length)}:{digest}" if length else digest


def disk_fault(e: BaseException) -> bool:
    """A write the disk refused (full, read-only, I/O error), as opposed to a lock held by another writer."""
    return isinstance(e, DISK_ERRORS) and "locked" not in str(e) and "busy" not in str(e)


class TakedownNotDurable(Exception):
    """The disk refused a takedown's commit: it is refused from memory and its commit is retried."""

    def __init__(self, takedown: "Takedown", error: BaseException):
        super().__init__(f"takedown not on disk yet ({type(error).__name__}: {error}); retrying in the background")
        self.takedown = takedown
        self.error = error


@dataclass
class Takedown:
    id: int
    resource: str
    fingerprint: str | None
    created: float
    actor: str
    reason: str
    exchange_id: str | None = None
    lifted: float | None = None
    lifted_by: str | None = None
    lift_reason: str | None = None
    fingerprint_len: int | None = None      # bytes the print covers; None: a head print (before prefix prints)

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def print(self) -> str | None:
        """The content print as :meth:`Registry.blocked_content` and the fleet take it."""
        return join_print(self.fingerprint, self.fingerprint_len)


def connect(path: Path) -> sqlite3.Connection:
    """A connection tuned for durable small writes shared between processes (open the file with
    :func:`sensor.enforce.statefiles.open_database` first: it creates it 0600 and checks it)."""
    db = sqlite3.connect(str(path), timeout=10.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=10000")
    return db


class Registry:
    def __init__(self, path: Path, *, start_empty: bool = False):
        self.path = Path(path)
        open_database(self.path, SCHEMA, "takedowns", "takedown registry", start_empty=start_empty)
        self.db = connect(self.path)            # reads, on the caller's thread (the event loop in a server)
        self._w = connect(self.path)            # writes: on ``disk`` in a server, the caller's in the CLI
        self._migrate()
        self.db.executescript(SCHEMA)
        self.disk = DiskThread("registry")
        self._version = -1
        self._resources: dict[str, int] = {}
        self._fingerprints: dict[str, int] = {}
        self._incoming: dict[str, int] = {}     # resource -> adds being committed (refused already)
        self._incoming_fp: dict[str, int] = {}
        self._lengths: tuple[int, ...] = ()     # distinct L of the prefix prints, active or being committed
        self._head_prints = False               # whether any head print (no L) is active or being committed
        self.on_change = lambda: None       # called after every local add/lift (the fleet outbox wakes)
        self._unsaved: dict[int, tuple] = {}        # takedowns the disk refused so far -> their commit args
        self._retrying: set[asyncio.Task] = set()
        self.refresh()

    def _migrate(self) -> None:
        """Databases from before prefix prints get the ``fingerprint_len`` column (NULL: head print).
        Under BEGIN IMMEDIATE, so two processes opening one old file add it once."""
        def missing() -> bool:
            cols = {r[1] for r in self._w.execute("PRAGMA table_info(takedowns)")}
            return bool(cols) and "fingerprint_len" not in cols
        if not missing():                       # the usual case: no write lock taken at all
            return
        with self._tx():
            if missing():
                self._w.execute("ALTER TABLE takedowns ADD COLUMN fingerprint_len INTEGER")
                log.info("takedown registry %s: added fingerprint_len (earlier content prints stay head prints)",
                         self.path)

    @property
    def unsaved(self) -> int:
        """Takedowns refused from memory whose commit the disk has not taken yet."""
        return len(self._unsaved)

    def close(self) -> None:
        for task in self._retrying:
            task.cancel()
        self.disk.close()
        for n, args in list(self._unsaved.items()):     # one last try, then say what is lost
            try:
                self._commit_add(*args)
                del self._unsaved[n]
            except DISK_ERRORS:
                pass
        if self._unsaved:
            log.error("takedown registry %s: %d takedown(s) never reached the disk and are lost with this stop",
                      self.path, len(self._unsaved))
        self._w.close()
        self.db.close()

    # -- the hot path ---------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> None:
        """Reload the active set if another connection committed since (``data_version`` does not
        move for this connection's own commits: those pass ``force``)."""
        v = self.db.execute("PRAGMA data_version").fetchone()[0]
        if v == self._version and not force:
            return
        rows = self.db.execute("SELECT id, resource, fingerprint, fingerprint_len FROM takedowns "
                               "WHERE lifted IS NULL").fetchall()
        self._resources = {r: i for i, r, _, _ in rows}
        self._fingerprints = {join_print(f, n): i for i, _, f, n in rows if f}
        self._version = v
        self._index_prints()

    def _index_prints(self) -> None:
        """The boundaries at which a body's print is looked up: each distinct L (kept small: one per
        content takedown at most), plus whether head prints exist."""
        lengths, head = set(), False
        for p in (*self._fingerprints, *self._incoming_fp):
            n = split_print(p)[1]
            if n is None:
                head = True
            else:
                lengths.add(n)
        self._lengths, self._head_prints = tuple(sorted(lengths)), head

    def blocked(self, resource: str) -> int | None:
        """The active takedown id for this resource, if any (0: its commit is still on the disk thread)."""
        self.refresh()
        tid = self._resources.get(resource)
        return 0 if tid is None and resource in self._incoming else tid

    def blocked_content(self, fingerprint: str) -> int | None:
        """The active takedown whose content print this is (``"L:hex"``, or a head print's hex), if any
        (0: being committed). O(1): a dict lookup."""
        tid = self._fingerprints.get(fingerprint)
        return 0 if tid is None and fingerprint in self._incoming_fp else tid

    def print_lengths(self) -> tuple[int, ...]:
        """The distinct prefix lengths of the active (and incoming) prints, ascending."""
        return self._lengths

    @property
    def head_prints(self) -> bool:
        """Whether head prints (rows from before prefix prints) are active: bodies are checked at
        ``takedown.fingerprint_kib`` (or their end, when shorter) as well."""
        return self._head_prints

    @property
    def active(self) -> int:
        return len(self._resources)

    # -- changes (each one durable and audited before it returns) -------------------------------
    # The sync forms are for the CLI and tests; a server awaits the ``*_async`` forms, which commit
    # on the disk thread (see sensor.enforce.diskthread).
    def add(self, resource: str, *, actor: str, reason: str, fingerprint: str | None = None,
            exchange_id: str | None = None, now: float | None = None) -> Takedown:
        """Take a resource down; an already active takedown is returned as it is (idempotent)."""
        return self._changed(self._commit_add(resource, actor, reason, fingerprint, exchange_id, now))

    def add_soon(self, resource: str, *, actor: str, reason: str, fingerprint: str | None = None,
                 exchange_id: str | None = None) -> "asyncio.Task[Takedown]":
        """As :meth:`add`, for a server: the resource (and fingerprint) is refused from this call on,
        the commit is queued on the disk thread in call order, and the task resolves to the takedown
        once it is on disk. Refusing before the fsync is the safe side of a slow disk."""
        keys = [(self._incoming, resource)] + ([(self._incoming_fp, fingerprint)] if fingerprint else [])
        for d, k in keys:
            d[k] = d.get(k, 0) + 1
        if fingerprint:
            self._index_prints()
        args = (resource, actor, reason, fingerprint, exchange_id, None)
        commit = self.disk.submit(self._commit_add, *args)

        def settled() -> None:
            for d, k in keys:
                if (n := d.pop(k) - 1) > 0:
                    d[k] = n
            if fingerprint:
                self._index_prints()

        async def settle() -> Takedown:
            nonlocal commit
            try:
                for attempt in range(BUSY_RETRIES, -1, -1):
                    try:
                        tid = await commit
                        break
                    except sqlite3.OperationalError as e:   # another writer held the file past busy_timeout
                        if not attempt or "locked" not in str(e):
                            raise
                        commit = self.disk.submit(self._commit_add, *args)
            except BaseException as e:
                if not disk_fault(e):
                    settled()
                    raise
                n = id(args)
                self._unsaved[n] = args
                task = asyncio.ensure_future(self._retry(n, args, settled))   # keys stay refused meanwhile
                self._retrying.add(task)
                task.add_done_callback(self._retrying.discard)
                digest, length = split_print(fingerprint) if fingerprint else (None, None)
                raise TakedownNotDurable(Takedown(0, resource, digest, time.time(), actor, reason, exchange_id,
                                                  fingerprint_len=length), e) from None
            settled()
            return self._changed(tid)
        return asyncio.ensure_future(settle())

    async def _retry(self, n: int, args: tuple, settled) -> Takedown:
        """Commit a takedown the disk refused, with backoff, until it lands (then it is an ordinary one)."""
        delay, attempts = RETRY_INITIAL, 1
        log.error("takedown registry %s: a takedown could not be written (the disk refused it); it is refused "
                  "from memory and its commit is retried until it lands", self.path)
        while True:
            await asyncio.sleep(delay)
            attempts += 1
            try:
                tid = await self.disk(self._commit_add, *args)
            except BaseException as e:
                if not isinstance(e, DISK_ERRORS):
                    raise
                delay = min(RETRY_MAX, delay * 2)
                continue
            self._unsaved.pop(n, None)
            settled()
            log.warning("takedown registry %s: takedown #%d is on disk now (after %d attempts)", self.path, tid,
                        attempts)
            return self._changed(tid)

    async def add_async(self, resource: str, *, actor: str, reason: str, fingerprint: str | None = None,
                        exchange_id: str | None = None) -> Takedown:
        """:meth:`add_soon`, waited for: durable when it returns (a cancelled caller stops waiting only)."""
        return await asyncio.shield(self.add_soon(resource, actor=actor, reason=reason, fingerprint=fingerprint,
                                                  exchange_id=exchange_id))

    def _commit_add(self, resource: str, actor: str, reason: str, fingerprint: str | None,
                    exchange_id: str | None, now: float | None) -> int:
        now = time.time() if now is None else now
        digest, length = split_print(fingerprint) if fingerprint else (None, None)
        with self._tx():
            row = self._w.execute("SELECT id FROM takedowns WHERE resource=? AND lifted IS NULL",
                                  (resource,)).fetchone()
            if row:
                if digest:
                    self._w.execute("UPDATE takedowns SET fingerprint_len=CASE WHEN fingerprint IS NULL THEN ? "
                                    "ELSE fingerprint_len END, fingerprint=coalesce(fingerprint, ?) WHERE id=?",
                                    (length, digest, row[0]))
                return row[0]
            tid = self._w.execute(
                "INSERT INTO takedowns(resource, fingerprint, fingerprint_len, created, actor, reason, exchange_id) "
                "VALUES (?,?,?,?,?,?,?)", (resource, digest, length, now, actor, reason, exchange_id)).lastrowid
            self._w.execute("INSERT INTO audit(at, action, takedown_id, resource, actor, reason) "
                            "VALUES (?,?,?,?,?,?)", (now, "add", tid, resource, actor, reason))
            return tid

    def lift(self, ident: int | str, *, actor: str, reason: str, now: float | None = None) -> Takedown | None:
        """Lift by takedown id or resource; None when nothing active matches."""
        tid = self._commit_lift(ident, actor, reason, now)
        return None if tid is None else self._changed(tid)

    def lift_soon(self, ident: int | str, *, actor: str, reason: str) -> "asyncio.Task[Takedown | None]":
        """Queued on the disk thread in call order; the lift takes effect once it is on disk."""
        commit = self.disk.submit(self._commit_lift, ident, actor, reason, None)

        async def settle() -> Takedown | None:
            tid = await commit
            return None if tid is None else self._changed(tid)
        return asyncio.ensure_future(settle())

    async def lift_async(self, ident: int | str, *, actor: str, reason: str) -> Takedown | None:
        return await asyncio.shield(self.lift_soon(ident, actor=actor, reason=reason))

    def _commit_lift(self, ident: int | str, actor: str, reason: str, now: float | None) -> int | None:
        if not reason.strip() or not actor.strip():
            raise ValueError("lifting a takedown needs an actor and a reason (it is audited)")
        now = time.time() if now is None else now
        col = "id" if isinstance(ident, int) else "resource"
        with self._tx():
            row = self._w.execute(f"SELECT id, resource FROM takedowns WHERE {col}=? AND lifted IS NULL",
                                  (ident,)).fetchone()
            if not row:
                return None
            self._w.execute("UPDATE takedowns SET lifted=?, lifted_by=?, lift_reason=? WHERE id=?",
                            (now, actor, reason, row[0]))
            self._w.execute("INSERT INTO audit(at, action, takedown_id, resource, actor, reason) "
                            "VALUES (?,?,?,?,?,?)", (now, "lift", row[0], row[1], actor, reason))
            return row[0]

    def _changed(self, tid: int) -> Takedown:
        self.refresh(force=True)
        self.on_change()
        return self.get(tid)

    # -- reading --------------------------------------------------------------------------------
    def get(self, tid: int) -> Takedown:
        row = self.db.execute(f"SELECT {', '.join(Takedown.__dataclass_fields__)} FROM takedowns WHERE id=?",
                              (tid,)).fetchone()
        return Takedown(*row)

    def list(self, include_lifted: bool = False) -> list[Takedown]:
        where = "" if include_lifted else "WHERE lifted IS NULL"
        rows = self.db.execute(f"SELECT {', '.join(Takedown.__dataclass_fields__)} FROM takedowns {where} "
                               "ORDER BY id").fetchall()
        return [Takedown(*r) for r in rows]

    def audit(self) -> list[dict]:
        rows = self.db.execute("SELECT at, action, takedown_id, resource, actor, reason FROM audit ORDER BY id")
        return [dict(zip(("at", "action", "takedown_id", "resource", "actor", "reason"), r)) for r in rows]

    def changed_since(self, resource: str, at: float) -> bool:
        """Whether this registry audited a change of ``resource`` at or after ``at``."""
        return self.db.execute("SELECT 1 FROM audit WHERE resource=? AND at>=? LIMIT 1",
                               (resource, at)).fetchone() is not None

    # -- the fleet outbox: local changes not yet published (survives kill -9) -------------------
    def unpublished(self, limit: int = 100, after: int = 0) -> list[dict]:
        """Local adds/lifts after the publish cursor (or ``after``, if further), oldest first, with
        the takedown's fingerprint."""
        cur = max(int(self.meta("fleet_cursor") or 0), after)
        rows = self.db.execute(
            "SELECT a.id, a.at, a.action, a.resource, a.actor, a.reason, t.fingerprint, t.fingerprint_len, "
            "t.exchange_id "
            "FROM audit a LEFT JOIN takedowns t ON t.id = a.takedown_id "
            "WHERE a.id > ? AND a.actor NOT LIKE ? ORDER BY a.id LIMIT ?",
            (cur, FLEET_ACTOR + "%", limit)).fetchall()
        keys = ("audit_id", "at", "action", "resource", "actor", "reason", "fingerprint", "fingerprint_len",
                "exchange_id")
        return [dict(zip(keys, r)) for r in rows]

    def published(self, audit_id: int) -> None:
        with self._tx():
            self._w.execute("INSERT INTO meta(name, value) VALUES ('fleet_cursor', ?) "
                            "ON CONFLICT(name) DO UPDATE SET value=excluded.value "
                            "WHERE CAST(value AS INTEGER) < CAST(excluded.value AS INTEGER)", (str(audit_id),))

    def meta(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return row[0] if row else None

    def _tx(self):
        return Transaction(self._w)


class Transaction:
    """BEGIN IMMEDIATE … COMMIT: one writer at a time across processes, nothing half-written."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
                return False
            except BaseException:           # a COMMIT the disk refused can leave the transaction open
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
        if self.db.in_transaction:          # SQLite may have rolled back already (SQLITE_FULL)
            self.db.execute("ROLLBACK")
        return False
