"""Issue 15's acceptance corpus: synthetic people in every shape, and public-by-design lists.

Run as a script to write the files (``python -m tests.corpus15 DIR``); the test builds the same
files in memory. Every person is made up (names from the census lists the pack ships, addresses,
dates and licence numbers from a seeded generator). Each leak file knows how many distinct people
it holds (its *truth*); each public file holds people whose publication is the point (staff
directories, registers, disclosures, obituaries, press lists) and must not trip.
"""
from __future__ import annotations

import base64
import bz2
import datetime as dt
import io
import json
import lzma
import random
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from xml.sax.saxutils import escape, quoteattr

import zstandard

from sensor import synth

PEOPLE = 200          # people per leak file (the truth of every leak)
PUBLIC_ROWS = 300     # rows per public-by-design file


@dataclass(frozen=True)
class Person:
    first: str
    middle: str
    last: str
    dob: dt.date
    street: str
    city: str
    state: str
    zip: str
    dl: str
    phone: str

    @property
    def us_dob(self) -> str:
        return self.dob.strftime("%m/%d/%Y")


@dataclass(frozen=True)
class CorpusFile:
    name: str
    content_type: str
    data: bytes
    expected: str          # "trip" (a leak) or "public" (must not trip)
    truth: int             # people in the file (leaks); rows for public files
    shape: str             # the bullet of issue 15 it stands for


def people(n: int = PEOPLE, seed: int = 15) -> list[Person]:
    """``n`` distinct made-up people (distinct licence numbers; census names)."""
    rng = random.Random(seed)
    firsts = [w.title() for w in synth._words("first-names.txt")[:800]]
    lasts = [w.title() for w in synth._words("surnames.txt")[:2000]]
    out, seen = [], set()
    while len(out) < n:
        dl = f"{rng.choice('ABCDEFGNSUY')}{rng.randint(0, 9999999):07d}"
        if dl in seen:
            continue
        seen.add(dl)
        out.append(Person(
            first=rng.choice(firsts), middle=rng.choice("ABCDEFGHJKLMNPRSTW"), last=rng.choice(lasts),
            dob=dt.date(rng.randint(1940, 2003), rng.randint(1, 12), rng.randint(1, 28)),
            street=f"{rng.randint(1, 29999)} {rng.choice(['', 'N ', 'S ', 'E ', 'W '])}"
                   f"{rng.choice(synth.STREETS).title()} {rng.choice(synth.SUFFIXES).title()}",
            city=rng.choice(synth.CITIES).title(), state="CA", zip=str(rng.randint(90001, 96162)),
            dl=dl, phone=f"({rng.randint(200, 989)}) {rng.randint(200, 989)}-{rng.randint(1000, 9999)}"))
    return out


def _dumps(obj: object, indent: int | None = None) -> bytes:
    return json.dumps(obj, indent=indent).encode()


def _csv(ps: list[Person]) -> bytes:
    head = "last_name,first_name,date_of_birth,street_address,city,state,zip,driver_license\n"
    return (head + "".join(f"{p.last.upper()},{p.first.upper()},{p.us_dob},{p.street.upper()},{p.city.upper()},"
                           f"{p.state},{p.zip},{p.dl}\n" for p in ps)).encode()


# -- leaks: JSON ------------------------------------------------------------------------------------

def json_nested(ps: list[Person]) -> bytes:
    return _dumps({"status": "ok", "page": {"number": 1, "size": len(ps)}, "results": [
        {"id": 1000 + i, "person": {"name": {"given": p.first, "family": p.last}, "birthDate": p.dob.isoformat()},
         "residence": {"line1": p.street, "city": p.city, "state": p.state, "postalCode": p.zip},
         "credentials": {"licence": {"number": p.dl, "class": "C"}}}
        for i, p in enumerate(ps)]}, indent=2)


def jsonl_nested(ps: list[Person]) -> bytes:
    return b"".join(_dumps({"record": i, "applicant": {"givenName": p.first, "familyName": p.last,
                                                        "born": p.dob.isoformat()},
                            "home": {"street": p.street, "city": p.city, "zip": p.zip},
                            "dl": p.dl}) + b"\n" for i, p in enumerate(ps))


_COLS = ["permit_id", "first_name", "last_name", "date_of_birth", "street", "city", "zip", "dl_number"]


def _row(i: int, p: Person) -> list:
    return [f"P{50000 + i}", p.first, p.last, p.dob.isoformat() + "T00:00:00", p.street, p.city, p.zip, p.dl]


def json_rows_meta(ps: list[Person]) -> bytes:
    cols = [{"id": -1 - k, "name": c.replace("_", " ").title(), "fieldName": c, "dataTypeName": "text",
             "position": k + 1} for k, c in enumerate(_COLS)]
    return _dumps({"meta": {"view": {"id": "abcd-1234", "name": "Permit holders", "columns": cols}},
                   "data": [_row(i, p) for i, p in enumerate(ps)]})


def df_split(ps: list[Person]) -> bytes:
    return _dumps({"columns": _COLS, "index": list(range(len(ps))), "data": [_row(i, p) for i, p in enumerate(ps)]})


def df_columns(ps: list[Person]) -> bytes:
    rows = [_row(i, p) for i, p in enumerate(ps)]
    return _dumps({c: {str(i): r[k] for i, r in enumerate(rows)} for k, c in enumerate(_COLS)})


def df_index(ps: list[Person]) -> bytes:
    return _dumps({str(i): dict(zip(_COLS, _row(i, p))) for i, p in enumerate(ps)})


def parallel_arrays(ps: list[Person]) -> bytes:
    rows = [_row(i, p) for i, p in enumerate(ps)]
    return _dumps({"generated": "2024-01-31", "series": {c: [r[k] for r in rows] for k, c in enumerate(_COLS)}})


def dashboard_dictionary(ps: list[Person]) -> bytes:
    """A dashboard's data dictionary: field names once, every field's values in one flat array."""
    fields = ["FullName", "DOB", "HomeAddress", "LicenseNo"]
    flat: list[str] = []
    for p in ps:
        flat += [f"{p.first} {p.last}", p.us_dob, f"{p.street}, {p.city}, {p.state} {p.zip}", p.dl]
    return _dumps({"dashboard": "Permit lookup", "dictionary": {"fields": [{"name": f} for f in fields]},
                   "values": flat})


