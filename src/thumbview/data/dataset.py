"""Load a thumbnail dataset folder (Hugging Face imagefolder layout) into a validated table.

A dataset is a folder with images anywhere below it and one metadata file
(`metadata.csv`, `metadata.jsonl` or `metadata.parquet`) whose rows name an image by
`file_name` (relative to the folder) and give its `views`. Real folders are messy:
scraped rows point at missing or broken images, view counts arrive as "1,234" or "",
ids repeat. Those rows are skipped and *reported*; only a folder that is unusable as
a whole raises `DatasetError`. Every cell is read as text so titles and ids survive
exactly (emoji, any script, leading zeros, a title that is literally "NA").

Fully decoding a million images takes most of an hour, so each verdict (ok, or the failure
text) is remembered in a small per-dataset file outside the folder (`verify_cache_path`),
keyed by file name, size, mtime, ctime and inode: a later load stats every file and decodes only the
changed ones.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from thumbview.data.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from thumbview.data.table import (
    METADATA_NAMES,
    REASONS,
    REQUIRED_COLUMNS,
    DatasetError,
    LoadReport,
    Problems,
    SkippedRow,
    ThumbnailDataset,
    _assemble,
    _check_duplicates,
    _check_root,
    _file_problem,
    _fill_defaults,
    _find_metadata,
    _name_keys,
    _read_metadata,
    _require_columns,
    _Verdicts,
    _verify_setting,
    apply_verdicts,
    checked_views,
    decode_error,
    parse_count,
    verify_cache_path,
)
from thumbview.fileio import atomic_write
from thumbview.progress import SILENT, Progress

logger = logging.getLogger(__name__)

# The dataset's types and rules live in `thumbview.data.table`; callers import them from here.
__all__ = [
    "REASONS",
    "DatasetError",
    "LoadReport",
    "SkippedRow",
    "ThumbnailDataset",
    "load_dataset",
    "parse_count",
    "verify_cache_path",
    "write_metadata",
]


def load_dataset(
    root: str | Path,
    *,
    verify_images: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int = 4,
    progress: Progress = SILENT,
    verify_cache: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ThumbnailDataset:
    """Read and validate a dataset folder; bad rows are skipped and listed in `report`.

    With `verify_images` every image is fully decoded (threads, `workers`), so later stages
    never meet a corrupt file; without it only existence is checked, which is much faster.
    A folder without a metadata file but with `data/*.parquet` is read as Parquet shards
    (`thumbview.data.shards`), with the same checks and the same report.
    With `verify_cache` each verdict is remembered outside the folder (`verify_cache_path`)
    keyed by file name, size, mtime, ctime and inode, so a later load decodes only new or changed files.
    An image (file or shard cell) over `max_bytes` is an unreadable image, as one over `max_pixels`.
    """
    root = _check_root(root)
    from thumbview.data import shards  # pyarrow: imported only for a sharded folder

    if shards.is_sharded(root):
        return shards.load_shards(
            root,
            verify_images=verify_images,
            max_pixels=max_pixels,
            workers=workers,
            progress=progress,
            verify_cache=verify_cache,
            max_bytes=max_bytes,
        )
    meta_path = _find_metadata(root)
    raw, malformed = _read_metadata(meta_path)
    _require_columns(raw, meta_path.name)
    raw = _fill_defaults(raw)
    problems, views = _check_rows(root, raw, malformed)
    if verify_images:
        cache = verify_cache_path(root) if verify_cache else None
        limits = (max_pixels, max_bytes)
        _check_images(root, raw, problems, limits, workers, progress, cache)
    _check_duplicates(raw, problems)
    return _assemble(root, raw, problems, views)


def write_metadata(root: str | Path, table: pd.DataFrame) -> Path:
    """Write `table` as `root/metadata.csv` atomically: readers never see a half-written file.

    The temp file lives in the same folder so `os.replace` is a rename on one filesystem.
    UTF-8 CSV is what both `load_dataset` and `datasets.load_dataset("imagefolder")` read.
    """
    root = Path(root)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise DatasetError(f"cannot write metadata without column(s) {', '.join(missing)}")
    others = [n for n in METADATA_NAMES[1:] if (root / n).exists()]
    if others:
        raise DatasetError(f"{root} already has {', '.join(others)}; remove it first")
    root.mkdir(parents=True, exist_ok=True)
    writer = lambda tmp: table.to_csv(tmp, index=False, lineterminator="\n", encoding="utf-8")  # noqa: E731
    return atomic_write(root / METADATA_NAMES[0], writer)


# --- per-row checks: each fills problems[i] = (reason, detail) for rows still clean -------


def _check_rows(
    root: Path, df: pd.DataFrame, malformed: dict[int, tuple[str, str]]
) -> tuple[Problems, list[int]]:
    """Cheap checks (file name safety, existence, views); returns problems and parsed views."""
    problems: Problems = []
    views: list[int] = []
    folders: dict[str, bool] = {}  # folder -> resolves inside root; files share few folders
    for i, (name, raw_views) in enumerate(zip(df["file_name"], df["views"], strict=True)):
        problem, count = checked_views(
            malformed.get(i) or _file_problem(root, name, folders), raw_views
        )
        problems.append(problem)
        views.append(count)
    return problems, views


def _check_images(
    root: Path,
    df: pd.DataFrame,
    problems: Problems,
    limits: tuple[int, int],
    workers: int,
    progress: Progress,
    cache: Path | None,
) -> None:
    """Every still-clean row's image must decode within `limits` (max pixels, max bytes);
    record the ones that fail.

    Verdicts come from `cache` for files whose name and stat key are unchanged there;
    the rest are fully decoded in threads, and the cache is rewritten when anything changed.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    todo = [i for i, p in enumerate(problems) if p is None]
    column = df["file_name"].tolist()  # per-row .iat costs ~30 us each: minutes at 1M rows
    names = [column[i] for i in todo]

    def decode(misses: np.ndarray) -> list[str | None]:
        return _decode_all([root / names[j] for j in misses], limits, workers, progress)

    setting = _verify_setting(root, *limits)
    apply_verdicts(todo, _stamp(root, names), decode, problems, cache, setting)


def _decode_all(
    paths: list[Path], limits: tuple[int, int], workers: int, progress: Progress
) -> list[str | None]:
    """The decode error of each path (None when it decodes), in threads."""
    max_pixels, max_bytes = limits
    errors: list[str | None] = []
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        progress.task("checking images", len(paths)) as advance,
    ):
        for error in pool.map(lambda p: decode_error(p, max_pixels, max_bytes=max_bytes), paths):
            errors.append(error)
            advance(1)
    return errors


def _stamp(root: Path, names: Sequence[str]) -> _Verdicts:
    """Name hash, size, mtime, ctime and inode of each file (verdicts still unknown): the key."""
    stats = np.full((len(names), 4), -1, dtype=np.int64)  # (T, 4) size, mtime, ctime, inode
    base = str(root)
    for j, name in enumerate(names):
        try:
            st = os.stat(os.path.join(base, name))  # not Path: this runs once per image
        except (OSError, ValueError):
            continue  # vanished since the existence check: -1 never matches, so it is decoded
        stats[j] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino & (2**63 - 1))
    sizes, mtimes, ctimes, inodes = np.ascontiguousarray(stats.T)  # (T,) each
    return _Verdicts(_name_keys(names), sizes, mtimes, ctimes, inodes, [None] * len(names))
