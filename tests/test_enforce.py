"""The takedown registry, resource keys and the exposure ledger, on their own."""
from __future__ import annotations

import sqlite3

import pytest

from sensor.enforce.ledger import Ledger
from sensor.enforce.registry import Registry
from sensor.enforce.resource import QueryRule, normalize, public_url


@pytest.mark.parametrize("host, target, rule, want", [
    ("Site.GOV:80", "/exports/../exports//Roster.csv?x=1", QueryRule(), "site.gov/exports/Roster.csv"),
    ("site.gov", "/a%20b/c/", QueryRule(), "site.gov/a%20b/c/"),
    ("site.gov:8443", "/r.csv?b=2&a=1", QueryRule("keep"), "site.gov:8443/r.csv?a=1&b=2"),
    ("site.gov", "/r.csv?id=7&session=zz", QueryRule.parse(["id"]), "site.gov/r.csv?id=7"),
    ("ignored", "http://other.gov/x/./y", QueryRule(), "other.gov/x/y"),
    ("site.gov", "/../../etc", QueryRule(), "site.gov/etc"),
])
def test_normalize(host, target, rule, want):
    assert normalize(host, target, rule) == want


def test_public_url_drops_query_and_fragment():
    u = public_url("https", "site.gov", "/r.csv?token=secret#frag")
    assert u == {"scheme": "https", "domain": "site.gov", "path": "/r.csv", "original": "https://site.gov/r.csv"}


def test_registry_is_idempotent_audited_and_shared_between_connections(tmp_path):
    a, b = Registry(tmp_path / "t.db"), Registry(tmp_path / "t.db")
    t1 = a.add("site/x", actor="sensor:1", reason="trip", fingerprint="f1")
    t2 = a.add("site/x", actor="sensor:2", reason="trip again")
    assert t1.id == t2.id and a.blocked("site/x") == t1.id and a.blocked_content("f1") == t1.id
    assert b.blocked("site/x") == t1.id                      # another connection sees it at once
    with pytest.raises(ValueError):
        b.lift(t1.id, actor="", reason="x")
    assert b.lift("site/x", actor="bob", reason="false positive").lifted_by == "bob"
    assert a.blocked("site/x") is None and a.blocked_content("f1") is None
    assert b.lift("site/x", actor="bob", reason="again") is None
    assert [(e["action"], e["actor"]) for e in a.audit()] == [("add", "sensor:1"), ("lift", "bob")]
    a.add("site/x", actor="carol", reason="re-added")
    assert len(a.list()) == 1 and len(a.list(include_lifted=True)) == 2
    db = sqlite3.connect(tmp_path / "t.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_ledger_counts_before_detection_and_takedown(tmp_path):
    led = Ledger(tmp_path / "l.db")
    for i, client in enumerate(["c1", "c2", "c1"]):
        led.served("site/r.csv", client, sent=100, completed=True, partial=False, records=40, verdict="pass", now=10 + i)
    led.served("site/r.csv", "c3", sent=50, completed=False, partial=False, records=45, verdict="trip", now=20)
    led.mark("site/r.csv", "tripped", now=20)
    led.mark("site/r.csv", "taken_down", now=21)
    led.refused("site/r.csv", now=22)
    led.served("site/other", "c1", sent=10, completed=True, partial=False, records=0, verdict="pass", now=23)
    [r] = led.incidents()                                    # "other" never alerted: not an incident
    assert (r["served"], r["completed"], r["bytes"], r["refused"]) == (4, 3, 350, 1)
    assert (r["served_at_trip"], r["clients_at_trip"], r["served_at_takedown"]) == (4, 3, 4)
    assert (r["first_served"], r["tripped_at"], r["taken_down_at"], r["max_records"]) == (10, 20, 21, 45)
    led.mark("site/r.csv", "tripped", now=30)                # the first trip stays the first
    assert led.incidents()[0]["tripped_at"] == 20
    led.close()
    assert Ledger(tmp_path / "l.db").incidents()[0]["served"] == 4     # durable
