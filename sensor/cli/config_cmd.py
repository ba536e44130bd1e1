"""``dlp-sensor config schema|check|reference``: the configuration file's schema, checked before deploying."""
from __future__ import annotations

from pathlib import Path

import click
import orjson


class ConfigProblem(click.ClickException):
    """A file the sensor would refuse at start-up: exit 2, the key named, no traceback."""

    exit_code = 2


@click.group("config")
def config() -> None:
    """Export the configuration file's JSON Schema, or check a file against it."""


@config.command("schema")
def schema() -> None:
    """Print the JSON Schema of the configuration file (for editors, CI and the Helm chart)."""
    from sensor.config import json_schema
    click.echo(orjson.dumps(json_schema(), option=orjson.OPT_INDENT_2).decode())


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--offline", is_flag=True,
              help="Check the file's shape only: do not read secrets (*_file, *_env), do not require the files it "
                   "names, do not load the signature packs and policy. For a config rendered away from its host.")
def check(file: str, offline: bool) -> None:
    """Validate FILE as the sensor would at start-up: exit 0 if it would start, 2 (with the key) if not."""
    from sensor.config import ConfigError, load_config      # here: pydantic is for the commands that run
    try:
        cfg = load_config(Path(file), resolve=not offline)
    except ConfigError as e:
        raise ConfigProblem(str(e)) from None
    if not offline:
        from sensor.detect.pack import PackError
        from sensor.detect.policy import PolicyError
        from sensor.runtime import build_detector
        try:
            build_detector(cfg)
        except (PackError, PolicyError) as e:
            raise ConfigProblem(f"{file}: {e}") from None
    click.echo(f"{file}: ok" + (" (shape only)" if offline else ""))


@config.command("reference")
def reference() -> None:
    """Print the configuration reference (Markdown) generated from the schema: docs/config-reference.md."""
    from sensor.config_reference import render
    click.echo(render(), nl=False)
