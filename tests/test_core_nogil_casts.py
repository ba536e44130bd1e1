"""The compiled core calls a few cdef functions without the GIL through function pointers cast from
functions that Cython compiled as GIL-requiring (sensor/detect/_hscore.pyx: ``<dcadd_t>_dcadd``,
``<dprefetch_t>_dprefetch``, ``<vstart_t>value_start_c``). A cast circumvents Cython's GIL checks:
if such a function reaches the Python C API, nothing warns at build time (setup.py builds quietly)
and the process crashes under load. It happened once: a cdef method was renamed, the old name in
one of these functions compiled silently as a Python attribute lookup, and the first scan that
took that path segfaulted. This test reads the C that Cython generated for those functions and
fails on any Python C API call in their bodies."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

GENERATED = Path(__file__).resolve().parents[1] / "sensor" / "detect" / "_hscore.c"
PYX = GENERATED.with_suffix(".pyx")
PREFIX = "__pyx_f_6sensor_6detect_7_hscore_"
# allowed in a body: Cython's reference-count bookkeeping macros (no-ops in a release build) and
# the error path's traceback, reached only when the callee raised (the casts' callers guarantee
# it does not: see _dcadd)
ALLOWED = {"__Pyx_RefNannyDeclarations", "__Pyx_RefNannySetupContext", "__Pyx_RefNannyFinishContext",
           "__Pyx_AddTraceback", "__PYX_ERR"}
PY_CALL = re.compile(r"\b(Py[A-Z]\w*|_Py\w+|__Pyx_\w+|__PYX_\w+)\s*\(")


def cast_targets(pyx: str) -> list[str]:
    """The functions the .pyx casts to a nogil function-pointer type (``<x_t>name``)."""
    nogil_types = set(re.findall(r"ctypedef\s+[\w ]+\(\*(\w+)\)\([^)]*\)\s*noexcept\s+nogil", pyx, re.S))
    return sorted({name for t, name in re.findall(r"<(\w+)>\s*(\w+)", pyx) if t in nogil_types})


def body_of(c: str, name: str) -> str:
    """The body of the generated C function ``name`` (its definition, not its prototype)."""
    m = re.search(r"^\s*static [^;{]*\b" + re.escape(PREFIX + name) + r"\([^;{]*\)\s*\{\s*$", c, re.M)
    assert m, f"no definition of {name} in {GENERATED.name}"
    depth, i = 1, m.end()
    while depth:
        j = c.index("}", i) if "{" not in c[i:c.index("}", i)] else c.index("{", i)
        depth += 1 if c[j] == "{" else -1
        i = j + 1
    body = c[m.end():i - 1]
    return re.sub(r"/\*.*?\*/", "", body, flags=re.S)       # Cython's source-line comments


def generated_c() -> str:
    if not GENERATED.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{GENERATED} is missing: CI builds it in place (make .venv/.installed)")
        pytest.skip("the compiled core was not built in place here (CI fails instead of skipping)")
    if GENERATED.stat().st_mtime < PYX.stat().st_mtime:
        pytest.fail(f"{GENERATED.name} is older than {PYX.name}: rebuild (pip install -e .) first")
    return GENERATED.read_text()


def test_the_casts_are_found():
    """The targets are read from the .pyx, so a new cast is checked too; these three exist today."""
    assert {"_dcadd", "_dprefetch", "value_start_c"} <= set(cast_targets(PYX.read_text()))


def test_nothing_called_without_the_gil_reaches_the_python_api():
    c = generated_c()
    bad = {}
    for name in cast_targets(PYX.read_text()):
        calls = set(PY_CALL.findall(body_of(c, name))) - ALLOWED
        if calls:
            bad[name] = sorted(calls)
    assert not bad, f"Python C API calls in functions called without the GIL: {bad}"


def test_the_check_sees_a_python_call():
    """The check itself: a body with a method lookup (what the crash had) is caught."""
    fake = ("static void " + PREFIX + "f(PyObject *d) {\n"
            "  /* d.prefetch(h) */\n  __pyx_t_1 = PyObject_VectorcallMethod(__pyx_n_s_prefetch, a, 2, NULL);\n}\n")
    assert set(PY_CALL.findall(body_of(fake, "f"))) - ALLOWED == {"PyObject_VectorcallMethod"}
