"""The compiled core's twin of ``precision.Evidence.email`` (``evidence_email`` in
sensor/detect/_hscore.pyx) leaves the evidence exactly as the method does: same email count, same
domain table (lowered domain keys, counts, the 4096-domain cap), on real, odd and random values."""
from __future__ import annotations

import random

import pytest

from sensor.detect import core
from sensor.detect.precision import Evidence
from tests.conftest import require_built


@pytest.fixture(scope="module")
def hscore():
    return require_built(core._hscore, "sensor.detect._hscore")


def _values(rng: random.Random, n: int) -> list[bytes]:
    fixed = [b"maria.garcia@Gmail.COM", b"JGARCIA@YAHOO.COM", b"no-at-sign.example", b"a@b@C.d",
             b"@", b"x@", b"", b"\xc3\x89mile@\xc3\x89COLE.fr", b"u@[ZZ]\xff\x80.Org"]
    alphabet = b"aZ@.-_\x80\xffQz09"
    rand = [bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 24))) for _ in range(n)]
    return fixed + rand


def test_twin_matches_method(hscore):
    rng = random.Random(19)
    py, c = Evidence(), Evidence()
    for v in _values(rng, 3000):
        py.email(v)
        hscore._evidence_email(c, v)
    assert (c.emails, c.domains) == (py.emails, py.domains)


def test_twin_keeps_the_domain_cap(hscore):
    py, c = Evidence(), Evidence()
    for k in range(5000):                    # past 4096 domains: known ones still count, new ones not
        v = b"u@D%d.example" % (k % 4500)
        py.email(v)
        hscore._evidence_email(c, v)
    assert len(py.domains) == 4096
    assert (c.emails, c.domains) == (py.emails, py.domains)
