"""``dlp-sensor``: scan files before they are published, and manage the signature pack."""
from __future__ import annotations

import fnmatch
import gc
import os
import stat
import sys
from pathlib import Path
from typing import BinaryIO, Iterator

import click
import orjson

from sensor import __version__
from sensor.cli.output import FileReport, sarif, write_json_line, write_text
from sensor.decode.limits import DecodeLimits
from sensor.detect.engine import Engine
from sensor.detect.keys import load_key
from sensor.detect.pack import PackError, load_pack
from sensor.detect.policy import Policy, PolicyError, load_policy
from sensor.pipeline import BodyScan, Exchange

READ_SIZE = 1 << 16


class UsageProblem(click.ClickException):
    """Bad pack, policy or key: exit 2 (1 means "something tripped")."""

    exit_code = 2


def _engine(signatures: tuple[str, ...], no_default: bool) -> Engine:
    try:
        engine = Engine(load_pack([Path(p) for p in signatures], include_default=not no_default))
    except PackError as e:
        raise UsageProblem(f"signature pack: {e}") from None
    gc.collect()
    gc.freeze()     # start-up objects never die: keep full GC passes off them during scans
    return engine


def _excluded(path: str, patterns: tuple[str, ...]) -> bool:
    parts = Path(path).parts
    return any(fnmatch.fnmatch(path, pat) or any(fnmatch.fnmatch(part, pat) for part in parts) for pat in patterns)


def _walk(paths: tuple[str, ...], exclude: tuple[str, ...] = ()) -> Iterator[tuple[str, str | None]]:
    """(path, problem) for every regular file under the given paths; symlinks are not followed."""
    for p in paths:
        if p == "-":
            yield "-", None
            continue
        try:
            st = os.stat(p)
        except OSError as e:
            yield p, f"cannot read: {e.strerror}"
            continue
        if stat.S_ISDIR(st.st_mode):
            unreadable: list[OSError] = []          # a directory we cannot list is reported, not skipped
            for root, dirs, files in os.walk(p, onerror=unreadable.append):
                while unreadable:
                    e = unreadable.pop()
                    yield str(e.filename), f"cannot read directory: {e.strerror}"
                dirs[:] = sorted(d for d in dirs if not _excluded(os.path.join(root, d), exclude))
                for f in sorted(files):
                    full = os.path.join(root, f)
                    if _excluded(full, exclude):
                        continue
                    try:
                        lst = os.lstat(full)
                    except OSError as e:
                        yield full, f"cannot read: {e.strerror}"
                        continue
                    if stat.S_ISREG(lst.st_mode):
                        yield full, None
            for e in unreadable:
                yield str(e.filename), f"cannot read directory: {e.strerror}"
        elif stat.S_ISREG(st.st_mode):
            yield p, None
        else:
            yield p, "not a regular file"


def scan_stream(fh: BinaryIO, engine: Engine, policy: Policy, key: bytes, limits: DecodeLimits,
                name: str, stop_on_trip: bool = False, edm=None) -> FileReport:
    body = BodyScan(engine, policy, key=key, exchange=Exchange(url=name, path=name), limits=limits,
                    stop_on_trip=stop_on_trip, edm=edm)
    while True:
        chunk = fh.read(READ_SIZE)
        if not chunk:
            break
        if body.write(chunk) == "trip" and stop_on_trip:
            break
    return FileReport(name, body.finish())


def scan_file(path: str, problem: str | None, engine: Engine, policy: Policy, key: bytes, limits: DecodeLimits,
              stop_on_trip: bool, edm=None) -> FileReport:
    if problem:
        return FileReport(path, None, problem)
    try:
        if path == "-":
            return scan_stream(sys.stdin.buffer, engine, policy, key, limits, "-", stop_on_trip, edm)
        with open(path, "rb") as fh:
            return scan_stream(fh, engine, policy, key, limits, path, stop_on_trip, edm)
    except OSError as e:
        return FileReport(path, None, f"cannot read: {e.strerror}")


_JOB: tuple = ()    # (engine, policy, key, limits, stop_on_trip): what a forked scanning process inherits


def _scan_in_child(item: tuple[str, str | None]) -> FileReport:
    return scan_file(*item, *_JOB)


