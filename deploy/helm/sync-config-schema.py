#!/usr/bin/env python3
"""Embed the sensor's config-file JSON Schema in the chart's values.schema.json under `config`.

Why: `.Values.config` is merged into the sensor's config file; with the sensor's own schema there,
`helm install`/`lint` refuse a typo'd or mistyped key before any pod starts. The sensor schema
(draft 2020-12, `$defs`) is rewritten into the chart schema's draft-07 `definitions`, prefixed
`config.`, and `required` is dropped at the top of every section because `config` is a partial
override merged over what the chart renders. `tests/test_chart.py` fails when the file is stale:
run `python deploy/helm/sync-config-schema.py` after a config schema change.
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

CHART_SCHEMA = Path(__file__).resolve().parent / "dlp-sensor" / "values.schema.json"
PREFIX = "config."


def _rewrite(node):
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v.startswith("#/$defs/"):
                out[k] = "#/definitions/" + PREFIX + v.removeprefix("#/$defs/")
            elif k == "discriminator":          # OpenAPI's keyword, not JSON Schema's: oneOf + const decide
                continue
            else:
                out[k] = _rewrite(v)
        return out
    if isinstance(node, list):
        return [_rewrite(v) for v in node]
    return node


def embedded(values_schema: dict, config_schema: dict) -> dict:
    """``values_schema`` with ``properties.config`` and the ``config.*`` definitions from ``config_schema``."""
    out = copy.deepcopy(values_schema)
    defs = {k: v for k, v in out.get("definitions", {}).items() if not k.startswith(PREFIX)}
    for name, d in config_schema.get("$defs", {}).items():
        defs[PREFIX + name] = _rewrite(d)
    out["definitions"] = defs
    top = {k: _rewrite(v) for k, v in config_schema.items() if k not in ("$schema", "$defs", "title", "required")}
    top["description"] = ("The sensor's own config file (the sensor's JSON Schema, `dlp-sensor config schema`), "
                          "merged over what the chart renders.")
    out["properties"]["config"] = top
    return out


def main() -> int:
    sys.path.insert(0, str(CHART_SCHEMA.parents[3]))
    from sensor.config import json_schema
    text = json.dumps(embedded(json.loads(CHART_SCHEMA.read_text()), json_schema()), indent=2) + "\n"
    CHART_SCHEMA.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
