"""Issue 15 point 3: precision on public-by-design data, on spellings the corpus does not use.

The corpus (tests/corpus15.py) holds the acceptance files; these build other spellings, field
names and nestings of the same kinds of list, to show that the evidence is general (field names,
business names, distinctness, one email domain, deceased), not a rule per file. Public lists may
alert, never trip; the look-alike leaks trip with records within 5 % of the people in them.
"""
from __future__ import annotations

import json
import random

import pytest

from sensor.detect.precision import (business_name, business_record, deceased, label_before, label_words, place_of,
                                     workplace_record)
from tests import corpus15
from tests.conftest import scan_bytes

N = 120
OFFICES = ["500 Capitol Avenue", "1515 Kings Street", "770 Lincoln Way", "1021 Orange Drive"]


def _ssn(rng: random.Random) -> str:
    return f"{rng.randint(100, 665):03d}-{rng.randint(10, 99):02d}-{rng.randint(1000, 9999):04d}"


def _public(ps) -> list[tuple[str, str, bytes]]:
    staff_sql = ("CREATE TABLE employees (id int, display_name text, title text, office_street text, phone text);\n"
                 + "".join(f"INSERT INTO employees VALUES ({i}, '{p.first} {p.last}', 'Analyst', "
                           f"'{OFFICES[i % 4]}', '(916) 555-{1000 + i}');\n" for i, p in enumerate(ps))).encode()
    staff_json = json.dumps({"value": [
        {"displayName": f"{p.first} {p.last}", "mail": f"{p.first.lower()}{i}@contoso.example.com",
         "businessPhones": [f"+1 916 555 {1000 + i}"], "streetAddress": OFFICES[i % 4], "city": "Sacramento"}
        for i, p in enumerate(ps)]}).encode()
    licence_cards = ("<!doctype html><html><body>" + "".join(
        f'<div class="licence"><h3>{p.first} {p.last} {["Landscaping", "Hair Studio", "Tax Services"][i % 3]}</h3>'
        f"<p>{p.street}, {p.city}, CA {p.zip}</p><p>Licence BL{20000 + i}</p></div>\n"
        for i, p in enumerate(ps)) + "</body></html>").encode()
    lobby_xml = ('<?xml version="1.0"?><Registrations>' + "".join(
        f"<Registration><LobbyistName>{p.first} {p.last}</LobbyistName><FirmName>Capitol Partners</FirmName>"
        f"<FirmAddress>{OFFICES[i % 2]}, Sacramento, CA 95814</FirmAddress><Client>Builders</Client></Registration>"
        for i, p in enumerate(ps)) + "</Registrations>").encode()
    obits_json = json.dumps({"notices": [
        {"name": f"{p.first} {p.middle}. {p.last}", "dateOfBirth": p.dob.isoformat(),
         "dateOfDeath": f"2024-{p.dob.month:02d}-{p.dob.day:02d}", "residence": p.city}
        for p in ps]}).encode()
    contrib_lines = "".join(f"Contributor: {p.last.upper()}, {p.first.upper()} - {p.city.upper()}, CA {p.zip} - "
                            f"Employer: Sutter Health - $250\n" for p in ps).encode()
    th_only = ("<!doctype html><html><body><table><thead><tr><th>Employee</th><th>Work location</th></tr></thead>"
               + "".join(f"<tr><td>{p.first} {p.last}</td><td>{p.street}</td></tr>\n" for p in ps)
               + "</table></body></html>").encode()
    header_only = ("Owner,Business Address,Zip\n"
                   + "".join(f"{p.first} {p.last},{p.street},{p.zip}\n" for p in ps)).encode()
    calaccess = ("CTRIB_NAML,CTRIB_NAMF,CTRIB_ADR1,CTRIB_CITY,CTRIB_ST,CTRIB_ZIP4,CTRIB_EMP,CTRIB_OCC,AMOUNT\n"
                 + "".join(f"{p.last.upper()},{p.first.upper()},{p.street.upper()},{p.city.upper()},CA,{p.zip},"
                           f"SUTTER HEALTH,NURSE,250\n" for p in ps)).encode()
    return [("staff, HTML table, only the <th> says work (distinct addresses)", "text/html", th_only),
            ("contributions with street addresses, employer and occupation columns", "text/csv", calaccess),
            ("owners, CSV, only the header says business (distinct addresses)", "text/csv", header_only),
            ("staff, SQL, office_street column", "application/sql", staff_sql),
            ("staff, Graph-style JSON, one mail domain", "application/json", staff_json),
            ("licences, HTML cards, names in business names", "text/html", licence_cards),
            ("lobbyists, XML, FirmAddress", "application/xml", lobby_xml),
            ("obituaries, JSON, dateOfDeath", "application/json", obits_json),
            ("contributions, labelled text lines, towns only", "text/plain", contrib_lines)]


