"""Exact data match (issue 20): the seed story, spellings, keyed-hash-only index, row ids in the report.

The protected table is a synthetic roster (sensor/synth.py). Scans use the real engine and default
pack; the index is built by the real ``dlp-sensor index build``; the end-to-end test runs a real
sidecar with ``--index`` in front of the sample site.
"""
from __future__ import annotations

import csv
import http.client
import io
import json
import random
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from sensor import synth
from sensor.alerts.schema import AlertContext, build_alert
from sensor.cli.main import main as cli
from sensor.detect.keys import load_key
from sensor.detect.policy import Policy
from sensor.edm.indexfile import IndexFileError, key_id, open_index, verify_index
from sensor.edm.match import EdmSet, IndexSpec, LoadedIndex, load_indexes
from sensor.edm.normalise import normalise
from sensor.edm.story import census_people, dashboard
from sensor.enforce.ledger import Ledger
from sensor.pipeline import BodyScan, Exchange
from tests.procs import BIN, Sidecar, Upstream

ROSTER_ROWS = 3000
COLUMNS = "name=first_name+last_name,dob=date_of_birth,dl=driver_license,address=street_address"
_LONG_SUFFIX = {"ST": "Street", "AVE": "Avenue", "RD": "Road", "BLVD": "Boulevard", "DR": "Drive", "LN": "Lane",
                "CT": "Court", "WAY": "Way", "PL": "Place"}
_LONG_DIR = {"N": "North", "S": "South", "E": "East", "W": "West"}
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]


# -- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def roster(tmp_path_factory) -> tuple[Path, list[dict]]:
    d = tmp_path_factory.mktemp("roster")
    data = synth.breach_csv(ROSTER_ROWS, seed=4242)
    (d / "roster.csv").write_bytes(data)
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    return d / "roster.csv", rows


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("edm-state") / "state"


@pytest.fixture(scope="module")
def index_file(roster, state) -> Path:
    out = roster[0].parent / "roster.edm"
    r = CliRunner().invoke(cli, ["index", "build", "--columns", COLUMNS, "--out", str(out), "--state-dir", str(state),
                                 "--name", "roster", str(roster[0])])
    assert r.exit_code == 0, r.output
    assert f"{ROSTER_ROWS} rows" in r.output
    return out


@pytest.fixture(scope="module")
def edm(index_file, state) -> EdmSet:
    return load_indexes([IndexSpec(str(index_file))], load_key(None, state))


@pytest.fixture(scope="module")
def census() -> tuple[set[str], set[str]]:
    return set(synth._words("first-names.txt")), set(synth._words("surnames.txt"))


def hidden_people(rows: list[dict], census, n: int, seed: int = 1) -> list[int]:
    return census_people(rows, n, seed)


def scan(engine, data: bytes, edm: EdmSet | None, *, content_type: str = "", chunk: int = 65536):
    body = BodyScan(engine, Policy(), key=edm.indexes[0].key if edm else bytes(32),
                    exchange=Exchange(content_type=content_type), edm=edm)
    for i in range(0, len(data), chunk):
        body.write(data[i:i + chunk])
    return body.finish()


def long_address(addr: str) -> str:
    """'1234 W MAIN ST' -> '1234 West Main Street' (the unabbreviated spelling)."""
    parts = addr.split()
    out = [parts[0]]
    for p in parts[1:-1]:
        out.append(_LONG_DIR.get(p, p.title()) if len(out) == 1 else p.title())
    out.append(_LONG_SUFFIX[parts[-1]])
    return " ".join(out)


# -- normalisation -----------------------------------------------------------------------------------
def test_normalisers_fold_spellings():
    assert normalise("name", "GARCIA, MARIA L") == normalise("name", "Maria L. Garcia") == "GARCIA MARIA"
    iso = "1975-03-14"
    for s in ("03/14/1975", "3-14-1975", "1975-03-14", "March 14, 1975", "14 Mar 1975", "Mar. 14 1975", "19750314"):
        assert normalise("dob", s) == iso, s
    assert normalise("address", "1234 West Main Street, Apt 5") == normalise("address", "1234 W MAIN ST") == "1234 W MAIN ST"
    assert normalise("dl", "d123-4567") == "D1234567"
    assert normalise("dob", "02/30/1975") is None


