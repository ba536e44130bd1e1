"""Compile a pack into one Hyperscan stream database, cached on disk by pack hash.

Id space of the database: ``0..P-1`` value patterns, then one hotword expression per signature
that has hotwords. Value patterns are compiled without
start-of-match: fixed-width patterns get their start as ``end - width``; variable-width ones are
re-anchored with Python ``re`` on the few bytes before the end (measured cheaper than SOM, see
bench/engine.py).
"""
from __future__ import annotations

import os
import re
import tempfile

from pathlib import Path
from typing import Callable, NamedTuple

import hyperscan as hs

from sensor.detect import validators
from sensor.detect.pack import Pack, PackError, Pattern, Signature, _width, hotword_alternation

ENGINE_FORMAT = "2"
CAT_BITS = {"strong": 1, "quasi": 2, "contact": 4, "financial": 8}
_HS_FLAGS = {"caseless": hs.HS_FLAG_CASELESS, "dotall": hs.HS_FLAG_DOTALL,
             "multiline": hs.HS_FLAG_MULTILINE, "utf8": hs.HS_FLAG_UTF8, "ucp": hs.HS_FLAG_UCP}


class PatInfo(NamedTuple):
    """Everything the hot loop needs about one value pattern (a tuple: unpacked in one step)."""
    sig: int                    # index into Engine.signatures
    width: int                  # fixed width, or <= 0 when extracted with ``rx``
    maxw: int
    rx: "re.Pattern[bytes] | None"   # anchored at the end, for variable-width extraction
    validator: Callable[[bytes], bool] | None
    require: tuple[tuple[str, frozenset[bytes]], ...]
    needs_ctx: bool
    rec_mask: int               # categories that stand in for a hotword within the record
    cat: int                    # category bit
    in_field: bool              # the value never spans a CSV/TSV delimiter: search it from the last one
    in_word: bool               # the value holds no whitespace: search it from the last space/newline


def hotword_expr(words: tuple[str, ...]) -> bytes:
    """Whole-word hotwords: letters or digits on either side disqualify ('lic' in 'duplicate')."""
    return ("(?:^|[^A-Za-z0-9])" + hotword_alternation(words) + "(?:[^A-Za-z0-9]|$)").encode()


def _may_match(regex: str, chars: bytes) -> bool:
    """Can the regex match any of ``chars`` anywhere? Decided on its parse tree, conservatively."""
    import re._constants as C  # type: ignore[import-not-found]
    import re._parser as P  # type: ignore[import-not-found]

    want = set(chars)
    assert not any(chr(c).isalnum() or c == ord("_") for c in want), "only for blanks and punctuation"

    def walk(items) -> bool:
        for op, av in items:
            if op is C.LITERAL and av in want:
                return True
            if op in (C.ANY, C.NOT_LITERAL):
                return True
            if op is C.IN:
                members = list(av)
                safe = (C.CATEGORY_DIGIT, C.CATEGORY_WORD)     # never blanks or punctuation
                if any(o is C.NEGATE or (o is C.CATEGORY and a not in safe) for o, a in members):
                    return True
                for o, a in members:
                    if o is C.LITERAL and a in want:
                        return True
                    if o is C.RANGE and any(a[0] <= ch <= a[1] for ch in want):
                        return True
            elif op is C.SUBPATTERN and walk(av[-1]):
                return True
            elif op in (C.MAX_REPEAT, C.MIN_REPEAT) and walk(av[2]):
                return True
            elif op is C.BRANCH and any(walk(b) for b in av[1]):
                return True
        return False

    return walk(P.parse(regex))


def _cache_dir() -> Path:
    d = os.environ.get("DLP_SENSOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dlp-sensor")
    return Path(d)


