"""Exact data match shipped (issue 20 point 4): a key per index, and the fleet loading one index by path.

- An index built with ``index build --key-file`` is loaded by an ``indexes:`` entry's ``key_file`` /
  ``key_env`` / ``key``; with the sensor's own key instead, the load is refused naming both key ids
  (never a key), ``index verify`` says the key id does not match, and a forced load matches nothing.
- The Kafka worker (``dlp-sensor worker`` with config ``indexes:``) loads the same file, by the same
  path, as a sidecar: on a real broker its findings carry the ``edm`` counts of the mirrored exchange.
"""
from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path

import pytest
from click.testing import CliRunner

from sensor import synth
from sensor.cli.main import main as cli
from sensor.config import ConfigError, parse_config, with_overrides
from sensor.detect.keys import load_key
from sensor.edm.indexfile import IndexFileError, key_id, open_index
from sensor.edm.match import EdmSet, IndexSpec, LoadedIndex, load_indexes
from sensor.edm.story import census_people, dashboard
from sensor.detect.policy import Policy
from sensor.pipeline import BodyScan, Exchange
from sensor.runtime import Sensor

COLUMNS = "name=first_name+last_name,dob=date_of_birth,dl=driver_license,address=street_address"
OWN_KEY = "5e" * 32                      # the data owner's key (hex), not any sensor's
ROWS = 1500


@pytest.fixture(scope="module")
def roster(tmp_path_factory) -> tuple[Path, list[dict]]:
    d = tmp_path_factory.mktemp("roster")
    data = synth.breach_csv(ROWS, seed=777)
    (d / "roster.csv").write_bytes(data)
    return d / "roster.csv", list(csv.DictReader(io.StringIO(data.decode())))


@pytest.fixture(scope="module")
def key_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("secret") / "roster.key"
    p.write_text(OWN_KEY + "\n")
    p.chmod(0o600)
    return p


@pytest.fixture(scope="module")
def owned_index(roster, key_file, tmp_path_factory) -> Path:
    """Built by the data owner with its own key (no sensor state dir involved)."""
    out = roster[0].parent / "roster.edm"
    r = CliRunner().invoke(cli, ["index", "build", "--columns", COLUMNS, "--out", str(out), "--key-file",
                                 str(key_file), "--name", "permit-holders", str(roster[0])])
    assert r.exit_code == 0, r.output
    return out


def scan(engine, data: bytes, edm: EdmSet | None, key: bytes):
    body = BodyScan(engine, Policy(), key=key, exchange=Exchange(content_type="text/csv"), edm=edm)
    body.write(data)
    return body.finish()


# -- a key per index ---------------------------------------------------------------------------------
def test_an_index_keyed_apart_loads_with_its_own_key_from_file_env_or_value(engine, owned_index, key_file, roster,
                                                                            monkeypatch):
    assert open_index(owned_index).key_id == key_id(bytes.fromhex(OWN_KEY))
    monkeypatch.setenv("ROSTER_EDM_KEY", OWN_KEY)
    hidden = census_people(roster[1], 7)
    leak = dashboard(roster[1], hidden)
    sensor_key = bytes(range(32))
    for entry in ({"key_file": str(key_file)}, {"key_env": "ROSTER_EDM_KEY"}, {"key": OWN_KEY}):
        c = parse_config({"indexes": [{"path": str(owned_index), **entry}], "hmac_key": sensor_key.hex()})
        (spec,) = c.indexes
        assert OWN_KEY not in repr(spec) and OWN_KEY not in repr(c)       # never in a log line or message
        edm = load_indexes(c.indexes, sensor_key)                         # the sensor's key is not this one
        r = scan(engine, leak, edm, sensor_key)
        assert r.edm == {"permit-holders": 7} and r.verdict == "trip", entry
        assert sorted(r.edm_rows["permit-holders"]) == hidden
        edm.close()


def test_without_its_key_the_index_is_refused_naming_key_ids_only(owned_index, tmp_path):
    state = tmp_path / "state"
    sensor_key = load_key(None, state)
    with pytest.raises(IndexFileError) as e:
        load_indexes([IndexSpec(str(owned_index))], sensor_key)
    msg = str(e.value)
    assert "another key" in msg and key_id(bytes.fromhex(OWN_KEY)) in msg and key_id(sensor_key) in msg
    assert OWN_KEY not in msg and sensor_key.hex() not in msg
    wrong = "77" * 32                                                    # a per-index key that is not the one
    with pytest.raises(IndexFileError, match="the key given for this index has key id") as e:
        load_indexes([IndexSpec(str(owned_index), key=bytes.fromhex(wrong))], sensor_key)
    assert wrong not in str(e.value)
    # `index verify`: ok with the key file, "key id does not match" with the state dir's key
    r = CliRunner().invoke(cli, ["index", "verify", str(owned_index), "--state-dir", str(state)])
    assert r.exit_code == 1 and "does not match this state dir's key" in r.output, r.output


