"""What the image part is worth on real thumbnails: chosen encoder sets on `thumbview cv`'s folds.

Run by hand, not in the tests (features come from the shared cache; the first run embeds):

    .venv/bin/python benchmarks/image_ablation.py ../shared/data/yt-virality

`thumbview cv DATA --ablate` scores every subset of the encoders it is given, which for five
blocks is 31 subsets x 3 heads; this script scores the rows the README's table needs, with
the ridge head, on the same 5 channel-disjoint folds (`dataset_split`, seed 0) and the same
metrics (`ablation.ablate` with `combos`): the image encoders alone (what `compare` and `frames` rank
when the title is fixed), `imagenet`'s two halves alone (pooled features, class
probabilities: slices of one cached block), and each image encoder with the title and
context blocks. Prints a markdown table, best first.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from thumbview.data.dataset import load_dataset
from thumbview.embed.imagenet import POOLED_DIM
from thumbview.predict.ablation import ablate, markdown_table
from thumbview.predict.model import PredictorConfig
from thumbview.predict.target import make_target
from thumbview.predict.workflow import build_encoders, dataset_blocks, dataset_split

ENCODERS = ("imagenet", "visual", "title", "context", "title-desc")
COMBOS = (
    ("imagenet",),
    ("imagenet-pooled",),
    ("imagenet-classes",),
    ("visual",),
    ("imagenet", "visual"),
    ("title",),
    ("imagenet", "title"),
    ("title", "context", "title-desc"),
    ("imagenet", "title", "context", "title-desc"),
    ("title", "visual", "context", "title-desc"),
    ("imagenet", "title", "visual", "context", "title-desc"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--skip", nargs="*", default=(), help="leave out rows using these encoders")
    parser.add_argument("--only", nargs="*", default=(), help="keep only rows using these encoders")
    args = parser.parse_args()
    combos = [c for c in COMBOS if not any(e.startswith(tuple(args.skip)) for e in c)]
    combos = [c for c in combos if not args.only or any(e in args.only for e in c)]
    encoders = [e for e in ENCODERS if e not in args.skip]
    started = time.perf_counter()
    dataset = load_dataset(args.data)
    config = PredictorConfig(encoders=tuple(encoders), seed=0, cv_folds=args.k)
    y, mask = make_target(dataset.views, "log10", dataset.channels)
    rows_idx = np.flatnonzero(mask)
    plan = dataset_split(dataset, rows_idx, config, 0.0)
    blocks = dataset_blocks(dataset, build_encoders(encoders))
    blocks = {n: np.asarray(b[rows_idx], np.float64) for n, b in blocks.items()}
    if "imagenet" in blocks:
        blocks["imagenet-pooled"] = blocks["imagenet"][:, :POOLED_DIM]
        blocks["imagenet-classes"] = blocks["imagenet"][:, POOLED_DIM:]
    rows = ablate(blocks, y[rows_idx], plan.fold_groups, k=args.k, heads=("ridge",), gbm_iter=0,
                  combos=combos)  # fmt: skip
    print(f"{len(rows_idx)} videos, {args.k} folds ({plan.protocol.name}), "
          f"{time.perf_counter() - started:.0f} s")  # fmt: skip
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
