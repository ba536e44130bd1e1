"""Load and check signature packs (``signatures/*.yaml``).

A pack file holds ``pack`` (its name), optional ``wordlists`` (name -> file relative to the pack
file) and ``signatures``. A signature holds:

- ``id``, ``name``, ``severity`` (low|medium|high), ``category`` (strong|quasi|contact|financial),
  ``kind`` (what the policy groups by: name, dob, address, ssn, dl, ...);
- ``patterns``: list of ``{expr, flags?, needs_context?, record_context?, value?, require?}``
  (Hyperscan syntax; ``%{list}`` expands a wordlist in Title case, ``%{LIST}`` in upper case).
  ``value`` is a Python regex for the whole value, which must end where ``expr`` ends: it lets
  Hyperscan look for a cheap, selective anchor (the "@" of an email, the second name of a pair)
  while the value is taken back to its real start. ``require`` maps a named group of ``value``
  to a wordlist its text (upper-cased) must be in. ``gated: true`` puts a context-only pattern
  (dates, say) in a second database that a part only runs once it has shown a value of a
  ``record_context`` category or one of the signature's hotwords — benign pages never pay for it;
- optional ``validator`` (a name from :mod:`sensor.detect.validators`), ``hotwords``,
  ``needs_context`` and ``record_context`` (defaults for its patterns);
- optional ``locality: true`` on an ``address`` signature whose values place a person in a town,
  not at a door (city, state and ZIP): such a value is never a home address on its own
  (see :mod:`sensor.detect.precision`);
- ``examples`` and ``negative_examples``: the suite runs every one; a signature without both does
  not load.

Errors name the file, the signature and the key, because an operator editing a pack at 3 a.m.
should not have to guess.
"""
from __future__ import annotations

import hashlib
import itertools
import os
import re
import re._parser as _sre_parse  # type: ignore[import-not-found]
from re._constants import MAXREPEAT as _MAXREPEAT  # type: ignore[import-not-found]
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sensor.detect import validators

CATEGORIES = ("strong", "quasi", "contact", "financial")
SEVERITIES = ("low", "medium", "high")
FLAG_NAMES = ("caseless", "dotall", "multiline", "utf8", "ucp")
# The default pack ships next to the package in a checkout; an image sets $DLP_SENSOR_DEFAULT_PACK.
DEFAULT_PACK_DIR = Path(os.environ.get("DLP_SENSOR_DEFAULT_PACK") or Path(__file__).resolve().parents[2] / "signatures")
_PLACEHOLDER = re.compile(r"%\{([A-Za-z_][A-Za-z0-9_-]*)\}")


