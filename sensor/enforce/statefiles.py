"""The state dir and the files in it: private modes, atomic secrets, databases checked before use.

Why one module: every file the product writes to the state dir (registry, ledger, alert spool,
their WAL and shared-memory files, ``alerts.jsonl``, the HMAC key, the admin token) holds either a
secret or facts about a site's visitors, so each is created ``0600`` in a ``0700`` directory, and
nothing is trusted that another local user could have written: a state dir or secret file that is
writable by group or others, or owned by another user, stops the process (exit 2, naming the path).

Secrets are written whole or not at all (temporary file, fsync, hard link into place, fsync of the
directory): a first start on a full disk leaves no 0-byte key behind, and two processes starting
at once agree on one key (the second link fails; it reads the first one's). A stored secret shorter
than :data:`MIN_SECRET_BYTES` is refused, never used: an empty HMAC key lets anyone brute-force the
personal values behind alert fingerprints, an empty admin token would open the admin API.

A database is created the same way (schema written to a temporary file, then linked into place), so
an existing database without its main table is damaged — a 0-byte file left by a full disk, or a
truncated copy — and is refused rather than silently started empty. ``start_empty`` (the operator's
``--start-empty``) moves the bad file aside under a timestamped name and starts a fresh one.
"""
from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger("dlp_sensor")

DIR_MODE = 0o700
FILE_MODE = 0o600
MIN_SECRET_BYTES = 16
DB_SIDE_FILES = ("-wal", "-shm", "-journal")


class StateError(ValueError):
    """The state dir or a file in it cannot be used; the message names the path and says what to do."""


