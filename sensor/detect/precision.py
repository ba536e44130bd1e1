"""Precision on public-by-design data: is a name + address record a person at home?

A record trips only when it ties a person to something private: a government or financial
identifier, a full date of birth, or a *home* address. Identifiers and dates of birth are private
wherever they sit; an address is not. Staff directories, business registers and licences,
campaign-finance and lobbying disclosures, obituaries and press lists all put names beside
addresses, and publishing them is the point. This module holds the evidence the scanner reads,
from the data itself, to tell a home from a workplace; the scanner calls it only for records that
would count on a name and an address alone (no identifier, no date of birth), so benign traffic and
real leaks with identifiers never pay for it.

The evidence, and what it does (the table in docs/detection.md says the same):

- a *locality* value (city, state and ZIP: ``locality: true`` in the pack) is never a home address;
- an address whose field name or label says work, office, business, firm, employer, company,
  agency, department, mailing, registered agent, principal office, headquarters, branch, DBA …
  (a CSV header, an HTML ``<th>``, a JSON key, an XML element, a SQL column, a label in the text
  before it) is the organisation's, not the person's; a name in such a field is not a person;
- a record with a field named as a business's name (business name, DBA, doing business as, entity
  name, company …, in the CSV header, the HTML header row, or a key of the record) is a business's
  record: a sole proprietor's own name beside it is the business's name, its address the business's;
- a record or table with a field for the person's employer or occupation is a disclosure of people's
  jobs (campaign finance, lobbying): its addresses count only where labelled as homes;
- a name that is part of a business name (an entity word or suffix beside it in its field: LLC,
  Inc, Corp, Ltd, Co., Company, Partners, Services, Restaurant, Church, Foundation, Trust,
  Associates …, or further capitalised words that are not names, as in "MARIA GARCIA PLUMBING")
  is a business, and the record is the business's;
- a record that says its person has died (died, passed away, obituary, survived by, funeral,
  memorial service, in loving memory …) is an obituary or a death notice: a date of birth or an
  address in it is published on purpose (an identifier still counts);
- column distinctness: a home holds a few of the listed people at most, so records on a name and
  an address count at most :data:`HOUSEHOLD` per distinct address (three hundred people at three
  addresses are three offices, six records at most);
- one email domain for nearly every address (a staff directory): records on a name and an address
  count only where the address is labelled as a home (home, residence, residential …);
- a record that itself says it is a desk at a workplace, with no field names needed: a phone with
  an extension (``x1234``, ``ext. 12``: a switchboard) or an office unit in its address (Suite, Ste,
  Floor, Room, Bldg, Mail Stop), together with a second sign of work (the other of those two, a
  job title or an organisational unit: Analyst, Manager, Clerk …; Department, Division, Bureau …,
  or a business suffix: Inc, Corp, LLC, Company …),
  is a staff directory's row: its addresses count only where labelled as homes. This is decided on
  each row as it passes, so a directory spread over many offices (too many addresses for
  distinctness to tell, no single email domain) never trips on its first rows; it is not deferred
  to the end of the response, which would let a real leak out before it is cut. A title or a
  department alone is not enough: an HR export of people's home addresses carries those too.
"""
from __future__ import annotations

import functools

import re
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sensor.detect.distinct import DistinctCounter
from sensor.detect.structure.labels import ORG_WORDS, normalise

if TYPE_CHECKING:
    from sensor.detect.engine import Engine

HOUSEHOLD = 2                 # listed people per home address, at most, on average
DIRECTORY_MIN_EMAILS = 10     # distinct emails before "one domain" says anything
DIRECTORY_SHARE = 0.8         # share of distinct emails in the top domain that makes a directory

# field names / labels: the organisation's (work) or the person's own (home)
WORK_WORDS = ORG_WORDS | frozenset({
    "employer", "occupation", "mailing", "agent", "principal", "headquarters", "hq", "branch", "dba",
    "corporate", "workplace", "employment", "store", "facility", "campus", "entity",
    "firm", "lobbyist", "vendor", "payee", "filer", "committee"})
