"""`dlp-sensor scan` and `signatures` through the real console script."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sensor.synth import breach_csv

LEAK = breach_csv(500)
RAW_VALUES = [line.split(",")[11] for line in LEAK.decode().splitlines()[1:6]]      # licence numbers


def run(*args: str, stdin: bytes | None = None, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("dlp-sensor")
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([str(exe), *args], input=stdin, capture_output=True, env=env, timeout=300)


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    (tmp_path / "site" / "exports").mkdir(parents=True)
    (tmp_path / "site" / "index.html").write_text("<html><p>Welcome. Call (916) 445-9555.</p></html>")
    (tmp_path / "site" / "exports" / "roster.csv.gz").write_bytes(gzip.compress(LEAK))
    (tmp_path / "site" / "exports" / "one.txt").write_text("GARCIA, MARIA 1234 W MAIN ST DL B1234567\n")
    return tmp_path / "site"


def test_json_lines_schema_and_exit_1_on_trip(tree, tmp_path):
    p = run("scan", "--format", "json", "--state-dir", str(tmp_path / "state"), str(tree))
    assert p.returncode == 1, p.stderr
    lines = [json.loads(x) for x in p.stdout.decode().splitlines()]
    by = {Path(x["path"]).name: x for x in lines}
    assert set(by) == {"index.html", "roster.csv.gz", "one.txt"}
    roster = by["roster.csv.gz"]
    for key in ("path", "verdict", "records", "findings", "bytes", "decoded_bytes", "seconds", "notes"):
        assert key in roster
    assert roster["verdict"] == "trip" and roster["records"] == 500
    assert roster["decoded_bytes"] == len(LEAK) and roster["bytes"] < len(LEAK)
    assert by["one.txt"]["verdict"] == "alert" and by["index.html"]["verdict"] == "pass"
    for raw in RAW_VALUES:
        assert raw not in p.stdout.decode()
    assert (tmp_path / "state" / "hmac.key").stat().st_mode & 0o777 == 0o600


def test_exit_0_when_nothing_trips_and_exclude(tree, tmp_path):
    p = run("scan", "--exclude", "exports", "--state-dir", str(tmp_path), str(tree))
    assert p.returncode == 0, p.stdout
    assert b"1 file(s): 0 tripped" in p.stdout


def test_text_output_is_redacted(tree, tmp_path):
    p = run("scan", "--state-dir", str(tmp_path), str(tree / "exports"))
    out = p.stdout.decode()
    assert p.returncode == 1 and "TRIP" in out and "us-driver-licence" in out
    for raw in RAW_VALUES:
        assert raw not in out
    assert "******" in out


def test_stdin(tmp_path):
    p = run("scan", "--format", "json", "--state-dir", str(tmp_path), "-", stdin=LEAK)
    assert p.returncode == 1
    assert json.loads(p.stdout)["path"] == "-" and json.loads(p.stdout)["records"] == 500


def test_sarif_for_ci_gates(tree, tmp_path):
    p = run("scan", "--format", "sarif", "--state-dir", str(tmp_path), str(tree))
    assert p.returncode == 1
    doc = json.loads(p.stdout)
    assert doc["version"] == "2.1.0"
    run0 = doc["runs"][0]
    rule_ids = {r["id"] for r in run0["tool"]["driver"]["rules"]}
    assert "us-driver-licence" in rule_ids
    errors = [r for r in run0["results"] if r["level"] == "error"]
    assert errors and all(r["ruleId"] in rule_ids for r in run0["results"])
    assert any(r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].endswith("roster.csv.gz") for r in errors)
    for raw in RAW_VALUES:
        assert raw not in p.stdout.decode()


def test_errors_exit_2_with_a_clear_message(tmp_path):
    p = run("scan", "--state-dir", str(tmp_path), str(tmp_path / "missing.csv"))
    assert p.returncode == 2 and b"cannot read" in p.stdout
    bad = tmp_path / "policy.yaml"
    bad.write_text("trip:\n  strong_records: many\n")
    p = run("scan", "--policy", str(bad), "--state-dir", str(tmp_path), str(tmp_path))
    assert p.returncode == 2 and b"trip.strong_records" in p.stderr
    badpack = tmp_path / "pack.yaml"
    badpack.write_text("pack: x\nsignatures:\n  - id: x\n    name: X\n")
    p = run("scan", "--signatures", str(badpack), "--state-dir", str(tmp_path), str(tmp_path))
    assert p.returncode == 2 and b"signature x" in p.stderr


def test_files_scanned_in_parallel_report_as_one_process_does(tree, tmp_path):
    """``--jobs 3`` scans files in forked processes: the same lines, in the same order, as ``--jobs 1``
    (an unreadable entry and a container among them); stdin among the paths falls back to one process."""
    from sensor import synth
    for i in range(6):
        (tree / "exports" / f"part-{i}.csv").write_bytes(breach_csv(200 * (i + 1), seed=i))
    (tree / "exports" / "roster.xlsx").write_bytes(synth.xlsx([r.split(",") for r in synth.breach_rows(300)]))
    os.symlink("/nonexistent", tree / "exports" / "dangling")
    outs = {}
    for jobs in ("1", "3"):
        p = run("scan", "--format", "json", "--jobs", jobs, "--state-dir", str(tmp_path / "state"), str(tree),
                str(tree / "missing.csv"))
        assert p.returncode == 1, p.stderr
        lines = [json.loads(x) for x in p.stdout.decode().splitlines()]
        for x in lines:
            x.pop("seconds", None)
        outs[jobs] = lines
    assert outs["3"] == outs["1"] and len(outs["1"]) == 11
    assert [x["records"] for x in outs["1"] if Path(x["path"]).name.startswith("part-")] == [200 * (i + 1) for i in range(6)]
    p = run("scan", "--format", "json", "--jobs", "2", "-", str(tree / "index.html"), stdin=LEAK)
    assert [json.loads(x)["path"] for x in p.stdout.decode().splitlines()] == ["-", str(tree / "index.html")]


def test_policy_file_changes_the_verdict(tree, tmp_path):
    pol = tmp_path / "p.yaml"
    pol.write_text("trip:\n  strong_records: 1\n")
    p = run("scan", "--format", "json", "--policy", str(pol), "--state-dir", str(tmp_path), str(tree / "exports" / "one.txt"))
    assert p.returncode == 1 and json.loads(p.stdout)["verdict"] == "trip"


def test_signatures_list_and_test():
    p = run("signatures", "list", "--format", "json")
    assert p.returncode == 0
    ids = [json.loads(x)["id"] for x in p.stdout.decode().splitlines()]
    assert "us-ssn" in ids and "person-name" in ids
    p = run("signatures", "test")
    assert p.returncode == 0 and b" passed, 0 failed" in p.stdout


def test_unreadable_directory_is_reported_not_skipped(tree, monkeypatch):
    from sensor.cli.main import _walk

    locked = tree / "private"
    locked.mkdir()
    (locked / "roster.csv").write_bytes(LEAK)
    real = os.scandir

    def scandir(path="."):                      # root ignores chmod, so refuse the listing here
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = dict(_walk((str(tree),)))
    assert found[str(locked)] == "cannot read directory: Permission denied"
    assert found[str(tree / "index.html")] is None


def test_demo_runs_the_sidecar_story_and_exits_0(tmp_path):
    from tests.procs import OUTPUTS
    p = subprocess.run([str(Path(sys.executable).parent / "dlp-sensor"), "demo", "--people", "3000"],
                       capture_output=True, text=True, timeout=120)
    (tmp_path / "demo.out").write_text(p.stdout + p.stderr)
    OUTPUTS.append(tmp_path / "demo.out")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "client got 451" in out and "0 rows of the roster left" in out
    assert "download FAILED" in out and "content fingerprint" in out
    assert "again -> 451" in out and "dlp_trips_total" in out and "taken down" in out


def test_help_lists_every_command_from_its_own_first_paragraph() -> None:
    """``dlp-sensor --help`` lists the lazy commands from summaries kept in main.py (so that listing
    them imports none): each summary must be its command's first help paragraph, word for word."""
    import click

    from sensor.cli.main import LazyGroup, main

    ctx = click.Context(main)
    for name, (_, _, summary) in LazyGroup.LAZY.items():
        cmd = main.get_command(ctx, name)
        assert cmd is not None and cmd.help is not None, name
        assert " ".join(cmd.help.split("\n\n")[0].split()) == summary, name
        for limit in (30, 45, 200):
            assert click.utils.make_default_short_help(summary, limit) == cmd.get_short_help_str(limit)


@pytest.mark.parametrize("args", [["--help"], ["proxy", "--help"], ["takedowns", "--help"], ["config", "--help"],
                                  ["scan", "--help"]])
def test_help_imports_no_serving_libraries(args: list[str]) -> None:
    """Reading the options must not pay for the serving stack (aiohttp, pydantic, prometheus_client):
    the commands that run import it (bench/cli_start.py measures the start-up)."""
    probe = ("import sys, runpy\n"
             "sys.argv = ['dlp-sensor'] + sys.argv[1:]\n"
             "try:\n"
             "    runpy.run_module('sensor.cli.main', run_name='__main__')\n"
             "except SystemExit as e:\n"
             "    assert e.code in (0, None), e.code\n"
             "print(sorted(m for m in ('aiohttp', 'pydantic', 'prometheus_client', 'pyarrow') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
