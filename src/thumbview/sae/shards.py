"""Activations stored on disk in shards, read in batches: SAE training beyond RAM.

A million ViT-L/14 CLS vectors are ~4 GB of float32, and all-token activations far more, so
training cannot assume one in-memory array. `ShardedActivations` presents a folder of
`.npy` shards (each (n_i, d_in), written by `write_shards` or by any producer, e.g. a Ray
job) as one (N, d_in) matrix whose row reads touch only the shards they need, through
memory maps. `SaeTrainer.fit` takes it wherever it takes an array, with the same data order
and checkpoints, so a run resumes as it does on an array.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from thumbview.fileio import atomic_write
from thumbview.sae.config import SaeError

SHARD_GLOB = "activations-*.npy"
MANIFEST = "activations.json"


class ShardedActivations:
    """A folder of `activations-*.npy` shards as one read-only (N, d_in) matrix.

    Shards are memory-mapped, so opening costs nothing and a batch reads only its rows.
    Rows are numbered through the shards in file-name order.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        files = sorted(self.folder.glob(SHARD_GLOB))
        if not files:
            raise SaeError(f"no activation shards ({SHARD_GLOB}) in {self.folder}")
        self._shards = [_open(f) for f in files]
        widths = {s.shape[1] for s in self._shards}
        if len(widths) != 1:
            raise SaeError(f"shards in {self.folder} have different widths {sorted(widths)}")
        self._starts = np.cumsum([0] + [len(s) for s in self._shards])  # (S + 1,)
        self.shape = (int(self._starts[-1]), widths.pop())
        self.ndim, self.dtype = 2, np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice | np.ndarray) -> np.ndarray:
        """Rows as float32 (k, d_in); `rows` is a slice or an index array (any order)."""
        idx = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows)
        out = np.empty((len(idx), self.shape[1]), np.float32)
        shard = np.searchsorted(self._starts, idx, side="right") - 1  # (k,)
        for s in np.unique(shard):
            mine = np.flatnonzero(shard == s)
            out[mine] = self._shards[s][idx[mine] - self._starts[s]]
        return out


def _open(path: Path) -> np.ndarray:
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise SaeError(f"{path} is not a readable .npy shard: {e}") from e
    if x.ndim != 2 or x.dtype.kind not in "fiu":
        raise SaeError(f"{path} must be a numeric (rows, d_in) array, got {x.dtype} {x.shape}")
    return x


def write_shards(
    blocks: Iterable[np.ndarray], folder: str | Path, shard_rows: int = 65_536
) -> ShardedActivations:
    """Stream (n, d_in) blocks into shards of `shard_rows` rows; returns the opened folder.

    Each shard is written to a temporary name, flushed and renamed (`atomic_write`), so an
    interrupted dump leaves only whole shards; the manifest (rows, width, shards) is written
    last, the same way.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pending: list[np.ndarray] = []
    count, index = 0, 0
    for block in blocks:
        pending.append(np.asarray(block, dtype=np.float32))
        count += len(block)
        while count >= shard_rows:
            data = np.concatenate(pending)
            _save(folder, index, data[:shard_rows])
            pending, count, index = [data[shard_rows:]], count - shard_rows, index + 1
    if count:
        _save(folder, index, np.concatenate(pending))
        index += 1
    opened = ShardedActivations(folder)
    manifest = {"rows": len(opened), "d_in": opened.shape[1], "shards": index}
    atomic_write(folder / MANIFEST, json.dumps(manifest))
    return opened


def _save(folder: Path, index: int, data: np.ndarray) -> None:
    """One shard, whole or not at all (the temp name is hidden from `SHARD_GLOB`)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # np.save to a path would append ".npy" to the temp name
            np.save(f, data)

    atomic_write(folder / f"activations-{index:05d}.npy", write)
