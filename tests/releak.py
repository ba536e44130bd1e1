"""Never re-leak, checked whatever the order the tests run in.

Every file the product writes during the session is registered in :data:`tests.procs.OUTPUTS` (the
sidecars', workers' and brokers' state dirs and logs, snapshots of the topics they published, the
pages and outputs of CLI runs). Two fixtures, both autouse (see ``tests/conftest.py``):

* after every test, each registered file that is new or changed since the last look is searched
  for the synthetic roster's raw personal values; a hit fails that test's teardown, naming the
  file, so the test that made the leak is the one that reports it;
* at the end of the session (after every module's sidecars have stopped and written their last
  lines) the same sweep runs once more, and the incident report of every state dir that has a
  ledger (``dlp-sensor report``, text and JSON) is searched too.

The search is one Hyperscan literal database of all the values (~15,000, ``HS_FLAG_SINGLEMATCH``:
each value is reported at most once per file), one pass over each file: the same question as
``value in blob`` for every value, at memory speed instead of 15,000 passes.
"""
from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import hyperscan as hs

from sensor import synth

ROSTER_PEOPLE = 3000            # the largest roster a test serves (the demo's); smaller ones are its prefix


def roster_values(people: int = ROSTER_PEOPLE) -> list[bytes]:
    """The raw values that must never appear in product output: per person the licence number,
    date of birth, street address and full name in both orders ("First Last", "Last,First")."""
    out: set[bytes] = set()
    for row in synth.breach_rows(people):
        f = row.rstrip("\n").split(",")
        out.update(v.encode() for v in (f[4], f[7], f[11], f"{f[2]} {f[1]}", f"{f[1]},{f[2]}"))
    return sorted(out)


@dataclass
class RawValueFinder:
    """Which of ``values`` occur in a blob: one Hyperscan literal database, one pass per blob."""

    values: list[bytes]
    _db: hs.Database = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # compiling 15,000 literals takes seconds; the serialized database loads in a millisecond, so
        # it is kept in the user's cache, named by the digest of the values (a new roster, a new file)
        digest = hashlib.sha256(b"\0".join(self.values)).hexdigest()[:32]
        path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dlp-sensor-tests" / \
            f"releak-{digest}-{hs.__version__ if hasattr(hs, '__version__') else 'hs'}.hsdb"
        try:
            self._db = hs.loadb(path.read_bytes(), mode=hs.HS_MODE_BLOCK)
            self._db.scratch = hs.Scratch(self._db)
            return
        except Exception:                       # noqa: BLE001  (absent, corrupt or foreign: compile)
            pass
        self._db = hs.Database(mode=hs.HS_MODE_BLOCK)
        self._db.compile(expressions=self.values, ids=list(range(len(self.values))),
                         flags=hs.HS_FLAG_SINGLEMATCH, literal=True)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".releak-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(hs.dumpb(self._db))
            os.replace(tmp, path)
        except OSError:
            pass                                # a read-only home: compile every session

    def find(self, blob: bytes) -> list[bytes]:
        """The values found in ``blob`` (each once), in the order of their first end offset."""
        hits: list[int] = []

        def on_match(ident: int, _start: int, _end: int, _flags: int, _ctx: object) -> None:
            hits.append(ident)

        if blob:
            self._db.scan(blob, match_event_handler=on_match)
        return [self.values[i] for i in hits]


@functools.cache
def finder() -> RawValueFinder:
    return RawValueFinder(roster_values())


def shown(value: bytes) -> str:
    """A value as a failure message may show it: its first two characters (the message is output too)."""
    return value.decode(errors="replace")[:2] + "…"


def files_under(paths: list[Path]) -> list[Path]:
    """Every regular file among ``paths`` and under the directories among them."""
    files: list[Path] = []
    for p in dict.fromkeys(paths):          # registration order, once each
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file()))
        elif p.is_file():
            files.append(p)
    return files


@dataclass
class OutputWatch:
    """The registered outputs as last searched: a file is read again only when its size or mtime moved,
    and a leak is reported once (the test that made it), not by every later test."""

    outputs: list[Path]
    seen: dict[Path, tuple[int, int]] = field(default_factory=dict)
    reported: set[tuple[str, bytes]] = field(default_factory=set)
    searched_bytes: int = 0                 # for the summary line: what the check cost
    seconds: float = 0.0

    def sweep(self) -> list[tuple[str, bytes]]:
        """New leaks in files that changed since the last sweep: (file, value) pairs."""
        t0 = time.perf_counter()
        new: list[tuple[str, bytes]] = []
        for f in files_under(list(self.outputs)):
            try:
                st = f.stat()
                stamp = (st.st_size, st.st_mtime_ns)
                if self.seen.get(f) == stamp:
                    continue
                blob = f.read_bytes()
            except FileNotFoundError:         # removed meanwhile (a rotated log, a SQLite journal)
                continue
            self.seen[f] = stamp
            new.extend(self._new(str(f), blob))
        self.seconds += time.perf_counter() - t0
        return new

    def search(self, name: str, blob: bytes) -> list[tuple[str, bytes]]:
        """New leaks in one blob that is not a file (a report printed to stdout)."""
        return self._new(name, blob)

    def summary(self) -> str:
        return (f"never re-leak: {len(self.seen)} output files and the reports searched "
                f"({self.searched_bytes / 1e6:.1f} MB in all) in {self.seconds:.1f} s")

    def _new(self, name: str, blob: bytes) -> list[tuple[str, bytes]]:
        self.searched_bytes += len(blob)
        hits = [(name, v) for v in finder().find(blob) if (name, v) not in self.reported]
        self.reported.update(hits)
        return hits


def fail_on(leaks: list[tuple[str, bytes]]) -> None:
    """Fail the current test (or teardown) naming each file and only the first two characters of each
    value: not a bare ``assert``, whose rewrite would print the values themselves."""
    if leaks:
        import pytest
        pytest.fail(f"raw personal values in product output ({len(leaks)}): "
                    + ", ".join(f"{shown(v)} in {name}" for name, v in leaks[:10]), pytrace=False)


def state_dirs(outputs: list[Path]) -> list[Path]:
    """The registered state dirs that hold an incident ledger."""
    return [d for d in dict.fromkeys(outputs) if d.is_dir() and (d / "ledger.db").exists()]


def report_outputs(state_dir: Path) -> dict[str, bytes]:
    """What ``dlp-sensor report --format text|json --state-dir DIR`` prints (stdout, stderr and any
    traceback), run in this process through click's runner: the command's own code, without
    starting an interpreter per state dir."""
    from click.testing import CliRunner

    from sensor.cli.main import main
    out: dict[str, bytes] = {}
    for fmt in ("text", "json"):
        r = CliRunner().invoke(main, ["report", "--format", fmt, "--state-dir", str(state_dir)])
        blob = r.stdout_bytes + r.stderr_bytes
        if r.exc_info is not None and not isinstance(r.exception, SystemExit):
            blob += "".join(traceback.format_exception(*r.exc_info)).encode()
        out[f"report {fmt} {state_dir}"] = blob
    return out