# -- the seed story ----------------------------------------------------------------------------------
def test_bytes_normalisers_equal_the_text_normalisers():
    """The scan's byte-level fast paths give exactly the bytes of the text normalisers (the build's)."""
    from sensor.edm.normalise import bytes_normaliser, normaliser
    rng = random.Random(20)
    alphabet = "12 aBcSt.,-'\t\nÉé#/NORTHSTREETAVEN\x1c\x1f\x0b\x0c\x00\x7f"
    for kind in ("address", "dl", "name", "dob", "email", "phone", "ssn"):
        fast, text = bytes_normaliser(kind), normaliser(kind)
        for _ in range(3000):
            v = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16)))
            raw = (f"{rng.randint(1, 999)} " if rng.random() < 0.5 else "").encode() + v.encode() + \
                (b"\xff" if rng.random() < 0.05 else b"")
            want = text(raw.decode("utf-8", "replace"))
            assert fast(raw) == (None if want is None else want.encode()), (kind, raw)


def test_seed_story_hidden_people_trip_with_exactly_seven(engine, roster, edm, census):
    rows = roster[1]
    hidden = hidden_people(rows, census, 7)
    export = dashboard(rows, hidden)
    alone = scan(engine, export, None)
    assert alone.verdict != "trip"                      # the signatures alone do not trip on it
    r = scan(engine, export, edm)
    assert r.verdict == "trip"
    assert r.edm_records == 7 and r.edm == {"roster": 7}
    assert r.edm_rows == {"roster": hidden}
    j = r.to_json()
    assert j["edm_records"] == 7 and j["edm"] == {"roster": 7}


def test_seed_story_without_them_passes(engine, roster, edm):
    r = scan(engine, dashboard(roster[1], []), edm)
    assert r.verdict == "pass" and r.edm_records == 0


def test_public_file_with_colliding_names_does_not_trip(engine, roster, edm, census):
    """A staff directory whose people share names with indexed people, with other birth dates."""
    rows = roster[1]
    rng = random.Random(5)
    lines = ["name,date_of_birth,department\n"]
    for rid in hidden_people(rows, census, 20, seed=8):
        r = rows[rid]
        lines.append(f"{r['first_name'].title()} {r['last_name'].title()},"
                     f"{rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}/{rng.randint(1960, 1999)},Public Works\n")
    res = scan(engine, "".join(lines).encode(), edm)
    assert res.findings.get("person-name", 0) == 20        # the names are seen …
    assert res.edm_records == 0 and res.verdict != "trip"   # … but no indexed row matches twice


# -- spellings and formats ----------------------------------------------------------------------------
def _dob(r: dict, fmt: int) -> str:
    m, d, y = (int(x) for x in r["date_of_birth"].split("/"))
    return [f"{m:02d}/{d:02d}/{y}", f"{m}-{d}-{y}", f"{y}-{m:02d}-{d:02d}", f"{_MONTHS[m - 1]} {d}, {y}",
            f"{d} {_MONTHS[m - 1][:3]} {y}"][fmt % 5]


@pytest.fixture(scope="module")
def strict(index_file, state) -> EdmSet:
    """The same index, but a record must match name, DOB *and* address: each spelling must hold."""
    return load_indexes([IndexSpec(str(index_file), min_fields=3)], load_key(None, state))


@pytest.fixture(scope="module")
def people(roster, census) -> list[tuple[int, dict]]:
    return [(i, roster[1][i]) for i in hidden_people(roster[1], census, 10, seed=11)]


def test_spellings_csv_last_first(engine, strict, people):
    lines = ["name,date_of_birth,street_address\n"]
    lines += [f"\"{r['last_name']}, {r['first_name']}\",{_dob(r, k)},{r['street_address']}\n"
              for k, (_, r) in enumerate(people)]
    res = scan(engine, "".join(lines).encode(), strict)
    assert res.edm_records == len(people) and res.edm_rows["roster"] == [i for i, _ in people]


