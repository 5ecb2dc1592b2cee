"""How fast `thumbview --help` starts: the lazy CLI vs importing the stack eagerly (the old way).

Each row runs in a fresh interpreter, several times, alternating, and reports the median
wall time and the median CPU time (user + sys of the child; on a shared machine CPU time is
the steadier figure). The "eager" row imports what the CLI imported at start-up before its
imports moved into the commands (torch, scipy.stats, matplotlib, the training workflow).

    python benchmarks/cli_start.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
CASES = {
    "thumbview --help": ["-m", "thumbview", "--help"],
    "thumbview info --help": ["-m", "thumbview", "info", "--help"],
    "import thumbview.cli": ["-c", "import thumbview.cli"],
    "eager (old start-up imports)": [
        "-c",
        "import thumbview.cli, thumbview.predict.workflow, thumbview.compare, scipy.stats",
    ],
}


def run_once(args: list[str]) -> tuple[float, float]:
    """(wall s, cpu s) of one fresh interpreter running `args`."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, capture_output=True, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in CASES}
    for _ in range(rounds):
        for name, args in CASES.items():  # alternating: contention hits every row alike
            times[name].append(run_once(args))
    eager_cpu = statistics.median(c for _, c in times["eager (old start-up imports)"])
    print("| command | median wall (s) | median CPU (s) | CPU vs eager |")
    print("|---|---|---|---|")
    for name, runs in times.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"| `{name}` | {wall:.2f} | {cpu:.2f} | {cpu / eager_cpu:.2f}x |")


if __name__ == "__main__":
    main()