HOME_WORDS = frozenset({"home", "residence", "residential", "resident", "domicile", "household", "personal"})
# words after a name that still belong to the name
_NAME_TAIL = frozenset({b"JR", b"SR", b"II", b"III", b"IV", b"V", b"MD", b"PHD", b"ESQ", b"DDS", b"RN", b"CPA",
                        b"DO", b"DVM", b"JD"})
# business-entity words and suffixes: in a name's field they make it a business's name
_ENTITY = re.compile(
    rb"(?:(?<![A-Za-z])(?:LLC|L\.L\.C\.|LLP|L\.L\.P\.|PLLC|LP|INC|CORP|LTD|CO\.|P\.?C\.)(?![A-Za-z])"
    rb"|&"
    rb"|(?i:(?<![a-z])(?:inc|corp|ltd|llc|company|companies|corporation|incorporated|limited|partners|partnership"
    rb"|services|service|restaurant|church|foundation|trust|associates|association|group|holdings|enterprises?"
    rb"|consulting|consultants|agency|bank|clinic|dental|dentistry|law|realty|construction|plumbing|bakery"
    rb"|cafe|market|store|shop|studio|center|centre|institute|society|ministries|academy|school|university"
    rb"|college|hospital|hotel|salon|repair|insurance|properties|investments|ventures|solutions|systems"
    rb"|technologies|industries|international|sons|brothers|bros|family|auto|motors|farms?|ranch|trucking"
    rb"|landscaping|roofing|electric|pharmacy|funeral|mortuary|cleaners|club|fund|committee|pac)(?![a-z])))")
# a field named as a business's name: the record (or the whole table) is a business's
BUSINESS_WORDS = frozenset({"business", "dba", "entity", "company", "corporation", "firm", "establishment",
                            "organization", "organisation", "doing", "licensee", "registrant"})
# a field for a person's employer or occupation: the list is a disclosure of people's jobs
# (campaign finance, lobbying), whose addresses are published by law unless labelled as homes
DISCLOSURE_WORDS = frozenset({"employer", "occupation", "occ"})


def _spellings(words: list[str]) -> bytes:
    """``word`` as lower, Title and UPPER case (field names: ``dba_name``, ``DbaName``, ``DBA_NAME``)."""
    return b"|".join(w.encode() for x in words for w in (x, x.title(), x.upper()))


_BIZ_HEAD = _spellings(["business", "dba", "doing", "entity", "company", "corporation", "firm", "establishment",
                        "organization", "organisation", "licensee", "registrant", "employer", "occupation"])
_BIZ_TAIL = _spellings(["business", "legal", "as", "name", "title", "dba"])
# a field name at a word start (or a camelCase hump), its parts, then what ends a field name
_BUSINESS_FIELD = re.compile(rb"(?:(?<![A-Za-z])|(?<=[a-z])(?=[A-Z]))(?:" + _BIZ_HEAD + rb")(?:[ _-]?(?:"
                             + _BIZ_TAIL + rb"))*(?![a-z])[\"' ]*[:=>]")
_DECEASED = re.compile(
    rb"(?i)(?<![a-z])(?:died|passed away|passed on|deceased|obituary|obituaries|survived by|predeceased"
    rb"|funeral|memorial service|in loving memory|rest in peace|celebration of life|interment|date of death"
    rb"|laid to rest|entered into rest|date[ _-]?of[ _-]?death|death[ _-]?date|dod)(?![a-z])")
# signs, in a record's own text, that it is a desk at a workplace (see workplace_record)
_EXTENSION = re.compile(rb"(?i)\d{3}[\s)]*(?:x|ext\.?|extn\.?|extension)\s*[.:#]?\s*\d{1,6}(?!\d)")
_OFFICE_UNIT = re.compile(rb"(?i)(?<![a-z])(?:suite|ste\.?|floor|fl\.|room|rm\.?|bldg\.?|building|mail stop|mailstop"
                          rb"|m\.?s\.?)[\s#.:]*\d{1,5}(?![\d/-])|(?<![a-z])\d{1,2}(?:st|nd|rd|th) floor(?![a-z])")
