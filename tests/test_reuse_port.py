"""`dlp-sensor proxy --reuse-port`: several sidecar processes share one port and one state dir
(how a host uses more than one core, bench/proxy.py), and the kernel spreads connections over them."""
from __future__ import annotations

import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.procs import Sidecar, free_port, site_fixture

site = site_fixture(20)


def exchanges(sc: Sidecar) -> float:
    """Requests this process proxied (its own per-exchange histogram's count, every outcome)."""
    text = urllib.request.urlopen(sc.metrics + "/metrics", timeout=5).read().decode()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "dlp_proxy_request_duration_seconds_count")


def test_two_processes_share_the_port(site, tmp_path: Path) -> None:
    first = Sidecar.create(tmp_path, site.url, {"proxy": {"mode": "monitor"}}, extra_args=["--reuse-port"])
    second = Sidecar(first.state, first.config, first.port, free_port(), free_port(), ["--reuse-port"])
    try:
        first.start()
        second.start()                       # binds the same port: it would fail without SO_REUSEPORT
        for _ in range(64):                  # a new connection each: the kernel picks a process per connection
            with urllib.request.urlopen(first.url + "/contact.html", timeout=10) as r:
                assert r.status == 200
        counts = [exchanges(first), exchanges(second)]
        assert sum(counts) == 64
        assert all(c > 0 for c in counts), counts
        assert first.proc.poll() is None and second.proc.poll() is None
    finally:
        second.stop()
        first.stop()