def geojson(ps: list[Person]) -> bytes:
    rng = random.Random(3)
    return _dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [round(-121 - rng.random(), 6),
                                                                          round(38 + rng.random(), 6)]},
         "properties": {"OWNER_FIRST": p.first.upper(), "OWNER_LAST": p.last.upper(), "OWNER_DOB": p.us_dob,
                        "SITE_ADDR": p.street.upper(), "CITY": p.city.upper(), "DL_NO": p.dl}}
        for p in ps]})


def b64_csv_in_json(ps: list[Person]) -> bytes:
    return _dumps({"export": {"filename": "permits.csv", "mime": "text/csv",
                              "content": base64.b64encode(_csv(ps)).decode()}})


# -- leaks: XML, SQL, HTML, text, PDF, compressed -------------------------------------------------------

def xml_children(ps: list[Person]) -> bytes:
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n<PermitHolders exported="2024-02-01">']
    for i, p in enumerate(ps):
        out.append(f"<Holder><Id>{i}</Id><Name><First>{escape(p.first)}</First><Last>{escape(p.last)}</Last></Name>"
                   f"<BirthDate>{p.dob.isoformat()}</BirthDate><Address><Street>{escape(p.street)}</Street>"
                   f"<City>{p.city}</City><Zip>{p.zip}</Zip></Address><DriverLicense>{p.dl}</DriverLicense></Holder>")
    return ("\n".join(out) + "\n</PermitHolders>\n").encode()


def xml_attributes(ps: list[Person]) -> bytes:
    out = ['<?xml version="1.0"?>\n<export><people>']
    for p in ps:
        out.append(f"  <person given={quoteattr(p.first)} family={quoteattr(p.last)} dob=\"{p.us_dob}\" "
                   f"street={quoteattr(p.street)} city=\"{p.city}\" zip=\"{p.zip}\" licence=\"{p.dl}\"/>")
    return ("\n".join(out) + "\n</people></export>\n").encode()


def sql_dump(ps: list[Person]) -> bytes:
    head = ("-- dump of table holders\nCREATE TABLE `holders` (\n  `id` int NOT NULL,\n  `first_name` varchar(40),\n"
            "  `last_name` varchar(40),\n  `birth_date` date,\n  `street` varchar(80),\n  `city` varchar(40),\n"
            "  `zip` char(5),\n  `dl` char(8),\n  PRIMARY KEY (`id`)\n);\n")
    lines = []
    for k in range(0, len(ps), 100):
        tuples = ",".join(f"({k + i},'{p.first}','{p.last}','{p.dob.isoformat()}','{p.street}','{p.city}','{p.zip}',"
                          f"'{p.dl}')" for i, p in enumerate(ps[k:k + 100]))
        lines.append(f"INSERT INTO `holders` VALUES {tuples};\n")
    return (head + "".join(lines)).encode()


def sql_insert_columns(ps: list[Person]) -> bytes:
    lines = []
    for k in range(0, len(ps), 100):
        tuples = ",\n".join(f"  ({k + i}, '{p.last}', '{p.first}', '{p.us_dob}', '{p.street}', '{p.dl}')"
                            for i, p in enumerate(ps[k:k + 100]))
        lines.append(f"INSERT INTO applicants (id, surname, forename, dob, home_street, licence_no) VALUES\n{tuples};\n")
    return "".join(lines).encode()


def html_cards(ps: list[Person]) -> bytes:
    cards = "".join(
        f'<div class="card"><div class="card-body"><h3 class="title">{p.first} {p.last}</h3>'
        f'<div class="row"><span class="label">Date of birth</span> <span>{p.us_dob}</span></div>'
        f'<div class="row"><span class="label">Home</span> <span>{p.street}</span>, <span>{p.city}</span></div>'
        f'<div class="row"><span class="label">Licence</span> <span>{p.dl}</span></div></div></div>\n'
        for p in ps)
    return f"<!doctype html><html><body><main><section class=\"results\">\n{cards}</section></main></body></html>".encode()


def html_deflists(ps: list[Person]) -> bytes:
    items = "".join(
        f"<article><dl><dt>Name</dt><dd>{p.last}, {p.first}</dd><dt>Date of birth</dt><dd>{p.us_dob}</dd>"
        f"<dt>Address</dt><dd>{p.street}, {p.city}, {p.state} {p.zip}</dd><dt>Driver licence</dt><dd>{p.dl}</dd></dl>"
        f"</article>\n" for p in ps)
    return f"<!doctype html><html><body><h1>Holders</h1>\n{items}</body></html>".encode()


def delimited_no_header(ps: list[Person]) -> bytes:
    return "".join(f"{p.last.upper()}|{p.first.upper()}|{p.us_dob}|{p.street.upper()}|{p.city.upper()}|"
                   f"{p.state}|{p.zip}|{p.dl}\n" for p in ps).encode()


def fixed_width(ps: list[Person]) -> bytes:
    """Fixed columns whose header gives the positions; DOB (YYYYMMDD) and licence touch."""
    head = f"{'LAST':<16}{'FIRST':<14}{'DOB':<8}{'DL':<8}{'ADDRESS':<26}{'CITY':<14}ZIP\n"
    rows = "".join(f"{p.last.upper():<16}{p.first.upper():<14}{p.dob:%Y%m%d}{p.dl}{p.street.upper():<26}"
                   f"{p.city.upper():<14}{p.zip}\n" for p in ps)
    return (head + rows).encode()


def pdf_table(ps: list[Person]) -> bytes:
    lines = ["NAME                      DATE OF BIRTH   ADDRESS                        DL"]
    lines += [f"{p.last.upper()}, {p.first.upper():<18} {p.us_dob}      {p.street.upper():<30} {p.dl}" for p in ps]
    return synth.pdf(lines)


PDF_COLUMNS = ["NAME", "DATE OF BIRTH", "ADDRESS", "CITY", "DL"]
PDF_WIDTHS = [130, 70, 150, 90, 60]


