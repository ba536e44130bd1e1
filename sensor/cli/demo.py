"""``dlp-sensor demo``: the sidecar in front of a public dashboard that leaks its permit roster.

Everything runs on loopback in one process, with synthetic data: the sample dashboard (HTML, a
JSON API, the roster export), the sidecar in enforce mode, and a client. The timeline shows the
first byte, the trip, the takedown, what reached the client, the SOC alert (redacted), the second
download refused with 451, the same file under another URL refused by its content fingerprint,
a bigger download cut mid-stream, the exposure report and the metrics.
"""
from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp
import click
import orjson
from aiohttp import web

from sensor import synth
from sensor.config import Config, ProxyConfig
from sensor.enforce.report import build_report, render_text
from sensor.runtime import Sensor
from sensor.sample_site import ROSTER, build_site, site_app
from sensor.service import start_proxy


class _Clock:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def say(self, msg: str, at: float | None = None) -> None:
        ms = ((at if at is not None else time.perf_counter()) - self.t0) * 1000
        click.echo(f"[{ms:8.1f} ms] {msg}")


class _TimelineSensor(Sensor):
    """The demo's sensor: remembers when the trip and the takedown happened, to print them."""
    events: list[tuple[str, float]]

    async def take_down(self, ctx, fingerprint, tripped_at, **kw):
        self.events.append(("trip", tripped_at))
        td = await super().take_down(ctx, fingerprint, tripped_at, **kw)
        self.events.append(("takedown", time.perf_counter()))
        return td


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, int, bool, float]:
    """(status, bytes received, completed, time of the first response byte)."""
    got, ok = 0, False
    async with session.get(url) as r:
        first = time.perf_counter()
        try:
            async for chunk in r.content.iter_any():
                got += len(chunk)
            ok = True
        except aiohttp.ClientPayloadError:
            ok = False
        return r.status, got, ok, first