_ROLE = re.compile(
    rb"(?i)(?<![a-z])(?:analyst|manager|director|clerk|officer|supervisor|supervising|specialist|assistant|coordinator"
    rb"|engineer|inspector|technician|administrator|secretary|deputy|chief|attorney|counsel|investigator"
    rb"|representative|liaison|commissioner|superintendent|auditor|accountant|receptionist|librarian|planner"
    rb"|dept|department|division|bureau|directorate|agency|ministry|unit|section|branch|office of|program"
    rb"|inc|corp|corporation|llc|llp|ltd|company|associates|partners)"
    rb"(?![a-z])")
_WORD = re.compile(rb"[A-Za-z][A-Za-z'.-]*")
_TAGS = re.compile(rb"<[^>]*>|^[^<]*>")
_FIELD_END = re.compile(rb"[\n\t<>\"|;]| {2}")
_LABEL_CUT = (b"\n", b";", b"|", b"\t", b",", b"\"", b"{", b"[", b"(")
_TO_CUT = bytes.maketrans(b"".join(_LABEL_CUT), b"\n" * len(_LABEL_CUT))   # every cut as a line break: one rfind
_WINDOW = 64


@functools.lru_cache(maxsize=4096)
def label_words(text: bytes) -> frozenset[str]:
    """The words of a field name or label (``officeLocation`` -> office, location). Cached: the same
    few labels come back on every row and every response."""
    return frozenset(normalise(text.decode("utf-8", "replace")).split())


def place_of(words: frozenset[str]) -> int:
    """0: says nothing; 1: the organisation's (work, office …); 2: the person's own home."""
    if not HOME_WORDS.isdisjoint(words):
        return 2
    if not WORK_WORDS.isdisjoint(words):
        return 1
    return 0


def business_field(words: frozenset[str]) -> bool:
    """A field name that says the field holds a business's name (``BUSINESS_NAME``, ``dba``,
    ``doing_business_as_name``, ``Entity name``, ``company``)."""
    if not DISCLOSURE_WORDS.isdisjoint(words):
        return True
    if BUSINESS_WORDS.isdisjoint(words):
        return False
    return "name" in words or "dba" in words or len(words) == 1


def business_record(text: bytes) -> bool:
    """Does a record's text carry a field labelled as a business's name (``"dba_name": …``,
    ``Business name: …``)?"""
    return _BUSINESS_FIELD.search(text) is not None


def workplace_record(text: bytes) -> bool:
    """Does a record's own text say it is a desk at a workplace (module docstring)? Two signs: a
    switchboard extension or an office unit in the address, plus the other one or a job title or
    organisational unit."""
    ext = _EXTENSION.search(text) is not None
    unit = _OFFICE_UNIT.search(text) is not None
    if not (ext or unit):
        return False
    return (ext and unit) or _ROLE.search(text) is not None


def deceased(text: bytes) -> bool:
    """Does a record's text say its person has died (an obituary, a death notice)?"""
    return _DECEASED.search(text) is not None


def label_before(buf: bytes, lo: int, s: int) -> bytes:
    """The label written just before a value (``Office: …``, ``"street": "…``, ``home address: …``):
    the text between the last field boundary and the value, tags removed."""
    w = buf[max(lo, s - _WINDOW, 0):s]
    if b"<" in w or b">" in w:
        w = _TAGS.sub(b" ", w)
    k = len(w.rstrip(b" \t:=\"'"))
    if b"\t" in w[k:] and b":" not in w[k:] and b"=" not in w[k:]:
        return b""                # a tab-separated field: the field before it is a value, not its label
    w = w[:k]
    cut = w.translate(_TO_CUT).rfind(b"\n")
    return (w[cut + 1:] if cut >= 0 else w).strip()


@dataclass(frozen=True)
class NameWords:
    """The census first and last names the pack's name signature requires (upper case)."""
    names: frozenset[bytes]


_NAMES: "weakref.WeakKeyDictionary[Engine, NameWords]" = weakref.WeakKeyDictionary()


