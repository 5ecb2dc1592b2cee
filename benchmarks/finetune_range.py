"""A fine-tuned model's training range on real thumbnails: how often it flags new channels.

Fine-tunes on the channels with crc32(channel) % 5 != 0 (80%), then scores the other 20%
(channels the model never saw: a fresh sample of the same distribution, so the share
flagged should be about the stated 1%) and pictures unlike any thumbnail: colour noise,
a constant grey, and the unseen thumbnails colour-inverted and in grayscale. Prints a table.

    python benchmarks/finetune_range.py ../shared/data/yt-virality --epochs 3 --title frozen
    python benchmarks/finetune_range.py DATA --epochs 1 --title none --max-train 1600 \
        --unseen 500 --extra '{"backbone": "effnet-lite0", "init": "imagenet", "image_size": 128}'
"""

from __future__ import annotations

import argparse
import json
import tempfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from thumbview.data.dataset import load_dataset
from thumbview.data.images import load_image
from thumbview.finetune.config import FinetuneConfig
from thumbview.finetune.train import finetune
from thumbview.inference import LoadedPredictor


def flagged(predictor: LoadedPredictor, images, titles) -> float:
    """The share of (image, title) rows the training range flags, in chunks of 256 (titles
    reused in turn when there are more pictures than titles)."""
    out = []
    for s in range(0, len(images), 256):
        chunk = images[s : s + 256]
        said = [titles[i % len(titles)] for i in range(s, s + len(chunk))]  # reused in turn
        blocks = predictor.blocks(chunk, said)
        out.append(predictor.outside(blocks))
    return float(np.concatenate(out).mean())


def main(args) -> None:
    ds = load_dataset(args.data)
    unseen = np.array([zlib.crc32(str(c).encode()) % 5 == 0 for c in ds.channels])
    keep = np.flatnonzero(~unseen)
    if args.max_train:
        keep = np.sort(np.random.default_rng(0).choice(keep, args.max_train, replace=False))
    config = FinetuneConfig(
        **{
            "backbone": "vit-tiny",
            "workers": 2,
            "epochs": args.epochs,
            "title": args.title,
            **json.loads(args.extra),
        }  # fmt: skip
    )
    with tempfile.TemporaryDirectory() as out:
        finetune(ds.subset(keep), config, Path(out))
        predictor = LoadedPredictor.load(Path(out))
        if predictor.training_range is None:
            raise SystemExit("no training range recorded (under 200 held-out rows): train on more")
        rows = np.flatnonzero(unseen)[: args.unseen]
        titles = [str(ds.titles[i]) for i in rows]
        images = [load_image(ds.paths[i]) for i in rows]
        rng = np.random.default_rng(0)
        noise = [Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
                 for _ in range(100)]  # fmt: skip
        cases = {
            f"unseen channels ({len(rows)} thumbnails)": images,
            "colour noise (100)": noise,
            "constant grey (1)": [Image.new("RGB", (120, 90), (128, 128, 128))],
            f"unseen, colour-inverted ({len(images[:200])})": [ImageOps.invert(im.convert("RGB")) for im in images[:200]],
            f"unseen, grayscale ({len(images[:200])})": [ImageOps.grayscale(im).convert("RGB") for im in images[:200]],
        }  # fmt: skip
        print(f"{config.backbone}, {args.epochs} epoch(s), title {args.title}, "
              f"{len(keep)} training rows\n\n| pictures | flagged |\n|---|---:|")  # fmt: skip
        for name, pictures in cases.items():
            print(f"| {name} | {flagged(predictor, pictures, titles):.2%} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--title", default="frozen", help="how the network reads titles")
    parser.add_argument("--max-train", type=int, default=0, help="training rows (0: all)")
    parser.add_argument("--unseen", type=int, default=100_000, help="unseen rows scored")
    parser.add_argument("--extra", default="{}", help="more FinetuneConfig fields, as JSON")
    main(parser.parse_args())