def _leaks(ps) -> list[tuple[str, str, bytes]]:
    rng = random.Random(3)
    staff_sql = ("CREATE TABLE employees (id int, display_name text, title text, office_street text, ssn text);\n"
                 + "".join(f"INSERT INTO employees VALUES ({i}, '{p.first} {p.last}', 'Analyst', "
                           f"'{OFFICES[i % 4]}', '{_ssn(rng)}');\n" for i, p in enumerate(ps))).encode()
    staff_table = ("<!doctype html><html><body><table><tr><th>Name</th><th>Office</th><th>Email</th><th>SSN</th></tr>"
                   + "".join(f"<tr><td>{p.first} {p.last}</td><td>{OFFICES[i % 4]}</td>"
                             f"<td>{p.first.lower()}{i}@state.example.gov</td><td>{_ssn(rng)}</td></tr>\n"
                             for i, p in enumerate(ps)) + "</table></body></html>").encode()
    homes = json.dumps([{"memberName": f"{p.first} {p.last}", "residentialAddress": p.street, "town": p.city}
                        for p in ps]).encode()
    licence_dob = ("<!doctype html><html><body>" + "".join(
        f'<div class="licence"><h3>{p.first} {p.last}</h3><p>Owner DOB: {p.us_dob}</p>'
        f"<p>Business: {p.last} Landscaping LLC, {p.street}, {p.city}</p></div>\n" for p in ps)
        + "</body></html>").encode()
    return [("staff SQL dump WITH SSNs", "application/sql", staff_sql),
            ("staff HTML table WITH SSNs, one email domain", "text/html", staff_table),
            ("names at residential addresses, JSON", "application/json", homes),
            ("licence cards WITH owners' dates of birth", "text/html", licence_dob)]


@pytest.mark.parametrize("k", range(9))
def test_public_lists_in_other_spellings_do_not_trip(engine, k):
    what, ct, data = _public(corpus15.people(N, seed=500 + k))[k]
    r = scan_bytes(engine, data, content_type=ct)
    assert r.verdict != "trip", (what, r.records, r.person_records, r.strong_records, r.notes)


@pytest.mark.parametrize("k", range(4))
def test_look_alike_leaks_in_other_spellings_trip(engine, k):
    what, ct, data = _leaks(corpus15.people(N, seed=600 + k))[k]
    r = scan_bytes(engine, data, content_type=ct)
    assert r.verdict == "trip" and abs(r.records - N) <= 0.05 * N, (what, r.records, r.notes)


def test_a_directory_trips_once_a_home_address_is_in_it(engine):
    """The same staff list, with home street addresses labelled as such: one domain does not hide it."""
    ps = corpus15.people(N, seed=77)
    head = "Name,Email,Office,Home Address\n"
    body = "".join(f"{p.first} {p.last},{p.first.lower()}{i}@agency.example.gov,{OFFICES[i % 4]},{p.street}\n"
                   for i, p in enumerate(ps))
    r = scan_bytes(engine, (head + body).encode(), content_type="text/csv")
    assert r.verdict == "trip" and abs(r.records - N) <= 0.05 * N, (r.records, r.notes)


def test_a_business_table_with_owners_home_addresses_trips(engine):
    """A business-name column makes a table a business's, but a column labelled home still counts."""
    ps = corpus15.people(N, seed=79)
    head = "Business Name,Owner,Owner Home Address,Business Address\n"
    body = "".join(f"{p.last} Plumbing LLC,{p.first} {p.last},{p.street},{OFFICES[i % 4]}\n"
                   for i, p in enumerate(ps))
    r = scan_bytes(engine, (head + body).encode(), content_type="text/csv")
    assert r.verdict == "trip" and abs(r.records - N) <= 0.05 * N, (r.records, r.notes)


def test_shared_addresses_are_noted_with_counts_only(engine):
    ps = corpus15.people(N, seed=78)
    body = "".join(f"{p.first} {p.last}|{OFFICES[i % 4]}\n" for i, p in enumerate(ps)).encode()
    r = scan_bytes(engine, body, content_type="text/plain")
    assert r.verdict != "trip"
    note = next(n for n in r.notes if n.startswith("precision:"))
    assert "4 distinct addresses" in note and ps[0].last not in note and OFFICES[0] not in note


