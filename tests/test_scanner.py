"""The stream scanner: chunk boundaries, context, records, policy, never re-leaking."""
from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.detect.policy import Policy, Route, Thresholds, parse_policy
from sensor.synth import breach_csv
from tests.conftest import scan_bytes

MIXED = (b"name,dob,ssn,address,phone\n"
         b"GARCIA,MARIA,03/14/1975,536-22-8714,1234 W MAIN ST,(916) 445-9555\n"
         b"SMITH,JAMES,11/02/1962,412-55-1290,77 Elm Street,916-445-9556\n"
         b"The applicant Maria Garcia wrote from maria.garcia@gmail.com; card 4539 1488 0343 6467.\n"
         b"DOB: 1975-03-14 passport number A12345678 routing number 021000021 IBAN GB82WEST12345698765432\n"
         b"JOHNSON, ROBERT, 55 OAK AVE, SACRAMENTO, CA 95814, DL D1234567, PC 245 CONVICTED\n")


def test_value_split_across_chunks_is_found(engine):
    doc = b"x" * 100 + b"applicant 536-22-8714 approved"
    for cut in range(100, 125):
        r = scan_bytes(engine, doc, chunk=cut)
        assert r.findings.get("us-ssn") == 1, cut


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=1, max_value=len(MIXED) * 3), min_size=0, max_size=12))
def test_any_split_gives_the_same_findings(engine, cuts):
    doc = MIXED * 3
    whole = scan_bytes(engine, doc, chunk=len(doc))
    points = sorted(set(c for c in cuts if c < len(doc)))
    from sensor.pipeline import BodyScan, Exchange
    from tests.conftest import KEY
    body = BodyScan(engine, Policy(), key=KEY, exchange=Exchange())
    prev = 0
    for p in points + [len(doc)]:
        body.write(doc[prev:p])
        prev = p
    split = body.finish()
    assert split.findings == whole.findings
    assert (split.records, split.strong_records, split.person_records) == \
        (whole.records, whole.strong_records, whole.person_records)
    assert len(whole.findings) >= 10


def test_mixed_document_finds_every_kind(engine):
    r = scan_bytes(engine, MIXED)
    for sid in ("us-ssn", "dob", "person-name", "us-street-address", "us-phone", "email", "payment-card",
                "us-passport", "aba-routing", "iban", "us-driver-licence", "penal-code", "criminal-disposition"):
        assert sid in r.findings, sid


def test_repeated_value_counts_once(engine):
    r = scan_bytes(engine, b"SSN 536-22-8714\n" * 500)
    assert r.findings["us-ssn"] == 1


def test_hotwords_are_whole_words(engine):
    assert "us-driver-licence" not in scan_bytes(engine, b"duplicate D1234567").findings
    assert "us-driver-licence" in scan_bytes(engine, b"lic D1234567").findings
    assert "us-driver-licence" in scan_bytes(engine, b"driver_license: D1234567").findings


def test_csv_header_column_gives_context_and_is_authoritative(engine):
    doc = b"id,cdl,issued,date_of_birth\n" + b"".join(
        b"%d,B%07d,01/0%d/2015,03/1%d/1975\n" % (i, i, i % 9 + 1, i % 9) for i in range(40))
    r = scan_bytes(engine, doc)
    assert r.findings["us-driver-licence"] == 40
    # the dates under "issued" are not DOBs even though each row carries a strong identifier
    assert r.findings["dob"] == 9


def test_quoted_csv_columns(engine):
    doc = b'name,note,dob\n"GARCIA, MARIA","a, b, c",03/14/1975\n'
    assert scan_bytes(engine, doc).findings.get("dob") == 1


def test_html_th_columns_give_context(engine):
    rows = "".join(f"<tr><td>Person {i}</td><td>0{i % 9 + 1}/1{i % 9}/1970</td></tr>\n" for i in range(30))
    doc = f"<html><table><tr><th>Name</th><th>Date of birth</th></tr>\n{rows}</table></html>".encode()
    assert scan_bytes(engine, doc, content_type="text/html").findings.get("dob") == 9
    plain = doc.replace(b"Date of birth", b"Updated")
    assert "dob" not in scan_bytes(engine, plain, content_type="text/html").findings