def scan_files(files: list[tuple[str, str | None]], jobs: int, *job) -> Iterator[FileReport]:
    """Reports in the order of ``files``. With ``jobs`` > 1, files are scanned in that many forked
    processes (one scan is one core's work: the per-match path is Python); each inherits the
    compiled database and gets its own copy of the scratch. stdin is read here, never in a child."""
    global _JOB
    if jobs <= 1 or len(files) <= 1 or any(p == "-" for p, _ in files):
        for path, problem in files:
            yield scan_file(path, problem, *job)
        return
    import multiprocessing
    _JOB = job
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        yield from pool.imap(_scan_in_child, files, chunksize=1)


class LazyGroup(click.Group):
    """Commands defined in other modules are imported only when they run or their own ``--help`` is asked.

    Why: the serving commands pull in aiohttp, pydantic, the alert sinks and the stores; ``scan`` — run
    once per CI job or per file in a pre-publication hook — needs none of it and starts faster without.
    ``dlp-sensor --help`` lists every command from the summaries below, without importing any of them
    (tests/test_cli.py checks that each summary is its command's first help paragraph). The optional
    extras (Kafka, gRPC) are imported later still, by the code paths that use them.
    """

    LAZY = {  # command name -> (module, attribute, first paragraph of its help)
        "demo": ("sensor.cli.demo", "demo",
                 "The sidecar in front of a sample dashboard that leaks its permit roster (synthetic data)."),
        "index": ("sensor.cli.edm", "index",
                  "Build and check exact-data-match indexes (keyed hashes of a protected table, no raw values)."),
        "proxy": ("sensor.cli.sidecar", "proxy", "Run the inline reverse proxy in front of a web app."),
        "icap": ("sensor.cli.sidecar", "icap",
                 "Run the ICAP RESPMOD server for squid or a secure web gateway (service /respmod)."),
        "extproc": ("sensor.cli.sidecar", "extproc",
                    "Run the Envoy ext_proc gRPC server (see deploy/envoy/envoy.yaml)."),
        "run": ("sensor.cli.sidecar", "run",
                "Start several taps in one process from one config file (one registry, ledger, spool, metrics)."),
        "takedowns": ("sensor.cli.sidecar", "takedowns",
                      "List, add and lift takedowns (on this host's registry; every sidecar sharing it obeys at once)."),
        "report": ("sensor.cli.sidecar", "report",
                   "The incident report: what leaked, how long, how many downloads and clients, how many records."),
        "worker": ("sensor.cli.sidecar", "worker",
                   "Run a worker that scans exchanges mirrored to Kafka and/or keeps the fleet's exposure table (scale-out)."),
        "config": ("sensor.cli.config_cmd", "config",
                   "Export the configuration file's JSON Schema, or check a file against it."),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.LAZY])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.LAZY:
            import importlib
            module, attr, _ = self.LAZY[name]
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's listing, with the lazy commands' lines made from their summaries (no import)."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(map(len, names))
        rows = []
        for name in names:
            if name in self.LAZY:
                rows.append((name, click.utils.make_default_short_help(self.LAZY[name][2], limit)))
                continue
            cmd = super().get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dlp-sensor")
def main() -> None:
    """dlp-sensor: find personal-data leaks in files and HTTP responses as they stream by."""


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json", "sarif"]), default="text", show_default=True)
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False), help="Policy YAML (thresholds, routes, allowlist).")
@click.option("--signatures", multiple=True, type=click.Path(), help="Extra signature pack (file or directory); repeatable.")
@click.option("--no-default-signatures", is_flag=True, help="Use only the packs given with --signatures.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files/directories whose name or path matches; repeatable.")
@click.option("--stop-on-trip", is_flag=True, help="Stop reading a file as soon as it trips (counts are then partial).")
@click.option("--jobs", "-j", type=click.IntRange(min=0), default=0, show_default=True,
              help="Files scanned at once, one process each; 0 = one per CPU core.")
@click.option("--max-decoded-bytes", type=int, default=DecodeLimits.max_decoded_bytes, show_default=True)
@click.option("--max-ratio", type=float, default=DecodeLimits.max_ratio, show_default=True)
@click.option("--max-depth", type=int, default=DecodeLimits.max_depth, show_default=True)
@click.option("--state-dir", type=click.Path(file_okay=False), help="Where the HMAC key lives (default ~/.local/state/dlp-sensor).")
@click.option("--index", "indexes", multiple=True, type=click.Path(dir_okay=False),
              help="Exact-data-match index (from `dlp-sensor index build`); repeatable.")
