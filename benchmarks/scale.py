"""Scale: pack, streaming load and peak memory, and Ray-local embedding vs the local path.

Run by hand, not in the tests:

    .venv/bin/python benchmarks/scale.py --rows 1000000 --embed-rows 20000

Generates ROWS small unique PNG thumbnails (32x24 random pixels, ~2.4 KB: every digest differs) in
folders of 1,000 plus metadata.csv, then times, each stage in its own process so that peak
RSS is that stage's alone:

- loading the folder (every image decoded, no verification cache: the worst case),
- `pack` to Parquet shards, and loading the shards (bytes streamed by row group),
- `embed` of the first EMBED_ROWS rows of the shards with a cheap encoder, on the local
  path and on a local Ray instance (`ray.init(num_cpus=CPUS)`), same data, same encoder.

Prints a markdown table. The encoder is cheap on purpose: this measures the plumbing
(reading, digests, scheduling), not a model; see docs/SCALE.md for model-bound arithmetic.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def disk_mb(path: Path) -> float:
    """Space allocated on disk (blocks), which is what a million small files really cost."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file()) / 2**20


def generate(root: Path, rows: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    lines = ["file_name,views,title,video_id,channel_id"]
    for i in range(rows):
        folder = root / f"img{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(buf, "PNG")
        name = f"img{i // 1000:04d}/{i:07d}.png"
        (root / name).write_bytes(buf.getvalue())
        lines.append(f"{name},{int(rng.integers(0, 10**7))},title {i},v{i:07d},c{i % 5000}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")


class MeanColour:
    """A cheap deterministic encoder: mean and std of each channel (6 numbers)."""

    name, version, modality, dim = "meancolour", "1", "image", 6

    def encode(self, inputs):
        arr = [np.asarray(im, np.float32) for im in inputs]
        return np.stack([np.concatenate([a.mean((0, 1)), a.std((0, 1))]) for a in arr])

    def spec(self):
        return {"encoder": self.name, "version": self.version, "dim": self.dim}

    def spec_hash(self):
        return "meancolour01"


def stage(name: str, args: argparse.Namespace) -> dict:
    """Run one stage in this process; returns seconds and peak RSS."""
    from thumbview.data.dataset import load_dataset
    from thumbview.data.shards import pack
    from thumbview.embed.cache import embed

    work = Path(args.work)
    start = time.perf_counter()
    extra: dict = {}
    if name == "load-folder":
        extra["kept"] = len(load_dataset(work / "folder", verify_cache=False, workers=args.cpus))
    elif name == "pack":
        extra["files"] = len(
            pack(work / "folder", work / "shards", shard_size=args.shard_size).files
        )
    elif name == "load-shards":
        extra["kept"] = len(load_dataset(work / "shards", verify_cache=False, workers=args.cpus))
    elif name in ("embed-local", "embed-ray"):
        ds = load_dataset(work / "shards", verify_images=False).subset(np.arange(args.embed_rows))
        cache = work / f"cache-{name}"
        shutil.rmtree(cache, ignore_errors=True)
        if name == "embed-local":
            start = time.perf_counter()
            embed(ds, MeanColour(), cache_dir=cache, workers=args.cpus)
        else:
            import ray

            from thumbview.embed.distributed import RayOptions, embed_ray

            t0 = time.perf_counter()
            ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
            extra["ray_init_s"] = round(time.perf_counter() - t0, 1)
            start = time.perf_counter()
            options = RayOptions(batch_size=256, concurrency=max(1, args.cpus // 2))
            embed_ray(ds, MeanColour, cache_dir=cache, options=options)
    return {
        "stage": name,
        "seconds": time.perf_counter() - start,
        "peak_rss_mb": peak_rss_mb(),
        **extra,
    }


def run_stage(name: str, args: argparse.Namespace) -> dict:
    argv = [sys.executable, __file__, "--stage", name, "--work", args.work]
    argv += ["--rows", str(args.rows), "--embed-rows", str(args.embed_rows)]
    argv += ["--shard-size", str(args.shard_size), "--cpus", str(args.cpus)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--embed-rows", type=int, default=20_000)
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--work", default=None, help="Working folder (default: a temp folder).")
    parser.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(stage(args.stage, args)))
        return
    args.embed_rows = min(args.embed_rows, args.rows)
    tmp = None if args.work else tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR"))
    args.work = args.work or tmp.name
    t0 = time.perf_counter()
    generate(Path(args.work) / "folder", args.rows)
    print(f"generated {args.rows:,} rows in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    results = {}
    for name in ("load-folder", "pack", "load-shards", "embed-local", "embed-ray"):
        results[name] = run_stage(name, args)
        print(results[name], file=sys.stderr)
    report(args, results)


def report(args: argparse.Namespace, r: dict) -> None:
    work = Path(args.work)
    n, m = args.rows, args.embed_rows
    print(f"\n{n:,} rows, {args.cpus} CPUs; folder {disk_mb(work / 'folder'):.0f} MB on disk, "
          f"shards {disk_mb(work / 'shards'):.0f} MB ({r['pack']['files']} files)\n")  # fmt: skip
    print("| stage | rows | seconds | rows/s | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|")
    for name, rows in [("load-folder", n), ("pack", n), ("load-shards", n),
                       ("embed-local", m), ("embed-ray", m)]:  # fmt: skip
        s = r[name]
        print(
            f"| {name} | {rows:,} | {s['seconds']:.1f} | {rows / s['seconds']:,.0f} | {s['peak_rss_mb']:.0f} |"
        )
    ratio = r["embed-local"]["seconds"] / r["embed-ray"]["seconds"]
    print(f"\nRay-local / single-process embed throughput: {ratio:.2f}x "
          f"(ray.init itself {r['embed-ray'].get('ray_init_s')} s, not counted)")  # fmt: skip


if __name__ == "__main__":
    main()
