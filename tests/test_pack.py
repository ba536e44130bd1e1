"""The signature pack: every example runs, and broken packs say exactly what is wrong."""
from __future__ import annotations

from pathlib import Path

import pytest

from sensor.detect.engine import Engine
from sensor.detect.pack import PackError, load_pack
from sensor.detect.selftest import findings_for

PACK = load_pack()
CASES = [(s.id, ex, True) for s in PACK.signatures for ex in s.examples] + \
        [(s.id, ex, False) for s in PACK.signatures for ex in s.negative_examples]


@pytest.mark.parametrize("sid,example,expected", CASES, ids=[f"{c[0]}-{'pos' if c[2] else 'neg'}{i}" for i, c in enumerate(CASES)])
def test_signature_examples(engine, sid, example, expected):
    found = findings_for(engine, example)
    assert (sid in found) == expected, found


def test_every_signature_ships_examples_both_ways():
    assert len(PACK.signatures) >= 15
    for s in PACK.signatures:
        assert s.examples and s.negative_examples, s.id


def test_required_coverage():
    ids = {s.id for s in PACK.signatures}
    for need in ("us-ssn", "payment-card", "us-driver-licence", "dob", "person-name", "us-street-address",
                 "us-phone", "email", "us-passport", "us-itin", "aba-routing", "iban", "penal-code"):
        assert need in ids


def _pack(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "extra.yaml"
    p.write_text(body)
    return p


GOOD = """
pack: t
signatures:
  - id: employee-id
    name: Employee id
    severity: low
    category: strong
    kind: employee
    patterns: ['\\bEMP-\\d{6}\\b']
    examples: ['EMP-123456']
    negative_examples: ['EMP-12345']
"""


def test_operator_pack_loads_and_matches(tmp_path):
    pack = load_pack([_pack(tmp_path, GOOD)])
    eng = Engine(pack, use_cache=False)
    assert "employee-id" in findings_for(eng, "badge EMP-123456 issued")
    assert "us-ssn" in {s.id for s in pack.signatures}          # default pack still there


@pytest.mark.parametrize("mutation,message", [
    (("severity: low", "severity: urgent"), "'severity' must be one of"),
    (("category: strong", "category: secret"), "'category' must be one of"),
    (("    examples: ['EMP-123456']\n", ""), "ships with 'examples'"),
    (("kind: employee", "kind: employee\n    colour: red"), "unknown key(s) ['colour']"),
    (("'\\bEMP-\\d{6}\\b'", "'\\bEMP-\\d+\\b'"), "unbounded width"),
    (("'\\bEMP-\\d{6}\\b'", "'(EMP'"), "expression is not valid"),
    (("id: employee-id", "id: Employee_ID"), "'id' must be lower-case"),
])
def test_broken_pack_names_file_signature_and_key(tmp_path, mutation, message):
    old, new = mutation
    assert old in GOOD
    path = _pack(tmp_path, GOOD.replace(old, new))
    with pytest.raises(PackError) as e:
        load_pack([path])
    assert message in str(e.value)
    assert str(path) in str(e.value)


def test_hyperscan_compile_error_names_signature_and_expression(tmp_path):
    bad = GOOD.replace("'\\bEMP-\\d{6}\\b'", "'EMP-(?=\\d)\\d{6}'")   # Python accepts look-ahead; Hyperscan does not
    pack = load_pack([_pack(tmp_path, bad)], include_default=False)
    with pytest.raises(PackError) as e:
        Engine(pack, use_cache=False)
    msg = str(e.value)
    assert "employee-id" in msg and "EMP-(?=\\\\d)" in msg and "Hyperscan" in msg


def test_duplicate_id_and_bad_yaml(tmp_path):
    with pytest.raises(PackError, match="already defined"):
        load_pack([_pack(tmp_path, GOOD.replace("employee-id", "us-ssn"))])
    with pytest.raises(PackError, match="not valid YAML"):
        load_pack([_pack(tmp_path, "pack: [unclosed")])
    with pytest.raises(PackError, match="no such signature file"):
        load_pack([tmp_path / "missing.yaml"])


def test_database_is_cached_by_pack_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("DLP_SENSOR_CACHE", str(tmp_path))
    pack = load_pack([_pack(tmp_path, GOOD)], include_default=False)
    first = Engine(pack)
    assert not first.cache_hit and first.cache_path.is_file()
    second = Engine(pack)
    assert second.cache_hit and second.cache_path == first.cache_path
    assert "employee-id" in findings_for(second, "EMP-654321")
    first.cache_path.write_bytes(b"garbage")             # a corrupt cache is rebuilt, not fatal
    third = Engine(pack)
    assert not third.cache_hit and "employee-id" in findings_for(third, "EMP-654321")
    changed = load_pack([_pack(tmp_path, GOOD.replace("\\d{6}", "\\d{7}"))], include_default=False)
    assert Engine(changed).cache_path != first.cache_path


def test_pack_digest_is_the_same_in_every_process():
    """The digest is the cache key: if it varied with the hash seed, every process would recompile."""
    import subprocess
    import sys

    code = "from sensor.detect.pack import load_pack; print(load_pack().digest)"
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**__import__("os").environ, "PYTHONHASHSEED": str(seed)}).stdout
               for seed in (1, 2, 3)}
    assert len(digests) == 1 and PACK.digest + "\n" in digests