async def _run(people: int) -> None:
    clock = _Clock()
    with tempfile.TemporaryDirectory(prefix="dlp-demo-") as tmp:
        root = build_site(Path(tmp) / "site", people)
        report = root / "exports" / "annual-report-2022.csv"
        report.write_bytes(synth.benign_web(400 << 10)[: 400 << 10] + (root / ROSTER).read_bytes())
        runner = web.AppRunner(site_app(root), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        up_port = site._server.sockets[0].getsockname()[1]
        clock.say(f"sample dashboard on http://127.0.0.1:{up_port}: stats pages, a JSON API, and "
                  f"/{ROSTER} — {people:,} synthetic permit holders ({(root / ROSTER).stat().st_size:,} bytes)")

        cfg = Config(sensor_id="demo-sidecar", state_dir=Path(tmp) / "state", metrics="127.0.0.1:0",
                     admin="127.0.0.1:0", sinks=[{"type": "jsonl", "path": "alerts.jsonl"}],
                     proxy=ProxyConfig(listen="127.0.0.1:0", upstream=f"http://127.0.0.1:{up_port}", mode="enforce"))
        sensor = _TimelineSensor(cfg)
        sensor.events = []
        run = await start_proxy(cfg, sensor=sensor)
        px = "http://127.0.0.1:%d" % run.addresses["proxy"][1]
        mx = "http://127.0.0.1:%d" % run.addresses["metrics"][1]
        clock.say(f"sidecar in enforce mode on {px} (hold-back 64 KiB), signatures generation "
                  f"{sensor.detector.generation}")
        try:
            async with aiohttp.ClientSession() as s:
                for path in ("/", "/stats-3.html", "/api/counties.json", "/contact.html"):
                    st, n, ok, _ = await _get(s, px + path)
                    clock.say(f"GET {path:<28} {st}  {n:>7,} bytes  (passes, untouched)")

                t = time.perf_counter()
                clock.say(f"GET /{ROSTER}  <- a member of the public downloads the roster", t)
                st, n, ok, first = await _get(s, px + "/" + ROSTER)
                trip = dict(sensor.events)
                clock.say("  trip: the policy's bar (10 records) crossed while scanning the first "
                          "64 KiB; nothing has left yet", trip["trip"])
                clock.say(f"  takedown durable in the registry (SQLite, fsynced) "
                          f"{(trip['takedown'] - trip['trip']) * 1000:.1f} ms after the trip", trip["takedown"])
                clock.say(f"  client got {st} and {n} bytes of block page: 0 rows of the roster left", first)

                alerts = await _alerts(sensor, 1)
                a = alerts[0]["dlp"]
                clock.say(f"  SOC alert {a['dedup_id']}: {a['records']} records in the scanned prefix; "
                          f"findings {a['findings']}")
                sample = ("us-driver-licence", a["samples"]["us-driver-licence"]) \
                    if "us-driver-licence" in a["samples"] else next(iter(a["samples"].items()))
                clock.say(f"  samples are redacted + keyed hashes, e.g. {sample[0]}: {sample[1][0]['redacted']} "
                          f"({sample[1][0]['fingerprint']})")

                st, n, ok, _ = await _get(s, px + "/" + ROSTER)
                clock.say(f"GET /{ROSTER} again -> {st} (taken down; upstream not asked)")
                size = report.stat().st_size
                t = time.perf_counter()
                st, n, ok, first = await _get(s, px + "/exports/annual-report-2022.csv")
                clock.say(f"GET /exports/annual-report-2022.csv ({size:,} bytes; the roster starts at "
                          f"byte {400 << 10:,}) -> {st}, then the connection is cut: client received {n:,} "
                          f"bytes, download {'complete' if ok else 'FAILED'}", t)
                (root / "exports" / "annual-report-2022-final.csv").write_bytes(report.read_bytes())
                st, n, ok, _ = await _get(s, px + "/exports/annual-report-2022-final.csv")
                clock.say(f"GET /exports/annual-report-2022-final.csv (the same file under another URL) -> {st}, "
                          f"client received {n:,} bytes, download {'complete' if ok else 'FAILED'}: up to where "
                          f"the first download tripped it matches the taken-down file's content fingerprint")

            await sensor.ledger.flush_async()      # on the disk thread, where trip commits also run
            await _alerts(sensor, 2)
            click.echo("")
            click.echo("Exposure report (`dlp-sensor report`):")
            click.echo(render_text(build_report(sensor.ledger, sensor.registry)).rstrip())
            click.echo("")
            async with aiohttp.ClientSession() as s:
                async with s.get(mx + "/metrics") as r:
                    text = await r.text()
            keep = ("dlp_trips_total", "dlp_takedowns_active ", "dlp_refusals_total", "dlp_exchanges_total",
                    "dlp_detection_to_takedown_seconds_count", "dlp_detection_to_takedown_seconds_sum")
            click.echo(f"Metrics on {mx}/metrics (health: /healthz, /readyz), e.g.:")
            for line in text.splitlines():
                if line.startswith(keep) and not line.endswith(" 0.0"):     # series exist at 0 from start-up
                    click.echo("  " + line)
            click.echo(f"Admin API on http://127.0.0.1:{run.addresses['admin'][1]} (bearer token in the state dir); "
                       f"`dlp-sensor takedowns list|add|lift`.")
            click.echo("")
            _edm_story(clock, Path(tmp), root / ROSTER, sensor)
        finally:
            await run.stop()
            await runner.cleanup()
    clock.say("done")


def _edm_story(clock: _Clock, tmp: Path, roster: Path, sensor: Sensor) -> None:
    """Exact data match: the agency indexes its roster (keyed hashes only); a dashboard export hides
    7 of its people among 5,000 public rows — the signatures alone would not trip, the index does."""
    import csv
    import io

    from sensor.detect.policy import Policy
    from sensor.edm.build import build_index, parse_columns
    from sensor.edm.match import IndexSpec, load_indexes
    from sensor.edm.story import census_people, dashboard
    from sensor.pipeline import BodyScan

    click.echo("Exact data match (`dlp-sensor index build`, `scan --index`):")
    idx = tmp / "roster.edm"
    stats = build_index([roster], parse_columns("name=first_name+last_name,dob=date_of_birth,"
                                                "dl=driver_license,address=street_address"), idx, sensor.key,
                        name="permit-holders", jobs=1)
    clock.say(f"index of the roster: {stats.rows:,} rows x 4 fields, {stats.size:,} bytes of keyed hashes "
              f"(no name, date or address in it)")
    rows = list(csv.DictReader(io.StringIO(roster.read_text())))
    hidden = census_people(rows, 7)
    edm = load_indexes([IndexSpec(str(idx))], sensor.key)

    def scan(data: bytes, with_index: bool):
        body = BodyScan(sensor.detector.engine, Policy(), key=sensor.key, edm=edm if with_index else None)
        body.write(data)
        return body.finish()

    export = dashboard(rows, hidden)
    alone, r, clean = scan(export, False), scan(export, True), scan(dashboard(rows, []), True)
    clock.say(f"dashboard export, 5,000 public rows + 7 of the roster's people: signatures alone -> "
              f"{alone.verdict} ({alone.person_records} name+address records)")
    clock.say(f"  with the index -> {r.verdict}: {r.edm_records} EDM records ({r.edm}); "
              f"exposed row ids {r.edm_rows.get('permit-holders')} (`report --rows` lists them)")
    clock.say(f"the same export without them -> {clean.verdict} ({clean.edm_records} EDM records)")
    edm.close()


async def _alerts(sensor: Sensor, n: int, timeout: float = 5.0) -> list[dict]:
    path = sensor.config.state_dir / "alerts.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            rows = [orjson.loads(l) for l in path.read_bytes().splitlines()]
            if len(rows) >= n:
                return rows
        await asyncio.sleep(0.02)
    raise click.ClickException("the alert did not reach its sink")


@click.command()
@click.option("--people", default=19_200, show_default=True, help="Rows in the leaked roster.")
def demo(people: int) -> None:
    """The sidecar in front of a sample dashboard that leaks its permit roster (synthetic data)."""
    asyncio.run(_run(people))
