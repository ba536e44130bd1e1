"""One exposure report schema: this host's ledger and the fleet's exposure table give the same fields,
rendered by the same text renderer (and the same JSON) in ``dlp-sensor report``."""
from __future__ import annotations

from dataclasses import fields

from sensor.enforce.ledger import Ledger
from sensor.enforce.registry import Registry
from sensor.enforce.report import ExposureIncident, build_report, render_text
from sensor.stream.report import fleet_report

FIELDS = [f.name for f in fields(ExposureIncident)]
EXPOSURE = {"site/r.csv": {"first_served": 100.0, "last_served": 160.0, "downloads": 7, "completed": 6,
                           "bytes": 7000, "records_max": 3000, "tripped_at": 130.0, "flagged": 4,
                           "before_takedown": 5, "clients": 3},
            "site/clean.html": {"first_served": 50.0, "downloads": 9}}


def _local(tmp_path) -> dict:
    led = Ledger(tmp_path / "ledger.db")
    led.served("site/r.csv", "hmac-sha256:aa", sent=1000, completed=True, partial=False, records=3000,
               verdict="trip", now=100.0)
    led.mark("site/r.csv", "tripped", now=100.0)
    led.flush()
    rep = build_report(led, Registry(tmp_path / "takedowns.db"))
    led.close()
    return rep


def test_local_and_fleet_reports_have_the_same_fields(tmp_path):
    local, fleet = _local(tmp_path), fleet_report(EXPOSURE)
    assert (local["scope"], fleet["scope"]) == ("local", "fleet")
    assert set(local) == set(fleet) == {"scope", "incidents", "active_takedowns"}
    [li], [fi] = local["incidents"], fleet["incidents"]          # the clean page is no incident
    assert list(li) == list(fi) == FIELDS
    assert (li["served"], li["unique_clients"], li["max_records_in_one_response"]) == (1, 1, 3000)
    assert (fi["served"], fi["completed_downloads"], fi["bytes_sent"], fi["unique_clients"]) == (7, 6, 7000, 3)
    assert (fi["served_before_detection"], fi["flagged_responses"], fi["exposed_seconds"]) == (5, 4, 60.0)
    # what the fleet table does not keep is unknown, not zero
    assert fi["refused_after_takedown"] is None and fi["partial_responses"] is None and fi["alerts"] is None


def test_one_text_renderer_for_both_scopes(tmp_path):
    local, fleet = render_text(_local(tmp_path)), render_text(fleet_report(EXPOSURE))
    assert local.startswith("1 incident(s), 0 active takedown(s)")
    assert fleet.startswith("Fleet: 1 incident(s)")
    for text in (local, fleet):
        assert "== site/r.csv" in text and "distinct clients" in text and "3,000 people's records" in text
    assert "refused afterwards  -" in fleet and "7 responses (6 complete)" in fleet
    assert render_text(fleet_report({})).startswith("Fleet: no incidents")
