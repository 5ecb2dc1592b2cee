"""The feature cache: each encoder's matrix is computed once per input and reused.

Layout, one folder per encoder configuration::

    CACHE_DIR/<encoder>-<spec_hash>/spec.json          # what produced it (encoder spec, versions)
    CACHE_DIR/<encoder>-<spec_hash>/shard-00000.safetensors   # features (M, D) f32 + digests (M, 16) u8

Rows are keyed by a digest of the *content* (image bytes, or title text), not by file name,
so an edited image is recomputed, a renamed one is not, and a changed encoder spec lands in
a different folder. Shards are written as work progresses, so an interrupted `embed` resumes
where it stopped and adding images computes only the new ones.

Two `embed` runs of the same features at once (two terminals, `train` beside `cv`) used to
both compute every row and write every shard twice. A run now holds the folder's lock
(`FeatureStore.exclusive`, an `flock` on `.lock`, released by the kernel if the run dies)
from reading the cache to its last shard; a second run waits there, then finds the rows
the first computed and computes only what is still missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from thumbview import __version__
from thumbview.data.dataset import SkippedRow, ThumbnailDataset
from thumbview.data.images import ImageError, load_image
from thumbview.embed.base import Encoder
from thumbview.fileio import atomic_write, dataset_cache_name, user_cache_root
from thumbview.progress import SILENT, Advance, Progress
from thumbview.schema import SchemaError, load_json

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, two runs may both compute
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

DIGEST_BYTES = 16
SHARD_ROWS = 2048  # rows computed between two writes: the most work an interruption can lose


class EmbedError(ValueError):
    """Features could not be computed; the message names the input at fault."""


@dataclass(frozen=True)
class CacheStats:
    """How an `embed` call was served: rows found in the cache vs computed now.

    skipped: rows whose input could not be decoded or encoded; their matrix rows are NaN
    (see `finite_rows`) and nothing is cached for them, so a fixed file is tried again.
    """

    n_rows: int
    n_cached: int
    n_computed: int
    cache_path: Path
    skipped: tuple[SkippedRow, ...] = ()


def finite_rows(blocks: dict[str, np.ndarray]) -> np.ndarray:
    """(N,) bool: rows that every encoder could embed (skipped rows are NaN in their block)."""
    masks = [np.isfinite(X).all(axis=1) for X in blocks.values()]
    return np.logical_and.reduce(masks) if masks else np.zeros(0, dtype=bool)


def default_cache_dir(root: Path) -> Path:
    """`~/.cache/thumbview/features/<folder>-<hash of its path>`; `THUMBVIEW_CACHE_DIR` overrides.

    Never inside the dataset folder: datasets are often read-only, shared or synced, and
    permission bits do not stop root from writing where it should not.
    """
    if env := os.environ.get("THUMBVIEW_CACHE_DIR"):
        return Path(env)
    return user_cache_root() / "features" / dataset_cache_name(root)


def digest_bytes(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()


def input_digests(dataset: ThumbnailDataset, encoder: Encoder, workers: int = 4) -> list[bytes]:
    """One content digest per dataset row: of the image file's bytes, or of the title text."""
    if encoder.modality == "text":
        return [digest_bytes(t.encode("utf-8")) for t in dataset.titles]
    if encoder.modality == "meta":  # per-row metadata dicts (e.g. the context encoder)
        return [
            digest_bytes(json.dumps(r, sort_keys=True).encode()) for r in _meta(dataset, encoder)
        ]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        if dataset.shards is None:
            return list(pool.map(lambda p: digest_bytes(Path(p).read_bytes()), dataset.paths))
        digests: list[bytes] = []  # shards: stream row groups in order, hash in threads
        for rows in _chunks(list(range(len(dataset))), SHARD_ROWS):
            digests += pool.map(digest_bytes, dataset.image_bytes(rows))
        return digests