def _prune(cache: Path, keep: int) -> None:
    """Old packs' databases are dead weight (a few MB each): keep the newest few."""
    files = sorted(cache.glob("db-*.hsdb"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[keep:]:
        try:
            old.unlink()
        except OSError:
            pass


class Engine:
    """A compiled pack. Shared by every scanner in a thread; each thread needs its own scratch."""

    def __init__(self, pack: Pack, *, use_cache: bool = True):
        self.pack = pack
        self.signatures: list[Signature] = list(pack.signatures)
        self.patterns: list[PatInfo] = []
        exprs: list[bytes] = []
        flags: list[int] = []
        self.origin: list[tuple[Signature, Pattern]] = []
        for si, sig in enumerate(self.signatures):
            vfn = validators.REGISTRY[sig.validator] if sig.validator else None
            for p in sig.patterns:
                f = 0
                for name in p.flags:
                    f |= _HS_FLAGS[name]
                rflags = re.I if "caseless" in p.flags else 0
                if p.value is not None:
                    lo, hi = _width(p.value, sig.id)
                    rx = re.compile(b"(?:" + p.value.encode() + rb")\Z", rflags)
                    lo = -1                          # always extracted with the value regex
                else:
                    lo, hi = _width(("(?i)" if rflags else "") + p.expr, sig.id)
                    rx = re.compile(b"(?:" + p.expr.encode() + rb")\Z", rflags) if lo != hi else None
                req = tuple((g, frozenset(w.encode() for w in words)) for g, words in p.require)
                rmask = 0
                for c in p.record_context:
                    rmask |= CAT_BITS[c]
                src = p.value if p.value is not None else p.expr
                in_field = not _may_match(src, b",\t;|")
                in_word = not _may_match(src, b" \t\n")
                self.patterns.append(PatInfo(sig=si, width=lo if lo == hi else 0, maxw=hi, rx=rx,
                                             validator=vfn, require=req, needs_ctx=p.needs_context, rec_mask=rmask,
                                             cat=CAT_BITS[sig.category], in_field=in_field, in_word=in_word))
                exprs.append(p.expr.encode())
                flags.append(f)
                self.origin.append((sig, p))
        self.n_values = len(exprs)
        # hotword ids: n_values + index into self.hot_sig (signature index per hotword expression)
        self.hot_sig: list[int] = []
        for si, sig in enumerate(self.signatures):
            if sig.hotwords:
                self.hot_sig.append(si)
                exprs.append(hotword_expr(sig.hotwords))
                flags.append(hs.HS_FLAG_CASELESS)
        self.hot_base = self.n_values
        self.n_ids = len(exprs)
        self.expressions, self.expression_flags = exprs, flags   # every expression, in id order
        self.max_width = max(p.maxw for p in self.patterns)
        # Gated patterns live in a second database; the gate opens on a hit of any pattern whose
        # category a gated pattern accepts as record context, or of a gated signature's hotwords.
        gated = [i for i, (_, p) in enumerate(self.origin) if p.gated]
        main = [i for i in range(self.n_ids) if i not in set(gated)]
        gate_cats = 0
        gate_sigs = set()
        for i in gated:
            gate_cats |= self.patterns[i].rec_mask
            gate_sigs.add(self.patterns[i].sig)
        self.gate_ids = frozenset(
            [i for i in main if i < self.n_values and self.patterns[i].cat & gate_cats]
            + [self.hot_base + k for k, si in enumerate(self.hot_sig) if si in gate_sigs])
        self.db = self._load_or_compile(main, use_cache, "main")
        self.gated_db = self._load_or_compile(gated, use_cache, "gated") if gated else None

    # -- compile / cache -------------------------------------------------------------------
    def _compile(self, ids: list[int]) -> hs.Database:
        exprs = [self.expressions[i] for i in ids]
        flags = [self.expression_flags[i] for i in ids]
        db = hs.Database(mode=hs.HS_MODE_STREAM)
        try:
            db.compile(expressions=exprs, ids=ids, elements=len(exprs), flags=flags)
        except hs.error as e:
            # The binding does not say which expression failed: find it, to name it.
            for i, ex, fl in zip(ids, exprs, flags):
                one = hs.Database(mode=hs.HS_MODE_STREAM)
                try:
                    one.compile(expressions=[ex], ids=[0], elements=1, flags=[fl])
                except hs.error as e1:
                    if i < self.n_values:
                        sig, p = self.origin[i]
                        raise PackError(f"{sig.origin}: signature {sig.id}: expression {p.source!r} "
                                        f"does not compile in Hyperscan: {e1.args[0]}") from None
                    sig = self.signatures[self.hot_sig[i - self.n_values]]
                    raise PackError(f"{sig.origin}: signature {sig.id}: hotwords do not compile: {e1.args[0]}") from None
            raise PackError(f"Hyperscan rejected the pack as a whole: {e.args[0]}") from None
        return db

    def _load_or_compile(self, ids: list[int], use_cache: bool, part: str) -> hs.Database:
        key = f"{self.pack.digest[:32]}-{ENGINE_FORMAT}-{hs.__version__ if hasattr(hs, '__version__') else 'hs'}"
        path = _cache_dir() / f"db-{key}-{part}.hsdb"
        if part == "main":
            self.cache_path = path
            self.cache_hit = False
        if use_cache and path.is_file():
            try:
                db = hs.loadb(path.read_bytes(), mode=hs.HS_MODE_STREAM)
                db.scratch = hs.Scratch(db)
                self.cache_hit = self.cache_hit if part != "main" else True
                return db
            except Exception:  # corrupt or foreign cache file: rebuild it
                pass
        db = self._compile(ids)
        if use_cache:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".db-")
                with os.fdopen(fd, "wb") as fh:
                    fh.write(hs.dumpb(db))
                os.replace(tmp, path)
                _prune(path.parent, keep=16)
            except OSError:
                pass  # a read-only cache is not an error; we just compile next time too
        return db

    def new_scratch(self) -> hs.Scratch:
        """A scratch for another thread (one per thread; sharing raises ScratchInUseError)."""
        return self.db.scratch.clone()
