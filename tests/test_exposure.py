"""Resource keys on the site (hosts, fold/refuse, pagination) and exposure across responses, in memory."""
from __future__ import annotations

import pytest

from sensor.config import ConfigError, Config, parse_config
from sensor.enforce.exposure import ExposureSettings, ExposureTracker
from sensor.enforce.resource import (PAGE_PARAMS, QueryRule, SiteRule, host_allowed, param_name, rekey,
                                     resource_of, resource_of_url)
from tests.conftest import scan_bytes
from tests.people_api import page_body, people


def _cfg(**raw) -> Config:
    return parse_config(raw)


# -- resource keys --------------------------------------------------------------------------------

def test_without_site_hosts_every_host_is_one_site():
    c = _cfg()
    keys = {resource_of(c, f"h{i}.attacker.example:{8000 + i}", "/exports/roster.csv") for i in range(300)}
    assert keys == {"*/exports/roster.csv"}
    assert resource_of(c, "x", "http://other.example/exports/roster.csv") == "*/exports/roster.csv"
    assert resource_of(c, "x", "//other.example/exports/roster.csv") == "*/other.example/exports/roster.csv"
    assert host_allowed(c, "anything.example")


def test_site_hosts_fold_to_the_canonical_host_case_port_and_dot_ignored():
    c = _cfg(site={"hosts": ["WWW.Example.gov.", "example.gov"]})
    assert c.site == SiteRule(("www.example.gov", "example.gov"), "fold")
    for host in ("www.example.gov", "EXAMPLE.GOV:443", "example.gov.", "www.example.gov:8443", "evil.example",
                 "[::1]:8000", ""):
        assert resource_of(c, host, "/a/../exports//r.csv") == "www.example.gov/exports/r.csv", host
        assert host_allowed(c, host)


def test_refuse_unknown_host_keeps_one_key_and_says_refuse():
    c = _cfg(site={"hosts": ["www.example.gov", "example.gov"], "unknown_host": "refuse"})
    assert host_allowed(c, "Example.GOV:80") and host_allowed(c, "www.example.gov.")
    assert not host_allowed(c, "evil.example") and not host_allowed(c, "")
    assert not host_allowed(c, "www.example.gov", "http://evil.example/x")     # absolute-form target
    assert resource_of(c, "evil.example", "/r.csv") == "www.example.gov/r.csv"  # never a new key


@pytest.mark.parametrize("bad, key", [({"hosts": "www.example.gov"}, "site.hosts"),
                                      ({"hosts": ["http://www.example.gov/"]}, "site.hosts"),
                                      ({"unknown_host": "drop"}, "site.unknown_host"),
                                      ({"host": ["x"]}, "site.host")])
