"""Throughput of `rank_frames` (decode + shot detection + scoring) on a generated 1080p video.

Run by hand, not in the tests:

    .venv/bin/python benchmarks/frames.py --seconds 60

Writes a 1920x1080 h264 video of synthetic-thumbnail shots (slow pans, cuts every 4 s),
trains a small visual-only model on synthetic data (unless --model-dir is given), then
measures in a fresh child process so peak RSS is that of the ranking alone. Reports
seconds of video per second of wall time ("x real time") and peak RSS, as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from thumbview.data.synth import render_thumbnail

W, H, FPS = 1920, 1080, 30


def write_video(path: Path, seconds: float, codec: str, shot_s: float = 4.0) -> Path:
    """Shots of synthetic thumbnails (every third warm + text), panning 2 px per frame."""
    rng = np.random.default_rng(0)
    n_frames = int(seconds * FPS)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "veryfast", "crf": "23"}
        image = None
        for i in range(n_frames):
            if i % int(shot_s * FPS) == 0:
                k = i // int(shot_s * FPS)
                flags = {"warm_colours": 1, "big_text": 1} if k % 3 == 0 else {}
                image = render_thumbnail(rng, flags, W + 240, H + 135)
            dx = (2 * i) % 240
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:H, dx : dx + W]))
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def build_model(root: Path) -> Path:
    from thumbview.data.dataset import load_dataset
    from thumbview.data.synth import SynthConfig, make_synthetic
    from thumbview.predict.model import PredictorConfig
    from thumbview.predict.workflow import train

    data = make_synthetic(root / "synth", SynthConfig(n=200, seed=0))
    train(load_dataset(data), PredictorConfig(encoders=("visual",)), root / "model", holdout_frac=0)
    return root / "model"


def measure(video: Path, model_dir: Path, keyframes_only: bool, out_dir: Path) -> dict:
    """Runs in the child: one `rank_frames` call, timed, with peak RSS."""
    from PIL import Image

    from thumbview.frames import FramesConfig, rank_frames
    from thumbview.inference import LoadedPredictor

    predictor = LoadedPredictor.load(model_dir)  # import/model/OCR load is not throughput
    predictor.encoders["visual"].encode([Image.new("RGB", (320, 180))])
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    result = rank_frames(
        video, predictor, top=5, out_dir=out_dir, config=FramesConfig(keyframes_only=keyframes_only)
    )
    wall = time.perf_counter() - start
    return {
        "wall_s": wall,
        "n_sampled": result.n_sampled,
        "n_candidates": result.n_candidates,
        "n_shots": result.n_shots,
        "skipped": result.skipped,
        "duration_s": result.duration_s,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--codec", default="libx264", choices=["libx264", "mpeg4"])
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--child", nargs=4, metavar=("VIDEO", "MODEL", "KEYFRAMES", "OUT"))
    args = parser.parse_args()
    if args.child:
        video, model, keyframes, out = args.child
        print(json.dumps(measure(Path(video), Path(model), keyframes == "1", Path(out))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        video = write_video(root / "bench.mp4", args.seconds, args.codec)
        print(
            f"wrote {args.seconds:.0f} s {W}x{H}@{FPS} {args.codec} "
            f"({video.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.0f} s"
        )
        model = args.model_dir or build_model(root)
        rows = []
        for keyframes in ("0", "1"):
            cmd = [
                sys.executable,
                __file__,
                "--child",
                str(video),
                str(model),
                keyframes,
                str(root / f"out{keyframes}"),
            ]
            rows.append(
                json.loads(
                    subprocess.run(cmd, check=True, capture_output=True, text=True)
                    .stdout.strip()
                    .splitlines()[-1]
                )
            )
        print_table(rows, args)


def print_table(rows: list[dict], args) -> None:
    for r in rows:
        print("skipped:", r["skipped"])
    print(f"\n{args.seconds:.0f} s of {W}x{H} @ {FPS} fps ({args.codec}), sample_fps=2, top 5\n")
    print(
        "| mode | wall s | x real time | sampled | candidates | shots | RSS before MB | peak RSS MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for mode, r in zip(("all frames decoded", "keyframes only"), rows, strict=True):
        print(
            f"| {mode} | {r['wall_s']:.1f} | {r['duration_s'] / r['wall_s']:.1f} | "
            f"{r['n_sampled']} | {r['n_candidates']} | {r['n_shots']} | "
            f"{r['baseline_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
