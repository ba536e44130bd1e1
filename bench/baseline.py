"""Benign-web scan speed of this tree against another commit, in the same run.

    python bench/baseline.py f0f762c            # a commit: checked out into a temporary worktree
    python bench/baseline.py /path/to/checkout  # or a checkout that already exists

Both trees scan the same bytes (pages of ``text/html``, one BodyScan per 256 KiB page, as the taps
see them) with this venv's packages, alternating, best of three each; prints a table and the median
ratio. Speed is bytes per second of the process's CPU time, not wall time: on a machine shared with
other work, preemption would otherwise decide the figure (the scan is single-threaded, so CPU time
is the time it took). Issue acceptance bars such as "not below 0.9x of the old code" are read from it.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ONE_TREE = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from sensor.config import Config
from sensor.runtime import build_detector
from sensor.pipeline import BodyScan, Exchange
data = open(sys.argv[2], "rb").read()
d = build_detector(Config())
best = 0.0
for _ in range(3):
    t = time.process_time()
    for i in range(0, len(data), 256 << 10):
        b = BodyScan(d.engine, d.policy, key=b"k" * 32, exchange=Exchange(content_type="text/html"))
        page = data[i:i + (256 << 10)]
        for j in range(0, len(page), 65536):
            b.write(page[j:j + 65536])
        b.finish()
    best = max(best, len(data) / (time.process_time() - t) / 1e6)
print(best)
"""


def speed(tree: Path, corpus: Path) -> float:
    out = subprocess.run([sys.executable, "-c", ONE_TREE, str(tree), str(corpus)], check=True,
                         capture_output=True, text=True, cwd=tempfile.gettempdir())
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("baseline", help="a commit of this repository, or the path of another checkout")
    ap.add_argument("--mb", type=int, default=20, help="MiB of benign web pages")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from sensor import synth
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "benign.bin"
        corpus.write_bytes(synth.benign_web(a.mb << 20)[: a.mb << 20])
        base = Path(a.baseline)
        if not base.is_dir():
            base = Path(tmp) / "baseline"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(base), a.baseline],
                           check=True)
        try:
            print(f"{'round':>5}  {'baseline MB/s':>13}  {'this tree MB/s':>14}  {'ratio':>5}")
            ratios = []
            for r in range(1, a.rounds + 1):
                old, new = speed(base, corpus), speed(ROOT, corpus)
                ratios.append(new / old)
                print(f"{r:>5}  {old:>13.1f}  {new:>14.1f}  {new / old:>5.2f}")
            print(f"median ratio {statistics.median(ratios):.2f}x  (baseline: {a.baseline}; CPU time)")
        finally:
            if base.parent == Path(tmp):
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)


if __name__ == "__main__":
    main()