class PackError(ValueError):
    """A signature pack that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Pattern:
    expr: str                      # after wordlist expansion, as compiled
    source: str                    # as written in the pack (for error messages)
    flags: tuple[str, ...] = ()
    needs_context: bool = False
    record_context: tuple[str, ...] = ()
    gated: bool = False            # only scanned once the part shows a strong id or a hotword
    value: str | None = None       # Python regex for the whole value, ending where expr ends
    require: tuple[tuple[str, frozenset[str]], ...] = ()   # (named group, wordlist) checks


@dataclass(frozen=True)
class Signature:
    id: str
    name: str
    severity: str
    category: str
    kind: str
    patterns: tuple[Pattern, ...]
    validator: str | None = None
    hotwords: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()
    negative_examples: tuple[str, ...] = ()
    origin: str = ""
    locality: bool = False         # a town, not a door: never a home address on its own


@dataclass
class Pack:
    signatures: list[Signature] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    @property
    def digest(self) -> str:
        """Content hash of everything that shapes the compiled database (the cache key)."""
        h = hashlib.sha256()
        for s in self.signatures:
            h.update(repr((s.id, s.category, [(p.expr, p.flags, p.gated) for p in s.patterns], s.hotwords)).encode())
        return h.hexdigest()

    def by_id(self, sid: str) -> Signature:
        for s in self.signatures:
            if s.id == sid:
                return s
        raise KeyError(sid)


def _fail(where: str, msg: str) -> PackError:
    return PackError(f"{where}: {msg}")


def _load_wordlist(path: Path, where: str) -> list[str]:
    if not path.is_file():
        raise _fail(where, f"wordlist file {path} not found")
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            if not re.fullmatch(r"[A-Za-z][A-Za-z' -]*", line):
                raise _fail(where, f"wordlist {path.name}: entry {line!r} is not a plain word")
            words.append(line.upper())
    if not words:
        raise _fail(where, f"wordlist {path} is empty")
    return words


# Hyperscan refuses expressions near 16 K characters, and compile time grows much faster than the
# size of one alternation: the census lists split at 12,000 characters took 37 s to compile, at
# 1,500 characters 4.6 s, with the same matches and the same scan speed (measured, 2-core VM).
MAX_EXPR_CHARS = 1500


def _alternation(words: list[str], upper: bool) -> str:
    forms = words if upper else [w.capitalize() for w in words]
    # longest first so that the alternation prefers whole names; escape for safety
    return "(?:" + "|".join(re.escape(w) for w in sorted(set(forms), key=lambda w: (-len(w), w))) + ")"


def hotword_alternation(words: tuple[str, ...] | list[str]) -> str:
    """Hotwords as one alternation; separators inside a hotword match space, _, . or - (or none)."""
    alts = []
    for w in sorted(set(words), key=lambda w: (-len(w), w)):   # deterministic: the text is the cache key
        parts = [re.escape(p) for p in re.split(r"[\s_.-]+", w) if p]
        alts.append(r"[\s_.-]?".join(parts))
    return "(?:" + "|".join(alts) + ")"


def _expand(expr: str, lists: dict[str, list[str]], where: str, hotwords: tuple[str, ...] = ()) -> list[str]:
    """Expand ``%{hotwords}`` and ``%{list}`` placeholders; split long wordlists over expressions."""
    if "%{hotwords}" in expr:
        if not hotwords:
            raise _fail(where, "expression uses %{hotwords} but the signature has no 'hotwords'")
        expr = expr.replace("%{hotwords}", r"\b(?i:" + hotword_alternation(hotwords) + r")\b")
    keys = _PLACEHOLDER.findall(expr)
    if not keys:
        return [expr]
    for key in keys:
        if key.lower() not in lists:
            raise _fail(where, f"expression names wordlist %{{{key}}} that the pack does not define")
    # Each placeholder gets a list of word chunks; the cartesian product gives the expressions.
    chunks: dict[str, list[list[str]]] = {k: [lists[k.lower()]] for k in set(keys)}

    def render(choice: dict[str, list[str]]) -> str:
        return _PLACEHOLDER.sub(lambda m: _alternation(choice[m.group(1)], m.group(1).isupper()), expr)

    while True:
        names = sorted(chunks)
        out = [render(dict(zip(names, combo))) for combo in itertools.product(*(chunks[n] for n in names))]
        if max(len(e) for e in out) <= MAX_EXPR_CHARS:
            return out
        biggest = max(names, key=lambda n: max(len(c) for c in chunks[n]))
        if max(len(c) for c in chunks[biggest]) <= 1:
            raise _fail(where, "expression is too long even with one word per list entry")
        chunks[biggest] = [half for c in chunks[biggest] for half in (c[: len(c) // 2], c[len(c) // 2:]) if half]


def _width(expr: str, where: str) -> tuple[int, int]:
    """Min/max match width via Python's own regex parser: the scanner needs bounded widths.

    Parsing (not compiling) also rejects syntax errors, without building the wordlist automata.
    """
    try:
        lo, hi = _sre_parse.parse(expr).getwidth()
    except re.error as e:
        raise _fail(where, f"expression is not valid: {e}") from None
    if hi >= _MAXREPEAT or hi > 512:
        raise _fail(where, "expression has unbounded width (use {m,n}, at most 512 bytes)")
    if lo == 0:
        raise _fail(where, "expression can match the empty string")
    return lo, hi


def _as_list(v: Any, where: str, key: str) -> list[Any]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise _fail(where, f"'{key}' must be a list")
    return v


def _parse_signature(raw: Any, lists: dict[str, list[str]], where: str) -> Signature:
    if not isinstance(raw, dict):
        raise _fail(where, "each signature must be a mapping")
    sid = raw.get("id")
    if not isinstance(sid, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", sid):
        raise _fail(where, f"'id' must be lower-case letters, digits and dashes (got {sid!r})")
    where = f"{where}: signature {sid}"
    known = {"id", "name", "severity", "category", "kind", "patterns", "validator", "hotwords",
             "needs_context", "record_context", "examples", "negative_examples", "locality"}
    extra = set(raw) - known
    if extra:
        raise _fail(where, f"unknown key(s) {sorted(extra)}; known: {sorted(known)}")
    for key in ("name", "kind"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise _fail(where, f"'{key}' is required (a string)")
    if raw.get("severity") not in SEVERITIES:
        raise _fail(where, f"'severity' must be one of {SEVERITIES} (got {raw.get('severity')!r})")
    if raw.get("category") not in CATEGORIES:
        raise _fail(where, f"'category' must be one of {CATEGORIES} (got {raw.get('category')!r})")
    if not isinstance(raw.get("locality", False), bool):
        raise _fail(where, f"'locality' must be true or false (got {raw.get('locality')!r})")
    validator = raw.get("validator")
    if validator is not None and validator not in validators.REGISTRY:
        raise _fail(where, f"'validator' {validator!r} is unknown; known: {sorted(validators.REGISTRY)}")
    hotwords = tuple(str(h).lower() for h in _as_list(raw.get("hotwords"), where, "hotwords"))
    sig_ctx = bool(raw.get("needs_context", False))
    sig_rec = tuple(_as_list(raw.get("record_context"), where, "record_context"))
    for c in sig_rec:
        if c not in CATEGORIES:
            raise _fail(where, f"'record_context' entry {c!r} is not a category {CATEGORIES}")
    patterns = []
    for i, p in enumerate(_as_list(raw.get("patterns"), where, "patterns")):
        pw = f"{where}: patterns[{i}]"
        if isinstance(p, str):
            p = {"expr": p}
        if not isinstance(p, dict) or not isinstance(p.get("expr"), str):
            raise _fail(pw, "needs 'expr' (a string)")
        flags = tuple(_as_list(p.get("flags"), pw, "flags"))
        for f in flags:
            if f not in FLAG_NAMES:
                raise _fail(pw, f"flag {f!r} unknown; known: {FLAG_NAMES}")
        rec = tuple(p.get("record_context", sig_rec) or ())
        for c in rec:
            if c not in CATEGORIES:
                raise _fail(pw, f"'record_context' entry {c!r} is not a category {CATEGORIES}")
        bad = set(p) - {"expr", "flags", "needs_context", "record_context", "value", "require", "gated"}
        if bad:
            raise _fail(pw, f"unknown key(s) {sorted(bad)}")
        value = p.get("value")
        require: list[tuple[str, frozenset[str]]] = []
        if value is not None:
            if not isinstance(value, str):
                raise _fail(pw, "'value' must be a string (a Python regex)")
            _width(value, f"{pw} value")
            groups = re.compile(value).groupindex
            for g, lname in (p.get("require") or {}).items():
                if g not in groups:
                    raise _fail(pw, f"'require' names group {g!r} that 'value' does not define")
                if str(lname).lower() not in lists:
                    raise _fail(pw, f"'require' names wordlist {lname!r} that the pack does not define")
                require.append((g, frozenset(lists[str(lname).lower()])))
        elif p.get("require"):
            raise _fail(pw, "'require' needs 'value' (a regex with named groups)")
        for expr in _expand(p["expr"], lists, pw, hotwords):
            _width(expr if "caseless" not in flags else "(?i)" + expr, f"{pw} ({p['expr']!r})")
            gated = bool(p.get("gated", False))
            if gated and not (p.get("needs_context", sig_ctx) and rec and hotwords):
                raise _fail(pw, "'gated' patterns need needs_context, record_context and hotwords "
                                "(they are scanned once a record or a hotword can give them context)")
            patterns.append(Pattern(expr=expr, source=p["expr"], flags=flags,
                                    needs_context=bool(p.get("needs_context", sig_ctx)), record_context=rec,
                                    value=value, require=tuple(require), gated=gated))
    if not patterns:
        raise _fail(where, "'patterns' must list at least one expression")
    examples = tuple(str(x) for x in _as_list(raw.get("examples"), where, "examples"))
    negatives = tuple(str(x) for x in _as_list(raw.get("negative_examples"), where, "negative_examples"))
    if not examples or not negatives:
        raise _fail(where, "a signature ships with 'examples' and 'negative_examples' (the suite runs them)")
    if any(p.needs_context for p in patterns) and not hotwords:
        raise _fail(where, "patterns that need context require 'hotwords'")
    return Signature(id=sid, name=raw["name"], severity=raw["severity"], category=raw["category"],
                     kind=raw["kind"], patterns=tuple(patterns), validator=validator, hotwords=hotwords,
                     examples=examples, negative_examples=negatives, origin=where.split(":")[0],
                     locality=bool(raw.get("locality", False)))


def load_file(path: Path) -> list[Signature]:
    where = str(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise _fail(where, f"not valid YAML: {e}") from None
    except OSError as e:
        raise _fail(where, f"cannot read: {e.strerror}") from None
    if not isinstance(doc, dict) or "signatures" not in doc:
        raise _fail(where, "a pack is a mapping with 'pack' and 'signatures'")
    lists = {}
    for name, rel in (doc.get("wordlists") or {}).items():
        lists[str(name).lower()] = _load_wordlist(path.parent / str(rel), f"{where}: wordlists.{name}")
    return [_parse_signature(s, lists, f"{where}") for s in _as_list(doc["signatures"], where, "signatures")]


def load_pack(paths: list[Path] | None = None, *, include_default: bool = True) -> Pack:
    """The default pack plus any operator packs (files or directories of ``*.yaml``)."""
    roots: list[Path] = ([DEFAULT_PACK_DIR] if include_default else []) + list(paths or [])
    pack = Pack()
    seen: dict[str, str] = {}
    for root in roots:
        root = Path(root)
        if root.is_dir():
            files = sorted(list(root.glob("*.yaml")) + list(root.glob("*.yml")))
        elif root.is_file():
            files = [root]
        else:
            raise PackError(f"{root}: no such signature file or directory")
        for f in files:
            for sig in load_file(f):
                if sig.id in seen:
                    raise PackError(f"{f}: signature {sig.id} is already defined in {seen[sig.id]}")
                seen[sig.id] = str(f)
                pack.signatures.append(sig)
            pack.sources.append(str(f))
    if not pack.signatures:
        raise PackError("the signature pack is empty")
    return pack