def scan(paths: tuple[str, ...], fmt: str, policy_file: str | None, signatures: tuple[str, ...],
         no_default_signatures: bool, exclude: tuple[str, ...], stop_on_trip: bool, jobs: int,
         max_decoded_bytes: int, max_ratio: float, max_depth: int, state_dir: str | None,
         indexes: tuple[str, ...] = ()) -> None:
    """Scan files, directories (recursively) or - (stdin) for personal-data leaks.

    Exit status: 0 nothing tripped, 1 something tripped, 2 on error (bad pack or policy, or a
    file that could not be read while nothing tripped).
    """
    engine = _engine(signatures, no_default_signatures)
    try:
        policy = load_policy(Path(policy_file) if policy_file else None, {s.id for s in engine.signatures})
        key = load_key(None, Path(state_dir) if state_dir else None)
    except (PolicyError, ValueError, OSError) as e:
        raise UsageProblem(str(e)) from None
    from sensor.cli.edm import edm_from_cli
    edm = edm_from_cli(indexes, key)
    limits = DecodeLimits(max_decoded_bytes=max_decoded_bytes, max_ratio=max_ratio, max_depth=max_depth)
    out = click.get_text_stream("stdout")
    color = fmt == "text" and out.isatty()
    files = list(_walk(paths, exclude))
    show_bar = fmt == "text" and sys.stderr.isatty() and len(files) > 1
    reports: list[FileReport] = []

    def emit(rep: FileReport) -> None:
        reports.append(rep)
        if fmt == "json":
            write_json_line(rep, out)
        elif fmt == "text" and (rep.verdict != "pass" or not show_bar or rep.result is None or rep.result.notes):
            write_text(rep, out, color)

    results = scan_files(files, jobs or os.cpu_count() or 1, engine, policy, key, limits, stop_on_trip, edm)
    if show_bar:
        with click.progressbar(results, length=len(files), label="scanning", file=sys.stderr, show_pos=True,
                               item_show_func=lambda r: r.path[-40:] if r else None) as bar:
            for rep in bar:
                emit(rep)
    else:
        for rep in results:
            emit(rep)

    tripped = sum(r.verdict == "trip" for r in reports)
    alerted = sum(r.verdict == "alert" for r in reports)
    errors = sum(r.result is None for r in reports)
    if fmt == "sarif":
        out.write(orjson.dumps(sarif(reports, engine), option=orjson.OPT_INDENT_2).decode() + "\n")
    elif fmt == "text":
        out.write(f"{len(reports)} file(s): {tripped} tripped, {alerted} alerted, {errors} unreadable\n")
    sys.exit(1 if tripped else 2 if errors else 0)


@main.group()
def signatures() -> None:
    """List the signature pack or run its examples."""


@signatures.command("list")
@click.option("--signatures", "extra", multiple=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def sig_list(extra: tuple[str, ...], fmt: str) -> None:
    """List every signature: id, category, severity, patterns, validator, hotwords."""
    engine = _engine(extra, False)
    for s in engine.signatures:
        if fmt == "json":
            click.echo(orjson.dumps({"id": s.id, "name": s.name, "severity": s.severity, "category": s.category,
                                     "kind": s.kind, "validator": s.validator, "hotwords": list(s.hotwords),
                                     "patterns": len(s.patterns), "origin": s.origin}).decode())
        else:
            ctx = " (context)" if any(p.needs_context for p in s.patterns) else ""
            click.echo(f"{s.id:22} {s.category:9} {s.severity:6} {len(s.patterns):3} expr  "
                       f"{s.validator or '-':6} {s.name}{ctx}")
    click.echo(f"{len(engine.signatures)} signatures, {engine.n_values} expressions, "
               f"database {'from cache' if engine.cache_hit else 'compiled'} ({engine.cache_path})", err=True)


@signatures.command("test")
@click.option("--signatures", "extra", multiple=True, type=click.Path())
@click.option("--only", multiple=True, help="Signature id(s) to test.")
def sig_test(extra: tuple[str, ...], only: tuple[str, ...]) -> None:
    """Run every signature's examples (must match) and negative examples (must not)."""
    from sensor.detect.selftest import run_examples

    engine = _engine(extra, False)
    n, failures = run_examples(engine, set(only) or None)
    for f in failures:
        click.echo(f"FAIL {f}")
    click.echo(f"{n - len(failures)} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
