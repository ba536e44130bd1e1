"""Lines before a table's header (sensor/detect/preamble.py): a title, a banner, comments, a
spreadsheet's title row, blank lines. The table after them must be read as it is without them:
same verdict, same records, same identities, on the compiled core and on the Python reference,
however the body is cut. Before, one banner line hid the header: a fixed-width roster and a card
list passed as prose, a public staff directory lost the column names that make it public."""
from __future__ import annotations

import random

import pytest

from sensor.detect.preamble import MAX_LINES, preamble_end
from tests import corpus15
from tests.conftest import scan_bytes
from tests.test_core_diff import compiled, same  # noqa: F401 - the fixture the differential runs need

ROWS = b"last,first,dob,street\nWalsh,Greg,1970-01-02,820 N Mission Blvd\nLloyd,Connie,1966-06-26,269 N Park Pl\n" \
       b"Reilly,Felix,1980-12-21,765 E Pine Way\n"
PREAMBLES = {
    "title": b"Report generated 2026-06-27 by the records office\n",
    "comment": b"# exported from the permits dashboard\n",
    "title row": b"Permit holders,,,,\n\n",
    "blank lines": b"\n\n",
    "banner and comment": b"CONCEALED CARRY PERMITS\r\n# as of 2022-06-27, all counties\r\n",
}
TABLES = [f for f in corpus15.build() if f.name.endswith((".csv", ".tsv", ".txt"))]


@pytest.mark.parametrize("pre", PREAMBLES.values(), ids=PREAMBLES.keys())
def test_the_table_starts_after_its_preamble(pre):
    assert preamble_end(pre + ROWS) == len(pre)
    assert (pre + ROWS)[preamble_end(pre + ROWS):].startswith(b"last,first")


@pytest.mark.parametrize("body", [
    ROWS,                                                           # the header is the first line
    b"a,b,c\n1,2,3,\n4,5,6,\n7,8,9,\n",                            # rows with a trailing delimiter
    b'{"people": [\n{"a": 1, "b": 2},\n{"a": 3, "b": 4},\n{"a": 5, "b": 6}]}\n',
    b"<table>\n<tr><td>a</td><td>b</td></tr>\n<tr><td>c</td><td>d</td></tr>\n<tr><td>e</td></tr></table>\n",
    b"A letter.\nIt has sentences, and commas.\nNone of it is a table, though.\nThe end.\n",
    b"title\n" + ROWS[:40],                                         # too few lines to tell a table
], ids=["header first", "trailing delimiter", "json", "html", "prose", "short"])
def test_no_preamble_where_there_is_none(body):
    assert preamble_end(body) == 0


def test_a_long_preamble_is_a_document_not_a_banner():
    notes = b"".join(b"note %d of the report\n" % i for i in range(MAX_LINES + 1))
    assert preamble_end(notes + ROWS) == 0
    notes = b"".join(b"note %d of the report\n" % i for i in range(MAX_LINES))
    assert preamble_end(notes + ROWS) == len(notes)


def test_fixed_width_header_with_columns_run_together():
    body = (b"Report of 2022-06-27\n"
            b"LAST      FIRST     DOB     DL      ADDRESS\n"
            b"WALSH     GREG      19700102D0195533288 N MISSION BLVD\n"
            b"LLOYD     CONNIE    19660626E6581293102 N PARK PL\n"
            b"REILLY    FELIX     19801221N1324717147 E PINE WAY\n")
    assert body[preamble_end(body):].startswith(b"LAST")


@pytest.mark.parametrize("pre", PREAMBLES.values(), ids=PREAMBLES.keys())
@pytest.mark.parametrize("f", TABLES, ids=[f.name for f in TABLES])
def test_corpus_tables_read_the_same_after_a_preamble(engine, f, pre):
    plain = scan_bytes(engine, f.data, content_type=f.content_type)
    after = scan_bytes(engine, pre + f.data, content_type=f.content_type)
    assert (after.verdict, after.records, after.strong_records, after.person_records) == \
           (plain.verdict, plain.records, plain.strong_records, plain.person_records), f.name
    assert after.verdict == ("trip" if f.expected == "trip" else plain.verdict)


@pytest.mark.parametrize("f", [f for f in TABLES if f.expected == "trip"], ids=lambda f: f.name)
def test_compiled_and_reference_agree_after_a_preamble_however_cut(engine, compiled, f):  # noqa: F811
    body = PREAMBLES["banner and comment"] + f.data
    rnd = random.Random(f.name)
    cuts = sorted(rnd.sample(range(1, 400), 6)) + list(range(4096, len(body), 7919))   # inside the held head too
    r = same(engine, body, cuts=cuts, content_type=f.content_type)
    assert r["verdict"] == "trip"


def _ragged(data: bytes, row: int) -> bytes:
    """``data`` with the last cell of line ``row`` trimmed with its tab (a spreadsheet's export
    drops a row's trailing empty cells)."""
    lines = data.split(b"\n")
    lines[row] = lines[row].rsplit(b"\t", 1)[0]
    return b"\n".join(lines)