def pdf_cells(ps: list[Person]) -> list[list[str]]:
    """The table a PDF report prints: a header row, then one row of cells per person."""
    return [PDF_COLUMNS] + [[f"{p.last.upper()}, {p.first.upper()}", p.us_dob, p.street.upper(),
                             p.city.upper(), p.dl] for p in ps]


def pdf_table_columns(ps: list[Person]) -> bytes:
    """Cells as separate text objects drawn column by column: only positions make the rows."""
    return synth.pdf_table(pdf_cells(ps), PDF_WIDTHS, order="columns")


def csv_zst(ps: list[Person]) -> bytes:
    return zstandard.ZstdCompressor().compress(_csv(ps))


def csv_xz(ps: list[Person]) -> bytes:
    return lzma.compress(_csv(ps))


def csv_bz2(ps: list[Person]) -> bytes:
    return bz2.compress(_csv(ps))


def data_uri_html(ps: list[Person]) -> bytes:
    b64 = base64.b64encode(_csv(ps)).decode()
    return f'<!doctype html><html><body><a download="export.csv" href="data:text/csv;base64,{b64}">Export</a></body></html>'.encode()


def parquet(ps: list[Person]) -> bytes | None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    rows = [_row(i, p) for i, p in enumerate(ps)]
    table = pa.table({c: [r[k] for r in rows] for k, c in enumerate(_COLS)})
    bio = io.BytesIO()
    pq.write_table(table, bio)
    return bio.getvalue()


def xls_workbook(ps: list[Person]) -> bytes:
    """A legacy binary .xls of these people (date cells, 1904 date system): no maintained library
    writes BIFF, so it is a committed fixture made from :func:`people` by tests/data/make_xls.py."""
    assert ps == people(), "tests/data/corpus15_people.xls holds people(); regenerate it with make_xls.py"
    return (Path(__file__).resolve().parent / "data" / "corpus15_people.xls").read_bytes()



# -- session 13: the remaining gaps (base64 wrapped into lines, UATP by field name, two-column PDF) --------

def _wrapped(data: bytes, width: int = 76, eol: str = "\n") -> str:
    """Base64 as MIME and PEM writers emit it: lines of ``width`` characters, then ``eol``."""
    b64 = base64.b64encode(data).decode()
    return eol.join(b64[k:k + width] for k in range(0, len(b64), width))


def b64_mime_in_xml(ps: list[Person]) -> bytes:
    """A SOAP/XML attachment wrapped at 76 characters with CRLF (.NET, Java MIME encoders)."""
    return ('<?xml version="1.0" encoding="utf-8"?>\r\n<Envelope><Body><GetExportResponse><Attachment '
            'name="permits.csv" contentType="text/csv">\r\n' + _wrapped(_csv(ps), 76, "\r\n")
            + '\r\n</Attachment></GetExportResponse></Body></Envelope>\r\n').encode()


def b64_wrapped_data_uri(ps: list[Person]) -> bytes:
    """A data: URI whose base64 is wrapped at 64 characters (PEM width) inside an HTML attribute."""
    return ('<!doctype html><html><body><a download="export.csv" href="data:text/csv;base64,\n'
            + _wrapped(_csv(ps), 64, "\n") + '\n">Export</a></body></html>').encode()


def b64_wrapped_in_json(ps: list[Person]) -> bytes:
    """MIME-wrapped base64 kept as a JSON string: the line breaks are the two characters "\\r\\n"."""
    return _dumps({"attachment": {"name": "permits.csv", "encoding": "base64",
                                  "body": _wrapped(_csv(ps), 76, "\r\n")}}, indent=2)


def b64_indented_xml(ps: list[Person]) -> bytes:
    """Pretty-printed XML: the base64 of a zipped CSV wrapped at 76 and every line indented."""
    bio = io.BytesIO()
    with zipfile.ZipFile(bio, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("permits.csv", _csv(ps))
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<ExportResult>\n  <Files>\n    <File name="permits.zip">\n'
            '      ' + _wrapped(bio.getvalue(), 76, "\n      ") + "\n    </File>\n  </Files>\n</ExportResult>\n").encode()


def _uatp(rng: random.Random) -> str:
    """A UATP card number: 15 digits starting with 1, Luhn-valid."""
    body = [1] + [rng.randint(0, 9) for _ in range(13)]
    total = 0
    for k, d in enumerate(reversed(body)):            # the check digit goes after body: double from the right
        d = d * 2 if k % 2 == 0 else d
        total += d - 9 if d > 9 else d
    return "".join(map(str, body)) + str((10 - total % 10) % 10)


def uatp_cards_csv(ps: list[Person]) -> bytes:
    """Airline corporate cards: travellers' names and UATP numbers bare in a column headed like a card
    (no card word on the row, nothing else private: the card makes the record)."""
    rng = random.Random(151)
    head = "traveler,CardNumber,expiry,fare_class\n"
    return (head + "".join(f"{p.first} {p.last},{_uatp(rng)},{(i % 12) + 1:02d}/2{7 + i % 3},Y\n"
                           for i, p in enumerate(ps))).encode()


def uatp_cards_json(ps: list[Person]) -> bytes:
    """The same as JSON, numeric card values under a ``card_no`` key."""
    rng = random.Random(152)
    return _dumps({"travelers": [{"name": {"first": p.first, "last": p.last}, "seat": f"{i % 40 + 1}C",
                                  "payment": {"type": "UA", "card_no": int(_uatp(rng))}} for i, p in enumerate(ps)]})


def uatp_cards_xml(ps: list[Person]) -> bytes:
    rng = random.Random(153)
    return ('<?xml version="1.0"?><Travelers>' + "".join(
        f"<Traveler><GivenName>{escape(p.first)}</GivenName><Surname>{escape(p.last)}</Surname>"
        f"<Cabin>Y</Cabin><PaymentCardNumber>{_uatp(rng)}</PaymentCardNumber></Traveler>"
        for p in ps) + "</Travelers>").encode()


PDF2_COLUMNS = ["NAME", "BORN", "ADDRESS", "DL"]
PDF2_WIDTHS = [110, 60, 110, 50]