# -- modes and owners ---------------------------------------------------------------------------------
def _problem(path: Path, st: os.stat_result, what: str) -> str | None:
    """Why ``path`` is not safe to trust (None when it is)."""
    if st.st_uid != os.geteuid():
        return f"{what} {path} is owned by uid {st.st_uid}, not by this process (uid {os.geteuid()})"
    if st.st_mode & 0o022:
        return (f"{what} {path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"run `chmod go-w {path}` after checking nobody planted anything there")
    return None


def private_dir(path: Path) -> Path:
    """Create the state dir 0700 (parents as the umask says), or check the existing one: refused when
    another user owns it or could write to it; a group/other-readable one of ours is tightened."""
    path = Path(path)
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        st = path.stat()
    except OSError as e:
        raise StateError(f"state dir {path}: cannot create it: {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StateError(f"state dir {path}: not a directory")
    if why := _problem(path, st, "state dir"):
        raise StateError(why + "; refusing to start")
    if stat.S_IMODE(st.st_mode) != DIR_MODE:
        _tighten(path, DIR_MODE, "state dir")
    return path


def _tighten(path: Path, mode: int, what: str) -> None:
    try:
        os.chmod(path, mode)
        log.warning("%s %s was readable by others; now mode %04o", what, path, mode)
    except OSError as e:
        log.warning("%s %s is readable by others and cannot be changed (%s)", what, path, e.strerror or e)


def check_private_file(path: Path, what: str) -> None:
    """Refuse a file another user owns or can write to; make one of ours that others can read 0600."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if why := _problem(path, st, what):
        raise StateError(why + "; refusing to start")
    if st.st_mode & 0o077:
        _tighten(path, FILE_MODE, what)


def private_file(path: Path) -> None:
    """Create ``path`` empty and 0600 if it does not exist (files a sink appends to), else check it."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE))
    except FileExistsError:
        check_private_file(path, "state file")
    except OSError as e:
        raise StateError(f"{path}: cannot create: {e.strerror or e}") from None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_into_place(tmp: Path, path: Path) -> bool:
    """Publish a complete ``tmp`` as ``path`` unless ``path`` exists (True: ours won)."""
    try:
        os.link(tmp, path)
        won = True
    except FileExistsError:
        won = False
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        if path.exists():                           # a file system without hard links: rename, once
            won = False
        else:
            os.rename(tmp, path)
            won = True
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return won


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")


# -- secrets ------------------------------------------------------------------------------------------
def write_secret_once(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically and durably, 0600, unless ``path`` already exists
    (True when this call wrote it). A full disk raises StateError and leaves nothing behind."""
    tmp = _tmp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        return _link_into_place(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise StateError(f"{path}: cannot write it: {e.strerror or e}; refusing to start") from None


def read_secret(path: Path, what: str, fix: str) -> str | None:
    """A stored secret (surrounding ASCII whitespace dropped), None when there is none yet.

    Refused (StateError naming the path): a file another user owns or may write, one that is not
    printable ASCII, and one shorter than :data:`MIN_SECRET_BYTES` — a 0-byte file left by a full
    disk is never taken for a key. ``fix`` tells the operator what to do about it."""
    check_private_file(path, what)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateError(f"{what} {path}: cannot read it: {e.strerror or e}") from None
    text = raw.strip(b" \t\r\n")
    if any(b < 0x21 or b > 0x7E for b in text):
        raise StateError(f"{what} {path}: not printable ASCII; {fix}")
    if len(text) < MIN_SECRET_BYTES:
        raise StateError(f"{what} {path}: {len(text)} bytes, shorter than {MIN_SECRET_BYTES} "
                         f"(a write cut short, e.g. by a full disk?); refusing to use it; {fix}")
    return text.decode("ascii")


def load_or_create_secret(path: Path, what: str, make: Callable[[], str], fix: str) -> str:
    """The secret stored at ``path``, else a new one from ``make`` stored there atomically.
    The state dir must already have been checked (:func:`private_dir`)."""
    got = read_secret(path, what, fix)
    if got is not None:
        return got
    write_secret_once(path, (make() + "\n").encode("ascii"))
    got = read_secret(path, what, fix)              # ours, or the one a concurrent start linked first
    assert got is not None
    return got


# -- databases ----------------------------------------------------------------------------------------
def open_database(path: Path, schema: str, table: str, what: str, *, start_empty: bool = False) -> None:
    """Make sure ``path`` is a usable SQLite database holding ``table``: create it (schema included,
    0600, atomically) when it does not exist; refuse a damaged one (StateError naming the file and
    the way out) unless ``start_empty``, which moves it aside and creates a fresh one."""
    path = Path(path)
    private_dir(path.parent)
    if not path.exists():
        _create_database(path, schema, what)
        return
    for suffix in ("", *DB_SIDE_FILES):
        check_private_file(Path(f"{path}{suffix}"), what)
    why = _damage(path, table)
    if why is None:
        return
    if not start_empty:
        raise StateError(f"{what} {path}: {why}; refusing to start without it — restore it from a backup, or "
                         "start with --start-empty (config `start_empty: true`) to move it aside and begin empty")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved = path.with_name(f"{path.name}.bad-{stamp}")
    for suffix in ("", *DB_SIDE_FILES):
        side = Path(f"{path}{suffix}")
        if side.exists():
            os.replace(side, Path(f"{moved}{suffix}"))
    fsync_dir(path.parent)
    log.warning("%s %s: %s; moved aside to %s and starting empty (--start-empty)", what, path, why, moved)
    _create_database(path, schema, what)


def _damage(path: Path, table: str) -> str | None:
    """Why the database at ``path`` cannot be used (None when it can). Reads only."""
    try:
        if path.stat().st_size == 0 and not _nonempty(Path(f"{path}-wal")):
            return "0 bytes (a write cut short, e.g. by a full disk)"
        db = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=10.0, isolation_level=None)
    except (OSError, sqlite3.Error) as e:
        return f"cannot open it ({e})"
    try:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if table not in names:
            return f"no {table} table (an empty or foreign database)"
        bad = [r[0] for r in db.execute("PRAGMA quick_check(5)")]
        if bad != ["ok"]:
            return "damaged (" + "; ".join(bad)[:200] + ")"
    except sqlite3.Error as e:
        return f"not a usable SQLite database ({e})"
    finally:
        db.close()
    return None


def _nonempty(p: Path) -> bool:
    try:
        return p.stat().st_size > 0
    except FileNotFoundError:
        return False


def _create_database(path: Path, schema: str, what: str) -> None:
    tmp = _tmp_name(path)
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE))
        db = sqlite3.connect(str(tmp), isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(schema)
        finally:
            db.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _link_into_place(tmp, path)
    except (OSError, sqlite3.Error) as e:
        for suffix in ("", *DB_SIDE_FILES):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
        raise StateError(f"{what} {path}: cannot create it: {getattr(e, 'strerror', None) or e}") from None