def test_spellings_json_first_last_long_address(engine, strict, people):
    doc = json.dumps({"results": [{"name": f"{r['first_name'].title()} {r['last_name'].title()}",
                                   "dob": _dob(r, k), "address": long_address(r["street_address"])}
                                  for k, (_, r) in enumerate(people)]}, indent=1).encode()
    res = scan(engine, doc, strict, content_type="application/json")
    assert res.edm_records == len(people)


def test_spellings_html_table(engine, strict, people):
    trs = "".join(f"<tr><td>{r['last_name'].title()}, {r['first_name'].title()}</td><td>{_dob(r, k + 3)}</td>"
                  f"<td>{long_address(r['street_address'])}</td></tr>\n" for k, (_, r) in enumerate(people))
    page = (f"<!doctype html><html><body><table><tr><th>Name</th><th>Date of birth</th><th>Address</th></tr>\n"
            f"{trs}</table></body></html>").encode()
    res = scan(engine, page, strict, content_type="text/html")
    assert res.edm_records == len(people)


def test_spellings_xlsx(engine, strict, people):
    book = synth.xlsx([["full_name", "dob", "home_address"]]
                      + [[f"{r['first_name']} {r['middle_initial']}. {r['last_name']}", _dob(r, k + 1),
                          r["street_address"]] for k, (_, r) in enumerate(people)])
    res = scan(engine, book, strict)
    assert res.edm_records == len(people)


# -- the index holds keyed hashes only ----------------------------------------------------------------
def test_index_contains_no_raw_value(index_file, roster):
    blob = index_file.read_bytes()
    checked = 0
    for r in roster[1]:
        for col in ("first_name", "last_name", "date_of_birth", "driver_license", "street_address"):
            v = r[col]
            variants = {v, v.title(), normalise({"date_of_birth": "dob", "street_address": "address",
                                                            "driver_license": "dl"}.get(col, "name"), v) or ""}
            for s in variants:
                if len(s) >= 4:
                    assert s.encode() not in blob, "a source value is in the index file"
                    checked += 1
        full = normalise("name", f"{r['first_name']} {r['last_name']}")
        assert full.encode() not in blob
    assert checked > ROSTER_ROWS * 5


def test_index_with_another_key_matches_nothing(engine, roster, index_file, state, tmp_path, census):
    other_state = tmp_path / "other"
    out = tmp_path / "other.edm"
    r = CliRunner().invoke(cli, ["index", "build", "--columns", COLUMNS, "--out", str(out),
                                 "--state-dir", str(other_state), str(roster[0])])
    assert r.exit_code == 0, r.output
    key = load_key(None, state)
    assert open_index(out).key_id != key_id(key)
    with pytest.raises(IndexFileError, match="another key"):      # refused at load, naming the file
        load_indexes([IndexSpec(str(out))], key)
    forced = EdmSet((LoadedIndex("other", open_index(out), key),))  # and even forced, it matches nothing
    res = scan(engine, roster[0].read_bytes(), forced)
    assert res.edm_records == 0
    v = CliRunner().invoke(cli, ["index", "verify", str(out), "--state-dir", str(state)])
    assert v.exit_code == 1 and "does not match" in v.output


def test_index_info_and_verify(index_file, state):
    r = CliRunner().invoke(cli, ["index", "info", str(index_file)])
    assert r.exit_code == 0
    assert f"rows:    {ROSTER_ROWS}" in r.output and "name (" in r.output and "dob (" in r.output
    assert key_id(load_key(None, state)) in r.output
    v = CliRunner().invoke(cli, ["index", "verify", str(index_file), "--state-dir", str(state)])
    assert v.exit_code == 0 and "ok" in v.output


