"""Load a thumbnail dataset folder (Hugging Face imagefolder layout) into a validated table.

A dataset is a folder with images anywhere below it and one metadata file
(`metadata.csv`, `metadata.jsonl` or `metadata.parquet`) whose rows name an image by
`file_name` (relative to the folder) and give its `views`. Real folders are messy:
scraped rows point at missing or broken images, view counts arrive as "1,234" or "",
ids repeat. Those rows are skipped and *reported*; only a folder that is unusable as
a whole raises `DatasetError`. Every cell is read as text so titles and ids survive
exactly (emoji, any script, leading zeros, a title that is literally "NA").
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pandas as pd

from thumbview.data.images import DEFAULT_MAX_PIXELS, load_image
from thumbview.fileio import atomic_write
from thumbview.progress import progress_bar

logger = logging.getLogger(__name__)

METADATA_NAMES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")
REQUIRED_COLUMNS = ("file_name", "views")
COUNT_COLUMNS = ("subscribers", "likes", "comments")
REASONS = (
    "unsafe file_name",
    "missing image",
    "unreadable image",
    "invalid views",
    "duplicate video_id",
)
_THOUSANDS = re.compile(r"\d{1,3}(,\d{3})+(\.\d*)?")
_MAX_COUNT = float(2**63 - 1)

# Per metadata row: None while the row is usable, else (reason, detail).
Problems = list[tuple[str, str] | None]


class DatasetError(ValueError):
    """The dataset as a whole is unusable; the message names the cause."""


@dataclass(frozen=True)
class SkippedRow:
    """One metadata row left out. `row` is its 0-based position among the file's data rows."""

    row: int
    file_name: str
    reason: str
    detail: str


@dataclass(frozen=True)
class LoadReport:
    """What happened to every metadata row, so a user can fix their folder instead of guessing."""

    n_rows: int
    n_kept: int
    skipped: tuple[SkippedRow, ...]

    def counts(self) -> dict[str, int]:
        """Reason -> number of rows skipped for it (only reasons that occurred)."""
        return dict(Counter(s.reason for s in self.skipped))

    def summary(self) -> str:
        """One human line, e.g. '4926 rows, 4920 kept, 6 skipped (missing image: 4, ...)'."""
        line = f"{self.n_rows} rows, {self.n_kept} kept, {len(self.skipped)} skipped"
        if not self.skipped:
            return line
        detail = ", ".join(f"{reason}: {n}" for reason, n in self.counts().items())
        return f"{line} ({detail})"


@dataclass(frozen=True, eq=False)
class ThumbnailDataset:
    """The kept rows of a dataset folder. `table` has a RangeIndex; rows align with every array."""

    root: Path
    table: pd.DataFrame
    report: LoadReport

    def __len__(self) -> int:
        return len(self.table)

    @cached_property
    def paths(self) -> list[Path]:
        return [self.root / name for name in self.table["file_name"]]

    @cached_property
    def views(self) -> np.ndarray:
        return self.table["views"].to_numpy(dtype=np.float64)  # (N,)

    @cached_property
    def titles(self) -> list[str]:
        return [str(t) for t in self.table["title"]]

    @cached_property
    def keys(self) -> list[str]:
        return [str(k) for k in self.table["video_id"]]

    @cached_property
    def channels(self) -> np.ndarray | None:
        """channel_id per row (object array), the grouping for channel-aware splits and targets."""
        if "channel_id" not in self.table.columns:
            return None
        return self.table["channel_id"].to_numpy(dtype=object)  # (N,)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ThumbnailDataset:
        """Rows `indices` (positions or a boolean mask) as a new dataset; the load report is kept."""
        table = self.table.iloc[np.asarray(indices)].reset_index(drop=True)
        return ThumbnailDataset(self.root, table, self.report)


