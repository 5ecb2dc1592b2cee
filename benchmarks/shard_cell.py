"""Peak memory of `thumbview info` on a Parquet shard with one huge image cell (issue 24.4).

Run by hand, not in the tests (it writes ~1 GB to a temp folder):

    .venv/bin/python benchmarks/shard_cell.py            # the cell is 300 MB
    .venv/bin/python benchmarks/shard_cell.py --mb 40

Writes four 5-row shards in the Hugging Face layout: one without a big cell (the baseline),
and three whose row 2 is a valid 32x18 JPEG followed by MB random bytes (so it decodes: only
its size can refuse it), the cell alone in its row group, in one row group with the four
others, and a 40 MB cell with the others. Each `thumbview info` runs in its own process, so
its peak RSS (VmHWM, Linux) is its own; prints rows kept and peak RSS in MB.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# VmHWM, not getrusage: ru_maxrss survives exec, so a child would report this script's peak.
RUN = """
import re, sys
from thumbview.cli import main
sys.argv = ["thumbview", "info", sys.argv[1]]
try:
    main()
except SystemExit:
    pass
status = open("/proc/self/status").read()
print("peak_rss_mb", int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) / 1024)
"""


def jpeg(shade: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 18), (shade, 0, 0)).save(buffer, "JPEG")
    return buffer.getvalue()


def write_shard(root: Path, big_mb: int, group_rows: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "data").mkdir(parents=True)
    cells = [{"bytes": jpeg(20 * i), "path": f"img/{i}.jpg"} for i in range(5)]
    if big_mb:
        cells[2]["bytes"] = jpeg(1) + os.urandom(big_mb * 2**20)
    kind = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array(cells, kind), "views": [str(10 + i) for i in range(5)]})
    pq.write_table(table, root / "data" / "train-00000-of-00001.parquet", row_group_size=group_rows)  # fmt: skip
    return root


def info(root: Path, cache: Path) -> tuple[str, float]:
    env = os.environ | {"THUMBVIEW_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", RUN, str(root)], capture_output=True, text=True, env=env)  # fmt: skip
    lines = out.stdout.splitlines()
    summary = next((line for line in lines if " rows, " in line), out.stderr.strip()[-200:])
    return summary, float(lines[-1].split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=300, help="Size of the big cell (MB).")
    args = parser.parse_args()
    cases = [("no big cell", 0, 256), (f"{args.mb} MB cell, own row group", args.mb, 1),
             (f"{args.mb} MB cell, one row group", args.mb, 256), ("40 MB cell, one row group", 40, 256)]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        print("| shard | `thumbview info` | peak RSS (MB) |\n|---|---|---:|")
        for i, (name, mb, rows) in enumerate(cases):
            root = write_shard(Path(tmp) / f"s{i}", mb, rows)
            summary, rss = info(root, Path(tmp) / f"cache{i}")
            print(f"| {name} | {summary} | {rss:,.0f} |")


if __name__ == "__main__":
    main()
