"""Parquet shards in the Hugging Face `datasets` layout: a dataset too big for a folder of files.

A million thumbnails as a million files is slow to copy, list and verify; as a few hundred
Parquet files it is what `datasets.Dataset.to_parquet` / `push_to_hub` write, what
`datasets.load_dataset("parquet", data_dir=...)` and the Hub viewer read, and what Ray Data
reads in parallel. Layout::

    ROOT/data/train-00000-of-00100.parquet   # row groups of ROW_GROUP_ROWS rows
    column `image`: struct {bytes: binary, path: string}   path = the row's file_name
    the metadata columns (every column of metadata.csv but file_name), in their order

A column is int64 when every cell is a plain integer (views, usually), else text, so the
shards keep the metadata's exact text and `unpack` gives back the same metadata.csv. Each
file's schema metadata holds the `huggingface` features (so `image` shows as an Image) and
`thumbview` (format version, the original column order).

Reading is streaming: the metadata columns are read whole (small), image bytes one row group
at a time (verification, embedding), so memory never holds the images of the dataset. A
shard may come from anyone, so reading is bounded by the image byte cap (`read_cells`): a
cell over it is refused (the folder's rule for an image file), and a row group whose images
take more than `GROUP_CELLS` cells at the cap (in the file's footer, or once decoded: a
dictionary-encoded cell may repeat) is refused whole, never read into Python.
The checks and the skip report are the folder loader's (`thumbview.data.table`); a row
without image bytes refers to a file by name, so its name is checked as a folder's would be.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from thumbview.data import table as tbl
from thumbview.data.images import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    header_problem,
    over_byte_cap,
)
from thumbview.data.table import DatasetError, ThumbnailDataset
from thumbview.fileio import atomic_write
from thumbview.progress import SILENT, Progress
from thumbview.schema import parse_json

logger = logging.getLogger(__name__)

SHARD_DIR = "data"
SHARD_GLOB = "*.parquet"
ROW_GROUP_ROWS = 256  # ~5-10 MB of thumbnails: the unit read into memory at once
# A row group is read only when its images fit this many cells at the byte cap (256 MB by
# default): Parquet cannot read one cell of a group without its neighbours. `pack` cuts
# its groups under it, and `datasets` aims for row groups of at most 100 MB.
GROUP_CELLS = 8
FORMAT_VERSION = 1
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_BINARY = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view)
_PLAIN_INT = re.compile(r"0|[1-9][0-9]{0,17}")  # fits int64 and prints back identically


def shard_name(index: int, total: int) -> str:
    """`train-00003-of-00010.parquet`, the name `datasets` gives the shards of a split."""
    return f"train-{index:05d}-of-{total:05d}.parquet"


# `<split>-00003-of-00010.parquet`: the name says how many shards the split has.
_NUMBERED = re.compile(r"(.+)-(\d{5})-of-(\d{5})\.parquet")


def missing_shards(files: Sequence[Path]) -> list[str]:
    """Shards the others' names promise and that are not there, sorted: a `pack` that was
    killed after shard 1 of 3 (or a partial copy) would otherwise load as a dataset of the
    rows written so far. Files named otherwise promise nothing."""
    promised, present = set(), {p.name for p in files}
    for name in present:
        if match := _NUMBERED.fullmatch(name):
            split, total = match[1], int(match[3])
            promised.update(f"{split}-{i:05d}-of-{total:05d}.parquet" for i in range(total))
    return sorted(promised - present)


def shard_files(root: str | Path) -> list[Path]:
    """The Parquet shards of a sharded dataset, in row order (their names sort that way)."""
    return sorted((Path(root) / SHARD_DIR).glob(SHARD_GLOB))


def is_sharded(root: Path) -> bool:
    """A folder with `data/*.parquet` and no metadata file (which would make it an imagefolder)."""
    if any((root / name).exists() for name in tbl.METADATA_NAMES):
        return False
    return bool(shard_files(root))


# --- where each row's bytes are ----------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ShardIndex:
    """Row -> (shard file, row in that file) for the rows of a dataset; reads bytes on demand.

    Reads go one row group at a time and the last two row groups read are kept, so reading
    rows in order (embedding, verification) touches each row group once. `max_bytes` is the
    image byte cap every cell is read under (`read_cells`).
    """

    files: tuple[Path, ...]
    shard: np.ndarray  # (N,) int32 index into files
    row: np.ndarray  # (N,) int64 row within that file
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lock", threading.Lock())
        object.__setattr__(self, "_groups", {})  # (file, group) -> list[bytes | str | None]
        object.__setattr__(self, "_starts", {})  # file -> (G + 1,) first row of each group

    def subset(self, idx: np.ndarray) -> ShardIndex:
        return ShardIndex(self.files, self.shard[idx], self.row[idx], self.max_bytes)

    def cells(self, rows: Sequence[int]) -> list[bytes | str | None]:
        """The image cells of dataset rows `rows`, in order: bytes, None where the shard has
        none, or why a cell is not read (a str: over the byte cap, or its row group too big)."""
        out: list[bytes | str | None] = []
        with self._lock:
            for r in rows:
                f, i = int(self.shard[r]), int(self.row[r])
                starts = self._group_starts(f)
                g = int(np.searchsorted(starts, i, side="right")) - 1
                out.append(self._group(f, g)[i - starts[g]])
        return out

    def read(self, rows: Sequence[int]) -> list[bytes | None]:
        """Image bytes of dataset rows `rows`, in order; None where the shard has none or the
        cell is refused (`cells` says why)."""
        return [c if isinstance(c, bytes) else None for c in self.cells(rows)]

    def _group_starts(self, f: int) -> np.ndarray:
        if f not in self._starts:
            self._starts[f] = _group_starts(pq.ParquetFile(self.files[f]).metadata)
        return self._starts[f]

    def _group(self, f: int, g: int) -> list[bytes | str | None]:
        if (f, g) not in self._groups:
            if len(self._groups) >= 2:
                self._groups.pop(next(iter(self._groups)))
            self._groups[(f, g)] = read_cells(self.files[f], g, self.max_bytes)
        return self._groups[(f, g)]


def _group_starts(meta: pq.FileMetaData) -> np.ndarray:
    """(G + 1,) the first row of each row group, and the file's row count last."""
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _image_leaf(meta: pq.FileMetaData) -> int:
    return [meta.schema.column(i).path for i in range(meta.num_columns)].index("image.bytes")


