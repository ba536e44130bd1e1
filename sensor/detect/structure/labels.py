"""Field names as context: a JSON key, XML element or attribute, or SQL column becomes a label.

A record from structure is written for the scanner as one line of ``label: value`` pairs, so a
field named like a signature's hotword (``date_of_birth`` -> "date of birth", ``dlNumber`` ->
"dl number") gives its value the same context a hotword in prose does: the hotword lists of the
signature pack are the only list of what a field name means. Two things the pack cannot say are
kept here: which name parts come *last* when a split name is put back together (given/first
before family/last), and which words mark a field as the organisation's, not the person's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEP = re.compile(r"[^a-z0-9]+")
LAST_PARTS = frozenset({"last", "family", "surname", "lastname", "familyname"})   # put after the others
# a field whose name says it belongs to the organisation (a staff member's office address, a firm's
# phone) says nothing private about the person in the record: it is left out of the record
ORG_WORDS = frozenset({"office", "work", "business", "firm", "employer", "company", "agency", "organization",
                       "organisation", "department"})


@lru_cache(maxsize=4096)
def normalise(key: str) -> str:
    """``dateOfBirth`` / ``DATE_OF_BIRTH`` / ``date-of-birth`` -> ``date of birth``."""
    return _SEP.sub(" ", _CAMEL.sub(" ", key).lower()).strip()


@dataclass(frozen=True)
class Labels:
    """What field names mean, derived from the pack's name-kind signatures' hotwords."""
    name_parts: frozenset[str]       # words that make a field one part of a person's name
    dob_words: tuple[str, ...] = ()  # the DOB signature's hotwords: a field so named holds dates

    @classmethod
    def from_signatures(cls, signatures: Iterable) -> "Labels":
        parts: set[str] = set()
        dob: list[str] = []
        for s in signatures:
            if s.kind == "dob":
                dob += [h for h in s.hotwords if h.replace(" ", "").isalpha()]
            if s.kind != "name":
                continue
            for h in s.hotwords:
                words = h.split()
                if len(words) == 2 and words[1] == "name" and words[0] != "full":
                    parts.add(words[0])                  # first name, given name, family name ...
                elif len(words) == 1 and words[0] != "name":
                    parts.add(words[0])                  # surname, forename
        return cls(frozenset(parts), tuple(dob))

    def dob_field(self, label: str) -> bool:
        padded = f" {label} "
        return any(f" {w} " in padded for w in self.dob_words)

    def name_part(self, label: str) -> int:
        """0: not a name part; 1: a leading part (given, first, middle); 2: a trailing one (family, last)."""
        words = label.split()
        if not words or len(words) > 4:
            return 0
        # "firstname" / "LASTNAME" (no separator to split on) name their part too
        hit = [w for w in words if w in self.name_parts
               or (w.endswith("name") and w[:-4] in self.name_parts)]
        if not hit:
            return 0
        return 2 if any(w in LAST_PARTS for w in hit) else 1

    @staticmethod
    def organisational(label: str) -> bool:
        return not ORG_WORDS.isdisjoint(label.split())
