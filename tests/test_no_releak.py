"""Never re-leak: the check that guards every test (``tests/releak.py``) sees what it must.

The check itself runs after each test and once at the end of the session (autouse fixtures in
``tests/conftest.py``), whatever the order; these tests show it is not vacuous: it finds exactly
what a substring search finds, a leak fails the test that made it (or the session, when a fixture
writes it while stopping), and a real sidecar's trip leaves outputs that are registered and clean.
"""
from __future__ import annotations

import random
import textwrap
import time

import pytest

from sensor import synth
from sensor.sample_site import ROSTER
from tests.procs import OUTPUTS, ROOT, Sidecar, site_fixture
from tests.releak import OutputWatch, files_under, finder, report_outputs, roster_values, state_dirs
from tests.test_proxy import curl

site = site_fixture(300)


def test_the_finder_finds_what_a_substring_search_finds():
    """The Hyperscan literal database answers ``value in blob`` for every value: same set, on a blob
    with planted values (cut and whole), benign text around them, and the values' own neighbours."""
    values = roster_values()
    assert len(values) > 14_000
    rng = random.Random(7)
    planted = rng.sample(values, 40)
    rows = [r.encode() for r in synth.breach_rows(300)]
    parts = [synth.benign_web(20_000)]
    for v in planted:
        parts += [v, b" | ", v[:-1], b"\n", rng.choice(rows)[:17]]
    blob = b"".join(parts)
    assert set(finder().find(blob)) == {v for v in values if v in blob}
    assert set(planted) <= set(finder().find(blob))
    assert finder().find(b"") == [] and finder().find(synth.benign_web(50_000)) == []


def test_a_value_is_reported_once_with_its_file_and_only_two_characters(tmp_path):
    value = roster_values()[123]
    out = tmp_path / "state" / "alerts.jsonl"
    out.parent.mkdir()
    out.write_bytes(b'{"ok": 1}\n')
    watch = OutputWatch([tmp_path / "state"])
    assert watch.sweep() == []
    out.write_bytes(out.read_bytes() + b'{"name": "' + value + b'"}\n')
    assert watch.sweep() == [(str(out), value)]
    out.write_bytes(out.read_bytes() + b"{}\n")
    assert watch.sweep() == []                       # reported once, by the test that wrote it


INNER_CONFTEST = "from tests.conftest import _no_releak, _no_releak_at_the_end  # noqa: F401\n"


@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["serial", "xdist"])
def test_a_leak_fails_the_test_that_wrote_it_and_a_late_one_fails_the_session(pytester, monkeypatch, workers):
    """Run in a pytest of its own: a test whose output holds a raw value errors at its teardown; a
    module fixture that writes one while stopping errors the session's last teardown. The same under
    pytest-xdist (`make test` runs two workers): each worker's session check fails its own last test."""
    value = roster_values()[7]
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_inner=textwrap.dedent(f"""
        import pytest
        from tests.procs import OUTPUTS

        @pytest.fixture(scope="module")
        def late(tmp_path_factory):
            f = tmp_path_factory.mktemp("late") / "stderr.log"
            f.write_bytes(b"starting\\n")
            OUTPUTS.append(f)
            yield
            f.write_bytes(b"stopping " + {value!r} + b"\\n")

        def test_writes_a_leak(tmp_path):
            f = tmp_path / "stdout.log"
            f.write_bytes(b"served " + {value!r} + b"\\n")
            OUTPUTS.append(f)

        def test_clean_with_a_late_leak(late):
            pass
    """))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))         # the inner run imports tests.conftest
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", *workers)
    out = r.stdout.str()
    r.assert_outcomes(passed=2, errors=2)
    assert "ERROR at teardown of test_writes_a_leak" in out
    assert "ERROR at teardown of test_clean_with_a_late_leak" in out
    assert "stdout.log" in out and "stderr.log" in out and value.decode() not in out


def test_a_real_trip_leaves_registered_outputs_that_hold_no_raw_value(site, tmp_path):
    """End to end: the sidecar trips on the roster; its state dir, logs and incident report are among
    the registered outputs, carry the trip alert, and none holds a raw value."""
    sc = Sidecar.create(tmp_path, site.url).start()
    try:
        assert curl(sc.url + "/" + ROSTER)[1] == 451
        deadline = time.monotonic() + 20                # the alert lands after the response
        while not any(a["dlp"]["verdict"] == "trip" for a in sc.alerts()) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sc.stop()
    assert sc.state in OUTPUTS and sc.state in state_dirs(OUTPUTS)
    blobs = {str(f): f.read_bytes() for f in files_under([sc.state, tmp_path / "stderr.log"])}
    blobs.update(report_outputs(sc.state))
    assert any(b'"dlp-trip"' in b for b in blobs.values()), "no trip alert among the outputs"
    assert any(name.startswith("report text") and b"permits_2022.csv" in b for name, b in blobs.items())
    assert {name: finder().find(b)[:1] for name, b in blobs.items() if finder().find(b)} == {}
