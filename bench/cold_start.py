"""Cold start: what importing one handler costs, against a bare ``import functions_framework, flask``.

Each figure is one fresh Python process (``python -X importtime`` is not used: the wall time of the
whole process, interpreter start included, is what a new Cloud Functions / Cloud Run instance pays
before its first request). Cases, each run ``--runs`` times, interleaved so that a busy moment of the
machine falls on every case alike:

- ``bare``:       ``import functions_framework, flask`` (the floor: what every handler needs)
- ``main``:       ``import main`` (main.py names every handler; none is imported yet)
- ``create_app``: ``functions_framework.create_app(target=TARGET, source="main.py")`` (what
  ``functions-framework --target TARGET`` does before it serves: the one handler's module)

Prints every figure and the medians, the ratios to ``bare``, and merges them into
bench/results.json (``cold_start``). The goal: ``create_app`` at most 1.5x ``bare``.

    python3 -m bench.cold_start --runs 15 --target msg
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import save

ROOT = Path(__file__).resolve().parent.parent

CASES = {
    "bare": "import functions_framework, flask",
    "main": "import main",
    "create_app": "import functions_framework; functions_framework.create_app(target={target!r}, source='main.py')",
}


def once(code: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cold_start", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="fresh processes per case (default 15)")
    parser.add_argument("--target", default="msg", help="the handler create_app loads (default msg)")
    args = parser.parse_args(argv)
    env = {**os.environ, "MULTIMSG_HOME": os.environ.get("MULTIMSG_HOME", "/tmp/multimsg-cold-start"), "PYTHONDONTWRITEBYTECODE": "1"}
    codes = {name: code.format(target=args.target) for name, code in CASES.items()}
    for code in codes.values():
        once(code, env)  # warm the page cache and the bytecode caches: every case starts from the same state
    times: dict[str, list[float]] = {name: [] for name in codes}
    for _ in range(args.runs):
        for name, code in codes.items():
            times[name].append(once(code, env))
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print(f"{name:>10}: " + " ".join(f"{v * 1000:.0f}" for v in values) + " ms")
    for name, median in medians.items():
        print(f"{name:>10}: median {median * 1000:.0f} ms, {median / medians['bare']:.2f}x bare")
    save("cold_start", {"target": args.target, "runs": args.runs,
                                 "median_ms": {k: round(v * 1000, 1) for k, v in medians.items()},
                                 "ratio_to_bare": {k: round(v / medians["bare"], 2) for k, v in medians.items()},
                                 "all_ms": {k: [round(v * 1000, 1) for v in vs] for k, vs in times.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