def name_words(engine: "Engine") -> NameWords:
    nw = _NAMES.get(engine)
    if nw is None:
        words: set[bytes] = set()
        for p in engine.patterns:
            if engine.signatures[p.sig].kind == "name":
                for _, ws in p.require:
                    words |= ws
        nw = _NAMES[engine] = NameWords(frozenset(words))
    return nw


_NAME_CUTS = b"\n\t>\"|;:"


def _name_cut(delim: bytes | None) -> bytes:
    """A translation table that turns every field boundary before a name into a line break."""
    cuts = _NAME_CUTS + (delim or b"")
    return bytes.maketrans(cuts, b"\n" * len(cuts))


_NAME_CUT = {d: _name_cut(d) for d in (None, b",", b"\t", b";", b"|")}


def business_name(buf: bytes, s: int, e: int, delim: bytes | None, names: NameWords) -> bool:
    """Is the name at ``buf[s:e]`` part of a business's name? Reads its field on both sides: an
    entity word or suffix there, or (in a field with no digits) further capitalised words that are
    not names ("MARIA GARCIA PLUMBING", "Maria Garcia Consulting, Inc.")."""
    after = buf[e:e + _WINDOW]
    m = _FIELD_END.search(after)
    if m is not None:
        after = after[:m.start()]
    if delim is not None:
        k = after.find(delim)
        if k >= 0:
            after = after[:k]
    before = buf[max(0, s - _WINDOW):s]
    cut = before.translate(_NAME_CUT.get(delim) or _name_cut(delim)).rfind(b"\n")
    before = before[cut + 1:]
    if _ENTITY.search(after) or _ENTITY.search(before):
        return True
    if any(c in b"0123456789" for c in after):
        return False                         # a name followed by a date, a street number, a ZIP …
    for w in _WORD.findall(after.replace(b",", b" ")):
        u = w.rstrip(b".").upper()
        if w[:1].isupper() and len(u) > 2 and u not in names.names and u not in _NAME_TAIL:
            return True
    return False


@dataclass
class Evidence:
    """Per exchange, shared by the byte view and the structure view: what the whole response says
    about its addresses (one email domain for every row: a directory of people at work)."""
    domains: dict[bytes, int] = field(default_factory=dict)
    emails: int = 0

    def email(self, v: bytes) -> None:
        d = v[v.rfind(b"@") + 1:].lower()
        self.emails += 1
        if len(self.domains) < 4096 or d in self.domains:
            self.domains[d] = self.domains.get(d, 0) + 1

    def directory(self, records: int) -> bool:
        """Nearly every email in one domain, and about as many emails as records."""
        n = self.emails
        return (n >= DIRECTORY_MIN_EMAILS and 2 * n >= records
                and max(self.domains.values()) >= DIRECTORY_SHARE * n)


class HomeRecords:
    """Records that tie a person to something private only through an address: counted as homes
    while the data says they are homes (see the module docstring: distinctness, one domain)."""

    def __init__(self, evidence: Evidence):
        self.evidence = evidence
        self.recs = DistinctCounter()
        self.addrs = DistinctCounter()
        self.home_recs = DistinctCounter()      # ... whose address is labelled as a home
        self.home_addrs = DistinctCounter()

    def add(self, fp: int, addr: int, home: bool) -> None:
        self.recs.add(fp)
        self.addrs.add(addr)
        if home:
            self.home_recs.add(fp)
            self.home_addrs.add(addr)

    @property
    def approximate(self) -> bool:
        return self.recs.approximate or self.addrs.approximate

    def __len__(self) -> int:
        n = len(self.recs)
        if not n:
            return 0
        if self.evidence.directory(n):
            return min(len(self.home_recs), HOUSEHOLD * len(self.home_addrs))
        return min(n, HOUSEHOLD * len(self.addrs))

    def note(self) -> str | None:
        """What the evidence took away, for the result's notes (counts only)."""
        n, kept = len(self.recs), len(self)
        if kept >= n:
            return None
        why = ("one email domain for nearly every row" if self.evidence.directory(n)
               else f"{len(self.addrs)} distinct addresses")
        return (f"precision: {n - kept} of {n} name+address records not counted as homes ({why}: "
                f"workplaces, not homes)")