def load_dataset(
    root: str | Path,
    *,
    verify_images: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int = 4,
    progress: bool = False,
) -> ThumbnailDataset:
    """Read and validate a dataset folder; bad rows are skipped and listed in `report`.

    With `verify_images` every image is fully decoded (threads, `workers`), so later stages
    never meet a corrupt file; without it only existence is checked, which is much faster.
    """
    root = _check_root(root)
    meta_path = _find_metadata(root)
    raw = _read_metadata(meta_path)
    _require_columns(raw, meta_path.name)
    raw = _fill_defaults(raw)
    problems, views = _check_rows(root, raw)
    if verify_images:
        _check_images(root, raw, problems, max_pixels, workers, progress)
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


def parse_count(text: str) -> int:
    """A non-negative whole count from text ('1234', '1234.0', ' 1,234 '); ValueError otherwise."""
    s = text.strip()
    if not s:
        raise ValueError("empty")
    if "," in s:
        if not _THOUSANDS.fullmatch(s):
            raise ValueError(f"{text!r} is not a number")
        s = s.replace(",", "")
    try:
        value = float(s)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0 or value > _MAX_COUNT:
        raise ValueError(f"{text!r} is not a finite non-negative count")
    if not value.is_integer():
        raise ValueError(f"{text!r} is not a whole number")
    return int(value)


# --- folder and metadata file -------------------------------------------------------------


def _check_root(root: str | Path) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset folder not found: {path}")
    if not path.is_dir():
        raise DatasetError(f"dataset path is not a folder: {path}")
    return path.resolve()


def _find_metadata(root: Path) -> Path:
    found = [root / n for n in METADATA_NAMES if (root / n).is_file()]
    if not found:
        raise DatasetError(
            f"no metadata file in {root}: expected one of {', '.join(METADATA_NAMES)} "
            "(Hugging Face imagefolder layout)"
        )
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise DatasetError(f"{root} has several metadata files ({names}); keep exactly one")
    return found[0]


def _read_metadata(path: Path) -> pd.DataFrame:
    """Every column as text ('' for missing), whatever the file format."""
    try:
        if path.suffix == ".csv":
            # index_col=False: a row with extra trailing fields must not shift file_name into
            # the index; the extras are dropped (pandas warns).
            df = pd.read_csv(
                path, dtype=str, keep_default_na=False, encoding="utf-8-sig", index_col=False
            )
        elif path.suffix == ".jsonl":
            df = _as_text(_read_jsonl(path))
        else:
            df = _as_text(pd.read_parquet(path))
    except DatasetError:
        raise
    except (ValueError, OSError) as e:  # parser, encoding, JSON and Arrow errors
        raise DatasetError(f"cannot read {path.name}: {e}") from e
    df.columns = [str(c).strip() for c in df.columns]
    return df.fillna("").reset_index(drop=True)


def _read_jsonl(path: Path) -> pd.DataFrame:
    records = []
    with path.open(encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path.name} line {lineno} is not valid JSON ({e.msg})") from e
            if not isinstance(record, dict):
                raise DatasetError(f"{path.name} line {lineno} is not a JSON object")
            records.append(record)
    return pd.DataFrame.from_records(records)


def _as_text(df: pd.DataFrame) -> pd.DataFrame:
    def text(v: object) -> str:
        return "" if pd.api.types.is_scalar(v) and pd.isna(v) else str(v)

    return pd.DataFrame({c: [text(v) for v in df[c]] for c in df.columns}, dtype=str)


def _require_columns(df: pd.DataFrame, name: str) -> None:
    for column in REQUIRED_COLUMNS:
        if column not in df.columns:
            found = ", ".join(map(str, df.columns)) or "(none)"
            raise DatasetError(f"{name} has no '{column}' column; columns found: {found}")


def _fill_defaults(df: pd.DataFrame) -> pd.DataFrame:
    """title '' when absent; video_id = the file's stem when the column or the cell is empty."""
    df = df.copy()
    if "title" not in df.columns:
        df["title"] = ""
    stems = [PurePosixPath(n.replace("\\", "/")).stem for n in df["file_name"]]
    if "video_id" not in df.columns:
        df["video_id"] = stems
    else:
        df["video_id"] = [v if v.strip() else s for v, s in zip(df["video_id"], stems, strict=True)]
    return df


# --- per-row checks: each fills problems[i] = (reason, detail) for rows still clean -------