def pdf_two_up(ps: list[Person], order: str = "rows") -> bytes:
    """A roster printed two-up: the table repeated side by side, so every printed row holds two people
    (left half: the first of each pair, right half: the second)."""
    def cells(p: Person) -> list[str]:
        return [f"{p.last.upper()}, {p.first.upper()}", p.us_dob, p.street.upper(), p.dl]
    half = (len(ps) + 1) // 2
    rows = [PDF2_COLUMNS + [""] + PDF2_COLUMNS]
    for k in range(half):
        right = cells(ps[half + k]) if half + k < len(ps) else [""] * 4
        rows.append(cells(ps[k]) + [""] + right)
    return synth.pdf_table(rows, PDF2_WIDTHS + [12] + PDF2_WIDTHS, order=order, per_page=60)


def pdf_two_up_columns(ps: list[Person]) -> bytes:
    return pdf_two_up(ps, order="columns")


def pdf_two_text_columns(ps: list[Person]) -> bytes:
    """A list set in two text columns, one line per person in each: no table cells, only a gutter."""
    def line(p: Person) -> str:
        return f"{p.last.upper()}, {p.first.upper()} {p.us_dob} {p.street.upper()} DL {p.dl}"
    half = (len(ps) + 1) // 2
    rows = [[line(ps[k]), line(ps[half + k]) if half + k < len(ps) else ""] for k in range(half)]
    return synth.pdf_table(rows, [285, 285], order="random", per_page=64, seed=12)

# name, content type, generator, shape
LEAKS: list[tuple[str, str, Callable[[list[Person]], bytes | None], str]] = [
    ("json_nested.json", "application/json", json_nested, "JSON objects nested in an array"),
    ("jsonl_nested.jsonl", "application/x-ndjson", jsonl_nested, "JSON Lines, nested, given/family keys"),
    ("rows_meta.json", "application/json", json_rows_meta, "open-data rows, columns in meta"),
    ("df_split.json", "application/json", df_split, "dataframe split"),
    ("df_columns.json", "application/json", df_columns, "dataframe columns (column -> index -> value)"),
    ("df_index.json", "application/json", df_index, "dict of records keyed by row index"),
    ("parallel_arrays.json", "application/json", parallel_arrays, "parallel arrays"),
    ("dashboard_dictionary.json", "application/json", dashboard_dictionary, "dashboard data dictionary"),
    ("features.geojson", "application/geo+json", geojson, "GeoJSON feature properties"),
    ("holders_children.xml", "application/xml", xml_children, "XML, one element per person"),
    ("holders_attributes.xml", "application/xml", xml_attributes, "XML, attributes"),
    ("holders_dump.sql", "application/sql", sql_dump, "SQL dump, CREATE TABLE + 100 tuples per INSERT"),
    ("applicants_insert_cols.sql", "application/sql", sql_insert_columns, "SQL INSERT with column list"),
    ("cards.html", "text/html", html_cards, "HTML cards"),
    ("deflists.html", "text/html", html_deflists, "HTML definition lists"),
    ("no_header.txt", "text/plain", delimited_no_header, "delimited text without header"),
    ("fixed_width.txt", "text/plain", fixed_width, "fixed-width text, touching values"),
    ("table.pdf", "application/pdf", pdf_table, "PDF table"),
    ("table_columns.pdf", "application/pdf", pdf_table_columns, "PDF table drawn column by column"),
    ("people.csv.zst", "application/octet-stream", csv_zst, "zstd file"),
    ("people.csv.xz", "application/octet-stream", csv_xz, "xz file"),
    ("people.csv.bz2", "application/octet-stream", csv_bz2, "bzip2 file"),
    ("b64_csv_in.json", "application/json", b64_csv_in_json, "base64 CSV inside JSON"),
    ("data_uri.html", "text/html", data_uri_html, "data: URI in HTML"),
    ("people.parquet", "application/octet-stream", parquet, "Parquet"),
    ("people.xls", "application/vnd.ms-excel", xls_workbook, "legacy binary .xls, date cells"),
    ("b64_mime_in.xml", "application/xml", b64_mime_in_xml, "base64 wrapped at 76 + CRLF in XML"),
    ("b64_wrapped_uri.html", "text/html", b64_wrapped_data_uri, "data: URI wrapped at 64 + LF"),
    ("b64_wrapped_in.json", "application/json", b64_wrapped_in_json, "base64 wrapped, JSON-escaped CRLF"),
    ("b64_indented.xml", "application/xml", b64_indented_xml, "base64 zip, wrapped and indented in pretty XML"),
    ("uatp_cards.csv", "text/csv", uatp_cards_csv, "UATP numbers under a card column header"),
    ("uatp_cards.json", "application/json", uatp_cards_json, "UATP numbers (JSON numbers) under a card key"),
    ("uatp_cards.xml", "application/xml", uatp_cards_xml, "UATP numbers in a card element"),
    ("two_up.pdf", "application/pdf", pdf_two_up, "PDF roster printed two-up (two people per row)"),
    ("two_up_columns.pdf", "application/pdf", pdf_two_up_columns, "two-up PDF drawn column by column"),
    ("two_text_columns.pdf", "application/pdf", pdf_two_text_columns, "PDF list set in two text columns"),
]


# -- public by design ----------------------------------------------------------------------------------

_AGENCY_STREETS = ["1300 I St", "915 Capitol Mall", "1416 9th St"]


def _pub_people(seed: int) -> list[Person]:
    return people(PUBLIC_ROWS, seed=seed)


def staff_directory_csv(ps: list[Person]) -> bytes:
    head = "Employee Name,Title,Department,Work Phone,Work Email,Office Address\n"
    titles = ["Analyst", "Program Manager", "Clerk", "Inspector", "Attorney III"]
    return (head + "".join(
        f"\"{p.last}, {p.first}\",{titles[i % 5]},Licensing,(916) 445-{1000 + i},{p.first.lower()}.{p.last.lower()}"
        f"@dmv.ca.gov,\"{_AGENCY_STREETS[i % 3]}, Sacramento, CA 95814\"\n" for i, p in enumerate(ps))).encode()


def staff_directory_json(ps: list[Person]) -> bytes:
    return _dumps({"directory": [
        {"givenName": p.first, "familyName": p.last, "jobTitle": "Deputy", "businessPhone": f"916-322-{2000 + i}",
         "email": f"{p.first[0].lower()}{p.last.lower()}@sheriff.example.gov",
         "officeLocation": {"street": _AGENCY_STREETS[i % 3], "city": "Sacramento", "state": "CA", "zip": "95814"}}
        for i, p in enumerate(ps)]})