class FeatureStore:
    """The shards of one encoder configuration: read them all, append new ones atomically."""

    def __init__(self, cache_dir: Path, encoder: Encoder):
        self.path = Path(cache_dir) / f"{encoder.name}-{encoder.spec_hash()}"
        self.spec = encoder.spec()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold this store for one run: another process embedding the same features waits
        here (logged), then reuses what this one wrote. Best effort: where the folder cannot
        be written or `flock` does not exist, runs go on unlocked (as they did before)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            log.debug("no lock for %s (%s); embedding without it", self.path, e)
            yield
            return
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    log.warning(
                        "another run is embedding into %s; waiting for it, then reusing its rows",
                        self.path,
                    )
                    fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def load(self) -> dict[bytes, np.ndarray]:
        """digest -> feature row, over every valid shard; a spec mismatch means start afresh."""
        if not self._spec_matches():
            return {}
        table: dict[bytes, np.ndarray] = {}
        for shard in sorted(self.path.glob("shard-*.safetensors")):
            try:
                arrays = load_file(shard)
            except Exception as e:  # a torn or foreign file: recompute its rows, never trust it
                log.warning("ignoring unreadable cache shard %s (%s)", shard, e)
                continue
            for digest, row in zip(arrays["digests"], arrays["features"], strict=True):
                table[digest.tobytes()] = row
        return table

    def append(self, digests: Sequence[bytes], features: np.ndarray) -> None:
        """Write one shard (temp file + rename, so a crash never leaves half a shard)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._write_spec()
        index = len(list(self.path.glob("shard-*.safetensors")))
        target = self.path / f"shard-{index:05d}.safetensors"
        arrays = {
            "features": np.ascontiguousarray(features, dtype=np.float32),
            "digests": np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, DIGEST_BYTES),
        }
        atomic_write(
            target, lambda tmp: save_file(arrays, tmp, metadata={"thumbview": __version__})
        )

    def _spec_matches(self) -> bool:
        spec_file = self.path / "spec.json"
        if not spec_file.exists():
            return False
        try:  # size and depth limited; a FIFO or a device here is a mismatch, never a hang
            stored = load_json(spec_file)["spec"]
        except (SchemaError, KeyError, TypeError):
            return False
        if stored != json.loads(json.dumps(self.spec)):
            log.warning("cache %s was made by a different encoder spec; recomputing", self.path)
            return False
        return True

    def _write_spec(self) -> None:
        spec_file = self.path / "spec.json"
        if self._spec_matches():
            return
        for stale in self.path.glob("shard-*.safetensors"):
            stale.unlink()
        payload = {"spec": self.spec, "thumbview_version": __version__, "digest": "blake2b-16"}
        atomic_write(spec_file, json.dumps(payload, indent=2, sort_keys=True))


def embed(
    dataset: ThumbnailDataset,
    encoder: Encoder,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    workers: int = 4,
    progress: Progress = SILENT,
) -> tuple[np.ndarray, CacheStats]:
    """Features (len(dataset), encoder.dim) float32, aligned with `dataset.table` rows.

    A row whose image cannot be decoded, or that the encoder fails on, is a skip (NaN row,
    listed in `CacheStats.skipped`, logged), not a stop: one bad file among a million must
    not lose an hour of work. Shown as the task "embed <encoder>" of `progress`.
    """
    store = FeatureStore(cache_dir or default_cache_dir(dataset.root), encoder)
    with progress.task(f"embed {encoder.name}", total=len(dataset)) as advance, store.exclusive():
        digests = input_digests(dataset, encoder, workers)
        table = store.load()
        todo = unique_missing(digests, table)
        advance(sum(d in table for d in digests))
        failed: dict[bytes, tuple[int, str]] = {}  # digest -> (first row, why)
        for chunk in _chunks(todo, SHARD_ROWS):
            rows = [row for row, _ in chunk]
            feats, errors = _compute(dataset, encoder, rows, batch_size, workers, advance)
            ok = [j for j, e in enumerate(errors) if e is None]
            failed.update((chunk[j][1], (chunk[j][0], e)) for j, e in enumerate(errors) if e)
            chunk_digests = [chunk[j][1] for j in ok]
            if ok:
                store.append(chunk_digests, feats[ok])
            table.update(zip(chunk_digests, feats[ok], strict=True))
    return assemble(dataset, encoder, store, digests, table, len(todo), failed)


def assemble(
    dataset: ThumbnailDataset,
    encoder: Encoder,
    store: FeatureStore,
    digests: list[bytes],
    table: dict[bytes, np.ndarray],
    n_todo: int,
    failed: dict[bytes, tuple[int, str]],
) -> tuple[np.ndarray, CacheStats]:
    """The (N, D) matrix in row order (NaN rows for failed inputs) and its CacheStats."""
    nan = np.full(encoder.dim, np.nan, dtype=np.float32)
    matrix = (
        np.stack([table.get(d, nan) for d in digests]) if digests else np.zeros((0, encoder.dim))
    )
    skipped = _skipped(dataset, digests, failed)
    n_computed = n_todo - len(failed)
    stats = CacheStats(len(digests), len(digests) - n_todo, n_computed, store.path, skipped)
    log.info("%s: %d rows, %d from cache, %d computed", encoder.name, *_counts(stats))
    return matrix.astype(np.float32, copy=False), stats


def _skipped(dataset, digests: list[bytes], failed: dict[bytes, tuple[int, str]]) -> tuple:
    """A SkippedRow for every row whose input failed (duplicates of a failed input included)."""
    if not failed:
        return ()
    names = dataset.table["file_name"].tolist()
    rows = [(r, failed[d][1]) for r, d in enumerate(digests) if d in failed]
    for r, why in rows:
        log.warning("skipped row %d (%s): %s", r, names[r], why)
    return tuple(SkippedRow(r, names[r], "unreadable image", why) for r, why in rows)


def _counts(stats: CacheStats) -> tuple[int, int, int]:
    return stats.n_rows, stats.n_cached, stats.n_computed


def unique_missing(digests: list[bytes], table: dict[bytes, np.ndarray]) -> list[tuple[int, bytes]]:
    """(row, digest) for each digest not cached yet, first occurrence only."""
    seen: set[bytes] = set()
    missing = []
    for row, d in enumerate(digests):
        if d not in table and d not in seen:
            seen.add(d)
            missing.append((row, d))
    return missing


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _compute(dataset, encoder, rows, batch_size, workers, advance: Advance):
    """Encode `rows` in batches while a thread pool decodes the next batch's images.

    Returns features (len(rows), D) and, per row, None or why it failed (its row is NaN).
    """
    outputs, errors = [], []
    meta = _meta(dataset, encoder) if encoder.modality == "meta" else None
    with ThreadPoolExecutor(max_workers=workers) as pool:
        batches = list(_chunks(rows, batch_size))
        pending = _submit(pool, dataset, encoder, batches[0], meta) if batches else []
        for i, batch_rows in enumerate(batches):
            inputs = [_result(f) for f in pending]
            if i + 1 < len(batches):  # decode ahead: the model never waits on PIL
                pending = _submit(pool, dataset, encoder, batches[i + 1], meta)
            feats, why = encode_guarded(encoder, inputs)  # (B, D)
            outputs.append(feats)
            errors += why
            advance(len(batch_rows))
    if not outputs:
        return np.zeros((0, encoder.dim), np.float32), errors
    return np.concatenate(outputs), errors


def encode_guarded(encoder: Encoder, inputs: list) -> tuple[np.ndarray, list[str | None]]:
    """`encoder.encode` on the inputs that decoded (ImageError items did not); when the batch
    fails, each input alone, so only the culprits are lost. Returns (B, D) with NaN rows and
    per input None or the reason."""
    out = np.full((len(inputs), encoder.dim), np.nan, dtype=np.float32)  # (B, D)
    errors: list[str | None] = [str(x) if isinstance(x, ImageError) else None for x in inputs]
    good = [j for j, e in enumerate(errors) if e is None]
    try:
        if good:
            out[good] = _encode(encoder, [inputs[j] for j in good])
        return out, errors
    except Exception as e:  # noqa: BLE001 - find the culprit below
        log.info("batch failed (%s); encoding its %d inputs one by one", e, len(good))
        batch_error = e
    for j in good:
        try:
            out[j] = _encode(encoder, [inputs[j]])[0]
        except Exception as e:  # noqa: BLE001 - one hostile input becomes a skip
            errors[j] = f"{encoder.name} failed on this input ({type(e).__name__}: {e})"
    if len(good) > 1 and all(errors[j] for j in good):
        raise batch_error  # every input fails alone too: the encoder is broken, not the inputs
    return out, errors


def _encode(encoder: Encoder, inputs: list) -> np.ndarray:
    feats = np.asarray(encoder.encode(inputs), dtype=np.float32)  # (B, D)
    if feats.shape != (len(inputs), encoder.dim):
        raise EmbedError(f"{encoder.name} returned {feats.shape}, expected ({len(inputs)}, D)")
    return feats


def _result(future: Future):
    """The decoded input, or the ImageError that says why it could not be decoded."""
    try:
        return future.result()
    except ImageError as e:
        return e


def _submit(pool: ThreadPoolExecutor, dataset, encoder, batch_rows, meta=None) -> list:
    """Futures for one batch's inputs: decoded images, or titles (already in memory)."""
    if encoder.modality == "text":
        return [_done(dataset.titles[r]) for r in batch_rows]
    if encoder.modality == "meta":
        return [_done(meta[r]) for r in batch_rows]
    if dataset.shards is None:
        return [pool.submit(_open, dataset.paths[r]) for r in batch_rows]
    names = dataset.table["file_name"]
    blobs = dataset.image_bytes(batch_rows)  # in order, one row group read at a time
    return [pool.submit(_open, b, names.iat[r]) for b, r in zip(blobs, batch_rows, strict=True)]


def _meta(dataset: ThumbnailDataset, encoder: Encoder) -> list:
    """Metadata inputs of a "meta" encoder: one dict per dataset row."""
    return encoder.rows(dataset.table)  # type: ignore[attr-defined]


def _done(value):
    future: Future = Future()
    future.set_result(value)
    return future


def _open(source: Path | bytes, name: str | None = None):
    return load_image(source, name=name)
