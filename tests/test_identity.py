"""Who the client is (sensor.exchange.identity): forwarded headers only from trusted proxies, one
canonical address, one keyed hash for the alert, the ledger and the fleet."""
from __future__ import annotations

import logging
import sqlite3
import time

import pytest
from multidict import CIMultiDict

from sensor.alerts.schema import AlertContext, build_alert
from sensor.config import ConfigError, parse_config
from sensor.detect.keys import fingerprint
from sensor.enforce.ledger import Ledger
from sensor.exchange.identity import client_address, client_hash, forwarded_hops, parse_node
from tests.conftest import KEY


def cfg(**clients):
    return parse_config({"clients": clients} if clients else {})


LB = cfg(trusted_proxies=["10.0.0.0/8", "fd00::/8"])


# -- the default: no header is believed --------------------------------------------------------

@pytest.mark.parametrize("header", ["x-forwarded-for", "forwarded", "x-real-ip"])
def test_no_trusted_proxy_means_every_forwarded_header_is_ignored(header):
    c = cfg(header=header)
    spoof = {"x-forwarded-for": "203.0.113.9", "forwarded": "for=203.0.113.9", "x-real-ip": "203.0.113.9"}
    assert client_address(c, "198.51.100.7", spoof) == "198.51.100.7"
    assert client_address(cfg(), "10.1.2.3", spoof) == "10.1.2.3"      # private, but not configured


def test_spoofed_xff_from_an_untrusted_peer_is_ignored():
    assert client_address(LB, "198.51.100.7", {"x-forwarded-for": "10.0.0.1, 203.0.113.9"}) == "198.51.100.7"


# -- trusted chains ------------------------------------------------------------------------------

def test_trusted_peer_gives_the_right_most_untrusted_hop():
    # a client's own (forged) left-most entries never win over what the trusted proxies appended
    h = {"x-forwarded-for": "1.1.1.1, 203.0.113.9, 10.0.0.5"}
    assert client_address(LB, "10.0.0.2", h) == "203.0.113.9"


def test_a_chain_of_trusted_proxies_is_walked_to_the_first_untrusted():
    h = {"x-forwarded-for": "203.0.113.9, 10.9.9.9, 10.0.0.5"}
    assert client_address(LB, "10.0.0.2", h) == "203.0.113.9"
    # every hop trusted: the left-most is the client
    assert client_address(LB, "10.0.0.2", {"x-forwarded-for": "10.3.3.3, 10.0.0.5"}) == "10.3.3.3"


def test_no_header_from_a_trusted_peer_is_the_peer():
    assert client_address(LB, "10.0.0.2", {}) == "10.0.0.2"
    assert client_address(LB, "10.0.0.2", {"x-forwarded-for": "  "}) == "10.0.0.2"


def test_repeated_header_lines_are_one_list_in_order():
    h = CIMultiDict([("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-For", "10.0.0.5")])
    assert client_address(LB, "10.0.0.2", h) == "203.0.113.9"
    h = CIMultiDict([("X-Forwarded-For", "10.0.0.5"), ("X-Forwarded-For", "203.0.113.9")])
    assert client_address(LB, "10.0.0.2", h) == "203.0.113.9"


def test_cidr_and_bare_addresses_are_both_accepted():
    c = cfg(trusted_proxies=["192.0.2.1", "2001:db8::/32"])
    assert client_address(c, "192.0.2.1", {"x-forwarded-for": "203.0.113.9"}) == "203.0.113.9"
    assert client_address(c, "192.0.2.2", {"x-forwarded-for": "203.0.113.9"}) == "192.0.2.2"
    assert client_address(c, "[2001:db8::5]:443", {"x-forwarded-for": "203.0.113.9"}) == "203.0.113.9"


# -- RFC 7239 Forwarded ----------------------------------------------------------------------------

FWD = cfg(trusted_proxies=["10.0.0.0/8"], header="forwarded")


def test_forwarded_header_for_values():
    h = {"forwarded": 'for=198.51.100.1;proto=https, for="[2001:db8:cafe::17]:4711";by=10.0.0.5, for=10.0.0.7'}
    assert client_address(FWD, "10.0.0.2", h) == "2001:db8:cafe::17"
    assert client_address(FWD, "10.0.0.2", {"forwarded": 'For="203.0.113.9:80"'}) == "203.0.113.9"
    # a quoted comma or semicolon does not split the element
    h = {"forwarded": 'for=203.0.113.9;host="a,b;c", for=10.0.0.7'}
    assert client_address(FWD, "10.0.0.2", h) == "203.0.113.9"


