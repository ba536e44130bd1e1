"""``dlp-sensor demo``: the pre-publication check on a generated public site with a leaked export.

Until the sidecar lands this is the demo: a site directory with statistics pages, a JSON API, a
contact page and — by accident — the permit-holder roster as CSV, gzip and xlsx. The scan finds
the leak in every form, passes everything else, and shows how early a streaming scan decides.
"""
from __future__ import annotations

import gzip
import tempfile
import time
from pathlib import Path

import click

from sensor import synth
from sensor.cli.output import write_text
from sensor.decode.limits import DecodeLimits
from sensor.detect.engine import Engine
from sensor.detect.keys import load_key
from sensor.detect.pack import load_pack
from sensor.detect.policy import Policy


def build_site(root: Path, people: int) -> None:
    (root / "api").mkdir(parents=True)
    (root / "exports").mkdir()
    web = synth.benign_web(2 << 20).decode()
    pages = [p for p in web.split("<!doctype html>") if p.strip()][:20]
    for i, page in enumerate(pages):
        (root / f"stats-{i}.html").write_text("<!doctype html>" + page)
    (root / "api" / "counties.json").write_text(synth._json_api(__import__("random").Random(1)))
    (root / "contact.html").write_text(
        "<html><h1>Contact</h1><p>Front desk (916) 445-9555, fax (916) 445-9556, "
        "press@agency.ca.gov. 1300 I Street, Sacramento, CA 95814.</p></html>")
    leak = synth.breach_csv(people)
    (root / "exports" / "permits_2022.csv").write_bytes(leak)
    (root / "exports" / "permits_2022.csv.gz").write_bytes(gzip.compress(leak))
    (root / "exports" / "permits_2022.xlsx").write_bytes(synth.xlsx([l.split(",") for l in leak.decode().splitlines()]))


@click.command()
@click.option("--people", default=192_000 // 10, show_default=True, help="Rows in the leaked roster.")
def demo(people: int) -> None:
    """Scan a generated public site whose export directory leaks the permit roster."""
    from sensor.cli.main import scan_stream

    color = click.get_text_stream("stdout").isatty()
    out = click.get_text_stream("stdout")
    t0 = time.perf_counter()
    engine = Engine(load_pack())
    click.echo(f"[{time.perf_counter() - t0:6.2f}s] signature pack: {len(engine.signatures)} signatures, "
               f"{engine.n_values} Hyperscan expressions ({'cached database' if engine.cache_hit else 'compiled'})")
    with tempfile.TemporaryDirectory(prefix="dlp-demo-") as tmp:
        root = Path(tmp) / "site"
        build_site(root, people)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        click.echo(f"[{time.perf_counter() - t0:6.2f}s] generated a public site: {len(files)} files, "
                   f"an export of {people:,} synthetic permit holders among them")
        key = load_key(None, Path(tmp) / "state")
        tripped = 0
        for f in files:
            with open(f, "rb") as fh:
                rep = scan_stream(fh, engine, Policy(), key, DecodeLimits(), str(f.relative_to(root)))
            tripped += rep.verdict == "trip"
            if rep.verdict != "pass" or f.name == "contact.html":
                write_text(rep, out, color)
        click.echo(f"[{time.perf_counter() - t0:6.2f}s] {len(files)} files scanned: {tripped} tripped "
                   f"(the export, in all three forms); the statistics pages, API and contact page pass")
        # streaming: how soon is the leak known?
        csv = root / "exports" / "permits_2022.csv"
        with open(csv, "rb") as fh:
            t = time.perf_counter()
            rep = scan_stream(fh, engine, Policy(), key, DecodeLimits(), csv.name, stop_on_trip=True)
            ms = (time.perf_counter() - t) * 1000
        r = rep.result
        assert r is not None and r.trip_at_byte is not None
        click.echo(f"[{time.perf_counter() - t0:6.2f}s] streaming: the roster trips after {r.trip_at_byte:,} of "
                   f"{csv.stat().st_size:,} bytes ({ms:.1f} ms) — a sidecar would cut the download there")
    click.echo("As a CI gate: `dlp-sensor scan --format sarif public/ > dlp.sarif` exits 1 when anything trips.")
