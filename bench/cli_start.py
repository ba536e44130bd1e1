"""CLI start-up: the CPU time of ``dlp-sensor <command> --help`` (imports, nothing else), and which
heavy libraries each command loads, for this tree and optionally another checkout, alternated.

Why CPU time: on a shared machine the wall clock of a 0.3 s start moves with everything else
running; the CPU seconds a process spends importing do not (much). Each run is a fresh process
(``os.wait4`` gives its user + system time); the table gives the median of ``--runs``.

    python bench/cli_start.py [--base DIR] [--runs 7]

``--base``: a checkout of an older commit (``git worktree add /tmp/before HEAD~1``), run from this
venv with PYTHONPATH (the dependencies must be the same).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

COMMANDS = [["--help"], ["scan", "--help"], ["config", "--help"], ["takedowns", "--help"], ["index", "--help"],
            ["proxy", "--help"]]
HEAVY = ("aiohttp", "pyarrow", "pydantic", "prometheus_client", "grpc", "aiokafka", "faust", "numpy", "hyperscan")
PROBE = ("import sys, runpy\n"
         "sys.argv = ['dlp-sensor'] + sys.argv[1:]\n"
         "try:\n"
         "    runpy.run_module('sensor.cli.main', run_name='__main__')\n"
         "except SystemExit:\n"
         "    pass\n"
         "heavy = sorted(m for m in %r if m in sys.modules)\n"
         "sys.stderr.write('HEAVY ' + ','.join(heavy) + '\\n')\n") % (HEAVY,)


def run(cmd: list[str], pythonpath: str | None) -> tuple[float, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    p = subprocess.Popen([sys.executable, "-c", PROBE, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=env, cwd="/")
    err = p.stderr.read().decode(errors="replace")    # type: ignore[union-attr]
    _, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd} failed: {err[-400:]}")
    heavy = next((line[6:] for line in err.splitlines() if line.startswith("HEAVY ")), "?")
    return usage.ru_utime + usage.ru_stime, heavy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path)
    ap.add_argument("--runs", type=int, default=7)
    a = ap.parse_args()
    trees = {"this tree": str(Path(__file__).resolve().parents[1])}
    if a.base:
        trees["--base"] = str(a.base.resolve())
    cpu: dict[tuple[str, str], list[float]] = {}
    heavy: dict[tuple[str, str], str] = {}
    for _ in range(a.runs):
        for cmd in COMMANDS:
            for name, path in trees.items():
                s, h = run(cmd, path)
                cpu.setdefault((" ".join(cmd), name), []).append(s)
                heavy[(" ".join(cmd), name)] = h
    print(f"\n## CLI start-up: CPU seconds of `dlp-sensor <command> --help` (median of {a.runs} fresh processes, "
          "alternated)\n")
    print("| command | tree | CPU s | heavy libraries imported |\n|---|---|---|---|")
    for (cmd, name), v in cpu.items():
        print(f"| `{cmd}` | {name} | {statistics.median(v):.3f} | {heavy[(cmd, name)] or '-'} |")


if __name__ == "__main__":
    main()