def _check_rows(root: Path, df: pd.DataFrame) -> tuple[Problems, list[int]]:
    """Cheap checks (file name safety, existence, views); returns problems and parsed views."""
    problems: Problems = []
    views: list[int] = []
    for name, raw_views in zip(df["file_name"], df["views"], strict=True):
        problem = _file_problem(root, name)
        count = 0
        if problem is None:
            try:
                count = parse_count(raw_views)
            except ValueError as e:
                problem = ("invalid views", str(e))
        problems.append(problem)
        views.append(count)
    return problems, views


def _file_problem(root: Path, name: str) -> tuple[str, str] | None:
    unsafe = _unsafe_detail(root, name)
    if unsafe:
        return ("unsafe file_name", unsafe)
    if not name.strip():
        return ("missing image", "empty file_name")
    if not (root / name).is_file():
        return ("missing image", f"no file at {name}")
    return None


def _unsafe_detail(root: Path, name: str) -> str | None:
    """Why `name` could read outside `root` (a security check), or None when it is safe."""
    if "\x00" in name:
        return "contains a NUL byte"
    win = PureWindowsPath(name)
    if PurePosixPath(name).is_absolute() or win.drive or win.root:
        return "absolute path"
    depth = 0
    for part in win.parts:  # splits on both / and \
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            return "'..' leaves the dataset folder"
    try:
        inside = (root / name).resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # symlink loop
        return "cannot be resolved (symlink loop?)"
    if not inside:
        return "resolves (through a symlink) outside the dataset folder"
    return None


def _check_images(
    root: Path, df: pd.DataFrame, problems: Problems, max_pixels: int, workers: int, progress: bool
) -> None:
    """Fully decode every still-clean row's image in threads; record the ones that fail."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    todo = [i for i, p in enumerate(problems) if p is None]
    paths = [root / df["file_name"].iat[i] for i in todo]
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        progress_bar(len(paths), "Checking images", progress) as advance,
    ):
        for i, error in zip(
            todo, pool.map(lambda p: _decode_error(p, max_pixels), paths), strict=True
        ):
            if error is not None:
                problems[i] = ("unreadable image", error)
            advance(1)


def _decode_error(path: Path, max_pixels: int) -> str | None:
    try:
        load_image(path, max_pixels=max_pixels)
    except Exception as e:  # noqa: BLE001 - a hostile file must become a report line, never a crash
        return str(e) or type(e).__name__
    return None


def _check_duplicates(df: pd.DataFrame, problems: Problems) -> None:
    """Keep the first usable row of each video_id; later ones are skipped."""
    first: dict[str, int] = {}
    for i, key in enumerate(df["video_id"]):
        if problems[i] is not None:
            continue
        if key in first:
            problems[i] = ("duplicate video_id", f"{key!r} already in row {first[key]}")
        else:
            first[key] = i


# --- result -------------------------------------------------------------------------------


def _assemble(
    root: Path, df: pd.DataFrame, problems: Problems, views: list[int]
) -> ThumbnailDataset:
    keep = np.array([p is None for p in problems], dtype=bool)  # (N,)
    table = df.loc[keep].reset_index(drop=True)
    table["views"] = np.asarray(views, dtype=np.int64)[keep]
    for column in COUNT_COLUMNS:
        if column in table.columns:
            table[column] = _parse_optional(table[column])
    skipped = tuple(
        SkippedRow(i, df["file_name"].iat[i], p[0], p[1]) for i, p in enumerate(problems) if p
    )
    for s in skipped:
        logger.debug("skipped row %d (%s): %s: %s", s.row, s.file_name, s.reason, s.detail)
    report = LoadReport(n_rows=len(df), n_kept=len(table), skipped=skipped)
    logger.info("%s: %s", root, report.summary())
    return ThumbnailDataset(root, table, report)


def _parse_optional(column: pd.Series) -> pd.Series:
    """Counts such as likes: unparseable or hidden values become <NA>, the row is kept."""

    def parse(text: str) -> int | None:
        try:
            return parse_count(text)
        except ValueError:
            return None

    return pd.Series([parse(t) for t in column], dtype="Int64", index=column.index)
