"""Scan report formats: text for people, JSON Lines for machines, SARIF 2.1.0 for CI gates."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TextIO

import click
import orjson

from sensor import __version__
from sensor.detect.engine import Engine
from sensor.detect.scanner import ScanResult

_COLOR = {"trip": "red", "alert": "yellow", "pass": "green", "error": "magenta"}


@dataclass
class FileReport:
    path: str
    result: ScanResult | None
    error: str | None = None

    @property
    def verdict(self) -> str:
        return self.result.verdict if self.result else "error"

    def to_json(self) -> dict[str, Any]:
        if self.result is None:
            return {"path": self.path, "verdict": "error", "error": self.error}
        r = self.result
        return {"path": self.path, "verdict": r.verdict, "records": r.records, "findings": dict(sorted(r.findings.items())),
                "bytes": r.bytes, "decoded_bytes": r.decoded_bytes, "seconds": round(r.seconds, 6),
                "notes": r.notes, "strong_records": r.strong_records, "person_records": r.person_records,
                "samples": {k: [s.__dict__ for s in v] for k, v in sorted(r.samples.items())},
                "edm_records": r.edm_records, "edm": dict(sorted(r.edm.items())),
                **({"edm_rows": r.edm_rows} if r.edm_rows else {})}


def write_json_line(rep: FileReport, out: TextIO) -> None:
    out.write(orjson.dumps(rep.to_json()).decode() + "\n")
    out.flush()


def write_text(rep: FileReport, out: TextIO, color: bool) -> None:
    v = rep.verdict
    tag = click.style(f"{v.upper():5}", fg=_COLOR[v], bold=v == "trip") if color else f"{v.upper():5}"
    if rep.result is None:
        out.write(f"{tag} {rep.path}: {rep.error}\n")
        return
    r = rep.result
    counts = ", ".join(f"{k}={n}" for k, n in sorted(r.findings.items(), key=lambda kv: -kv[1]))
    line = f"{tag} {rep.path}  records={r.records}"
    if counts:
        line += f"  [{counts}]"
    if r.edm_records:
        line += "  edm_records=" + str(r.edm_records) + " (" + ", ".join(f"{k}={n}" for k, n in sorted(r.edm.items())) + ")"
    out.write(line + "\n")
    if r.verdict != "pass":
        for sid, samples in sorted(r.samples.items()):
            shown = ", ".join(s.redacted for s in samples)
            out.write(f"        {sid}: {shown}\n")
    for n in r.notes:
        out.write(f"        note: {n}\n")


def sarif(reports: list[FileReport], engine: Engine) -> dict[str, Any]:
    rules = [{"id": s.id, "name": s.name, "shortDescription": {"text": s.name},
              "defaultConfiguration": {"level": "error" if s.severity == "high" else "warning"},
              "properties": {"category": s.category, "severity": s.severity}} for s in engine.signatures]
    results = []
    level = {"trip": "error", "alert": "warning", "pass": "note"}
    for rep in reports:
        if rep.result is None:
            continue
        r = rep.result
        for sid, n in sorted(r.findings.items()):
            results.append({
                "ruleId": sid, "level": level[r.verdict],
                "message": {"text": f"{n} distinct {sid} value(s); file verdict {r.verdict} "
                                    f"with {r.records} person record(s)"},
                "locations": [{"physicalLocation": {"artifactLocation": {"uri": rep.path}}}],
                "properties": {"verdict": r.verdict, "records": r.records, "distinct": n,
                               "samples": [s.redacted for s in r.samples.get(sid, [])]},
            })
    invocation_ok = not any(rep.result is None for rep in reports)
    return {"$schema": "https://json.schemastore.org/sarif-2.1.0.json", "version": "2.1.0",
            "runs": [{"tool": {"driver": {"name": "dlp-sensor", "version": __version__,
                                          "informationUri": "https://example.invalid/dlp-sensor",
                                          "rules": rules}},
                      "invocations": [{"executionSuccessful": invocation_ok}],
                      "results": results}]}