def test_bad_site_config_names_the_key(bad, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _cfg(site=bad)


@pytest.mark.parametrize("query", ["keep", ["id", "page", "offset", "cursor"]])
def test_pagination_folded_even_when_the_query_is_kept(query):
    c = _cfg(takedown={"query": query})
    want = resource_of(c, "h", "/api/people?id=7")
    for q in ("page=3", "offset=40&limit=20", "cursor=abc", "perPage=5&pageNumber=2", "page%5Bsize%5D=5",
              "page[number]=9", "$skip=10&$top=5", "continuationToken=zz", "start=0&rows=10"):
        assert resource_of(c, "h", f"/api/people?id=7&{q}") == want, q
    assert resource_of(c, "h", "/api/people?id=8&page=1") != want       # another id is another resource


def test_page_params_are_configurable():
    c = _cfg(takedown={"query": "keep", "page_params": ["pg", "Batch_No"]})
    assert resource_of(c, "h", "/r?batchNo=2&page=1") == "*/r?page=1"
    assert _cfg(takedown={"query": "keep", "page_params": []}).query.paging == frozenset()
    assert QueryRule.parse("keep").paging == frozenset(PAGE_PARAMS)
    assert param_name("Per-Page") == param_name("per_page") == "perpage"
    with pytest.raises(ConfigError, match=r"takedown\.page_params"):
        _cfg(takedown={"page_params": "page"})


def test_operator_urls_and_stored_keys_agree_with_requests():
    for c in (_cfg(), _cfg(site={"hosts": ["www.example.gov"]}), _cfg(takedown={"query": "keep"})):
        req = resource_of(c, "203.0.113.9:8000", "/exports/r.csv?page=2")
        assert resource_of_url(c, "https://www.example.gov/exports/r.csv?page=9") == req
        assert resource_of_url(c, "other.example/exports/./r.csv") == req
        assert rekey(c, "old-host.example:8000/exports/r.csv") == req           # fleet record / older key
        assert rekey(c, req) == req                                              # idempotent


# -- exposure -------------------------------------------------------------------------------------

def _add(t: ExposureTracker, ids, *, now, resource="*/api/people", client="c1", route="/api/*", strong_trip=10,
         person_trip=25, capped=False):
    return t.add(resource=resource, route=route, client=client, strong=ids, person=ids, capped=capped, now=now,
                 strong_trip=strong_trip, person_trip=person_trip)


def test_distinct_records_add_up_across_responses_and_cross_once():
    t = ExposureTracker()
    assert _add(t, range(0, 5), now=1) == []
    assert _add(t, range(0, 5), now=2) == []                      # the same page again: still 5 people
    [res, cli] = _add(t, range(5, 10), now=3)                     # 10 distinct strong records: trip
    assert (res.scope, res.key, res.strong_records, res.person_records, res.responses) == \
        ("resource", "*/api/people", 10, 10, 3)
    assert (cli.scope, cli.key, cli.records) == ("client", "/api/*", 10)
    assert not res.approximate
    assert _add(t, range(10, 15), now=4) == []                     # reported once per window


def test_a_client_walking_many_resources_of_a_route_crosses():
    t = ExposureTracker()
    out = []
    for i in range(12):
        out += _add(t, [i], now=i, resource=f"*/api/person/{i}")
    assert [(c.scope, c.key, c.strong_records) for c in out] == [("client", "/api/*", 10)]
    assert t.keys("resource") == 0 and t.keys("client") == 1      # one record a response: not a resource's


def test_a_page_showing_each_user_their_own_record_does_not_add_up():
    """/api/me behind one shared address (carrier-grade NAT): fifty users, each their own record."""
    t = ExposureTracker()
    out = []
    for i in range(50):
        out += _add(t, [i], now=i, resource="*/api/me", client="shared-nat")
        out += _add(t, [i], now=i, resource="*/api/me", client=f"own-{i}")
    assert out == []
    t1 = ExposureTracker(ExposureSettings(min_response_records=1))   # where no page shows a user their own
    assert [c.scope for i in range(10) for c in _add(t1, [i], now=i, resource="*/api/me", client=f"c{i}")] == \
        ["resource"]


def test_window_expiry_forgets_old_records():
    t = ExposureTracker(ExposureSettings(window_s=100))
    _add(t, range(0, 9), now=0)
    assert _add(t, range(9, 14), now=150) == []                    # the first 9 left the window
    assert len(t) == 2 * 2 * 5                                     # resource + client keys, strong + person
    [res, _] = _add(t, range(14, 19), now=160)
    assert res.strong_records == 10 and res.responses == 2


def test_seen_again_keeps_a_record_in_the_window():
    t = ExposureTracker(ExposureSettings(window_s=100))
    _add(t, range(0, 5), now=0)
    _add(t, range(0, 5), now=90)                                   # served again: its clock restarts
    assert len(_add(t, range(5, 10), now=150)) == 2


def test_bounds_keys_records_and_ids():
    t = ExposureTracker(ExposureSettings(max_resources=3, max_clients=2, max_records=4, max_ids=1000))
    for i in range(10):
        _add(t, [i, 1000 + i], now=i, resource=f"r{i}", client=f"c{i}", strong_trip=0, person_trip=0)
    assert t.keys("resource") == 3 and t.keys("client") == 2       # least recently used forgotten
    [c] = _add(t, range(100, 110), now=20, resource="big", client=None, strong_trip=4, person_trip=0)
    assert c.strong_records == 4 and c.approximate                 # capped: counted what it could, and says so
    t2 = ExposureTracker(ExposureSettings(max_ids=50))
    for i in range(40):
        _add(t2, range(i * 10, i * 10 + 3), now=i, resource=f"r{i}", client=None, strong_trip=0, person_trip=0)
    assert len(t2) <= 50 and t2.keys("resource") < 40


def test_disabled_or_capped_scan():
    assert ExposureTracker(ExposureSettings(enabled=False)).add(
        resource="r", route="/", client=None, strong=range(50), person=(), capped=False, now=0,
        strong_trip=1, person_trip=0) == []
    [c] = ExposureTracker().add(resource="r", route="/", client=None, strong=range(3), person=(), capped=True,
                                now=0, strong_trip=3, person_trip=0)
    assert c.approximate


def test_exposure_config_keys():
    c = _cfg(exposure={"window_s": 60, "max_resources": 5, "max_clients": 6, "max_records": 7, "max_ids": 8,
                       "min_response_records": 1})
    assert c.exposure == ExposureSettings(True, 60.0, 5, 6, 7, 8, 1)
    with pytest.raises(ConfigError, match=r"exposure\.window_s"):
        _cfg(exposure={"window_s": 0})


# -- the scan hands out record identities ---------------------------------------------------------------

def test_scan_result_carries_bounded_record_identities_not_values(engine):
    everyone = people(40)
    a = scan_bytes(engine, page_body(everyone, 0), content_type="application/json")
    again = scan_bytes(engine, page_body(everyone, 0), content_type="application/json")
    b = scan_bytes(engine, page_body(everyone, 1), content_type="application/json")
    assert len(a.strong_ids) == a.strong_records == 5 and len(a.person_ids) == a.person_records >= 4
    assert not a.ids_capped
    assert a.strong_ids == again.strong_ids                        # the same people: the same identities
    assert not (a.strong_ids & b.strong_ids)                       # other people: other identities
    assert all(isinstance(i, int) for i in a.strong_ids)
    assert "strong_ids" not in a.to_json() and "person_ids" not in a.to_json()