def business_licences_csv(ps: list[Person]) -> bytes:
    head = "LICENSE_NO,BUSINESS_NAME,DBA,BUSINESS_ADDRESS,CITY,STATE,ZIP,ISSUE_DATE,STATUS\n"
    kinds = ["Plumbing LLC", "& Sons Inc", "Family Dentistry", "Auto Repair", "Bakery Co"]
    return (head + "".join(
        f"BL-{2015 + i % 9}-{i:06d},{p.last.upper()} {kinds[i % 5].upper()},{p.first.upper()} {p.last.upper()} "
        f"{kinds[i % 5].split()[0].upper()},{p.street.upper()},{p.city.upper()},CA,{p.zip},"
        f"{(i % 12) + 1:02d}/{(i % 28) + 1:02d}/20{10 + i % 14},ACTIVE\n" for i, p in enumerate(ps))).encode()


def business_register_html(ps: list[Person]) -> bytes:
    rows = "".join(f"<tr><td>{p.first} {p.last} Consulting, Inc.</td><td>Registered Agent: {p.first} {p.last}</td>"
                   f"<td>{p.street}, {p.city}, CA {p.zip}</td><td>Filed {p.dob.replace(year=2019):%B %d, %Y}</td></tr>\n"
                   for p in ps)
    return (f"<!doctype html><html><body><table><thead><tr><th>Entity name</th><th>Agent</th>"
            f"<th>Principal office</th><th>Filing</th></tr></thead>\n{rows}</table></body></html>").encode()


def contributions_csv(ps: list[Person]) -> bytes:
    head = "contributor_name,contributor_city,contributor_state,contributor_zip,employer,occupation,amount,date\n"
    emps = ["Self-Employed", "Acme Corp", "Retired", "State of California", "Kaiser Permanente"]
    return (head + "".join(f"\"{p.last.upper()}, {p.first.upper()}\",{p.city.upper()},CA,{p.zip},{emps[i % 5]},"
                           f"Engineer,{(i % 40 + 1) * 25}.00,2024-0{i % 9 + 1}-1{i % 9}\n"
                           for i, p in enumerate(ps))).encode()


def contributions_json(ps: list[Person]) -> bytes:
    return _dumps([{"ContributorFirstName": p.first, "ContributorLastName": p.last,
                    "ContributorAddress": f"{p.city}, {p.state} {p.zip}", "Employer": "Acme Corp",
                    "Amount": 100 + i, "ReceiptDate": f"2023-1{i % 3}-0{i % 9 + 1}"} for i, p in enumerate(ps)])


def lobbying_csv(ps: list[Person]) -> bytes:
    head = "Lobbyist,Firm,Firm Address,Client,Registration Date,Amount\n"
    return (head + "".join(f"{p.first} {p.last},Capitol Advocacy Group,\"1201 K St, Sacramento, CA 95814\","
                           f"Association of Builders,{(i % 12) + 1}/{(i % 28) + 1}/2022,{(i + 1) * 1000}\n"
                           for i, p in enumerate(ps))).encode()


def obituaries_html(ps: list[Person]) -> bytes:
    items = "".join(f"<li><strong>{p.first} {p.middle}. {p.last}</strong>, {2024 - p.dob.year}, of {p.city}, "
                    f"died {dt.date(2024, p.dob.month, p.dob.day):%B %d, %Y}. Services at St. Mary's, "
                    f"{_AGENCY_STREETS[i % 3]}.</li>\n" for i, p in enumerate(ps))
    return f"<!doctype html><html><body><h1>Obituaries</h1><ul>\n{items}</ul></body></html>".encode()


def press_list_csv(ps: list[Person]) -> bytes:
    head = "Reporter;Outlet;Beat;Desk phone;E-mail\n"
    return (head + "".join(f"{p.first} {p.last};Sacramento Bee;Capitol;(916) 321-{1000 + i};"
                           f"{p.first[0].lower()}{p.last.lower()}@sacbee.com\n" for i, p in enumerate(ps))).encode()


def staff_directory_xml(ps: list[Person]) -> bytes:
    out = ['<?xml version="1.0"?><Directory>']
    for i, p in enumerate(ps):
        out.append(f"<Employee><FirstName>{p.first}</FirstName><LastName>{p.last}</LastName><Title>Clerk</Title>"
                   f"<OfficePhone>916-555-{1000 + i}</OfficePhone><OfficeAddress>{_AGENCY_STREETS[i % 3]}, "
                   f"Sacramento, CA 95814</OfficeAddress></Employee>")
    return ("\n".join(out) + "</Directory>\n").encode()


# -- more public-by-design spellings: other field names, nestings and page shapes ------------------------

_BRANCHES = [f"{100 + 37 * k} {st} {suf}" for k, (st, suf) in enumerate(
    [("Capitol", "Mall"), ("Broadway", "Street"), ("Howe", "Avenue"), ("Florin", "Road"), ("Watt", "Avenue"),
     ("Fulton", "Avenue"), ("Folsom", "Boulevard"), ("Stockton", "Boulevard"), ("Arden", "Way"),
     ("Madison", "Avenue"), ("Power Inn", "Road"), ("Franklin", "Boulevard")])]
_AGENCIES = ["Department of Finance", "Franchise Tax Board", "State Controller", "Employment Development",
             "Department of Justice", "Secretary of State", "Board of Equalization", "Department of Education"]


def _ssn(rng: random.Random) -> str:
    return f"{rng.randint(100, 665):03d}-{rng.randint(10, 99):02d}-{rng.randint(1000, 9999):04d}"


def staff_directory_html(ps: list[Person]) -> bytes:
    """A table whose columns say nothing about work: the evidence is twelve addresses for three
    hundred people, and one email domain."""
    rows = "".join(f"<tr><td>{p.first} {p.last}</td><td>Associate Analyst</td><td>{_AGENCIES[i % 8]}</td>"
                   f"<td>{_BRANCHES[(i * 7) % 12]}, Sacramento, CA 95814</td><td>(916) 653-{1000 + i}</td>"
                   f"<td>{p.first.lower()}.{p.last.lower()}@state.example.gov</td></tr>\n" for i, p in enumerate(ps))
    return (f"<!doctype html><html><body><h1>Find a colleague</h1><table><tr><th>Name</th><th>Position</th>"
            f"<th>Division</th><th>Location</th><th>Phone</th><th>E-mail</th></tr>\n{rows}</table></body></html>").encode()