def test_forwarded_unknown_or_obfuscated_stops_the_walk():
    assert client_address(FWD, "10.0.0.2", {"forwarded": "for=203.0.113.9, for=unknown"}) == "10.0.0.2"
    assert client_address(FWD, "10.0.0.2", {"forwarded": "for=203.0.113.9, for=_hidden, for=10.0.0.7"}) == "10.0.0.7"
    assert client_address(FWD, "10.0.0.2", {"forwarded": "proto=https"}) == "10.0.0.2"       # no for=
    assert client_address(FWD, "10.0.0.2", {"forwarded": "for=1.1.1.1;for=2.2.2.2"}) == "10.0.0.2"
    # the X-Forwarded-For of the same request is not read when forwarded is the header
    assert client_address(FWD, "10.0.0.2", {"x-forwarded-for": "203.0.113.9"}) == "10.0.0.2"


def test_x_real_ip_is_one_address():
    c = cfg(trusted_proxies=["10.0.0.0/8"], header="x-real-ip")
    assert client_address(c, "10.0.0.2", {"x-real-ip": "203.0.113.9"}) == "203.0.113.9"
    assert client_address(c, "198.51.100.7", {"x-real-ip": "203.0.113.9"}) == "198.51.100.7"
    assert client_address(c, "10.0.0.2", {"x-real-ip": "not an address"}) == "10.0.0.2"


# -- IPv6, ports, canonical form -------------------------------------------------------------------

@pytest.mark.parametrize("node,want", [
    ("203.0.113.9", "203.0.113.9"), ("203.0.113.9:4711", "203.0.113.9"), (' "203.0.113.9" ', "203.0.113.9"),
    ("2001:DB8:0:0::1", "2001:db8::1"), ("[2001:db8::1]", "2001:db8::1"), ("[2001:db8::1]:443", "2001:db8::1"),
    ("::ffff:203.0.113.9", "203.0.113.9"), ("[::ffff:203.0.113.9]:80", "203.0.113.9"),
    ("ipv4:127.0.0.1:50000", "127.0.0.1"), ("ipv6:[::1]:50000", "::1"), ("fe80::1%eth0", "fe80::1"),
])
def test_nodes_are_read_in_every_form(node, want):
    assert str(parse_node(node)) == want


@pytest.mark.parametrize("node", ["", "unknown", "_hidden", "example.org", "203.0.113", "203.0.113.9:http",
                                  "[2001:db8::1", "[2001:db8::1]x", "1.2.3.4:5:6", "999.1.1.1", "<script>",
                                  "203.0.113.9:123456"])
def test_garbage_is_no_address(node):
    assert parse_node(node) is None


def test_ipv6_chain_and_mapped_peer():
    h = {"x-forwarded-for": "[2001:db8::9]:5555, fd00::5"}
    assert client_address(LB, "fd00::2", h) == "2001:db8::9"
    assert client_address(LB, "::ffff:10.0.0.2", {"x-forwarded-for": "203.0.113.9"}) == "203.0.113.9"


def test_malformed_entries_stop_the_walk_at_the_last_good_address():
    assert client_address(LB, "10.0.0.2", {"x-forwarded-for": "203.0.113.9, garbage, 10.0.0.5"}) == "10.0.0.5"
    assert client_address(LB, "10.0.0.2", {"x-forwarded-for": "203.0.113.9,,10.0.0.5"}) == "10.0.0.5"
    assert client_address(LB, "10.0.0.2", {"x-forwarded-for": "garbage"}) == "10.0.0.2"
    assert client_address(LB, "10.0.0.2", {"x-forwarded-for": "\x00" * 5000}) == "10.0.0.2"


def test_an_unknown_peer_ignores_the_headers():
    assert client_address(LB, "", {"x-forwarded-for": "203.0.113.9"}) == ""
    assert client_address(LB, "unix:/run/sock", {"x-forwarded-for": "203.0.113.9"}) == "unix:/run/sock"


def test_a_long_chain_costs_at_most_max_hops():
    h = {"x-forwarded-for": ", ".join(["10.0.0.1"] * 10_000)}
    assert client_address(LB, "10.0.0.2", h) == "10.0.0.1"