def test_damaged_index_is_refused_with_its_name(tmp_path, index_file):
    bad = tmp_path / "cut.edm"
    bad.write_bytes(index_file.read_bytes()[:200])
    with pytest.raises(IndexFileError, match="cut.edm"):
        open_index(bad)
    (tmp_path / "junk.edm").write_bytes(b"hello world, not an index")
    with pytest.raises(IndexFileError, match="bad magic"):
        open_index(tmp_path / "junk.edm")
    old = tmp_path / "v1.edm"                # a version 1 file (before the bucket directory)
    old.write_bytes(b"DLPEDM\x00\x01" + index_file.read_bytes()[8:])
    with pytest.raises(IndexFileError, match=r"v1.edm: format version 1 not supported .*rebuild it"):
        open_index(old)


def test_build_reads_jsonl_and_xlsx_like_csv(roster, state, tmp_path, index_file):
    rows = roster[1][:200]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cols = list(rows[0])
    (tmp_path / "r.xlsx").write_bytes(synth.xlsx([cols] + [[r[c] for c in cols] for r in rows]))
    key = load_key(None, state)
    base = open_index(index_file)
    for src in ("r.jsonl", "r.xlsx"):
        out = tmp_path / (src + ".edm")
        r = CliRunner().invoke(cli, ["index", "build", "--columns", COLUMNS, "--out", str(out),
                                     "--state-dir", str(state), str(tmp_path / src)])
        assert r.exit_code == 0, r.output
        idx = open_index(out, key)
        for kind, f in idx.fields.items():         # the same hashes as the CSV build gave for rows 0..199
            ref = base.fields[kind]
            for h, rid in zip(f.hashes, f.ids):
                assert rid in ref.rows(h)
        assert idx.rows == 200
        idx.close()


def test_build_errors_name_the_column(roster, state, tmp_path):
    r = CliRunner().invoke(cli, ["index", "build", "--columns", "name=nope", "--out", str(tmp_path / "x.edm"),
                                 "--state-dir", str(state), str(roster[0])])
    assert r.exit_code == 2 and "no column 'nope'" in r.output
    r = CliRunner().invoke(cli, ["index", "build", "--columns", "shoe_size", "--out", str(tmp_path / "x.edm"),
                                 "--state-dir", str(state), str(roster[0])])
    assert r.exit_code == 2 and "unknown field kind" in r.output


def test_scan_cli_json_line_has_edm(roster, index_file, state, tmp_path, census):
    rows = roster[1]
    hidden = hidden_people(rows, census, 7)
    f = tmp_path / "dashboard.csv"
    f.write_bytes(dashboard(rows, hidden))
    p = subprocess.run([str(BIN / "dlp-sensor"), "scan", "--format", "json", "--index", str(index_file),
                        "--state-dir", str(state), str(f)], capture_output=True, timeout=120)
    assert p.returncode == 1, p.stderr
    line = json.loads(p.stdout.splitlines()[0])
    assert line["verdict"] == "trip" and line["edm_records"] == 7 and line["edm"] == {"roster": 7}


# -- alerts, ledger, report --rows ---------------------------------------------------------------------
def _raw_values(rows: list[dict], ids: list[int]) -> list[str]:
    out = []
    for i in ids:
        r = rows[i]
        out += [r["first_name"], r["last_name"], r["date_of_birth"], r["street_address"], r["driver_license"]]
    return [v for v in out if len(v) >= 4]


def test_alert_names_index_and_count_without_raw_values(engine, roster, edm, census):
    rows = roster[1]
    hidden = hidden_people(rows, census, 7)
    res = scan(engine, dashboard(rows, hidden), edm)
    ctx = AlertContext(exchange_id="e1", sensor_id="t", resource="https://x/exports/dash.csv",
                       url={"original": "https://x/exports/dash.csv"}, method="GET", status=200,
                       client_ip="127.0.0.1", mode="enforce", action="cut_and_takedown")
    alert = build_alert(ctx, res, key=edm.indexes[0].key, now=0.0)
    assert alert["dlp"]["edm"] == {"roster": 7}
    text = json.dumps(alert)
    for v in _raw_values(rows, hidden):
        assert v not in text
    assert str(hidden[0]) not in json.dumps(alert["dlp"]["edm"])        # row ids stay in the ledger


