"""Seconds per epoch and peak memory of `thumbview bot train` per method, tiny pipeline, CPU.

Run by hand, not in the tests:

    .venv/bin/python benchmarks/bot.py --epochs 3

Each method runs in its own child process (so each peak RSS is its own) on the tiny
random pipeline (`thumbview.bot.tiny`, 64x64 images, 8x8 latents) against a visual-only
predictor fitted on synthetic thumbnails with faces/OCR off. Epoch seconds include the
per-epoch evaluation (fixed seeds, grid) and saving. No GPU path is measured here; on a
GPU the realistic case (SD-1.5-sized UNet, 512 px, bf16) is still to be recorded.
Prints a markdown table.
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

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(method: str, epochs: int, steps: int, work: Path) -> dict:
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from _bot_fixture import build_fast_predictor
    from thumbview.bot.folder import BotConfig, Prompt
    from thumbview.bot.policy import SampleConfig
    from thumbview.bot.tiny import save_tiny_base
    from thumbview.bot.train import train_bot

    torch.set_num_threads(1)
    base, model = save_tiny_base(work / "base"), build_fast_predictor(work)
    rss_before = peak_rss_mb()
    sample = SampleConfig(
        steps=steps, eta=1.0 if method == "ddpo" else 0.0, guidance=2.0, height=64, width=64
    )
    config = BotConfig(
        method=method, epochs=epochs, batch=2, per_prompt=2, draft_k=2, sample=sample
    )
    prompts = [Prompt("I tried it for 30 days", "a red poster"), Prompt("worst cake ever", "cake")]
    t0 = time.perf_counter()
    result = train_bot(str(base), model, prompts, work / f"bot-{method}", config)
    seconds = sorted(r["seconds"] for r in result.history)
    return {
        "method": method,
        "median_s_per_epoch": seconds[len(seconds) // 2],
        "total_s": time.perf_counter() - t0,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_train_mb": rss_before,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(one(args.one, args.epochs, args.steps, Path(tmp))))
        return
    rows = []
    for method in ("draft", "ddpo"):
        cmd = [
            sys.executable,
            __file__,
            "--one",
            method,
            "--epochs",
            str(args.epochs),
            "--steps",
            str(args.steps),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(
        f"tiny pipeline (UNet 0.8M params, 64x64), CPU, 1 thread, {args.steps} DDIM steps, 4 images/epoch\n"
    )
    print("| method | s / epoch (median) | peak RSS MB | RSS before training MB |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['median_s_per_epoch']:.2f} | {r['peak_rss_mb']:.0f} | {r['rss_before_train_mb']:.0f} |"
        )
    print(
        f"\nddpo / draft time per epoch: {rows[1]['median_s_per_epoch'] / rows[0]['median_s_per_epoch']:.2f}x"
    )


if __name__ == "__main__":
    main()
