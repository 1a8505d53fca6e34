"""What the first use of the shipped models costs on this machine, and what later uses cost.

The first `kedge infer` of a model on a machine runs its golden set on every candidate
pair and times them (runtime/checks/choice.py); later runs read the per-machine cache. This
runs `kedge infer IMAGE` (both shipped models) three times in a row with a fresh,
empty cache, side by side with a run on a warm cache, and prints wall and CPU seconds.
CPU seconds are what the budget is about on a loaded machine: wall time includes
whatever else runs.

    python docs/results/first_use.py [--image knee.png] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(image: Path, cache: Path) -> tuple[float, float, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "kedge.cli", "infer", str(image), "--quiet"],
                            env={**os.environ, "KEDGE_CACHE": str(cache)}, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode not in (0, 3):  # 3: an answer was withheld by the input envelope
        sys.exit(f"kedge infer failed: {result.stderr.strip()}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), result.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, help="an image to classify (default: a synthetic knee)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        image = args.image
        if image is None:
            from kedge.runtime.checks.synthetic import write_dataset

            image = write_dataset(Path(tmp) / "knees", per_class=1)[0]
        baseline = run(image, Path(tmp) / "warm")  # fills a cache for the warm runs
        print(f"{'run':<8}{'cache':<7}{'wall s':>8}{'cpu s':>8}")
        rows = []
        for i in range(args.repeat):
            cold = run(image, Path(tmp) / f"cold{i}")
            warm = run(image, Path(tmp) / "warm")
            rows.append((cold, warm))
            print(f"{i + 1:<8}{'empty':<7}{cold[0]:>8.2f}{cold[1]:>8.2f}")
            print(f"{i + 1:<8}{'warm':<7}{warm[0]:>8.2f}{warm[1]:>8.2f}")
        cold_cpu = sorted(c[1] for c, _ in rows)[len(rows) // 2]
        warm_cpu = sorted(w[1] for _, w in rows)[len(rows) // 2]
        print(f"median CPU s: first use {cold_cpu:.2f}, later use {warm_cpu:.2f}; the check costs "
              f"{cold_cpu - warm_cpu:.2f} CPU s once ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})")
        print(f"answers: {baseline[2]}")


if __name__ == "__main__":
    main()
