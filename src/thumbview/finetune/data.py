"""Rows of a dataset as training batches: images decoded (and augmented) in DataLoader workers.

Every random choice (row order, crop, flip) comes from a generator seeded by (seed, epoch,
row), so an epoch is the same whether it runs in 0 or 8 workers, first time or after a
resume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from thumbview.data.images import load_image
from thumbview.finetune.encoders import augmented_pixels, to_pixels


class ThumbnailRows(torch.utils.data.Dataset):
    """Item k -> (pixels uint8 (3, S, S), title (D,) float32, standardised target ())."""

    def __init__(
        self,
        paths: Sequence[str],
        y: np.ndarray,
        title: np.ndarray | None,
        size: int,
        *,
        augment: bool = False,
        hflip: bool = False,
        jitter: float = 0.0,
        seed: int = 0,
        frame: str = "squash",
    ):
        self.paths, self.y, self.title = list(paths), np.asarray(y, np.float32), title
        self.size, self.frame = size, frame
        self.augment, self.hflip, self.jitter, self.seed = augment, hflip, jitter, seed
        self.order = np.arange(len(self.paths))
        self.epoch = 0

    def shuffle(self, epoch: int) -> None:
        """Row order and augmentation draws for `epoch` (call before iterating)."""
        self.epoch = epoch
        self.order = np.random.default_rng([self.seed, epoch]).permutation(len(self.paths))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k: int):
        i = int(self.order[k])
        image = load_image(self.paths[i])
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, i, 1])
            pixels = augmented_pixels(image, self.size, rng, self.hflip, self.jitter, self.frame)
        else:
            pixels = to_pixels(image, self.size, frame=self.frame)
        title = np.zeros(0, np.float32) if self.title is None else self.title[i]
        return torch.from_numpy(pixels), torch.from_numpy(np.asarray(title)), self.y[i]


def loader(rows: ThumbnailRows, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    """Batches in `rows.order`; decoding happens in `workers` processes (0: in this one)."""
    return torch.utils.data.DataLoader(
        rows,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )
