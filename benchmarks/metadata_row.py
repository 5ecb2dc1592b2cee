"""Peak memory and time of reading a metadata.csv with one very wide row (issue 30.5).

    .venv/bin/python benchmarks/metadata_row.py                # 100,000 trailing commas
    .venv/bin/python benchmarks/metadata_row.py --commas 1000000

A 20-row dataset of 120x90 JPEGs whose first data row ends in COMMAS empty fields. Each
reader runs in its own process (peak RSS from VmHWM, Linux), after the same imports:
`load_dataset` on the clean file (the baseline), `load_dataset` on the wide one (the row is
reported malformed), and pandas' `read_csv` on the wide file as the loader called it before
(the field's library: it makes a column per field of the widest row). Prints one table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

RUN = """
import re, sys, time, warnings
import pandas as pd
from thumbview.data.dataset import load_dataset
how, root = sys.argv[1], sys.argv[2]
start = time.perf_counter()
if how == "pandas":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = pd.read_csv(root + "/metadata.csv", dtype=str, keep_default_na=False, index_col=False)
    note = f"{df.shape[1]:,} columns"
else:
    ds = load_dataset(root, workers=1)
    note = ds.report.summary()
seconds = time.perf_counter() - start
peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024
print(f"{seconds:.2f}|{peak:.0f}|{note}")
"""


def make(root: Path, commas: int) -> Path:
    from PIL import Image

    root.mkdir(parents=True)
    for i in range(20):
        Image.new("RGB", (120, 90), (i * 10, 20, 30)).save(root / f"{i}.jpg")
    rows = "".join(f"{i}.jpg,{i + 5},t{i}\n" for i in range(1, 20))
    head = "file_name,views,title\n0.jpg,5,t0"
    (root / "metadata.csv").write_text(f"{head}{',' * commas}\n{rows}")
    return root


def run(how: str, root: Path, timeout: float) -> tuple[str, str, str]:
    try:
        out = subprocess.run(
            [sys.executable, "-c", RUN, how, str(root)],
            capture_output=True, text=True, timeout=timeout, check=True,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return (f">{timeout:.0f}", "-", "timed out")
    except subprocess.CalledProcessError as e:
        return ("-", "-", e.stderr.strip().splitlines()[-1][:60])
    seconds, peak, note = out.stdout.strip().split("|", 2)
    return seconds, peak, note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commas", type=int, default=100_000)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clean, wide = make(Path(tmp) / "clean", 0), make(Path(tmp) / "wide", args.commas)
        cases = [("load_dataset, clean file", "thumbview", clean),
                 (f"load_dataset, {args.commas:,} commas", "thumbview", wide),
                 (f"pandas read_csv, {args.commas:,} commas", "pandas", wide)]  # fmt: skip
        print(f"{'reader':<40} {'seconds':>8} {'peak MB':>8}  result")
        for label, how, root in cases:
            seconds, peak, note = run(how, root, args.timeout)
            print(f"{label:<40} {seconds:>8} {peak:>8}  {note}")


if __name__ == "__main__":
    main()
