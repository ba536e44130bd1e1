"""In-memory sensors for the session and scan-pool tests: a real ``Sensor`` (real engine, registry,
ledger and spool on a temporary state dir), no subprocess.

One place for the fixtures both test modules used to copy: ``from tests.sensors import detector``
(pytest finds an imported fixture in the importing module) and ``make = sensor_fixture(...)``.
"""
from __future__ import annotations

from dataclasses import replace

import pytest

from sensor.config import Config, with_overrides
from sensor.runtime import Sensor, build_detector


@pytest.fixture(scope="module")
def detector():
    """The default pack compiled once per module (compiling per test would dominate the run)."""
    return build_detector(Config())


def sensor_fixture(**proxy_defaults):
    """A fixture ``make(scan_workers=None, **proxy)``: a Sensor on a fresh state dir, no alert sinks,
    closed at the end; ``scan_workers`` as in the config (None: one per core, 0: on the loop);
    ``proxy`` keys (over ``proxy_defaults``) override the proxy section (``mode="monitor"``,
    ``holdback=0``...). A module binds it to the name ``make``; ``detector`` must be in scope."""

    @pytest.fixture
    def make(tmp_path, detector):
        made: list[Sensor] = []

        def sensor(scan_workers: int | None = None, **proxy) -> Sensor:
            c = with_overrides(Config(), state_dir=str(tmp_path / f"state{len(made)}"))
            c = replace(c, sinks=[], scan_workers=scan_workers,
                        proxy=replace(c.proxy, **{**proxy_defaults, **proxy}))
            s = Sensor(c, detector)
            made.append(s)
            return s
        yield sensor
        for s in made:
            s.ledger.close()
            s.registry.close()
            s.spool.close()

    return make
