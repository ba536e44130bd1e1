"""Synthetic data for the demo, the tests and the benchmarks. Every person here is made up.

``breach_csv`` has the fields of the 2022 firearms-dashboard leak as reported: name, date of
birth, gender, race, California driver licence, address and criminal history — and no SSN. A fifth of the
names are invented (not in the census lists) so that name detection is not given for free.
``benign_web`` is what a public site serves all day: HTML, JS, JSON APIs and CSV statistics,
dense in numbers, dates, prices and ids.
"""
from __future__ import annotations

import io
import itertools
import random
import zipfile
from pathlib import Path
from typing import Iterator

_DATA = Path(__file__).resolve().parents[1] / "signatures" / "data"
STREETS = ["MAIN", "OAK", "PINE", "MAPLE", "CEDAR", "ELM", "WASHINGTON", "LAKE", "HILL", "PARK", "SUNSET",
           "MISSION", "LINCOLN", "JEFFERSON", "MADISON", "FOREST", "RIVER", "VALLEY", "CHURCH", "SPRING"]
SUFFIXES = ["ST", "AVE", "RD", "BLVD", "DR", "LN", "CT", "WAY", "PL"]
CITIES = ["SACRAMENTO", "LOS ANGELES", "SAN DIEGO", "FRESNO", "OAKLAND", "BAKERSFIELD", "ANAHEIM", "RIVERSIDE",
          "STOCKTON", "MODESTO", "REDDING", "CHICO", "EUREKA", "VISALIA", "SALINAS", "EL CAJON"]
COUNTIES = ["SACRAMENTO", "LOS ANGELES", "SAN DIEGO", "FRESNO", "ALAMEDA", "KERN", "ORANGE", "RIVERSIDE"]
OFFENSES = ["PC 245(A)(1) ASSAULT W/DEADLY WEAPON", "PC 12022.1", "VC 23152(A) DUI", "HS 11350 POSSESSION",
            "PC 273.5 DOMESTIC VIOLENCE", "PC 459 BURGLARY"]
DISPOSITIONS = ["CONVICTED", "DISMISSED", "ARRESTED", "PROBATION"]
BREACH_HEADER = ("permit_id,last_name,first_name,middle_initial,date_of_birth,gender,race,street_address,"
                 "city,state,zip,driver_license,county,criminal_history,disposition\n")


def _words(name: str) -> list[str]:
    return [w.strip() for w in (_DATA / name).read_text().splitlines() if w.strip() and not w.startswith("#")]


def _invented(rng: random.Random) -> str:
    syl = ["ka", "lo", "vin", "dra", "mo", "zet", "qui", "bran", "tor", "shi", "pel", "gru"]
    return "".join(rng.choice(syl) for _ in range(rng.randint(2, 3))).upper()


def breach_rows(n: int, seed: int = 2022) -> list[str]:
    return list(iter_breach_rows(n, seed))


def iter_breach_rows(n: int, seed: int = 2022) -> Iterator[str]:
    """The rows of :func:`breach_rows`, one at a time (a gigabyte of them need not fit in memory)."""
    rng = random.Random(seed)
    firsts, lasts = _words("first-names.txt"), _words("surnames.txt")
    for i in range(n):
        last = rng.choice(lasts) if rng.random() < 0.8 else _invented(rng)
        first = rng.choice(firsts) if rng.random() < 0.8 else _invented(rng)
        dob = f"{rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}/{rng.randint(1940, 2003)}"
        addr = f"{rng.randint(1, 29999)} {rng.choice(['', 'N ', 'S ', 'E ', 'W '])}{rng.choice(STREETS)} {rng.choice(SUFFIXES)}"
        crim, disp = ("", "")
        if rng.random() < 0.15:
            crim, disp = rng.choice(OFFENSES), rng.choice(DISPOSITIONS)
        yield (
            f"{100000 + i},{last},{first},{rng.choice('ABCDEFGHJKLMNPRSTW')},{dob},{rng.choice('MF')},"
            f"{rng.choice(['W', 'H', 'B', 'A', 'O'])},{addr},{rng.choice(CITIES)},CA,{rng.randint(90001, 96162)},"
            f"{rng.choice('ABCDEFGNSUY')}{rng.randint(0, 9999999):07d},"
            f"{rng.choice(COUNTIES)},{crim},{disp}\n")


def breach_csv(n: int = 200_000, seed: int = 2022) -> bytes:
    """A leak of ``n`` distinct people (the truth for record counting is ``n``)."""
    return (BREACH_HEADER + "".join(breach_rows(n, seed))).encode()