def read_cells(path: Path, g: int, max_bytes: int = DEFAULT_MAX_BYTES) -> list[bytes | str | None]:
    """Row group `g`'s image cells: bytes, None where there are none, or why a cell is not
    read (a str). Memory stays bounded by the cap: a group whose image column the footer
    says is over `GROUP_CELLS` x `max_bytes` is not read; otherwise it is read with its
    dictionary kept (a repeated cell costs its bytes once), a group that would decode to
    more than that budget is refused, and a cell over the cap is never copied out of Arrow
    (its length comes from the offsets). Used by every reader of shard bytes."""
    meta = pq.ParquetFile(path).metadata
    n, budget = meta.row_group(g).num_rows, GROUP_CELLS * max_bytes
    chunk = meta.row_group(g).column(_image_leaf(meta))
    stored = max(chunk.total_compressed_size, chunk.total_uncompressed_size)
    if stored > budget:
        return [f"its row group stores {stored:,} bytes of images, {_over(budget)}"] * n
    pf = pq.ParquetFile(path, read_dictionary=["image.bytes"])
    image = pf.read_row_group(g, columns=["image.bytes"]).column("image")
    parts = [_chunk_cells(c, max_bytes) for c in image.chunks]
    decoded = sum(total for _, total in parts)
    if decoded > budget:
        return [f"its row group decodes to {decoded:,} bytes of images, {_over(budget)}"] * n
    return [cell for cells, _ in parts for cell in cells]


