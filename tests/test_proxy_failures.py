"""Scanner internal errors follow the route's fail-open / fail-closed choice (sidecar in-process)."""
from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from sensor.config import Config, ProxyConfig, ProxyRoute
from sensor.pipeline import BodyScan
from sensor.service import start_proxy
from tests.procs import site_fixture


site = site_fixture(10)


async def test_scanner_error_fails_open_or_closed_per_route(site, tmp_path, monkeypatch):
    real = BodyScan.write

    def broken(self, data):
        """The second chunk of every body breaks the scanner."""
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls >= 2:
            raise RuntimeError("scanner bug")
        return real(self, data)

    monkeypatch.setattr(BodyScan, "write", broken)
    cfg = Config(state_dir=tmp_path, metrics=None, admin=None, sinks=[],
                 proxy=ProxyConfig(listen="127.0.0.1:0", upstream=site.url, holdback=0, on_error="open", routes=(
                     ProxyRoute("/stream/closed/*", "enforce", "closed", 0),)))
    run = await start_proxy(cfg)
    base = f"http://127.0.0.1:{run.addresses['proxy'][1]}"
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(base + "/big?mb=1") as r:           # fail-open: forwarded unscanned
                assert r.status == 200 and len(await r.read()) == 1 << 20
            (Path(site.root) / "closed").mkdir(exist_ok=True)
            (Path(site.root) / "closed" / "page.html").write_bytes(b"x" * 2_000_000)   # several reads
            async with s.get(base + "/stream/closed/page.html") as r:   # fail-closed: cut mid-body
                with pytest.raises(aiohttp.ClientPayloadError):
                    await r.read()
        m = run.sensor.metrics
        assert m.failures.labels(reason="internal", action="open")._value.get() == 1
        assert m.failures.labels(reason="internal", action="closed")._value.get() == 1
        assert m.active_exchanges._value.get() == 0
    finally:
        await run.stop()