def breach_csv_stream(n: int, seed: int = 2022, chunk_rows: int = 20_000) -> Iterator[bytes]:
    """:func:`breach_csv` in pieces of ``chunk_rows`` rows: the same bytes, in bounded memory."""
    rows = iter_breach_rows(n, seed)
    yield BREACH_HEADER.encode()
    while True:
        piece = "".join(itertools.islice(rows, chunk_rows))
        if not piece:
            return
        yield piece.encode()


_LOREM = ("the county publishes statistics on permits issued each year along with processing times "
          "and the number of applications received by each office please note that figures for the "
          "current quarter are preliminary and will be revised when the audit is complete see the "
          "methodology section for definitions of terms used throughout this dashboard").split()


def _html_page(rng: random.Random) -> str:
    rows = "".join(
        f"<tr><td>{rng.choice(COUNTIES).title()}</td><td>{rng.randint(100, 99999):,}</td>"
        f"<td>{rng.uniform(0, 100):.1f}%</td><td>20{rng.randint(10, 23)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}</td></tr>\n"
        for _ in range(rng.randint(5, 30)))
    paras = "".join(
        "<p>" + " ".join(rng.choice(_LOREM) for _ in range(rng.randint(30, 90))).capitalize()
        + f". Updated {rng.choice(['March', 'June', 'Sept.', 'Dec'])} {rng.randint(1, 28)}, 20{rng.randint(15, 23)}.</p>\n"
        for _ in range(rng.randint(3, 10)))
    return (f"<!doctype html><html><head><title>Permit statistics {rng.randint(1, 999)}</title>"
            f"<script src=\"/static/app.{rng.getrandbits(32):08x}.js\"></script></head><body>"
            f"<nav><a href=\"/\">Home</a> <a href=\"/data?page={rng.randint(1, 50)}\">Data</a></nav>\n{paras}"
            f"<table><thead><tr><th>County</th><th>Permits</th><th>Share</th><th>Date</th></tr></thead>\n"
            f"{rows}</table><footer>Contact the office at (916) 555-0{rng.randint(100, 199)}.</footer></body></html>\n")


def _js(rng: random.Random) -> str:
    fns = []
    for i in range(rng.randint(5, 20)):
        fns.append(f"function f{i}_{rng.getrandbits(16):x}(a,b){{var c=a*{rng.randint(1, 9999)}+b;"
                   f"if(c>{rng.randint(1000, 99999)}){{return c%{rng.randint(2, 97)};}}"
                   f"return Math.round(c*{rng.random():.6f});}}\n")
    return "".join(fns)


def _json_api(rng: random.Random) -> str:
    items = ",".join(
        f"{{\"id\":{rng.randint(1, 10**9)},\"county\":\"{rng.choice(COUNTIES).title()}\","
        f"\"permits\":{rng.randint(0, 50000)},\"approved\":{rng.randint(0, 50000)},"
        f"\"median_days\":{rng.uniform(1, 200):.2f},\"updated\":\"20{rng.randint(15, 23)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T{rng.randint(10, 23)}:{rng.randint(10, 59)}:00Z\","
        f"\"ts\":{rng.randint(1500000000000, 1700000000000)},\"price\":{rng.uniform(1, 999):.2f}}}"
        for _ in range(rng.randint(10, 60)))
    return f"{{\"page\":{rng.randint(1, 99)},\"items\":[{items}]}}\n"


def _csv_stats(rng: random.Random) -> str:
    head = "year,quarter,county,applications,issued,denied,revoked,median_days\n"
    return head + "".join(
        f"{rng.randint(2010, 2023)},{rng.randint(1, 4)},{rng.choice(COUNTIES)},{rng.randint(0, 90000)},"
        f"{rng.randint(0, 90000)},{rng.randint(0, 900)},{rng.randint(0, 90)},{rng.uniform(1, 300):.1f}\n"
        for _ in range(rng.randint(20, 200)))


def benign_web(size: int = 50 << 20, seed: int = 7) -> bytes:
    """About ``size`` bytes of a public statistics site's traffic (a mix of the four kinds)."""
    rng = random.Random(seed)
    docs: list[str] = []
    # generate a pool of documents, then sample from it with small edits to reach the size cheaply
    for _ in range(400):
        docs.append(rng.choice([_html_page, _html_page, _js, _json_api, _csv_stats])(rng))
    out, total = [], 0
    while total < size:
        d = rng.choice(docs)
        out.append(d)
        total += len(d)
    return "".join(out).encode()[:size]


