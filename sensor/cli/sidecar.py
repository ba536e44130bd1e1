"""``dlp-sensor proxy``, ``takedowns list|add|lift`` and ``report``: running and operating the sidecar.

The configuration (pydantic, and the alert sinks' aiohttp through it), the stores and the report
are imported by the commands that run, not by this module: ``dlp-sensor proxy --help`` (or a
shell completion) reads the options only, and starts in a third of the time.
"""
from __future__ import annotations

import asyncio
import functools
import os
from pathlib import Path

import click
import orjson

from sensor.cli.extras import require
from sensor.cli.logformat import LOG_FORMATS, setup_logging


class ConfigProblem(click.ClickException):
    exit_code = 2


def _config(config_file: str | None, **flags):
    from sensor.config import ConfigError, load_config, with_overrides
    try:
        return with_overrides(load_config(Path(config_file) if config_file else None), **flags)
    except ConfigError as e:
        raise ConfigProblem(str(e)) from None


def _logging(level: str, fmt: str | None = None, cfg=None) -> None:
    """The flag wins over the config file's ``log_format``; text by default."""
    setup_logging(level, fmt or getattr(cfg, "log_format", None) or "text")


_log_format = click.option("--log-format", type=click.Choice(LOG_FORMATS), default=None,
                           help="text (default) or json: one JSON object per line (time, level, logger, message); "
                                "default: the config file's log_format.")
index_option = click.option(
    "--index", "indexes", multiple=True, type=click.Path(dir_okay=False),
    help="Exact-data-match index (`dlp-sensor index build`), keyed with the state dir's key; repeatable "
         "(added to the config's indexes:).")
start_empty_option = click.option(
    "--start-empty", is_flag=True,
    help="A 0-byte or damaged takedown registry, ledger or alert spool in the state dir is moved aside "
         "(NAME.bad-TIMESTAMP) and started empty, instead of refusing to start (config: start_empty: true).")


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config (flags override it).")
@click.option("--upstream", help="The app behind the sidecar, e.g. http://127.0.0.1:8080.")
@click.option("--listen", help="HOST:PORT to accept clients on (default 127.0.0.1:8000).")
@click.option("--mode", type=click.Choice(["monitor", "enforce"]), help="Default route mode (default enforce).")
@click.option("--state-dir", type=click.Path(file_okay=False), help="Registry, ledger, alert spool, HMAC key.")
@click.option("--metrics", help="HOST:PORT for /metrics /healthz /readyz, or 'off' (default 127.0.0.1:9102).")
@click.option("--admin", help="HOST:PORT for the admin API, or 'off' (default 127.0.0.1:9103).")
@click.option("--reuse-port", is_flag=True, help="SO_REUSEPORT: run several sidecar processes on one port.")
@click.option("--kafka", help="Kafka bootstrap HOST:PORT[,…] for fleet takedowns (and the mirror, if the config "
              "enables it); default $DLP_KAFKA_BOOTSTRAP.")
@start_empty_option
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@_log_format
@index_option
def proxy(config_file, upstream, listen, mode, state_dir, metrics, admin, reuse_port, kafka, start_empty,
          log_level, log_format, indexes=()) -> None:
    """Run the inline reverse proxy in front of a web app."""
    cfg = _config(config_file, upstream=upstream, listen=listen, mode=mode, state_dir=state_dir,
                  metrics=metrics, admin=admin, kafka=kafka, start_empty=start_empty, indexes=indexes)
    _logging(log_level, log_format, cfg)
    _serve(cfg, ("proxy",), reuse_port)


def _tap_command(tap: str, default_listen: str, doc: str) -> click.Command:
    """``dlp-sensor icap`` / ``extproc``: one tap, the same options."""

    @click.command(name=tap, help=doc)
    @click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config (flags override it).")
    @click.option("--listen", help=f"HOST:PORT to listen on (default {default_listen}).")
    @click.option("--state-dir", type=click.Path(file_okay=False), help="Registry, ledger, alert spool, HMAC key.")
    @click.option("--metrics", help="HOST:PORT for /metrics /healthz /readyz, or 'off' (default 127.0.0.1:9102).")
    @click.option("--admin", help="HOST:PORT for the admin API, or 'off' (default 127.0.0.1:9103).")
    @start_empty_option
    @click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
    @_log_format
    @index_option
    def command(config_file, listen, state_dir, metrics, admin, start_empty, log_level, log_format, indexes=()) -> None:
        cfg = _config(config_file, state_dir=state_dir, metrics=metrics, admin=admin, start_empty=start_empty,
                      indexes=indexes, **{f"{tap}_listen": listen})
        _logging(log_level, log_format, cfg)
        _serve(cfg, (tap,))

    return command