def test_verify_with_the_key_file_and_forced_load_with_another_key_matches_nothing(engine, owned_index, key_file,
                                                                                  roster):
    r = CliRunner().invoke(cli, ["index", "verify", str(owned_index), "--key-file", str(key_file)])
    assert r.exit_code == 0 and r.output.strip().endswith(": ok"), r.output
    other = bytes.fromhex("77" * 32)
    forced = EdmSet((LoadedIndex("permit-holders", open_index(owned_index), other),))
    res = scan(engine, dashboard(roster[1], census_people(roster[1], 7)), forced, other)
    assert res.edm_records == 0
    forced.close()


def test_bad_index_keys_are_named_never_quoted(owned_index, tmp_path):
    secretish = "not-hex-but-secret-0123456789"
    with pytest.raises(ConfigError) as e:
        parse_config({"indexes": [{"path": str(owned_index), "key": secretish}]})
    assert "indexes[0].key: must be hex" in str(e.value) and secretish not in str(e.value)
    f = tmp_path / "short.key"
    f.write_text("abcd")
    with pytest.raises(ConfigError) as e:
        parse_config({"indexes": [{"path": str(owned_index), "key_file": str(f)}]})
    assert "indexes[0].key_file: the value it gives must be at least 16 bytes" in str(e.value)
    with pytest.raises(ConfigError, match=r"indexes\[0\]\.key_env: give one of key, key_env, not several"):
        parse_config({"indexes": [{"path": str(owned_index), "key": OWN_KEY, "key_env": "X"}]}, resolve=False)
    r = CliRunner().invoke(cli, ["index", "build", "--columns", COLUMNS, "--out", str(tmp_path / "x.edm"),
                                 "--key-file", str(f), str(owned_index)])
    assert r.exit_code == 2 and "must be at least 16 bytes" in r.output and "abcd" not in r.output


def test_reload_keeps_a_per_index_key_and_a_sidecar_loads_it_by_path(owned_index, key_file, tmp_path, caplog):
    """The fleet's sidecars load the index from the same path as the workers (a sidecar here); a reload
    re-reads the entry's key file and refuses an index rebuilt under another key."""
    cfg = tmp_path / "sensor.yaml"
    cfg.write_text(f"indexes:\n  - {{path: {owned_index}, key_file: {key_file}}}\nmetrics: null\nadmin: null\n")
    from sensor.config import load_config
    c = with_overrides(load_config(cfg), state_dir=str(tmp_path / "state"))
    s = Sensor(c)
    try:
        assert s.edm is not None and s.edm.indexes[0].name == "permit-holders"
        assert s.edm.indexes[0].key == bytes.fromhex(OWN_KEY) != s.key
        first = s.edm
        # rebuilt under another key: the reload is refused (key ids named) and the old set keeps serving
        copy = tmp_path / "roster.edm"
        wrong = tmp_path / "wrong.key"
        wrong.write_text("66" * 32)
        src = owned_index.parent / "roster.csv"
        build = ["index", "build", "--columns", COLUMNS, "--out", str(copy), "--name", "permit-holders"]
        assert CliRunner().invoke(cli, [*build, "--key-file", str(wrong), str(src)]).exit_code == 0
        cfg.write_text(f"indexes:\n  - {{path: {copy}, key_file: {key_file}}}\nmetrics: null\nadmin: null\n")
        assert asyncio.run(s.reload()) is False and s.edm is first
        assert s.metrics.reloads.labels(result="error")._value.get() == 1
        refused = [r.getMessage() for r in caplog.records if "reload refused" in r.getMessage()]
        assert len(refused) == 1 and key_id(bytes.fromhex("66" * 32)) in refused[0] and "66" * 32 not in refused[0]
        assert OWN_KEY not in refused[0]
        # rebuilt with its key: swapped in
        assert CliRunner().invoke(cli, [*build, "--key-file", str(key_file), str(src)]).exit_code == 0
        assert asyncio.run(s.reload()) is True and s.edm is not first
        assert s.edm.indexes[0].file.path == copy and s.edm.indexes[0].key == bytes.fromhex(OWN_KEY)
    finally:
        s.edm.close()


# -- the fleet by path: the Kafka worker on a real broker ----------------------------------------------
@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    from tests.kafka import Broker
    b = Broker.start(tmp_path_factory.mktemp("kafka"))
    yield b
    b.stop()


def _two_exchanges(broker, roster) -> tuple[dict, str]:
    """A dashboard export hiding 7 roster people, and the same export without them, on the exchanges topic."""
    from tests.kafka import create_topics, exchange_records, kafka_conf, produce, unique_prefix
    prefix = unique_prefix()
    recs = exchange_records("leak", "data.example.gov/export/dash.csv", dashboard(roster[1], census_people(roster[1], 7)),
                            client="c1")
    recs += exchange_records("clean", "data.example.gov/export/dash2.csv", dashboard(roster[1], []), client="c2")
    create_topics(broker.bootstrap, prefix)
    produce(broker, prefix + "exchanges", recs)
    return kafka_conf(broker.bootstrap, prefix), prefix