def staff_cards_html(ps: list[Person]) -> bytes:
    cards = "".join(f'<div class="person"><h4>{p.first} {p.middle}. {p.last}</h4><p class="role">Deputy Clerk</p>'
                    f'<p>Office: {_AGENCY_STREETS[i % 3]}, Sacramento, CA 95814</p><p>Tel. (916) 874-{2000 + i}</p>'
                    f'</div>\n' for i, p in enumerate(ps))
    return f"<!doctype html><html><body><section class=\"staff\">\n{cards}</section></body></html>".encode()


def staff_directory_tsv(ps: list[Person]) -> bytes:
    head = "FULL_NAME\tJOB_TITLE\tAGENCY\tWORK_LOCATION\tWORK_PHONE\n"
    return (head + "".join(f"{p.first.upper()} {p.last.upper()}\tPROGRAM TECHNICIAN\t{_AGENCIES[i % 8].upper()}\t"
                           f"{_BRANCHES[i % 12].upper()}, SACRAMENTO, CA 95814\t916-{200 + i % 700}-{1000 + i}\n"
                           for i, p in enumerate(ps))).encode()


def business_licences_json(ps: list[Person]) -> bytes:
    """Open-data licences: a sole proprietor's legal name is the owner's own name, beside the
    business's (distinct) street address; only the business-name field says it is a business."""
    kinds = ["Retail Food Establishment", "Home Occupation", "Limited Business License", "Peddler, Food"]
    return _dumps([{"id": f"{2_500_000 + i}-20240101", "license_id": 2_800_000 + i,
                    "legal_name": f"{p.first.upper()} {p.last.upper()}",
                    "doing_business_as_name": f"{p.last.upper()}'S {['TACOS', 'CLEANING', 'TAILORING', 'AUTO'][i % 4]}",
                    "address": p.street.upper(), "city": p.city.upper(), "state": "CA", "zip_code": p.zip,
                    "license_description": kinds[i % 4], "license_status": "AAI"} for i, p in enumerate(ps)],
                  indent=1)


def business_register_xml(ps: list[Person]) -> bytes:
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n<BusinessEntities>']
    for i, p in enumerate(ps):
        out.append(f"<Entity><EntityNumber>C{4_100_000 + i}</EntityNumber><EntityName>{escape(p.last)} "
                   f"{['Holdings LLC', 'Partners LP', 'Ventures, Inc.', 'Family Trust'][i % 4]}</EntityName>"
                   f"<Status>Active</Status><Agent><AgentName>{escape(p.first)} {escape(p.last)}</AgentName>"
                   f"<AgentAddress>{escape(p.street)}, {p.city}, CA {p.zip}</AgentAddress></Agent></Entity>")
    return ("\n".join(out) + "\n</BusinessEntities>\n").encode()


def contributions_fec_txt(ps: list[Person]) -> bytes:
    """FEC bulk style: pipe-delimited, no header, ZIP+4, employer and occupation."""
    return "".join(f"C00{401224 + i % 50}|N|M3|P|202403{i % 28 + 10}|15|IND|{p.last.upper()}, {p.first.upper()}|"
                   f"{p.city.upper()}|{p.state}|{p.zip}{1000 + i}|{['RETIRED', 'SELF-EMPLOYED', 'ACME CORP'][i % 3]}|"
                   f"{['NOT EMPLOYED', 'CONSULTANT', 'ENGINEER'][i % 3]}|0{i % 9 + 1}152024|{(i % 30 + 1) * 10}\n"
                   for i, p in enumerate(ps)).encode()


def contributions_xml(ps: list[Person]) -> bytes:
    out = ['<?xml version="1.0"?><Contributions>']
    for i, p in enumerate(ps):
        out.append(f"<Contribution><Contributor><Name>{escape(p.first)} {escape(p.last)}</Name>"
                   f"<Location>{p.city}, {p.state} {p.zip}</Location><Employer>Kaiser Permanente</Employer>"
                   f"<Occupation>Nurse</Occupation></Contributor><Amount>{100 + i}</Amount>"
                   f"<Date>2024-02-{i % 28 + 1:02d}</Date></Contribution>")
    return ("\n".join(out) + "</Contributions>\n").encode()


def lobbying_json(ps: list[Person]) -> bytes:
    return _dumps({"filings": [
        {"filingId": 90_000 + i, "lobbyist": {"firstName": p.first, "lastName": p.last},
         "firm": {"name": ["Capitol Advocacy Group", "Aaron Read & Associates", "KP Public Affairs"][i % 3],
                  "address": {"street": _AGENCY_STREETS[i % 3], "city": "Sacramento", "zip": "95814"}},
         "client": "Association of Builders", "period": "2024Q1", "amount": (i + 1) * 500} for i, p in enumerate(ps)]})


def obituaries_txt(ps: list[Person]) -> bytes:
    """Obituaries with full dates of birth: a dead person's date of birth is published on purpose."""
    return "\n\n".join(f"{p.first} {p.middle}. {p.last} - Born {p.dob:%B %d, %Y} in {p.city}, passed "
                         f"away peacefully on {dt.date(2024, p.dob.month, p.dob.day):%B %d, %Y}. Survived by family. "
                         f"Memorial service at {_AGENCY_STREETS[i % 3]}." for i, p in enumerate(ps)).encode()


def press_list_html(ps: list[Person]) -> bytes:
    outlets = [("Sacramento Bee", "1601 Alhambra Blvd"), ("KCRA 3", "3 Television Cir"), ("CapRadio", "7055 Folsom Blvd")]
    rows = "".join(f"<li>{p.first} {p.last} &mdash; {outlets[i % 3][0]}, {outlets[i % 3][1]}, Sacramento "
                   f"&middot; (916) 321-{1000 + i}</li>\n" for i, p in enumerate(ps))
    return f"<!doctype html><html><body><h2>Credentialed press</h2><ul>\n{rows}</ul></body></html>".encode()


