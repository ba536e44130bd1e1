"""The Kafka record format: round trips, and clear errors that never quote the payload."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from sensor.stream.records import RecordError, decode, encode, require


@given(st.binary(max_size=4096), st.integers(min_value=0, max_value=2**31))
def test_chunks_round_trip_any_bytes(payload, seq):
    rec = decode(encode("chunk", payload, seq=seq))
    assert rec.type == "chunk" and rec["seq"] == seq and rec.payload == payload


def test_header_with_newlines_in_values_still_splits_at_the_first_newline():
    rec = decode(encode("meta", b"", url={"path": "/a\nb"}, resource="h/a\nb"))
    assert rec["resource"] == "h/a\nb" and rec.payload == b""


@pytest.mark.parametrize("value, why", [
    (b"", "empty record"),
    (b"123-45-6789 no header", "no header line"),
    (b"{not json\n", "header is not JSON"),
    (b"[1, 2]\n", "not a JSON object"),
    (b'{"v": 2, "type": "meta"}\n', "unsupported record version 2"),
    (b'{"v": 1, "type": "drop table"}\n', "unknown record type"),
])
def test_malformed_records_say_why(value, why):
    with pytest.raises(RecordError, match=why) as e:
        decode(value)
    assert "123-45-6789" not in str(e.value)


def test_require_names_the_field_and_rejects_bools_as_numbers():
    rec = decode(encode("end", seq=True))
    with pytest.raises(RecordError, match="field 'seq'"):
        require(rec, seq=int)
    require(decode(encode("end", seq=3)), seq=int)