def test_evidence_helpers():
    assert place_of(label_words(b"OFFICE_ADDRESS")) == 1 and place_of(label_words(b"homeAddress")) == 2
    assert place_of(label_words(b"street")) == 0
    assert label_before(b'{"workLocation": "', 0, 18) == b"workLocation"
    assert label_before(b"<td>Principal office:</td><td>", 0, 30) == b"Principal office"
    assert label_before(b"Ann Lee\tDepartment of Finance\t", 0, 30) == b""        # a TSV field, not a label
    assert label_before(b"Office address:\t", 0, 16) == b"Office address"
    names = type("N", (), {"names": frozenset({b"MARIA", b"GARCIA", b"LOPEZ"})})()
    row = b"MARIA GARCIA PLUMBING,12 MAIN ST"
    assert business_name(row, 0, 12, b",", names)
    assert not business_name(b"MARIA GARCIA LOPEZ,12 MAIN ST", 0, 12, b",", names)
    assert not business_name(b"MARIA GARCIA 03/14/1975", 0, 12, None, names)
    assert business_name(b"<td>Maria Garcia Consulting, Inc.</td>", 4, 16, None, names)
    assert business_record(b'"doing_business_as_name": "X"') and business_record(b"<EntityName>X")
    assert not business_record(b'"identity": "x"') and not business_record(b'"name": "Maria Garcia"')
    assert deceased(b"Maria Garcia, 84, passed away on May 3") and not deceased(b"Maria Garcia, 84, of Davis")


# -- a record that says it is a desk at a workplace (session 13: many offices, no field names) -----------

TOWNS = ["Fresno", "Redding", "Eureka", "Chico", "Modesto", "Stockton", "Visalia", "Merced", "Salinas", "Oakland"]


def _offices(n: int) -> list[str]:
    return [f"{200 + 61 * k} {['Oak', 'Main', 'Civic Center', 'Harbor'][k % 4]} {['St', 'Ave', 'Dr'][k % 3]}"
            for k in range(n)]


@pytest.mark.parametrize("unit,ext", [("Suite 210", ""), ("", " ext. 4431"), ("3rd Floor", " x12"),
                                      ("Rm. 114", ""), ("Mail Stop 22", " Ext: 301")])
def test_a_directory_over_many_offices_never_trips_on_its_first_rows(engine, unit, ext):
    """Fifty offices in ten towns, no header, a different email domain per department: distinctness
    cannot tell (hundreds of addresses), yet every row says it is a desk."""
    ps = corpus15.people(N, seed=81)
    offices = _offices(50)
    body = "".join(f"{p.first} {p.last}, {['Senior Analyst', 'Clerk', 'Division Chief'][i % 3]}; "
                   f"{offices[i % 50]}{', ' + unit if unit else ''}, {TOWNS[i % 10]}, CA 9{5000 + i % 50}; "
                   f"(559) 555-{1000 + i}{ext}; {p.first[0].lower()}{p.last.lower()}@d{i % 9}.example.gov\n"
                   for i, p in enumerate(ps)).encode()
    for chunk in (len(body), 700):
        r = scan_bytes(engine, body, content_type="text/plain", chunk=chunk)
        assert r.verdict != "trip" and r.trip_at_byte is None, (unit, ext, r.records, r.notes)


@pytest.mark.parametrize("sep", [" | ", "\t", ";"])
def test_titles_and_departments_alone_do_not_make_homes_offices(engine, sep):
    """An HR export: titles and departments beside home streets (no extension, no office unit). In a
    TSV the department field before the street is a field of its own, not the street's label."""
    ps = corpus15.people(N, seed=82)
    body = "".join(sep.join([f"{p.first} {p.last}", "Senior Analyst", "Department of Finance",
                             f"{p.street}, {p.city}, CA {p.zip}"]) + "\n" for p in ps).encode()
    r = scan_bytes(engine, body, content_type="text/plain")
    assert r.verdict == "trip" and abs(r.records - N) <= 0.05 * N, (sep, r.records, r.notes)


def test_workplace_record_needs_two_signs():
    assert workplace_record(b"Ann Lee, Analyst, 12 Oak St, Suite 200, Chico")
    assert workplace_record(b"Ann Lee | Clerk | 12 Oak St | (530) 555-1234 ext. 22")
    assert workplace_record(b"Ann Lee | 12 Oak St Rm 4 | 530-555-1234 X 22")
    assert workplace_record(b"ANN LEE,BUREAU OF AUTOMOTIVE REPAIR,\"12 OAK ST, STE. 9, CHICO\"")
    assert workplace_record(b"Ann Lee - Acme Widgets Inc. - 400 Main St, Ste 12, Chico")
    assert not workplace_record(b"Ann Lee, Analyst, Department of Finance, 12 Oak St, Chico")   # home, titled
    assert not workplace_record(b"Ann Lee, 12 Oak St, Suite 200, Chico")                       # one sign
    assert not workplace_record(b"Ann Lee, Clerk, 12 Oak St Apt 4, Chico, (530) 555-1234")
    assert not workplace_record(b"Ann Lee, 0x1f Analyst, 12 Oak St")