# a statewide agency: field offices in many towns, so addresses are many and one domain is not the rule
_FIELD_OFFICES = [f"{1000 + 113 * k} {st} {suf}" for k, (st, suf) in enumerate(
    [(a, b) for a in ("Mariposa", "Tulare", "Van Ness", "Main", "Oak", "Center", "Market", "Park", "Civic Center",
                      "Harbor", "Mission", "El Camino") for b in ("Street", "Avenue", "Boulevard", "Drive")])][:40]
_OFFICE_TOWNS = ["Fresno", "Bakersfield", "Redding", "Eureka", "Chico", "Modesto", "Stockton", "Visalia", "Merced",
                 "Salinas", "San Jose", "Oakland", "Riverside", "San Bernardino", "Ventura", "Santa Rosa"]
_TITLES = ["Associate Governmental Program Analyst", "Staff Services Manager I", "Office Technician",
           "Supervising Investigator", "Senior Legal Analyst", "Program Specialist", "Field Representative",
           "Information Technology Specialist II", "Deputy Director", "Administrative Assistant"]
_DEPTS = [("Dept. of Consumer Affairs", "dca.ca.gov"), ("Division of Labor Standards", "dir.ca.gov"),
          ("Employment Development Dept", "edd.ca.gov"), ("Bureau of Automotive Repair", "bar.ca.gov"),
          ("Department of Rehabilitation", "dor.ca.gov"), ("Office of Tax Appeals", "ota.ca.gov")]


def _field_office(i: int) -> str:
    """Office addresses as staff directories print them: a suite, floor or room on most, not all."""
    k = (i * 7) % len(_FIELD_OFFICES)
    unit = ["Suite %d" % (100 + 10 * (k % 30)), "Floor %d" % (k % 9 + 2), "Room %d" % (1000 + k), "Ste. %d" % (200 + k),
            ""][i % 5]
    return f"{_FIELD_OFFICES[k]}{', ' + unit if unit else ''}, {_OFFICE_TOWNS[k % 16]}, CA 9{3600 + k:04d}"


def _work_phone(i: int) -> str:
    """Desk lines through a switchboard: an extension on most, spelled several ways."""
    main = f"({559 + i % 7 * 10}) {445 + i % 5}-{5100 + i % 40}"
    return main + ["", " ext. %d" % (200 + i), " x%d" % (3000 + i), " Ext %d" % (400 + i)][i % 4]


def staff_offices_txt(ps: list[Person]) -> bytes:
    """Issue 15 point 3 (session 13): a statewide staff directory as pipe-separated text with no
    header: 300 people at 40 field offices in 16 towns, six department email domains. Addresses
    repeat too slowly to tell offices from homes before the trip threshold."""
    return "".join(f"{p.first} {p.last} | {_TITLES[i % 10]} | {_DEPTS[i % 6][0]} | {_field_office(i)} | "
                   f"{_work_phone(i)} | {p.first[0].lower()}{p.last.lower()}@{_DEPTS[i % 6][1]}\n"
                   for i, p in enumerate(ps)).encode()


def staff_offices_html(ps: list[Person]) -> bytes:
    """The same directory as HTML list items with no labels at all."""
    items = "".join(f"<li><b>{p.first} {p.last}</b><br>{_TITLES[(i + 3) % 10]}, {_DEPTS[(i + 1) % 6][0]}<br>"
                    f"{_field_office(i + 11)}<br>{_work_phone(i + 1)}</li>\n" for i, p in enumerate(ps))
    return f"<!doctype html><html><body><h1>Regional staff</h1><ul>\n{items}</ul></body></html>".encode()


def staff_offices_csv(ps: list[Person]) -> bytes:
    """Comma-separated, no header, upper case, the office address split into street and town."""
    return "".join(f"\"{p.last.upper()}, {p.first.upper()}\",{_TITLES[(i + 5) % 10].upper()},"
                   f"\"{_field_office(i + 3).upper()}\",{_work_phone(i + 2).upper()}\n"
                   for i, p in enumerate(ps)).encode()


def staff_offices_tsv(ps: list[Person]) -> bytes:
    """Tab-separated, no header: the department is a field of its own, not the address's label."""
    return "".join(f"{p.last}, {p.first}\t{_DEPTS[(i + 2) % 6][0]}\t{_TITLES[(i + 7) % 10]}\t{_field_office(i + 5)}\t"
                   f"{_work_phone(i + 3)}\t{p.first.lower()}.{p.last.lower()}@{_DEPTS[(i + 2) % 6][1]}\n"
                   for i, p in enumerate(ps)).encode()


# -- leaks that look like the public files: the same columns, plus what makes them private ----------------

def roster_leak_csv(ps: list[Person]) -> bytes:
    """A staff directory with SSNs and dates of birth: one email domain, three offices, and a leak."""
    rng = random.Random(41)
    head = "Employee Name,Title,Department,Work Phone,Work Email,Office Address,SSN,Date of Birth\n"
    return (head + "".join(
        f"\"{p.last}, {p.first}\",Analyst,Licensing,(916) 445-{1000 + i},{p.first.lower()}.{p.last.lower()}{i}"
        f"@dmv.ca.gov,\"{_AGENCY_STREETS[i % 3]}, Sacramento, CA 95814\",{_ssn(rng)},{p.us_dob}\n"
        for i, p in enumerate(ps))).encode()


def contributions_leak_csv(ps: list[Person]) -> bytes:
    """Campaign contributions with home street addresses and dates of birth."""
    head = "contributor_name,street,contributor_city,contributor_state,contributor_zip,employer,occupation,dob,amount\n"
    return (head + "".join(f"\"{p.last.upper()}, {p.first.upper()}\",{p.street.upper()},{p.city.upper()},CA,{p.zip},"
                           f"Acme Corp,Engineer,{p.us_dob},{(i % 40 + 1) * 25}.00\n" for i, p in enumerate(ps))).encode()