def test_forwarded_hops_order():
    assert forwarded_hops({"x-forwarded-for": "a, b ,c"}, "x-forwarded-for") == ["a", "b", "c"]
    assert forwarded_hops({"forwarded": "for=a, by=b, for=c"}, "forwarded") == ["a", None, "c"]


# -- configuration -----------------------------------------------------------------------------------

def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"clients\.trusted_proxies\[1\]: must be an IP address or CIDR"):
        cfg(trusted_proxies=["10.0.0.0/8", "lb.example.org"])
    with pytest.raises(ConfigError, match=r"clients\.header: must be one of"):
        cfg(header="x-client-ip")
    with pytest.raises(ConfigError, match=r"clients\.trusted: unknown key"):
        parse_config({"clients": {"trusted": ["10.0.0.0/8"]}})


def test_deprecated_trust_forwarded_trusts_one_hop_from_any_peer_and_warns(caplog):
    with caplog.at_level(logging.WARNING):
        c = parse_config({"proxy": {"trust_forwarded": True}})
    assert "proxy.trust_forwarded is deprecated" in caplog.text
    # one hop: the entry the peer appended, never the client's own left-most claim
    assert client_address(c, "198.51.100.7", {"x-forwarded-for": "1.1.1.1, 203.0.113.9"}) == "203.0.113.9"
    assert client_address(c, "198.51.100.7", {}) == "198.51.100.7"
    # with trusted proxies too, the walk continues past them
    c = parse_config({"proxy": {"trust_forwarded": True}, "clients": {"trusted_proxies": ["10.0.0.0/8"]}})
    assert client_address(c, "198.51.100.7", {"x-forwarded-for": "1.1.1.1, 203.0.113.9, 10.0.0.5"}) == "203.0.113.9"


# -- one keyed hash ------------------------------------------------------------------------------------

def test_client_hash_is_keyed_canonical_and_the_alerts():
    h = client_hash(KEY, "203.0.113.9")
    assert h.startswith("hmac-sha256:") and len(h) == len("hmac-sha256:") + 24
    assert h == client_hash(KEY, "::ffff:203.0.113.9") == client_hash(KEY, "203.0.113.9:4711")
    assert h != client_hash(bytes(32), "203.0.113.9")
    assert client_hash(KEY, "2001:db8::1") == client_hash(KEY, "[2001:DB8:0::1]:443")
    assert h == fingerprint(KEY, b"203.0.113.9")          # the form alerts have always carried
    ctx = AlertContext("x", "s", "r", {}, "GET", 200, "203.0.113.9", "monitor", "logged")

    class R:                                                # the fields build_alert reads of a ScanResult
        verdict, records, strong_records, person_records, findings, samples = "alert", 1, 1, 1, {}, {}
        edm, bytes, trip_at_byte, notes = {}, 1, None, []
    assert build_alert(ctx, R(), key=KEY, now=0.0)["dlp"]["client"]["hash"] == h


def test_a_ledger_of_the_old_client_hash_forgets_those_hashes_and_keeps_its_counts(tmp_path):
    led = Ledger(tmp_path / "l.db")
    new = client_hash(KEY, "203.0.113.9")
    led.served("site/r.csv", "0123456789abcdef", sent=10, completed=True, partial=False, records=3, verdict="alert",
               now=time.time())
    led.served("site/r.csv", new, sent=10, completed=True, partial=False, records=3, verdict="alert", now=time.time())
    led.flush()
    led.db.execute("CREATE TABLE IF NOT EXISTS evidence (resource TEXT NOT NULL, at REAL NOT NULL, "
                   "verdict TEXT NOT NULL, client TEXT, doc BLOB NOT NULL)")
    led.db.execute("INSERT INTO evidence VALUES ('site/r.csv', ?, 'alert', '0123456789abcdef', '{}')", (time.time(),))
    led.db.execute("PRAGMA user_version = 1")               # as a ledger written before the one client hash
    led.db.commit()
    led.close()
    led = Ledger(tmp_path / "l.db")
    assert [c for c, _ in led.clients_of("site/r.csv")] == [new]     # the BLAKE2b one cannot be joined: gone
    assert led.incidents()[0]["clients"] == 2                        # the count stays
    assert led.db.execute("SELECT client FROM evidence").fetchall() == [(None,)]
    assert led.db.execute("PRAGMA user_version").fetchone()[0] == 2
    led.close()
    assert sqlite3.connect(tmp_path / "l.db").execute("SELECT count(*) FROM clients").fetchone()[0] == 1

