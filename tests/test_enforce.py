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


def test_ledger_keeps_client_hashes_only_for_personal_data_and_only_for_the_retention(tmp_path):
    led = Ledger(tmp_path / "l.db", client_retention_days=1)
    day = 86400.0
    for i in range(50):                                      # visitors of a page with no personal data
        led.served("site/index.html", f"v{i}", sent=10, completed=True, partial=False, records=0, verdict="pass",
                   now=i)
    led.served("site/r.csv", "c1", sent=10, completed=True, partial=False, records=3, verdict="pass", now=1)
    led.served("site/r.csv", "c2", sent=10, completed=True, partial=False, records=40, verdict="alert", now=1.5 * day)
    led.flush()
    assert led.db.execute("SELECT count(*) FROM clients").fetchone()[0] == 2
    assert led.prune(now=2 * day) == 1                       # c1 is older than a day; c2 is not
    [r] = led.incidents()
    assert r["clients"] == 2                                 # the count survives the pruning
    led.served("site/r.csv", "c2", sent=10, completed=True, partial=False, records=40, verdict="alert", now=2 * day)
    led.flush()
    assert led.incidents()[0]["clients"] == 2                # still known: not counted twice
    led.close()


def test_ledger_written_before_the_clients_column_is_migrated(tmp_path):
    db = sqlite3.connect(tmp_path / "old.db")
    db.executescript("""CREATE TABLE resources (resource TEXT PRIMARY KEY, first_served REAL, last_served REAL,
        served INTEGER NOT NULL DEFAULT 0, completed INTEGER NOT NULL DEFAULT 0, partial INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0, refused INTEGER NOT NULL DEFAULT 0, max_records INTEGER NOT NULL DEFAULT 0,
        alerts INTEGER NOT NULL DEFAULT 0, trips INTEGER NOT NULL DEFAULT 0, first_alert REAL,
        tripped_at REAL, served_at_trip INTEGER, clients_at_trip INTEGER,
        taken_down_at REAL, served_at_takedown INTEGER, clients_at_takedown INTEGER) WITHOUT ROWID;
        CREATE TABLE clients (resource TEXT NOT NULL, client TEXT NOT NULL, first_seen REAL NOT NULL,
        PRIMARY KEY (resource, client)) WITHOUT ROWID;
        INSERT INTO resources(resource, served, alerts) VALUES ('site/r.csv', 3, 1);
        INSERT INTO clients VALUES ('site/r.csv', 'a', 1), ('site/r.csv', 'b', 2);""")
    db.commit()
    db.close()
    led = Ledger(tmp_path / "old.db")
    assert led.incidents()[0]["clients"] == 2
    led.close()
