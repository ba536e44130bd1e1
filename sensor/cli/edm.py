"""``dlp-sensor index build|info|verify``: exact-data-match indexes from the protected table."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from sensor.detect.keys import load_key


class IndexProblem(click.ClickException):
    exit_code = 2


def _key(state_dir: str | None, key_file: str | None = None) -> bytes:
    """The index's key: ``--key-file`` (hex, the same file an ``indexes:`` entry's ``key_file`` names),
    else the state dir's HMAC key. Errors name the file, never its content."""
    if key_file:
        from sensor.config import hmac_key_problem
        try:
            text = Path(key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise IndexProblem(f"--key-file {key_file}: {getattr(e, 'strerror', None) or 'not UTF-8 text'}") from None
        why = hmac_key_problem(text)
        if why:
            raise IndexProblem(f"--key-file {key_file}: {why}")
        return bytes.fromhex(text)
    try:
        return load_key(None, Path(state_dir) if state_dir else None)
    except (ValueError, OSError) as e:
        raise IndexProblem(str(e)) from None


def edm_from_cli(paths: tuple[str, ...], key: bytes):
    """``--index FILE`` (repeatable) -> an EdmSet, or None; a bad file is a usage error naming it."""
    if not paths:
        return None
    from sensor.edm.match import IndexSpec, load_indexes
    try:
        return load_indexes([IndexSpec(p) for p in paths], key)
    except ValueError as e:
        raise IndexProblem(str(e)) from None


def _row_estimate(paths: list[Path]) -> int | None:
    """Data rows of text sources (newlines minus the header) for the progress bar; None when a
    source is a workbook or Parquet (no cheap count)."""
    total = 0
    for p in paths:
        with open(p, "rb") as fh:
            if fh.read(4)[:2] in (b"PK", b"PA"):
                return None
            fh.seek(0)
            n = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
        total += max(n - (0 if p.suffix.lower() in (".jsonl", ".ndjson") else 1), 0)
    return total or None


_STATE_DIR = click.option("--state-dir", type=click.Path(file_okay=False),
                          help="Where the HMAC key lives (default ~/.local/state/dlp-sensor); the index is keyed with it.")
_KEY_FILE = click.option("--key-file", type=click.Path(dir_okay=False), default=None,
                         help="The index's own key (a file holding >= 32 hex digits, e.g. `openssl rand -hex 32`) "
                              "instead of the state dir's; sensors load it with the index entry's key_file/key_env.")


@click.group("index")
def index() -> None:
    """Build and check exact-data-match indexes (keyed hashes of a protected table, no raw values)."""


@index.command("build")
@click.argument("sources", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--columns", required=True, metavar="KIND[=COL[+COL]],…",
              help="Fields to index, e.g. name=first_name+last_name,dob=date_of_birth,dl=driver_license,address=street_address.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Index file to write.")
@click.option("--name", default=None, help="Index name in alerts and counts (default: the file name).")
@click.option("--jobs", "-j", type=click.IntRange(min=0), default=0, show_default=True,
              help="Processes normalising and hashing the distinct values of CSV/TSV blocks; 0 = one per CPU core.")
@_STATE_DIR
@_KEY_FILE
def build(sources: tuple[str, ...], columns: str, out: str, name: str | None, jobs: int, state_dir: str | None,
          key_file: str | None) -> None:
    """Index SOURCE… (CSV/TSV, JSON Lines, xlsx; Parquet with pyarrow installed)."""
    from sensor.edm.build import build_index, parse_columns
    from sensor.edm.sources import SourceError
    try:
        specs = parse_columns(columns)
    except ValueError as e:
        raise click.BadParameter(str(e).removeprefix("--columns: "), param_hint="--columns") from None
    key = _key(state_dir, key_file)
    paths = [Path(s) for s in sources]
    try:
        total = _row_estimate(paths) if sys.stderr.isatty() else None
        if total:
            with click.progressbar(length=total, label="indexing rows", file=sys.stderr, show_pos=True) as bar:
                stats = build_index(paths, specs, Path(out), key, name=name, progress=bar.update, jobs=jobs or None)
        else:
            stats = build_index(paths, specs, Path(out), key, name=name, jobs=jobs or None)
    except (SourceError, OSError) as e:
        raise IndexProblem(str(e)) from None
    fields = ", ".join(f"{k} {v}" for k, v in stats.values.items())
    click.echo(f"{out}: {stats.rows} rows; values indexed: {fields}; {stats.size} bytes")


@index.command("info")
@click.argument("file", type=click.Path(dir_okay=False))
def info(file: str) -> None:
    """Rows, fields, size and key id of an index (no key needed)."""
    from sensor.edm.indexfile import IndexFileError, open_index
    try:
        idx = open_index(Path(file))
    except IndexFileError as e:
        raise IndexProblem(str(e)) from None
    click.echo(f"name:    {idx.name}\nrows:    {idx.rows}\n"
               f"fields:  {', '.join(f'{k} ({len(f.hashes)})' for k, f in idx.fields.items())}\n"
               f"size:    {idx.size} bytes\nkey id:  {idx.key_id}\nversion: {idx.header.get('version')}")
    idx.close()


@index.command("verify")
@click.argument("file", type=click.Path(dir_okay=False))
@_STATE_DIR
@_KEY_FILE
def verify(file: str, state_dir: str | None, key_file: str | None) -> None:
    """Check the structure and that the index was built with this state dir's key, or the
    ``--key-file`` key (exit 1 if not)."""
    from sensor.edm.indexfile import verify_index
    problems = verify_index(Path(file), _key(state_dir, key_file),
                            f"the key of {key_file}" if key_file else "this state dir's key")
    if problems:
        for p in problems:
            click.echo(f"{file}: {p}", err=True)
        sys.exit(1)
    click.echo(f"{file}: ok")