@pytest.mark.parametrize("row", [1, 2])
def test_a_ragged_first_row_keeps_the_header(engine, row):
    """A TSV whose first rows are not all of the header's field count (a trailing empty cell
    trimmed) still opens with its header: the commas of its addresses (two in each row, none in
    the header) made a comma table from the first row on, the header was cut off as a preamble,
    and the public staff directory alerted on 22 records instead of passing."""
    f = next(f for f in TABLES if f.name == "staff_directory.tsv")
    body = _ragged(f.data, row)
    assert preamble_end(body) == 0
    r = scan_bytes(engine, body, content_type=f.content_type)
    assert (r.verdict, r.records) == ("pass", 0)


@pytest.mark.parametrize("name", ["fixed_width.txt", "staff_directory.tsv"])
def test_a_preamble_near_the_held_bytes_splits_the_same_however_cut(engine, name):
    """A preamble of eight long lines ending just before 4 KiB: the table's rows are past the bytes
    the scanner holds when the body comes in small pieces, but were read when it came whole: the
    fixed-width roster tripped whole and passed in 97-byte pieces (the public TSV alerted in
    pieces, passed whole). Only the first 4 KiB decide, however the body is cut."""
    f = next(f for f in TABLES if f.name == name)
    pre = b"".join((b"Note %d " % i + b"lorem ipsum dolor sit amet " * 40)[:480] + b"\n" for i in range(8))
    body = pre + f.data
    runs = [scan_bytes(engine, body, chunk=c, content_type=f.content_type) for c in (len(body), 4096, 97, 1000)]
    assert len({(r.verdict, r.records, r.strong_records, r.person_records) for r in runs}) == 1, name


@pytest.mark.parametrize("name,verdict", [("uatp_cards.csv", "trip"), ("staff_directory.tsv", "pass")])
def test_a_header_naming_more_columns_than_the_rows_fill_is_the_header(engine, name, verdict):
    """A header of two more columns than its rows fill (their trailing empty cells trimmed) is the
    header, not a preamble: taken as one, the card list lost the column name that makes its
    numbers card numbers and passed (200 records before the preamble change), and the public staff
    directory lost the names that make its addresses offices and alerted on 22 records."""
    f = next(f for f in TABLES if f.name == name)
    sep = b"\t" if name.endswith(".tsv") else b","
    head, rest = f.data.split(b"\n", 1)
    body = head + sep + b"NOTES" + sep + b"REMARKS\n" + rest
    assert preamble_end(body) == 0
    r = scan_bytes(engine, body, content_type=f.content_type)
    assert r.verdict == verdict


def test_records_from_structure_keep_their_first_record(engine):
    """The structure view's part opens with SHADOW_HEAD so that no rebuilt record is read as a
    header; taken as a preamble, it made the first record (``name: ...; dob: ...``) the header:
    ten people in definition lists counted nine strong records and alerted instead of tripping."""
    f = next(f for f in corpus15.build() if f.name == "deflists.html")
    body = b"</article>".join(f.data.split(b"</article>")[:10]) + b"</article>\n</body></html>\n"
    r = scan_bytes(engine, body, content_type=f.content_type)
    assert (r.verdict, r.strong_records) == ("trip", 10)


GUARDS = {"angular": (b")]}',\n", b""), "while(1)": (b"while(1);", b""), "jsonp": (b"/**/jQuery3_1({", b"});")}
JSONS = [f for f in corpus15.build() if f.name.endswith((".json", ".jsonl"))]


@pytest.mark.parametrize("head,at", [
    (b")]}'\n{\"a\": 1}", 5), (b")]}',\n[{\"a\": 1}]", 6), (b"while(1);{\"a\": 1}", 9), (b"for(;;);[1, 2]", 8),
    (b"/**/cb({\"a\": 1});", 7), (b"jQuery123_45({\"a\": 1})", 13),
    (b"See [1] for details\nmore\nlines\n", 0), (b"f(x) [{\"a\": 1}]\n", 0), (b"call(me) maybe {\"a\"}\n", 0),
])
def test_json_behind_a_guard_or_a_callback_starts_at_its_bracket(head, at):
    assert preamble_end(head, final=True) == at


@pytest.mark.parametrize("guard", GUARDS, ids=GUARDS.keys())
@pytest.mark.parametrize("f", JSONS, ids=[f.name for f in JSONS])
def test_json_reads_the_same_behind_a_guard_or_a_callback(engine, f, guard):
    """An API's anti-hijacking prefix (``)]}',``, ``while(1);``) or a JSONP callback around the
    document: before, the body read as prose and most JSON rosters passed."""
    pre, post = GUARDS[guard]
    if guard == "jsonp":                                  # the callback's argument: the document
        pre, post = pre[:-1], post[1:]
    plain = scan_bytes(engine, f.data, content_type=f.content_type)
    wrapped = scan_bytes(engine, pre + f.data + post, content_type=f.content_type)
    assert (wrapped.verdict, wrapped.records) == (plain.verdict, plain.records), f.name


def test_guarded_json_compiled_and_reference_agree(engine, compiled):  # noqa: F811
    f = next(f for f in JSONS if f.name == "df_split.json")
    r = same(engine, b")]}',\n" + f.data, cuts=[3, 7, 100, 4000], content_type=f.content_type)
    assert r["verdict"] == "trip"