def _over(budget: int) -> str:
    return f"over the {budget:,} read at once ({GROUP_CELLS} x the image byte cap); not read"


def _chunk_cells(image: pa.StructArray, max_bytes: int) -> tuple[list[bytes | str | None], int]:
    """(cells, bytes the kept cells decode to) of one chunk of the `image` column."""
    data = image.field("bytes")
    dictionary = pa.types.is_dictionary(data.type)
    values = data.dictionary if dictionary else data
    lengths = pc.fill_null(pc.binary_length(values), 0).to_numpy(zero_copy_only=False)  # (V,)
    if dictionary:
        index = pc.fill_null(data.indices, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        lengths = lengths[index] if len(lengths) else np.zeros(len(data), np.int64)  # (n,)
    present = (image.is_valid().to_numpy(zero_copy_only=False)
               & data.is_valid().to_numpy(zero_copy_only=False))  # fmt: skip
    over = present & (lengths > max_bytes)  # (n,)
    keep = present & ~over
    if dictionary:  # convert each distinct kept value once; rows share it
        wanted = np.zeros(len(values), bool)
        wanted[index[keep]] = True
        table = pc.if_else(pa.array(wanted), values, pa.nulls(len(values), values.type)).to_pylist()
        cells: list = [table[j] if k else None for j, k in zip(index.tolist(), keep.tolist(), strict=True)]  # fmt: skip
    else:
        cells = pc.if_else(pa.array(keep), data, pa.nulls(len(data), data.type)).to_pylist()
    for i in np.flatnonzero(over).tolist():
        cells[i] = over_byte_cap(int(lengths[i]), max_bytes)
    return cells, int(lengths[keep].sum())


# --- loading -----------------------------------------------------------------------------


def load_shards(
    root: Path,
    *,
    verify_images: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int = 4,
    progress: Progress = SILENT,
    verify_cache: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ThumbnailDataset:
    """`load_dataset` for a sharded folder: the same checks, reasons and report."""
    files = shard_files(root)
    raw, index, has_bytes = _read_shard_metadata(files, max_bytes)
    tbl._require_columns(raw, f"{SHARD_DIR}/{files[0].name}")
    raw = tbl._fill_defaults(raw)
    problems, views = _check_rows(raw, has_bytes)
    if verify_images:
        cache = tbl.verify_cache_path(root) if verify_cache else None
        _check_images(root, index, problems, max_pixels, workers, progress, cache)
    tbl._check_duplicates(raw, problems)
    return tbl._assemble(root, raw, problems, views, index)


def _read_shard_metadata(
    files: list[Path], max_bytes: int
) -> tuple[pd.DataFrame, ShardIndex, np.ndarray]:
    """Every metadata column as text, `file_name` from `image.path`, and which rows have bytes."""
    if missing := missing_shards(files):
        raise DatasetError(
            f"{files[0].parent} lacks {len(missing)} shard(s) its files' names promise "
            f"({', '.join(missing[:3])}): a `pack` that did not finish or a partial copy; "
            "pack again into an empty OUT, or copy the rest"
        )
    frames, shard, row, present = [], [], [], []
    order: list[str] | None = None
    for f, path in enumerate(files):
        try:
            pf = pq.ParquetFile(path)
            _check_schema(pf.schema_arrow, path.name)
            others = [n for n in pf.schema_arrow.names if n != "image"]
            table = pf.read(columns=[*others, "image.path"])
            present.append(_has_bytes(pf, path, max_bytes))
        except (OSError, pa.ArrowException) as e:
            raise DatasetError(f"cannot read {SHARD_DIR}/{path.name}: {e}") from e
        frames.append(_text_frame(table, others))
        order = order or _column_order(pf.schema_arrow)
        shard.append(np.full(table.num_rows, f, dtype=np.int32))
        row.append(np.arange(table.num_rows, dtype=np.int64))
    columns = list(frames[0].columns)
    for path, frame in zip(files, frames, strict=True):
        if list(frame.columns) != columns:
            raise DatasetError(f"{SHARD_DIR}/{path.name} has other columns than {files[0].name}")
    raw = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if order and sorted(order) == sorted(raw.columns):
        raw = raw[order]
    index = ShardIndex(tuple(files), np.concatenate(shard), np.concatenate(row), max_bytes)
    return raw.reset_index(drop=True), index, np.concatenate(present)


def _check_schema(schema: pa.Schema, name: str) -> None:
    if "image" not in schema.names:
        raise DatasetError(f"{SHARD_DIR}/{name} has no 'image' column (Hugging Face layout)")
    kind = schema.field("image").type
    if not (
        pa.types.is_struct(kind)
        and {"bytes", "path"} <= {kind.field(i).name for i in range(kind.num_fields)}
    ):
        raise DatasetError(f"{SHARD_DIR}/{name}: 'image' must be a struct of bytes and path")
    cell = kind.field("bytes").type
    if not any(is_type(cell) for is_type in _BINARY):  # a text cell would be read as a path
        raise DatasetError(f"{SHARD_DIR}/{name}: 'image.bytes' must be binary, not {cell}")


def _text_frame(table: pa.Table, others: list[str]) -> pd.DataFrame:
    """Every cell as text ('' for null): the loader's rule for every metadata format."""
    data = {}
    paths = table.column("image").combine_chunks().field("path")
    if "file_name" not in others:
        data["file_name"] = _as_text(paths)
    for name in others:
        data[name] = _as_text(table.column(name))
    return pd.DataFrame(data, dtype=str)


def _as_text(column: pa.Array | pa.ChunkedArray) -> list[str]:
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        if pa.types.is_integer(column.type) or pa.types.is_boolean(column.type):
            column = column.cast(pa.string())
        else:  # floats, dates, nested: the same str() the other formats get
            return ["" if v is None else str(v) for v in column.to_pylist()]
    return ["" if v is None else v for v in column.to_pylist()]


def _column_order(schema: pa.Schema) -> list[str] | None:
    meta = (schema.metadata or {}).get(b"thumbview")
    try:  # depth-limited: 10^5 nested brackets here raised RecursionError (issue 30)
        return [str(c) for c in parse_json(meta)["columns"]] if meta else None
    except (ValueError, KeyError, TypeError):
        return None


def _has_bytes(pf: pq.ParquetFile, path: Path, max_bytes: int) -> np.ndarray:
    """(rows,) bool per row: image bytes present (a refused cell counts as present: reading
    it reports why). Row-group statistics say "no nulls" for almost every group, so cells
    are read only where some are missing, and then under the cap (`read_cells`)."""
    meta = pf.metadata
    leaf = _image_leaf(meta)
    parts = []
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(leaf).statistics
        if stats is not None and stats.has_null_count and stats.null_count == 0:
            parts.append(np.ones(meta.row_group(g).num_rows, dtype=bool))
            continue
        parts.append(np.array([c is not None for c in read_cells(path, g, max_bytes)], bool))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def _check_rows(df: pd.DataFrame, has_bytes: np.ndarray) -> tuple[tbl.Problems, list[int]]:
    """Missing bytes (reported like a folder's missing file) and views."""
    problems: tbl.Problems = []
    views: list[int] = []
    for name, raw_views, present in zip(df["file_name"], df["views"], has_bytes, strict=True):
        problem = None
        if not present:
            unsafe = tbl.lexically_unsafe(name)
            problem = (
                ("unsafe file_name", unsafe)
                if unsafe
                else ("missing image", f"no image bytes for {name!r}")
            )
        problem, count = tbl.checked_views(problem, raw_views)
        problems.append(problem)
        views.append(count)
    return problems, views


def _check_images(
    root: Path,
    index: ShardIndex,
    problems: tbl.Problems,
    max_pixels: int,
    workers: int,
    progress: Progress,
    cache: Path | None,
) -> None:
    """Decode every still-clean row's bytes (streamed by row group), with the folder's cache.

    A verdict is keyed by shard file name and row, and by the shard file's size, mtime,
    ctime and inode: a rewritten shard is verified again, an untouched one never.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    todo = [i for i, p in enumerate(problems) if p is None]
    rows = np.asarray(todo, dtype=np.int64)
    names = [
        f"{index.files[s].name}#{r}"
        for s, r in zip(index.shard[rows].tolist(), index.row[rows].tolist(), strict=True)
    ]
    stats = np.array([_stat(p) for p in index.files], dtype=np.int64).reshape(-1, 4)  # (F, 4)
    per_row = stats[index.shard[rows]] if len(rows) else np.zeros((0, 4), np.int64)  # (T, 4)
    current = tbl._Verdicts(
        tbl._name_keys(names), *np.ascontiguousarray(per_row.T), [None] * len(todo)
    )

    def decode(misses: np.ndarray) -> list[str | None]:
        return _decode_rows(index, rows[misses].tolist(), max_pixels, workers, progress)

    setting = {**tbl._verify_setting(root, max_pixels, index.max_bytes), "layout": "parquet"}
    tbl.apply_verdicts(todo, current, decode, problems, cache, setting)


def _stat(path: Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino & (2**63 - 1)


def _decode_rows(
    index: ShardIndex, rows: list[int], max_pixels: int, workers: int, progress: Progress
) -> list[str | None]:
    """The decode error of each row's bytes (None when fine), row group by row group."""
    errors: list[str | None] = []
    limits = (max_pixels, index.max_bytes)
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        progress.task("checking images", len(rows)) as advance,
    ):
        for start in range(0, len(rows), ROW_GROUP_ROWS):
            chunk = rows[start : start + ROW_GROUP_ROWS]
            cells = index.cells(chunk)
            names = [f"{index.files[index.shard[r]].name} row {index.row[r]}" for r in chunk]
            errors += pool.map(_cell_error, cells, names, [limits] * len(chunk))
            advance(len(chunk))
    return errors


def _cell_error(cell: bytes | str | None, name: str, limits: tuple[int, int]) -> str | None:
    """A cell's verdict: why it was not read, or its decode error (None when it decodes)."""
    if isinstance(cell, str):
        return f"{name}: {cell}"
    return tbl.decode_error(cell or b"", limits[0], name, limits[1])


# --- pack: folder -> shards --------------------------------------------------------------


@dataclass(frozen=True)
class PackResult:
    """What `pack` wrote: rows (all of them, skipped ones too), rows with image bytes, files."""

    n_rows: int
    n_images: int
    files: tuple[Path, ...]


def pack(
    data: str | Path, out: str | Path, *, shard_size: int = 10_000, progress: Progress = SILENT
) -> PackResult:
    """Convert a dataset folder to Parquet shards under `out/data/`, losslessly.

    Every metadata row is written, the ones the loader skips included (with their image
    bytes when the file exists, else none), so loading the shards gives the same rows and
    the same skip report, and `unpack` gives back the same folder. Images are read one row
    group at a time; each shard is written to a temp file and renamed, so a crash never
    leaves half a shard under its final name.
    """
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    root = tbl._check_root(data)
    meta_path = tbl._find_metadata(root)
    raw, malformed = tbl._read_metadata(meta_path)
    _check_packable(raw, malformed, meta_path.name)
    target = Path(out) / SHARD_DIR
    if shard_files(Path(out)):
        raise DatasetError(f"{target} already holds shards; choose an empty OUT")
    schema = _schema(raw)
    total = max(1, math.ceil(len(raw) / shard_size))
    files, n_images = [], 0
    with progress.task("packing", len(raw)) as advance:
        for s in range(total):
            part = raw.iloc[s * shard_size : (s + 1) * shard_size]
            path = target / shard_name(s, total)
            counted = _write_shard(path, root, part, schema, advance)
            files.append(path)
            n_images += counted
    logger.info("packed %d rows (%d images) into %d shards", len(raw), n_images, total)
    return PackResult(len(raw), n_images, tuple(files))


def _check_packable(raw: pd.DataFrame, malformed: dict, name: str) -> None:
    tbl._require_columns(raw, name)
    if malformed:
        lines = ", ".join(d for _, d in list(malformed.values())[:3])
        raise DatasetError(
            f"{name} has {len(malformed)} malformed row(s) ({lines}); fix them first"
        )
    if "image" in raw.columns:
        raise DatasetError(f"{name} has a column named 'image', which shards use for the images")


def _schema(raw: pd.DataFrame) -> pa.Schema:
    """image first, then each metadata column as int64 when all its cells are plain integers."""
    fields, features = [pa.field("image", IMAGE_TYPE)], {"image": {"_type": "Image"}}
    for column in raw.columns:
        if column == "file_name":
            continue
        cells = raw[column]
        is_int = len(cells) > 0 and all(_PLAIN_INT.fullmatch(c) for c in cells)
        kind, dtype = (pa.int64(), "int64") if is_int else (pa.string(), "string")
        fields.append(pa.field(column, kind))
        features[column] = {"dtype": dtype, "_type": "Value"}
    metadata = {
        "huggingface": json.dumps({"info": {"features": features}}),
        "thumbview": json.dumps({"format": FORMAT_VERSION, "columns": list(raw.columns)}),
    }
    return pa.schema(fields, metadata=metadata)


def _write_shard(path: Path, root: Path, part: pd.DataFrame, schema: pa.Schema, advance) -> int:
    n_images = 0

    def write(tmp: Path) -> None:
        nonlocal n_images
        with pq.ParquetWriter(tmp, schema) as writer:
            for rows, blobs in _row_groups(root, part):
                n_images += sum(b is not None for b in blobs)
                names = rows["file_name"].tolist()
                arrays = [
                    pa.array(
                        [{"bytes": b, "path": n} for b, n in zip(blobs, names, strict=True)],
                        IMAGE_TYPE,
                    )
                ]
                for field in list(schema)[1:]:
                    cells = rows[field.name].tolist()
                    arrays.append(
                        pa.array(
                            [int(c) for c in cells] if pa.types.is_int64(field.type) else cells,
                            field.type,
                        )
                    )
                writer.write_table(
                    pa.Table.from_arrays(arrays, schema=schema), row_group_size=len(rows)
                )
                advance(len(rows))
            if len(part) == 0:
                writer.write_table(schema.empty_table())

    atomic_write(path, write)
    return n_images


def _row_groups(root: Path, part: pd.DataFrame) -> Iterator[tuple[pd.DataFrame, list]]:
    """(rows, image bytes) of each row group to write: ROW_GROUP_ROWS rows, or fewer when
    their images would pass the budget a reader takes at once (`read_cells`), so every
    group `pack` writes can be read back; an image larger than that stands alone."""
    folders: dict[str, bool] = {}
    budget = GROUP_CELLS * DEFAULT_MAX_BYTES
    start, size, blobs = 0, 0, []
    for i, name in enumerate(part["file_name"].tolist()):
        blob = _read_if_usable(root, name, folders)
        length = len(blob) if blob is not None else 0
        if blobs and (len(blobs) == ROW_GROUP_ROWS or size + length > budget):
            yield part.iloc[start:i], blobs
            start, size, blobs = i, 0, []
        blobs.append(blob)
        size += length
    if blobs:
        yield part.iloc[start:], blobs


def _read_if_usable(root: Path, name: str, folders: dict[str, bool]) -> bytes | None:
    """The file's bytes when the loader would open it (a safe name, an existing file)."""
    if tbl._file_problem(root, name, folders) is not None:
        return None
    try:
        return (root / name).read_bytes()
    except OSError:
        return None


# --- unpack: shards -> folder ------------------------------------------------------------


@dataclass(frozen=True)
class UnpackResult:
    """What `unpack` wrote. `n_unwritable`: rows with bytes but a name that would land
    outside OUT (foreign shards only); `n_refused`: rows whose cell is over the image byte
    cap (or in a row group too large to read). Their rows are kept, their images not written.
    `n_unreadable`: cells written as they are whose header is not a usable image."""

    n_rows: int
    n_images: int
    n_unwritable: int
    metadata: Path
    n_refused: int = 0
    n_unreadable: int = 0  # written, but their header is no usable image (`info` skips them)


def unpack(
    shards: str | Path,
    out: str | Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: Progress = SILENT,
) -> UnpackResult:
    """Write a sharded dataset back as an imagefolder: images at their `file_name`, and
    `metadata.csv` with every row, in the original column order and text.

    Cells are written as they are, except those the byte cap refuses, each logged with why.
    A cell whose header is not a usable image is written too (so pack -> unpack stays
    lossless), logged and counted in `n_unreadable`; loading the folder skips and reports it,
    as loading the shards did."""
    src = tbl._check_root(shards)
    files = shard_files(src)
    if not files:
        raise DatasetError(f"no Parquet shards in {src / SHARD_DIR}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if any((out / n).exists() for n in tbl.METADATA_NAMES):
        raise DatasetError(f"{out} already has a metadata file; choose an empty OUT")
    raw, index, _ = _read_shard_metadata(files, max_bytes)
    with progress.task("unpacking", len(raw)) as advance:
        counts = _write_images(out.resolve(), raw["file_name"].tolist(), index, advance)
    meta = atomic_write(out / "metadata.csv", lambda tmp: _write_csv(tmp, raw))
    return UnpackResult(
        len(raw), counts["written"], counts["unwritable"], meta, counts["refused"],
        counts["unreadable"],
    )  # fmt: skip


def _write_images(out: Path, names: list[str], index: ShardIndex, advance) -> Counter[str]:
    """Each row's cell at its name under `out`, row group by row group: how many were
    written, unwritable (a name leaving `out`) and refused (the byte cap)."""
    counts: Counter[str] = Counter()
    folders: dict[str, bool] = {}
    for start in range(0, len(names), ROW_GROUP_ROWS):
        cells = index.cells(range(start, min(len(names), start + ROW_GROUP_ROWS)))
        for row, (name, cell) in enumerate(zip(names[start:], cells, strict=False), start):
            if isinstance(cell, str):
                logger.warning("not writing the image of row %d (%r): %s", row, name, cell)
                counts["refused"] += 1
            elif cell is not None:
                counts["written" if _place(out, name, cell, folders) else "unwritable"] += 1
                if problem := header_problem(cell):  # written as it is: pack -> unpack is lossless
                    logger.warning("row %d (%r) is not a usable image: %s", row, name, problem)
                    counts["unreadable"] += 1
        advance(len(cells))
    return counts


def _place(out: Path, name: str, blob: bytes, folders: dict[str, bool]) -> bool:
    """Write `blob` at out/name unless the name would leave `out`; an existing identical
    file (two rows, one image) is fine, a different one is an error (data would be lost)."""
    if not name.strip() or tbl._unsafe_detail(out, name, folders):
        logger.warning("not writing an image for file_name %r: outside the folder", name)
        return False
    path = out / name
    if path.exists():
        if path.is_file() and path.read_bytes() == blob:
            return True
        raise DatasetError(f"two rows name {name!r} with different images")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return True


def _write_csv(tmp: Path, raw: pd.DataFrame) -> None:
    with tmp.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(raw.columns)
        writer.writerows(raw.itertuples(index=False, name=None))