def _findings_of_both(broker, prefix: str) -> dict[str, dict]:
    from tests.kafka import findings, wait_for
    fs = wait_for(lambda: (lambda f: f if {x["xid"] for x in f} >= {"leak", "clean"} else None)(
        findings(broker.bootstrap, prefix)), 60.0, 0.2, "findings of both exchanges")
    return {f["xid"]: f for f in fs}


def test_the_kafka_worker_counts_edm_records_of_mirrored_exchanges(tmp_path, broker, owned_index, key_file, roster):
    """A worker given the index by path (config ``indexes:`` with the index's own key file) publishes
    findings whose ``edm`` names the index and counts exactly the 7 hidden people; an exchange without
    them counts none."""
    from tests.kafka import WorkerProc
    k, prefix = _two_exchanges(broker, roster)
    w = WorkerProc(tmp_path / "w", k, "w",
                   extra={"indexes": [{"path": str(owned_index), "key_file": str(key_file)}]}).start()
    try:
        by = _findings_of_both(broker, prefix)
        assert by["leak"]["edm"] == {"permit-holders": 7} and by["leak"]["edm_records"] == 7
        assert by["leak"]["verdict"] == "trip"
        assert by["clean"]["edm"] == {} and by["clean"]["edm_records"] == 0
        from tests.kafka import json_values, wait_for
        alerts = wait_for(lambda: [a for a in json_values(broker.bootstrap, prefix + "alerts")
                                   if a["dlp"].get("edm")], 30.0, 0.2, "the leak's alert")
        assert [a["dlp"]["edm"] for a in alerts] == [{"permit-holders": 7}]   # the name and count, no row id
    finally:
        w.stop()


def test_the_worker_reloads_a_changed_index(tmp_path, broker, key_file, roster):
    """Issue 20 point 4 for the worker (sensor.edm.reload): its index file rebuilt in place (other
    people, then the roster) is swapped in without a restart; exchanges read after the reload count
    the hidden people, those read before counted none."""
    from tests.kafka import WorkerProc, exchange_records, findings, produce, wait_for
    idx = tmp_path / "fleet.edm"
    other = tmp_path / "other.csv"
    other.write_bytes(synth.breach_csv(100, seed=99))               # other people: matches nothing
    build = ["index", "build", "--columns", COLUMNS, "--out", str(idx), "--key-file", str(key_file),
             "--name", "permit-holders"]
    assert CliRunner().invoke(cli, [*build, str(other)]).exit_code == 0
    k, prefix = _two_exchanges(broker, roster)
    w = WorkerProc(tmp_path / "w", k, "w", extra={"indexes": [{"path": str(idx), "key_file": str(key_file)}]}).start()
    try:
        by = _findings_of_both(broker, prefix)
        assert by["leak"]["edm_records"] == 0 and by["clean"]["edm_records"] == 0
        assert CliRunner().invoke(cli, [*build, str(roster[0])]).exit_code == 0       # written aside, renamed in
        wait_for(lambda: w.metric("dlp_reloads_total", result="ok") >= 1, 30.0, 0.2, "the worker's index reload")
        produce(broker, prefix + "exchanges", exchange_records(
            "leak-again", "data.example.gov/export/dash3.csv", dashboard(roster[1], census_people(roster[1], 7)),
            client="c3"))
        f = wait_for(lambda: [x for x in findings(broker.bootstrap, prefix) if x["xid"] == "leak-again"],
                     60.0, 0.2, "the finding of the exchange read after the reload")
        assert f[0]["edm"] == {"permit-holders": 7} and f[0]["verdict"] == "trip"
        assert w.metric("dlp_reloads_total", result="error") == 0
    finally:
        w.stop()


def test_the_worker_takes_index_flags_keyed_with_the_fleet_key(tmp_path, broker, roster):
    """``dlp-sensor worker --index PATH``: an index built with the fleet's shared HMAC key (no key of
    its own), given on the command line as to the sidecars."""
    from tests.kafka import HMAC_KEY, WorkerProc
    from tests.procs import BIN
    fleet_key = tmp_path / "fleet.key"
    fleet_key.write_text(HMAC_KEY)                   # the builder holds the fleet's key as a file here
    idx = tmp_path / "fleet.edm"
    r = CliRunner().invoke(cli, ["index", "build", "--columns", COLUMNS, "--out", str(idx), "--key-file",
                                 str(fleet_key), "--name", "fleet-roster", str(roster[0])])
    assert r.exit_code == 0, r.output

    class FlagWorker(WorkerProc):                    # WorkerProc's command, plus --index
        def start(self, wait: bool = True):
            import tests.kafka as kafka_mod
            real = kafka_mod.pinned
            kafka_mod.pinned = lambda cmd, cpus: real([*cmd, "--index", str(idx)], cpus)
            try:
                return super().start(wait)
            finally:
                kafka_mod.pinned = real

    k, prefix = _two_exchanges(broker, roster)
    w = FlagWorker(tmp_path / "w", k, "w").start()
    try:
        by = _findings_of_both(broker, prefix)
        assert by["leak"]["edm"] == {"fleet-roster": 7} and by["clean"]["edm_records"] == 0
    finally:
        w.stop()
