"""Run every signature's examples and negative examples: a rule without tests does not ship."""
from __future__ import annotations

from dataclasses import dataclass

from sensor.detect.engine import Engine
from sensor.detect.keys import redact
from sensor.detect.policy import Policy
from sensor.detect.scanner import ExchangeScanner

_EXAMPLE_KEY = b"signature-examples-are-not-secret"


@dataclass
class ExampleFailure:
    signature: str
    example: str          # examples are synthetic by rule, but we still print them redacted
    expected: bool
    found: dict[str, int]

    def __str__(self) -> str:
        want = "should match" if self.expected else "should not match"
        return f"{self.signature}: example {redact(self.example.encode())!r} {want} (found {self.found})"


def findings_for(engine: Engine, text: str) -> dict[str, int]:
    sc = ExchangeScanner(engine, Policy(), key=_EXAMPLE_KEY)
    sc.feed(text.encode())
    return sc.finish().findings


def run_examples(engine: Engine, only: set[str] | None = None) -> tuple[int, list[ExampleFailure]]:
    """Return (number of examples run, failures)."""
    failures = []
    n = 0
    for sig in engine.signatures:
        if only and sig.id not in only:
            continue
        for ex, expected in [(e, True) for e in sig.examples] + [(e, False) for e in sig.negative_examples]:
            n += 1
            found = findings_for(engine, ex)
            if (sig.id in found) != expected:
                failures.append(ExampleFailure(sig.id, ex, expected, found))
    return n, failures