def test_records_group_values_of_one_person(engine):
    one_line = b"GARCIA, MARIA 1234 W MAIN ST DL B1234567\n"
    r = scan_bytes(engine, one_line)
    assert r.strong_records == 1 and r.person_records == 1 and r.records == 1
    spread = b"GARCIA, MARIA\n" + b"\n" * 3 + b"1234 W MAIN ST\n" + b"DL B1234567\n"
    r = scan_bytes(engine, spread)
    assert r.records == 0            # the values are on separate lines: no one person is exposed


def test_json_records_are_objects_even_nested_and_pretty(engine):
    people = [{"name": f"GARCIA, {n}", "address": {"street": f"{100 + i} W MAIN ST", "city": "SACRAMENTO"},
               "dob": f"03/{10 + i}/1975", "dl": f"B{1234560 + i}"}
              for i, n in enumerate(["MARIA", "JAMES", "ROBERT", "LINDA", "DAVID", "SUSAN", "MARY", "JOHN",
                                     "PATRICIA", "MICHAEL", "BARBARA", "WILLIAM"])]
    for opt in (0, orjson.OPT_INDENT_2):
        doc = orjson.dumps({"results": people}, option=opt)
        r = scan_bytes(engine, doc, content_type="application/json")
        assert r.records == 12 and r.verdict == "trip", (opt, r)
        assert r.findings.get("dob") == 12, (opt, r.findings)        # "dob" keys label their values


def test_contact_page_does_not_trip(engine):
    page = (b"<html><body><h1>Contact us</h1><p>Front desk: (916) 445-9555, fax (916) 445-9556.</p>"
            b"<p>Press: press@agency.ca.gov, records: records@agency.ca.gov</p>"
            b"<p>Office: 1300 I Street, Sacramento, CA 95814</p><p>Director Maria Garcia</p></body></html>")
    r = scan_bytes(engine, page, content_type="text/html")
    assert r.verdict == "pass", r


def test_default_policy_thresholds(engine):
    rows = lambda n: b"".join(b"GARCIA, MARIA %d W MAIN ST DL B%07d\n" % (i + 1, i) for i in range(n))
    assert scan_bytes(engine, rows(1)).verdict == "alert"
    assert scan_bytes(engine, rows(9)).verdict == "alert"
    assert scan_bytes(engine, rows(10)).verdict == "trip"
    people = lambda n: b"".join(b"SMITH, JAMES %d W MAIN ST\n" % (i + 1) for i in range(n))
    assert scan_bytes(engine, people(24)).verdict == "alert"
    assert scan_bytes(engine, people(25)).verdict == "trip"


def test_route_overrides_and_allowlist(engine):
    policy = parse_policy({"routes": [{"match": "/profile/*", "allow": ["person-name", "us-street-address", "us-driver-licence"]},
                                      {"match": "/export/*", "trip": {"strong_records": 2}}]})
    doc = b"".join(b"GARCIA, MARIA %d W MAIN ST DL B%07d\n" % (i + 1, i) for i in range(3))
    assert scan_bytes(engine, doc, policy=policy, path="/profile/me").verdict == "pass"
    assert scan_bytes(engine, doc, policy=policy, path="/export/all").verdict == "trip"
    assert scan_bytes(engine, doc, policy=policy, path="/other").verdict == "alert"


def test_verdict_is_reached_mid_stream(engine):
    data = breach_csv(20000)
    r = scan_bytes(engine, data, stop_on_trip=True)
    assert r.verdict == "trip"
    assert r.trip_at_byte is not None and r.trip_at_byte <= 2 * 65536 < len(data)


def test_results_never_carry_raw_values(engine):
    r = scan_bytes(engine, MIXED)
    text = orjson.dumps(r.to_json()).decode()
    for raw in ("536-22-8714", "4539 1488 0343 6467", "maria.garcia@gmail.com", "GARCIA, MARIA", "A12345678",
                "03/14/1975", "1234 W MAIN ST", "D1234567", "GB82WEST12345698765432"):
        assert raw not in text, raw
    assert any(s.fingerprint.startswith("hmac-sha256:") for s in r.samples["us-ssn"])