def test_report_rows_lists_exactly_the_exposed_rows_from_the_ledger(engine, roster, edm, census, tmp_path):
    rows = roster[1]
    hidden = hidden_people(rows, census, 7)
    res = scan(engine, dashboard(rows, hidden), edm)
    sd = tmp_path / "sd"
    load_key(None, sd)
    led = Ledger(sd / "ledger.db")
    resource = "https://agency.example/exports/dash.csv"
    led.served(resource, None, sent=1000, completed=True, partial=False, records=res.records, verdict="trip")
    led.mark(resource, "tripped")
    led.note_edm_rows(resource, res.edm_rows)
    led.close()
    r = CliRunner().invoke(cli, ["report", "--state-dir", str(sd), "--rows", resource])
    assert r.exit_code == 0, r.output
    listed = [int(l.split("\t")[1]) for l in r.output.splitlines() if l.startswith("roster\t")]
    assert listed == hidden


# -- end to end: a real sidecar ---------------------------------------------------------------------
def test_sidecar_with_index_cuts_and_reports_rows(roster, census, tmp_path):
    rows = roster[1]
    hidden = hidden_people(rows, census, 7)
    site = tmp_path / "site"
    (site / "exports").mkdir(parents=True)
    (site / "index.html").write_text("<html>hello</html>")
    (site / "contact.html").write_text("<html>contact</html>")
    (site / "exports" / "dashboard.csv").write_bytes(dashboard(rows, hidden))
    (site / "exports" / "public.csv").write_bytes(dashboard(rows, []))
    sc_dir = tmp_path / "sidecar"
    state = sc_dir / "state"
    idx = tmp_path / "roster.edm"
    b = subprocess.run([str(BIN / "dlp-sensor"), "index", "build", "--columns", COLUMNS, "--out", str(idx),
                        "--state-dir", str(state), str(roster[0])], capture_output=True, timeout=120)
    assert b.returncode == 0, b.stderr
    up = Upstream.start(site)
    sc = Sidecar.create(sc_dir, up.url, extra_args=["--index", str(idx)])
    try:
        sc.start()
        with urllib.request.urlopen(sc.url + "/exports/public.csv", timeout=30) as resp:
            assert resp.status == 200 and len(resp.read()) > 100_000
        try:
            with urllib.request.urlopen(sc.url + "/exports/dashboard.csv", timeout=30) as resp:
                body = resp.read()
            assert len(body) < len(dashboard(rows, hidden))          # cut
        except (http.client.IncompleteRead, urllib.error.HTTPError, OSError):
            pass                                                      # cut mid-body, refused or reset
        deadline = time.monotonic() + 20
        alerts = []
        while time.monotonic() < deadline:
            alerts = [a for a in sc.alerts() if a["dlp"]["verdict"] == "trip"]
            if alerts:
                break
            time.sleep(0.1)
        assert alerts and alerts[0]["dlp"]["edm"]["roster"] >= 3
    finally:
        sc.stop()
        up.stop()
    resource = alerts[0]["dlp"]["resource"]
    r = subprocess.run([str(BIN / "dlp-sensor"), "report", "--state-dir", str(state), "--rows", resource],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    listed = {int(l.split("\t")[1]) for l in r.stdout.splitlines() if l.startswith("roster\t")}
    assert listed and listed <= set(hidden)             # cut at the trip: the rows seen until then
    everything = sc.log() + (state / "alerts.jsonl").read_text() + r.stdout
    for v in _raw_values(rows, hidden):
        assert v not in everything


def test_hasher_is_hmac_sha256():
    import hmac as _hmac
    from sensor.edm.indexfile import Hasher, value_hash
    for key in (bytes(range(32)), b"k" * 100):
        h = Hasher(key)
        for kind, v in (("name", "GARCIA MARIA"), ("dob", "1975-03-14")):
            assert h(kind, v) == value_hash(key, kind, v) == int.from_bytes(
                _hmac.digest(key, f"{kind}:{v}".encode(), "sha256")[:8], "little")


def test_matcher_agrees_with_a_plain_lookup(roster, index_file, state):
    """The batched, inlined matcher decides every record as a plain per-value lookup would: matched
    when some indexed row has >= min_fields of its kinds, whatever the order and early stops."""
    from sensor.edm.indexfile import value_hash
    from sensor.edm.match import BATCH
    rows = roster[1]
    key = load_key(None, state)
    base = open_index(index_file)
    rng = random.Random(7)
    cols = {"name": lambda r: f"{r['last_name']}, {r['first_name']}", "dob": lambda r: r["date_of_birth"],
            "dl": lambda r: r["driver_license"], "address": lambda r: r["street_address"]}
    records = []
    for _ in range(400):                     # fields of one person, of another, and of nobody
        a, b = rng.choice(rows), rng.choice(rows)
        rec = [(k, (f(a) if rng.random() < 0.5 else f(b) if rng.random() < 0.5 else "X" + f(a)).encode())
               for k, f in cols.items() if rng.random() < 0.8]
        records.append(rec)

    def plain(rec, need):
        hits: dict[int, set[str]] = {}
        for k, raw in rec:
            canon = normalise(k, raw.decode())
            if canon is not None:
                for r in base.fields[k].rows(value_hash(key, k, canon)):
                    hits.setdefault(r, set()).add(k)
        return any(len(ks) >= need for ks in hits.values())

    for need in (1, 2, 3):
        edm_set = load_indexes([IndexSpec(str(index_file), min_fields=need)], key)
        want = [plain(rec, need) for rec in records]
        assert 0 < sum(want) < len(records)
        for rec, w in zip(records, want):
            m = edm_set.matcher()
            m.record(rec)
            assert (m.total > 0) == w, (need, rec)
        one, many = edm_set.matcher(), edm_set.matcher()   # flushed per record, or batched: the same
        for rec in records:
            one.record(rec)
            one.flush()
            many.record(rec)
        assert len(records) > BATCH and many.total == one.total > 0 and many.rows == one.rows
    base.close()


def test_config_indexes_key_and_errors(index_file):
    from sensor.config import ConfigError, parse_config, with_overrides
    c = parse_config({"indexes": [{"path": str(index_file), "name": "permits", "min_fields": 3, "trip": 5}]})
    assert c.indexes == [IndexSpec(str(index_file), "permits", 3, 5, 1)]
    c = with_overrides(c, indexes=("/x/other.edm",))
    assert [i.path for i in c.indexes] == [str(index_file), "/x/other.edm"]
    with pytest.raises(ConfigError, match=r"indexes\[0\]\.min_fields"):
        parse_config({"indexes": [{"path": "a.edm", "min_fields": 0}]})
    with pytest.raises(ConfigError, match=r"indexes\[0\]\.colour: unknown key"):
        parse_config({"indexes": [{"path": "a.edm", "colour": "red"}]})


def test_thresholds_per_index(engine, roster, index_file, state, census):
    rows = roster[1]
    export = dashboard(rows, hidden_people(rows, census, 7))
    key = load_key(None, state)
    lax = load_indexes([IndexSpec(str(index_file), trip=10, alert=1)], key)
    r = scan(engine, export, lax)
    assert r.edm_records == 7 and r.verdict == "alert"
    off = load_indexes([IndexSpec(str(index_file), trip=0, alert=0)], key)
    assert scan(engine, export, off).verdict == scan(engine, export, None).verdict


def test_parallel_build_gives_the_same_index(roster, state, tmp_path):
    """CSV read by Arrow in many batches, hashed in worker processes: the same hashes and row ids as
    one process and as the row reader, also when a quoted field holds a newline, a blank line sits
    between rows (not a row), and a ragged row sends a whole source to the row reader."""
    from sensor.edm import build as b
    from sensor.edm.build import build_index, parse_columns
    src = tmp_path / "r.csv"
    text = roster[0].read_text().splitlines(keepends=True)
    for i in (5, 150, 151):                 # a quoted newline in the last (not indexed) column
        fields = text[i].rstrip("\n").split(",")
        fields[-1] = '"NOTE\nSECOND LINE"'
        text[i] = ",".join(fields) + "\n"
    text.insert(40, "\n")
    src.write_text("".join(text))
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("".join(text[:60]) + "just,three,cells\n" + "".join(text[60:]))
    key = load_key(None, state)
    old = b.BATCH_BYTES, b.CHUNK_VALUES
    b.BATCH_BYTES, b.CHUNK_VALUES = 4096, 97          # many batches, many hashing tasks
    try:
        one = build_index([src, src], parse_columns(COLUMNS), tmp_path / "one.edm", key, jobs=1)
        two = build_index([src, src], parse_columns(COLUMNS), tmp_path / "two.edm", key, jobs=2)
        b.COLUMNAR = False
        rows = build_index([src, src], parse_columns(COLUMNS), tmp_path / "rows.edm", key, jobs=2)
        b.COLUMNAR = True
        bad = build_index([ragged], parse_columns(COLUMNS), tmp_path / "ragged.edm", key, jobs=2)
    finally:
        b.BATCH_BYTES, b.CHUNK_VALUES = old
        b.COLUMNAR = True
    assert one.rows == two.rows == rows.rows == 2 * ROSTER_ROWS
    assert bad.rows == ROSTER_ROWS + 1
    a, c, r = open_index(tmp_path / "one.edm"), open_index(tmp_path / "two.edm"), open_index(tmp_path / "rows.edm")
    for k in a.fields:
        assert len(a.fields[k].hashes) > ROSTER_ROWS
        assert bytes(a.fields[k].hashes) == bytes(c.fields[k].hashes) == bytes(r.fields[k].hashes)
        assert bytes(a.fields[k].ids) == bytes(c.fields[k].ids) == bytes(r.fields[k].ids)
        assert bytes(a.fields[k].directory) == bytes(r.fields[k].directory)
    assert verify_index(tmp_path / "one.edm", key) == []
    ref = open_index(tmp_path / "ragged.edm").fields["dl"]
    assert len(ref.hashes) == ROSTER_ROWS   # the ragged row has no dl; the others keep their ids (+1 after it)


def test_the_workers_indexes_reload_on_change(engine, roster, census, state, tmp_path, caplog):
    """The Kafka worker holds its indexes in sensor.edm.reload.IndexHolder (the sidecar's mechanism:
    files polled at most once a second, the new set loaded in a thread, swapped whole): a rebuilt
    index is picked up without a restart; a scan started before keeps the set it began with; a file
    that cannot be loaded is refused with one log line and the set in use keeps serving."""
    from sensor.edm.build import build_index, parse_columns
    from sensor.edm.reload import IndexHolder
    key = load_key(None, state)
    rows = roster[1]
    export = dashboard(rows, hidden_people(rows, census, 7))
    other = tmp_path / "other.csv"
    other.write_bytes(synth.breach_csv(100, seed=99))               # other people: matches nothing
    idx = tmp_path / "fleet.edm"
    build_index([other], parse_columns(COLUMNS), idx, key, name="fleet")
    clock, results = [100.0], []
    held = IndexHolder([IndexSpec(str(idx))], key, on_reload=results.append, clock=lambda: clock[0])
    old = held.current()
    assert scan(engine, export, old).edm_records == 0
    early = BodyScan(engine, Policy(), key=key, edm=held.current())    # a scan in flight across the swap

    new = tmp_path / "new.edm"                                       # rebuilt beside it, moved in whole
    build_index([roster[0]], parse_columns(COLUMNS), new, key, name="fleet")
    new.replace(idx)
    assert held.current() is old                                     # not checked again before a second
    clock[0] += 1.0
    got = held.current()                                             # the check starts the load, in a thread
    held.join(30)
    assert results == ["ok"] and held.current() is not old and got in (old, held.edm)
    assert scan(engine, export, held.current()).edm_records == 7
    early.write(export)
    assert early.finish().edm_records == 0                           # it kept the set it started with

    serving = held.current()
    broken = tmp_path / "broken.edm"                                 # a broken file: refused, logged once
    broken.write_bytes(b"not an index")
    broken.replace(idx)
    clock[0] += 1.0
    with caplog.at_level("ERROR", logger="dlp.edm"):
        held.current()
        held.join(30)
        clock[0] += 1.0
        held.current()                                               # unchanged since: not tried again
        held.join(30)
    assert results == ["ok", "error"] and held.current() is serving
    refused = [r.getMessage() for r in caplog.records if "index reload refused" in r.getMessage()]
    assert len(refused) == 1 and str(idx) in refused[0]
    assert scan(engine, export, held.current()).edm_records == 7


def test_sidecar_reloads_a_changed_index(roster, census, tmp_path):
    """Indexes are watched: a rebuilt index file is swapped in without a restart (--index kept)."""
    from tests.procs import read_metric
    rows = roster[1]
    hidden = hidden_people(rows, census, 7)
    site = tmp_path / "site"
    (site / "exports").mkdir(parents=True)
    (site / "index.html").write_text("<html>hello</html>")
    (site / "contact.html").write_text("<html>contact</html>")
    (site / "exports" / "dashboard.csv").write_bytes(dashboard(rows, hidden))
    sc_dir = tmp_path / "sidecar"
    state = sc_dir / "state"
    idx = tmp_path / "roster.edm"
    other = tmp_path / "other.csv"
    other.write_bytes(synth.breach_csv(100, seed=99))           # other people: matches nothing
    build = [str(BIN / "dlp-sensor"), "index", "build", "--columns", COLUMNS, "--out", str(idx), "--state-dir", str(state)]
    assert subprocess.run(build + [str(other)], capture_output=True, timeout=120).returncode == 0
    up = Upstream.start(site)
    sc = Sidecar.create(sc_dir, up.url, extra_args=["--index", str(idx)])
    try:
        sc.start()
        with urllib.request.urlopen(sc.url + "/exports/dashboard.csv", timeout=30) as resp:
            assert resp.status == 200 and resp.read() == dashboard(rows, hidden)    # signatures alone: alert only
        before = read_metric(sc.metrics, "dlp_reloads_total", result="ok")
        assert subprocess.run(build + [str(roster[0])], capture_output=True, timeout=120).returncode == 0
        deadline = time.monotonic() + 30
        while read_metric(sc.metrics, "dlp_reloads_total", result="ok") <= before:
            assert time.monotonic() < deadline, "the changed index was not reloaded" + sc.log()[-2000:]
            time.sleep(0.1)
        cut = False
        try:
            with urllib.request.urlopen(sc.url + "/exports/dashboard.csv?again=1", timeout=30) as resp:
                cut = resp.read() != dashboard(rows, hidden)
        except (http.client.IncompleteRead, urllib.error.HTTPError, OSError):
            cut = True
        assert cut
    finally:
        sc.stop()
        up.stop()


def test_parquet_source_needs_pyarrow_or_says_so(roster, state, tmp_path, index_file):
    """Parquet is read when pyarrow is installed (optional); without it the build names the fix."""
    src = tmp_path / "r.parquet"
    out = tmp_path / "p.edm"
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        src.write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
        r = CliRunner().invoke(cli, ["index", "build", "--columns", COLUMNS, "--out", str(out),
                                     "--state-dir", str(state), str(src)])
        assert r.exit_code == 2 and "needs pyarrow" in r.output and str(src) in r.output
        return
    rows = roster[1][:100]
    pq.write_table(pa.Table.from_pylist(rows), src)
    r = CliRunner().invoke(cli, ["index", "build", "--columns", COLUMNS, "--out", str(out),
                                 "--state-dir", str(state), str(src)])
    assert r.exit_code == 0, r.output
    base, idx = open_index(index_file), open_index(out)
    for kind, f in idx.fields.items():
        for h, rid in zip(f.hashes, f.ids):
            assert rid in base.fields[kind].rows(h)