icap = _tap_command("icap", "127.0.0.1:1344",
                    "Run the ICAP RESPMOD server for squid or a secure web gateway (service /respmod).")
extproc = _tap_command("extproc", "127.0.0.1:50051", "Run the Envoy ext_proc gRPC server (see deploy/envoy/envoy.yaml).")


@click.command()
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False),
              help="YAML config: each tap listens where its section says (proxy.listen, icap.listen, extproc.listen).")
@click.option("--tap", "taps", multiple=True, type=click.Choice(["proxy", "icap", "extproc"]),
              help="Tap to start; repeatable. Default: every tap whose section is in the file.")
@click.option("--state-dir", type=click.Path(file_okay=False))
@start_empty_option
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@_log_format
@index_option
def run(config_file, taps, state_dir, start_empty, log_level, log_format, indexes=()) -> None:
    """Start several taps in one process from one config file (one registry, ledger, spool, metrics)."""
    cfg = _config(config_file, state_dir=state_dir, start_empty=start_empty, indexes=indexes)
    _logging(log_level, log_format, cfg)
    if not taps:
        from sensor.yamlfile import read_yaml
        raw = read_yaml(Path(config_file), ConfigProblem) or {}
        taps = tuple(t for t in ("proxy", "icap", "extproc") if t in raw)
    if not taps:
        raise ConfigProblem(f"{config_file}: no proxy, icap or extproc section, and no --tap given")
    _serve(cfg, tuple(taps))


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML config: the kafka section (topics, group, worker.metrics), signatures, policy, hmac_key.")
@click.option("--kafka", help="Kafka bootstrap HOST:PORT[,…] (default $DLP_KAFKA_BOOTSTRAP).")
@click.option("--state-dir", type=click.Path(file_okay=False), help="Where the HMAC key lives if not configured.")
@click.option("--metrics", help="HOST:PORT for /metrics /healthz /readyz, or 'off' (default 127.0.0.1:9102).")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--roles", help="scan, ledger or scan,ledger: what this worker runs (default kafka.worker.roles, "
                              "both). Scan workers scale out; one ledger worker keeps the exposure table.")
@index_option
def worker(config_file, kafka, state_dir, metrics, log_level, roles=None, indexes=()) -> None:
    """Run a worker that scans exchanges mirrored to Kafka and/or keeps the fleet's exposure table (scale-out)."""
    _logging(log_level)
    cfg = _config(config_file, kafka=kafka, state_dir=state_dir, metrics=metrics, roles=roles, indexes=indexes)
    if not cfg.kafka.bootstrap:
        raise ConfigProblem("kafka.bootstrap: required for a worker (or --kafka, or $DLP_KAFKA_BOOTSTRAP)")
    require("kafka", "dlp-sensor worker")
    from sensor.detect.pack import PackError
    from sensor.detect.policy import PolicyError
    from sensor.edm.indexfile import IndexFileError
    from sensor.enforce.statefiles import StateError
    from sensor.stream.worker import run_worker
    try:
        run_worker(cfg, loglevel=log_level)
    except (PackError, PolicyError, StateError, IndexFileError) as e:
        raise ConfigProblem(str(e)) from None


def _serve(cfg, taps: tuple[str, ...], reuse_port: bool = False) -> None:
    if "extproc" in taps:
        require("extproc", "the ext_proc tap")
    if cfg.kafka.bootstrap:
        require("kafka", "kafka.bootstrap (fleet takedowns, the mirror tap)")
    from sensor.detect.pack import PackError
    from sensor.detect.policy import PolicyError
    from sensor.edm.indexfile import IndexFileError
    from sensor.enforce.statefiles import StateError
    from sensor.service import serve_forever
    try:
        asyncio.run(serve_forever(cfg, taps=taps, reuse_port=reuse_port))
    except (PackError, PolicyError, StateError, IndexFileError) as e:
        raise ConfigProblem(str(e)) from None
    except OSError as e:
        raise ConfigProblem(f"cannot listen: {e.strerror or e}") from None


def _state(config_file: str | None, state_dir: str | None) -> Path:
    cfg = _config(config_file, state_dir=state_dir)
    assert cfg.state_dir is not None
    return cfg.state_dir


_state_opts = [click.option("--config", "config_file", type=click.Path(dir_okay=False)),
               click.option("--state-dir", type=click.Path(file_okay=False))]