def test_policy_errors_name_the_key():
    import pytest

    from sensor.detect.policy import PolicyError
    with pytest.raises(PolicyError, match=r"policy.trip.strong_records: must be a whole number"):
        parse_policy({"trip": {"strong_records": -1}})
    with pytest.raises(PolicyError, match=r"unknown key\(s\) \['trips'\]"):
        parse_policy({"trips": {}})
    with pytest.raises(PolicyError, match=r"routes\[0\]: needs 'match'"):
        parse_policy({"routes": [{"trip": {}}]})
    with pytest.raises(PolicyError, match=r"unknown signature id"):
        parse_policy({"allow": ["nope"]}, known_ids={"us-ssn"})
    assert Policy().for_path("/x").trip == Thresholds(10, 25)
    assert isinstance(Route(match="/a"), Route)


def _body(engine, doc: bytes, chunk: int):
    from sensor.pipeline import BodyScan, Exchange
    from tests.conftest import KEY
    body = BodyScan(engine, Policy(), key=KEY, exchange=Exchange())
    for i in range(0, len(doc), chunk):
        body.write(doc[i:i + chunk])
    return body


def test_gated_dates_cost_nothing_until_a_record_can_use_them(engine):
    page = b"".join(b"<p>Updated March %d, 2019. Figures for 2021-06-%02d.</p>\n" % (i % 28 + 1, i % 28 + 1)
                    for i in range(2000))
    body = _body(engine, page, 4096)
    assert body.scanner._gate is None            # no strong identifier, no DOB hotword: never scanned
    assert "dob" not in body.finish().findings


def test_gate_opens_mid_record_and_still_counts_the_earlier_date(engine):
    filler = b"".join(b"row %d of the public table\n" % i for i in range(3000))   # > several chunks
    record = b"GARCIA, MARIA born on 03/14/1975 ssn 536-22-8714\n"
    late = b"SMITH, JAMES 11/02/1962 412-55-1290\n"                            # date before the SSN
    for chunk in (64, 1000, 65536):
        r = _body(engine, filler + late + record, chunk).finish()
        assert r.findings.get("dob") == 2, (chunk, r.findings)
        assert r.strong_records == 2


def test_dob_hotword_opens_the_gate_for_labelled_dates(engine):
    filler = b"x" * 200_000 + b"\n"
    r = scan_bytes(engine, filler + b"Date of birth: 1975-03-14\n", chunk=8192)
    assert r.findings.get("dob") == 1


def test_json_keys_label_values_in_minified_json_of_varying_shape(engine):
    people = []
    for i in range(30):
        person = {"name": "GARCIA, MARIA"}
        for k in range(i % 3):                        # records of different shapes
            person[f"note{k}"] = "x, y"
        person["dob"] = f"1975-03-{i % 28 + 1:02d}"
        people.append(person)
    r = scan_bytes(engine, orjson.dumps(people), content_type="application/json")
    assert r.findings.get("dob") == 28, r.findings


def test_a_hotword_after_the_value_labels_it_on_the_same_line(engine):
    assert scan_bytes(engine, b"x\n03/14/1975 (date of birth)\n").findings.get("dob") == 1
    assert scan_bytes(engine, b"part B7654321 - driver license\n").findings.get("us-driver-licence") == 1
    assert "dob" not in scan_bytes(engine, b"03/14/1975\nborn\n").findings          # another line
    assert "dob" not in scan_bytes(engine, b"03/14/1975 " + b"." * 200 + b" born\n").findings   # too far


import pytest  # noqa: E402


@pytest.mark.parametrize("declared", ["text/html", "text/html; charset=utf-8", "application/json", "text/plain"])
def test_a_roster_served_under_another_content_type_is_read_as_the_table_it_is(engine, declared):
    """The Content-Type is a hint, the bytes decide: a CSV roster misnamed .html or .json trips with
    every row counted, as it does as text/csv."""
    data = breach_csv(500)
    as_csv = scan_bytes(engine, data, content_type="text/csv")
    other = scan_bytes(engine, data, content_type=declared)
    assert (other.verdict, other.records) == (as_csv.verdict, as_csv.records) == ("trip", 500)