def xlsx(rows: list[list[str]]) -> bytes:
    """An xlsx as Excel writes it: cells refer to a shared-strings table stored after the sheet."""
    strings: dict[str, int] = {}
    xml_rows = []
    for r, row in enumerate(rows, 1):
        cells = []
        for c, text in enumerate(row):
            if text:
                idx = strings.setdefault(text, len(strings))
                col = chr(65 + c) if c < 26 else "A" + chr(39 + c)
                cells.append(f'<c r="{col}{r}" t="s"><v>{idx}</v></c>')
        xml_rows.append(f'<row r="{r}">{"".join(cells)}</row>')
    ns = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    sheet = f'<?xml version="1.0"?><worksheet {ns}><sheetData>{"".join(xml_rows)}</sheetData></worksheet>'
    sst = "".join(f"<si><t>{t}</t></si>" for t in strings)
    bio = io.BytesIO()
    with zipfile.ZipFile(bio, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("xl/workbook.xml", f"<workbook {ns}/>")
        z.writestr("xl/worksheets/sheet1.xml", sheet)
        z.writestr("xl/sharedStrings.xml", f'<?xml version="1.0"?><sst {ns} count="{len(strings)}">{sst}</sst>')
    return bio.getvalue()


def _pdf_esc(t: str) -> str:
    return t.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def pdf(lines: list[str], per_page: int = 60) -> bytes:
    """A PDF as report generators write it: Helvetica text drawn line by line, each page's content
    stream Flate-compressed (the bytes on the wire show none of the text)."""
    pages = [lines[i:i + per_page] for i in range(0, len(lines), per_page)] or [[]]
    return _pdf_pages([["BT /F1 8 Tf 10 TL 30 800 Td"] + [f"({_pdf_esc(t)}) Tj T*" for t in page] + ["ET"]
                       for page in pages])


def pdf_table(rows: list[list[str]], widths: list[int], order: str = "rows", per_page: int = 60,
              seed: int = 0) -> bytes:
    """A table PDF whose cells are separate text objects placed by ``Td``, emitted in ``order``:
    "rows" (left to right, top to bottom), "columns" (each column top to bottom, as some report
    engines draw them) or "random". Only the positions say which cells form a printed row, which
    is what the PDF reader must rebuild (issue 15). ``widths`` are the column widths in points."""
    rng = random.Random(seed)
    pages = []
    for first in range(0, len(rows), per_page):
        cells = []
        for r, row in enumerate(rows[first:first + per_page]):
            x = 30
            for c, text in enumerate(row):
                cells.append((r, c, x, 800 - 12 * r, text))
                x += widths[c]
        if order == "columns":
            cells.sort(key=lambda t: (t[1], t[0]))
        elif order == "random":
            rng.shuffle(cells)
        pages.append([f"BT /F1 8 Tf {x} {y} Td ({_pdf_esc(t)}) Tj ET" for _, _, x, y, t in cells])
    return _pdf_pages(pages or [[]])


def _pdf_pages(pages: list[list[str]]) -> bytes:
    """A valid PDF with one Flate-compressed content stream of operators per page."""
    import zlib

    objs: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b"",
                         b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"]
    kids = []
    for ops in pages:
        body = zlib.compress("\n".join(ops).encode("cp1252", "replace"))
        objs.append(b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(body) + body + b"\nendstream")
        content = len(objs)
        objs.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 842] /Contents %d 0 R "
                    b"/Resources << /Font << /F1 3 0 R >> >> >>" % content)
        kids.append(len(objs))
    objs[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for n, o in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + o + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


def dense_breach_stream(n: int, seed: int = 2022, block: int = 50_000) -> Iterator[bytes]:
    """``n`` distinct people of breach CSV, fast enough for gigabytes (the memory benchmark).

    The first ``block`` rows are :func:`breach_rows`; later blocks repeat them with a fresh permit
    id and a fresh driver licence number (letter + 7 digits, a bijection of the row index), so
    every row is still a distinct person and the truth for records is ``n``."""
    base = [r.split(",", 12) for r in breach_rows(min(n, block), seed)]
    letters = "ABCDEFGNSUY"
    yield BREACH_HEADER.encode()
    for start in range(0, n, block):
        out = []
        for j, f in enumerate(base[: min(block, n - start)]):
            idx = start + j
            out.append(f"{100000 + idx},{','.join(f[1:11])},{letters[idx // 10_000_000 % 11]}"
                       f"{idx * 7919 % 10_000_000:07d},{f[12]}")
        yield "".join(out).encode()