def licence_owners_leak_csv(ps: list[Person]) -> bytes:
    """A business-licence register whose owners' SSNs are in it."""
    rng = random.Random(43)
    head = "LICENSE_NO,BUSINESS_NAME,OWNER_NAME,OWNER_SSN,BUSINESS_ADDRESS,CITY,STATE,ZIP\n"
    return (head + "".join(f"BL-2020-{i:06d},{p.last.upper()} PLUMBING LLC,{p.first.upper()} {p.last.upper()},"
                           f"{_ssn(rng)},{p.street.upper()},{p.city.upper()},CA,{p.zip}\n"
                           for i, p in enumerate(ps))).encode()


def voter_roll_leak_csv(ps: list[Person]) -> bytes:
    """Names and home street addresses, nothing else: each person at their own door."""
    head = "VOTER_NAME,RESIDENCE_ADDRESS,RESIDENCE_CITY,ZIP,PARTY\n"
    return (head + "".join(f"{p.first.upper()} {p.last.upper()},{p.street.upper()},{p.city.upper()},{p.zip},"
                           f"{'DEM' if i % 2 else 'REP'}\n" for i, p in enumerate(ps))).encode()


def staff_home_leak_json(ps: list[Person]) -> bytes:
    """A staff directory export that carries home addresses: one email domain, but the field says home."""
    return _dumps({"staff": [
        {"givenName": p.first, "familyName": p.last, "email": f"{p.first.lower()}.{p.last.lower()}{i}@agency.example.gov",
         "workPhone": f"916-555-{1000 + i}", "homeAddress": {"street": p.street, "city": p.city, "zip": p.zip}}
        for i, p in enumerate(ps)]})


def staff_homes_unlabelled_txt(ps: list[Person]) -> bytes:
    """An HR export with no header: names, job titles and departments beside people's own home
    streets and cell phones. Titles are no sign of a workplace on their own."""
    return "".join(f"{p.first} {p.last} | {_TITLES[i % 10]} | {_DEPTS[i % 6][0]} | {p.street}, {p.city}, CA {p.zip}"
                   f" | {p.phone}\n" for i, p in enumerate(ps)).encode()


LOOKALIKE_LEAKS: list[tuple[str, str, Callable[[list[Person]], bytes | None], str]] = [
    ("roster_leak.csv", "text/csv", roster_leak_csv, "staff directory WITH SSNs and DOBs"),
    ("contributions_leak.csv", "text/csv", contributions_leak_csv, "contributions WITH home streets and DOBs"),
    ("licence_owners_leak.csv", "text/csv", licence_owners_leak_csv, "business licences WITH owners' SSNs"),
    ("voter_roll_leak.csv", "text/csv", voter_roll_leak_csv, "names at home street addresses only"),
    ("staff_home_leak.json", "application/json", staff_home_leak_json, "staff directory WITH home addresses"),
    ("staff_homes_unlabelled.txt", "text/plain", staff_homes_unlabelled_txt, "HR export: titles + home streets, no header"),
]
LEAKS += LOOKALIKE_LEAKS

PUBLIC: list[tuple[str, str, Callable[[list[Person]], bytes], str]] = [
    ("staff_directory.csv", "text/csv", staff_directory_csv, "staff directory (work phones, emails, office)"),
    ("staff_directory.json", "application/json", staff_directory_json, "staff directory, JSON spellings"),
    ("staff_directory.xml", "application/xml", staff_directory_xml, "staff directory, XML"),
    ("business_licences.csv", "text/csv", business_licences_csv, "business-licence register"),
    ("business_register.html", "text/html", business_register_html, "business register, agents' names"),
    ("contributions.csv", "text/csv", contributions_csv, "campaign contributions"),
    ("contributions.json", "application/json", contributions_json, "campaign contributions, JSON"),
    ("lobbying.csv", "text/csv", lobbying_csv, "lobbying disclosure"),
    ("obituaries.html", "text/html", obituaries_html, "obituary list"),
    ("press_list.csv", "text/csv", press_list_csv, "press list"),
    ("staff_directory.html", "text/html", staff_directory_html, "staff directory, HTML table, plain headers"),
    ("staff_cards.html", "text/html", staff_cards_html, "staff directory, HTML cards, 'Office:' labels"),
    ("staff_directory.tsv", "text/tab-separated-values", staff_directory_tsv, "staff directory, TSV, upper case"),
    ("business_licences.json", "application/json", business_licences_json, "licences, owners' own names"),
    ("business_register.xml", "application/xml", business_register_xml, "business register, XML, agents"),
    ("contributions_fec.txt", "text/plain", contributions_fec_txt, "contributions, FEC pipe format, no header"),
    ("contributions.xml", "application/xml", contributions_xml, "contributions, XML"),
    ("lobbying.json", "application/json", lobbying_json, "lobbying disclosure, nested firm address"),
    ("obituaries.txt", "text/plain", obituaries_txt, "obituaries with dates of birth"),
    ("press_list.html", "text/html", press_list_html, "press list, HTML list with outlet addresses"),
    ("staff_offices.txt", "text/plain", staff_offices_txt, "staff at 40 field offices, no header, 6 domains"),
    ("staff_offices.html", "text/html", staff_offices_html, "staff at 40 field offices, HTML list, no labels"),
    ("staff_offices.csv", "text/csv", staff_offices_csv, "staff at 40 field offices, CSV without header"),
    ("staff_offices.tsv", "text/tab-separated-values", staff_offices_tsv, "staff at 40 field offices, TSV, no header"),
]


def build() -> list[CorpusFile]:
    """Every corpus file, generated in memory (leaks from one population, public files from others).
    A generator that cannot run here (Parquet without pyarrow) yields no file: the test lists it pending."""
    ps = people()
    out = []
    for name, ct, gen, shape in LEAKS:
        data = gen(ps)
        if data is not None:
            out.append(CorpusFile(name, ct, data, "trip", len(ps), shape))
    for k, (name, ct, gen, shape) in enumerate(PUBLIC):
        out.append(CorpusFile(name, ct, gen(_pub_people(100 + k)), "public", PUBLIC_ROWS, shape))
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.corpus15 OUTPUT_DIR", file=sys.stderr)
        return 2
    d = Path(argv[0])
    d.mkdir(parents=True, exist_ok=True)
    for f in build():
        (d / f.name).write_bytes(f.data)
    print(f"wrote {len(build())} files to {d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
