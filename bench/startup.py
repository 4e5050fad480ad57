"""How long each stage takes to start: the import of its module in a fresh Python process.

    python bench/startup.py [--repeats 5]

Every stage DVC runs is a new process, and on the small data of the tests and CI most of a
stage's time is this start; the tests run hundreds of them. Prints, per stage module, the
median and the fastest of `--repeats` fresh imports, and which heavy libraries the import loaded.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("download", "train_teacher", "teacher_outputs", "distill", "evaluate", "report")
HEAVY = ("torch", "torchvision", "mlflow", "scipy", "statsmodels", "matplotlib", "pandas")
PROBE = "import sys, {module}; print(' '.join(m for m in {heavy} if m in sys.modules))"


def one_import(module: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE.format(module=module, heavy=HEAVY)],
                          cwd=ROOT, capture_output=True, text=True, check=True)  # fmt: skip
    return time.perf_counter() - started, done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    print(f"{'stage':<16} {'median s':>9} {'best s':>7}  loaded")
    for stage in STAGES:
        times, loaded = [], ""
        for _ in range(repeats):
            seconds, loaded = one_import(f"pipeline.stages.{stage}")
            times.append(seconds)
        print(f"{stage:<16} {statistics.median(times):>9.2f} {min(times):>7.2f}  {loaded}")


if __name__ == "__main__":
    main()