def state_options(f):
    """--config and --state-dir; a state dir or database that cannot be used is a clean exit 2."""
    @functools.wraps(f)
    def wrapped(*args, **kw):
        from sensor.enforce.registry import DISK_ERRORS, disk_fault
        from sensor.enforce.statefiles import StateError
        try:
            return f(*args, **kw)
        except StateError as e:
            raise ConfigProblem(str(e)) from None
        except DISK_ERRORS as e:
            if not disk_fault(e):
                raise
            raise click.ClickException(f"the state dir's database could not be written: {e}") from None
    for opt in reversed(_state_opts):
        wrapped = opt(wrapped)
    return wrapped


@click.group()
def takedowns() -> None:
    """List, add and lift takedowns (on this host's registry; every sidecar sharing it obeys at once)."""


@takedowns.command("list")
@state_options
@click.option("--all", "include_lifted", is_flag=True, help="Include lifted takedowns.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def td_list(config_file, state_dir, include_lifted: bool, fmt: str) -> None:
    from sensor.enforce.registry import Registry
    reg = Registry(_state(config_file, state_dir) / "takedowns.db")
    rows = reg.list(include_lifted=include_lifted)
    if fmt == "json":
        click.echo(orjson.dumps([t.to_json() for t in rows], option=orjson.OPT_INDENT_2).decode())
        return
    from sensor.alerts.schema import iso
    if not rows:
        click.echo("no takedowns" + ("" if include_lifted else " active"))
    for t in rows:
        state = f"lifted {iso(t.lifted)} by {t.lifted_by}: {t.lift_reason}" if t.lifted else "ACTIVE"
        click.echo(f"#{t.id:<5} {t.resource}  {iso(t.created)} by {t.actor} ({t.reason})  {state}")


def audited(f):
    """--reason and --actor: every change to the registry is audited."""
    f = click.option("--actor", default=lambda: os.environ.get("USER", "cli"), show_default="$USER")(f)
    return click.option("--reason", required=True)(f)


@takedowns.command("add")
@state_options
@click.argument("url")
@audited
def td_add(config_file, state_dir, url: str, reason: str, actor: str) -> None:
    """Take URL (http://host/path, or host/path) down."""
    from sensor.enforce.ledger import Ledger
    from sensor.enforce.registry import Registry
    from sensor.enforce.resource import resource_of_url
    cfg = _config(config_file, state_dir=state_dir)
    reg = Registry(cfg.state_dir / "takedowns.db")
    t = reg.add(resource_of_url(cfg, url), actor=actor, reason=reason)
    led = Ledger(cfg.state_dir / "ledger.db")
    led.mark(t.resource, "taken_down")
    led.close()                             # writes the mark
    click.echo(f"#{t.id} {t.resource} taken down")


@takedowns.command("lift")
@state_options
@click.argument("ident")
@audited
def td_lift(config_file, state_dir, ident: str, reason: str, actor: str) -> None:
    """Lift takedown IDENT (its number, or the resource)."""
    from sensor.enforce.registry import Registry
    from sensor.enforce.resource import rekey
    cfg = _config(config_file, state_dir=state_dir)
    reg = Registry(cfg.state_dir / "takedowns.db")
    which: int | str = int(ident.lstrip("#")) if ident.lstrip("#").isdigit() else ident
    if isinstance(which, str) and reg.blocked(which) is None:
        which = rekey(cfg, which.split("://", 1)[-1])        # a URL or another host: the key requests get
    t = reg.lift(which, actor=actor, reason=reason)
    if t is None:
        raise click.ClickException(f"no active takedown {ident}")
    click.echo(f"#{t.id} {t.resource} lifted")


@click.command()
@state_options
@click.option("--format", "fmt", type=click.Choice(["text", "json", "html"]), default="text",
              help="html: one self-contained page per incident (needs --out DIR, or --incident ID for stdout).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Directory for the HTML pages (incident-<id>.html each; created if missing).")
@click.option("--incident", "only", help="Only this incident: its id (or ≥ 8 leading digits), its resource, "
              "or its takedown number.")
@click.option("--fleet", is_flag=True, help="The whole fleet's exposure, from the Kafka workers' table "
              "(kafka.bootstrap or $DLP_KAFKA_BOOTSTRAP), instead of this host's ledger.")
@click.option("--rows", "rows_of", metavar="INCIDENT", help="Print the exposed row ids of the protected "
              "tables (exact data match) for this incident: INDEX<TAB>ROW_ID per line (json: index -> ids).")
def report(config_file, state_dir, fmt: str, out_dir: str | None, only: str | None, fleet: bool,
           rows_of: str | None = None) -> None:
    """The incident report: what leaked, how long, how many downloads and clients, how many records."""
    from sensor.enforce.ledger import Ledger
    from sensor.enforce.registry import Registry
    from sensor.enforce.report import build_report, render_text
    if rows_of is not None:
        _rows_report(config_file, state_dir, rows_of, fmt)
        return
    if out_dir and fmt != "html":
        raise ConfigProblem("--out: only with --format html (text and json go to stdout)")
    if fleet:
        if fmt == "html" or only:
            raise ConfigProblem("--fleet: text or json only, for every resource (the pages come from one host's ledger)")
        cfg = _config(config_file, state_dir=state_dir)
        if not cfg.kafka.bootstrap:
            raise ConfigProblem("kafka.bootstrap: required for --fleet (or $DLP_KAFKA_BOOTSTRAP)")
        require("kafka", "dlp-sensor report --fleet")
        from sensor.stream.report import fleet_report, read_exposure
        try:
            rep = fleet_report(asyncio.run(read_exposure(cfg.kafka)))
        except Exception as e:                          # noqa: BLE001  (broker down, auth…: say so, exit 2)
            raise ConfigProblem(f"cannot read the fleet exposure table from Kafka: {type(e).__name__}: {e}") from None
        text = render_text(rep)
    elif fmt == "html":
        _html_report(config_file, state_dir, out_dir, only)
        return
    else:
        sd = _state(config_file, state_dir)
        rep = build_report(Ledger(sd / "ledger.db"), Registry(sd / "takedowns.db"))
        if only is not None:
            rep = _only(rep, only, sd, config_file, state_dir)
        text = render_text(rep)
    click.echo(orjson.dumps(rep, option=orjson.OPT_INDENT_2).decode() if fmt == "json" else text, nl=fmt == "json")


def _rows_report(config_file, state_dir, ident: str, fmt: str) -> None:
    from sensor.enforce.ledger import Ledger
    from sensor.enforce.registry import Registry
    from sensor.enforce.report import build_report, render_rows
    sd = _state(config_file, state_dir)
    ledger = Ledger(sd / "ledger.db")
    rep = _only(build_report(ledger, Registry(sd / "takedowns.db")), ident, sd, config_file, state_dir)
    rows = {i["resource"]: ledger.edm_rows(i["resource"]) for i in rep["incidents"]}
    if fmt == "json":
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo("".join(render_rows(res, r) for res, r in rows.items()), nl=False)


def _key(config_file, state_dir):
    """(HMAC key, config): incident ids are keyed hashes of the resource, as in the alerts."""
    from sensor.detect.keys import load_key
    cfg = _config(config_file, state_dir=state_dir)
    try:
        return load_key(cfg.hmac_key, cfg.state_dir), cfg
    except ValueError as e:
        raise ConfigProblem(str(e)) from None


def _only(rep: dict, ident: str, sd: Path, config_file, state_dir) -> dict:
    """The text/json report narrowed to one incident (--incident)."""
    from sensor.alerts.schema import incident_id
    from sensor.enforce.registry import Registry
    from sensor.enforce.report_html import matches
    key, _ = _key(config_file, state_dir)
    tds = Registry(sd / "takedowns.db").list(include_lifted=True)
    keep = [i for i in rep["incidents"]
            if matches(ident, incident_id(key, i["resource"]), i["resource"], [t for t in tds if t.resource == i["resource"]])]
    if not keep:
        raise ConfigProblem(f"--incident {ident}: no such incident (see `dlp-sensor report`)")
    return {**rep, "incidents": keep}


def _html_report(config_file, state_dir, out_dir: str | None, only: str | None) -> None:
    from sensor.enforce.ledger import Ledger
    from sensor.enforce.registry import Registry
    from sensor.enforce.report_html import incident_pages
    key, cfg = _key(config_file, state_dir)
    sd = cfg.state_dir
    pages = incident_pages(Ledger(sd / "ledger.db"), Registry(sd / "takedowns.db"), key, state_dir=sd,
                           admin=cfg.admin, only=only)
    if only is not None and not pages:
        raise ConfigProblem(f"--incident {only}: no such incident (see `dlp-sensor report`)")
    if out_dir is None:
        if len(pages) != 1:
            raise ConfigProblem(f"--format html: {len(pages)} incidents; give --out DIR (one page each) "
                                "or --incident ID (one page to stdout)")
        click.echo(pages[0].html, nl=False)
        return
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for p in pages:                 # 0600 like the rest of the state: client hashes are pseudonymous data
        fd = os.open(out / p.filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(p.html)
        click.echo(f"{out / p.filename}  {p.resource}")
    if not pages:
        click.echo("No incidents: nothing alerted, tripped or was taken down.")
