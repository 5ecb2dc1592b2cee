"""The dataset table and the rules every row must pass, for image folders and Parquet shards.

A dataset is rows that name an image by `file_name` and give its `views`. Whether the images
are files in a folder (`thumbview.data.dataset`) or bytes in Parquet shards
(`thumbview.data.shards`), a row is kept or skipped by the same rules, defined once here:
safe file names, plain view counts, decodable images (with the verification verdict cache),
unique video ids; and both build the same `ThumbnailDataset` with the same `LoadReport`.
Both loaders import this module; it imports neither, so the two can never pull on each other.
"""

from __future__ import annotations

import csv
import dataclasses
import decimal
import hashlib
import io
import json
import logging
import os
import re
import stat
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Protocol

import numpy as np
import pandas as pd
import PIL
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from thumbview.data.images import DEFAULT_MAX_BYTES, load_image
from thumbview.fileio import atomic_write, dataset_cache_name, user_cache_root
from thumbview.schema import NOT_REGULAR, JsonDepthError, parse_json

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
    "malformed row",
)
# A count is plain ASCII: digits (optionally grouped "1,234"), an optional ".0" and exponent.
# Python's own int()/float() also take "1_000" and any script's digits ("٣٤"): a metadata cell
# is not source code, and a scraper that wrote those produced something unexpected, so no.
_COUNT = re.compile(r"[+-]?([0-9]+|[0-9]{1,3}(,[0-9]{3})+)(\.[0-9]*)?([eE][+-]?[0-9]+)?", re.ASCII)
# Above any real YouTube count (the most-viewed video has ~1.6e10 views), far below int64's
# 9.2e18, so sums, int64 columns and float64 logs of counts stay exact.
MAX_COUNT = 10**12
_ASCII_SPACE = " \t\r\n\f\v"
# Fields a metadata row (or header) may have: pandas makes a column per field of the widest
# row, so a row of 10^5 trailing commas would cost GBs; wider rows are malformed.
MAX_FIELDS = 1024
_VERIFY_FORMAT = 2  # bump when the verification cache layout or the meaning of a verdict changes

# Per metadata row: None while the row is usable, else (reason, detail).
Problems = list[tuple[str, str] | None]


class ImageStore(Protocol):
    """Where a row's image bytes live when they are not files (`thumbview.data.shards.ShardIndex`)."""

    def read(self, rows) -> list[bytes | None]: ...

    def subset(self, indices) -> ImageStore: ...


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
    """The kept rows of a dataset. `table` has a RangeIndex; rows align with every array.

    `shards` is None for a folder of image files; for Parquet shards (`thumbview.data.shards`)
    it says where each row's image bytes are, and `paths` are then names, not files: read
    images through `image_source` / `image_bytes`, which work for both.
    """

    root: Path
    table: pd.DataFrame
    report: LoadReport
    shards: ImageStore | None = None

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

    def image_source(self, i: int) -> Path | bytes:
        """What `load_image` takes for row `i`: the image file, or its bytes from a shard."""
        if self.shards is None:
            return self.paths[i]
        return self.shards.read([i])[0] or b""

    def image_bytes(self, rows: Sequence[int]) -> list[bytes]:
        """The raw bytes of each row's image (what content digests hash), read in order."""
        if self.shards is None:
            return [self.paths[r].read_bytes() for r in rows]
        return [b or b"" for b in self.shards.read(rows)]

    def subset(self, indices: Sequence[int] | np.ndarray) -> ThumbnailDataset:
        """Rows `indices` (positions or a boolean mask) as a new dataset; the load report is kept."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        table = self.table.iloc[idx].reset_index(drop=True)
        shards = None if self.shards is None else self.shards.subset(idx)
        return ThumbnailDataset(self.root, table, self.report, shards)


def verify_cache_path(root: str | Path) -> Path:
    """Where `load_dataset` remembers image verdicts for `root`: never inside the dataset.

    `<cache root>/verified/<folder>-<hash>.safetensors`, the cache root being
    `$THUMBVIEW_CACHE_DIR` when set (as for features), else `user_cache_root()`.
    """
    base = Path(env) if (env := os.environ.get("THUMBVIEW_CACHE_DIR")) else user_cache_root()
    return base / "verified" / f"{dataset_cache_name(root)}.safetensors"


def parse_count(text: str | int | float) -> int:
    """A non-negative whole count ('1234', '1234.0', ' 1,234 ', '1e3', 1234); ValueError otherwise.

    The one rule for a count, wherever it comes from: metadata cells (text), Parquet cells,
    and what collect's sources send (the Data API's decimal strings, yt-dlp's ints), so a
    count collect stores is one the loader keeps. Exact decimal arithmetic, never float:
    '9223372036854775807' must not round to 2**63 and overflow int64 later. Counts above
    `MAX_COUNT` are refused like any other invalid value. Only ASCII spaces are trimmed
    (`str.strip` would also take U+00A0 and U+3000).
    """
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ValueError(f"{text!r} is not a count")
    if isinstance(text, int):
        if 0 <= text <= MAX_COUNT:
            return text
        raise ValueError(f"{_shown(text)} is not a count between 0 and {MAX_COUNT:.0e}")
    s = text.strip(_ASCII_SPACE) if isinstance(text, str) else repr(text)
    if s.isascii() and s.isdigit() and len(s) <= 13:  # the common case, 5x faster
        if int(s) <= MAX_COUNT:
            return int(s)
    if not s:
        raise ValueError("empty")
    if not _COUNT.fullmatch(s):
        raise ValueError(f"{_shown(text)} is not a number (plain ASCII digits expected)")
    with decimal.localcontext() as ctx:
        ctx.traps[decimal.Overflow] = ctx.traps[decimal.InvalidOperation] = False
        value = decimal.Decimal(s.replace(",", ""))
        if value < 0 or value > MAX_COUNT:
            raise ValueError(f"{_shown(text)} is not a count between 0 and {MAX_COUNT:.0e}")
        if value != value.to_integral_value():
            raise ValueError(f"{_shown(text)} is not a whole number")
    return int(value)


def _shown(value: object) -> str:
    """A bad count as a report shows it: its repr, cut short (a hostile one has any length)."""
    if isinstance(value, int) and value.bit_length() > 128:  # repr of a huge int may refuse
        return f"an integer of more than {(value.bit_length() - 1) * 30103 // 100000} digits"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:30]}... ({len(text)} characters)"


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


def _read_metadata(path: Path) -> tuple[pd.DataFrame, dict[int, tuple[str, str]]]:
    """Every column as text ('' for missing), whatever the file format, and the rows that are
    malformed (row -> (reason, detail)): those stay in the table so row numbers keep their
    meaning, and are reported instead of rejecting the whole file."""
    malformed: dict[int, tuple[str, str]] = {}
    try:
        if path.suffix == ".csv":
            df, malformed = _read_csv(path)
        elif path.suffix == ".jsonl":
            df, malformed = _read_jsonl(path)
            df = _as_text(df)
        else:
            df = _as_text(pd.read_parquet(path))
    except DatasetError:
        raise
    except (ValueError, OSError, csv.Error) as e:  # parser, encoding, JSON and Arrow errors
        raise DatasetError(f"cannot read {path.name}: {e}") from e
    df.columns = [str(c).strip() for c in df.columns]
    return df.fillna("").reset_index(drop=True), malformed


def _read_csv(path: Path) -> tuple[pd.DataFrame, dict[int, tuple[str, str]]]:
    """pandas' C parser for a clean file (fast); the row-by-row reader when it is not.

    Wide rows never reach pandas: it makes a column per field of its widest row (one row of
    10^5 trailing commas cost `info` 3.2 GB; 10^6 aborted with bad_alloc). A streaming
    pre-pass bounds every row's width (`_widest_row`); only a file whose rows are no wider
    than its header goes to pandas, and then reading just the header's columns (`usecols`).
    """
    width = _header_width(path)
    if width is not None and _widest_row(path) > width:  # extra fields: the careful reader
        return _read_csv_rows(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)  # extra fields: be careful
        try:
            # index_col=False: a row with extra fields must not shift file_name into the index.
            df = pd.read_csv(
                path,
                dtype=str,
                keep_default_na=False,
                encoding="utf-8-sig",
                index_col=False,
                usecols=None if width is None else range(width),
            )
            return df, {}
        except (ValueError, pd.errors.ParserWarning):  # parser, encoding, usecols
            pass
    return _read_csv_rows(path)


def _header_width(path: Path) -> int | None:
    """Fields in the header (None for an empty file: pandas says so); a header wider than
    MAX_FIELDS is refused, since every row would be read that wide."""
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        header = next((r for r in csv.reader(f) if r), None)
    if header is not None and len(header) > MAX_FIELDS:
        raise DatasetError(
            f"cannot read {path.name}: its header has {len(header):,} fields (at most {MAX_FIELDS})"
        )
    return None if header is None else len(header)


def _widest_row(path: Path) -> int:
    """An upper bound on the fields of the widest data row, without parsing (one pass of C
    `count`s, file read in lines): commas + 1 per line, lines joined while a quote is open
    (an odd number of `"` so far). A quoted comma only raises it. A stray quote inside an
    unquoted field can make it miss a multi-line row's extra field; pandas then drops that
    field unreported, but still reads only the header's columns, so memory stays bounded."""
    widest = commas = quotes = 0
    with path.open("rb") as f:
        next(f, None)  # the header (a quoted newline in it only makes the bound larger)
        for line in f:
            commas += line.count(b",")
            quotes += line.count(b'"')
            if quotes % 2 == 0:  # the row ends here
                widest, commas, quotes = max(widest, commas + 1), 0, 0
    return max(widest, commas + 1 if commas else 0)


def _read_csv_rows(path: Path) -> tuple[pd.DataFrame, dict[int, tuple[str, str]]]:
    """Row by row: a row with a byte that is not UTF-8, with more (non-empty) fields than
    the header, or with more than MAX_FIELDS fields, is kept as a placeholder and marked
    malformed; every other row reads as usual.

    Empty trailing fields ("a.jpg,5,") are harmless and tolerated: some writers add them.
    """
    text = path.read_bytes().decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header = next(reader, None)
    if header is None:
        raise DatasetError(f"cannot read {path.name}: the file is empty")
    if _has_bad_byte(header):
        raise DatasetError(f"cannot read {path.name}: the header is not valid UTF-8")
    rows, malformed = [], {}
    for i, fields in enumerate(r for r in reader if r):  # pandas skips blank lines too
        problem = _csv_row_problem(fields, len(header), reader.line_num)
        if problem:
            malformed[i] = ("malformed row", problem)
            fields = [_printable(f) for f in fields[: len(header)]]
        rows.append((fields + [""] * len(header))[: len(header)])
    return pd.DataFrame(rows, columns=header, dtype=str), malformed


def _csv_row_problem(fields: list[str], width: int, line: int) -> str | None:
    if len(fields) > MAX_FIELDS:
        return f"line {line} has {len(fields):,} fields (at most {MAX_FIELDS})"
    if _has_bad_byte(fields):
        return f"line {line} has a byte that is not UTF-8"
    if any(f for f in fields[width:]):
        return f"line {line} has {len(fields)} fields, the header {width}"
    return None


def _has_bad_byte(fields: list[str]) -> bool:
    return any(any("\udc80" <= c <= "\udcff" for c in f) for f in fields)


def _printable(text: str) -> str:
    """Undecodable bytes as U+FFFD, so a report line can show the row."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _read_jsonl(path: Path) -> tuple[pd.DataFrame, dict[int, tuple[str, str]]]:
    """One JSON object a line. A line nested deeper than MAX_JSON_DEPTH (refused before
    `json.loads` recurses) or with more than MAX_FIELDS keys is a malformed row (an empty
    placeholder keeps row numbers); a line that is not JSON at all fails the file."""
    records, malformed = [], {}
    with path.open(encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = parse_json(line, allow_nan=True)
            except JsonDepthError as e:
                malformed[len(records)] = ("malformed row", f"line {lineno} is {e}")
                records.append({})
                continue
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path.name} line {lineno} is not valid JSON ({e.msg})") from e
            if not isinstance(record, dict):
                raise DatasetError(f"{path.name} line {lineno} is not a JSON object")
            if len(record) > MAX_FIELDS:
                detail = f"line {lineno} has {len(record):,} fields (at most {MAX_FIELDS})"
                malformed[len(records)] = ("malformed row", detail)
                record = {}
            records.append(record)
    return pd.DataFrame.from_records(records), malformed


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


def checked_views(problem: tuple[str, str] | None, raw_views) -> tuple[tuple[str, str] | None, int]:
    """(problem, view count) of a row: views are parsed only for a row still clean, and a bad
    count becomes its problem. Folders and Parquet shards share this rule."""
    if problem is not None:
        return problem, 0
    try:
        return None, parse_count(raw_views)
    except ValueError as e:
        return ("invalid views", str(e)), 0


def _file_problem(
    root: Path, name: str, folders: dict[str, bool] | None = None
) -> tuple[str, str] | None:
    unsafe = _unsafe_detail(root, name, folders)
    if unsafe:
        return ("unsafe file_name", unsafe)
    if not name.strip():
        return ("missing image", "empty file_name")
    try:
        mode = (root / name).stat().st_mode
    except (OSError, ValueError):  # absent, a dangling link, a name the OS refuses
        return ("missing image", f"no file at {name}")
    if not stat.S_ISREG(mode):  # reading a FIFO would block; a device never ends
        return ("unreadable image", f"{name} is {NOT_REGULAR}")
    return None


def _unsafe_detail(root: Path, name: str, folders: dict[str, bool] | None = None) -> str | None:
    """Why `name` could read outside `root` (a security check), or None when it is safe.

    `folders` caches whether each parent folder resolves inside `root`: with it, a million
    files in a few hundred folders cost a few hundred `resolve()` calls plus one `lstat` each.
    """
    lexical = lexically_unsafe(name)
    if lexical:
        return lexical
    try:
        inside = _resolves_inside(root, root / name, {} if folders is None else folders)
    except (OSError, RuntimeError):  # symlink loop
        return "cannot be resolved (symlink loop?)"
    if not inside:
        return "resolves (through a symlink) outside the dataset folder"
    return None


def lexically_unsafe(name: str) -> str | None:
    """Why the name alone (no file system) could point outside its folder, or None."""
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
    return None


def _resolves_inside(root: Path, path: Path, folders: dict[str, bool]) -> bool:
    """`path.resolve()` is inside `root`, resolving each parent folder once."""
    if path == root:  # an empty file_name: not outside, reported as a missing image
        return True
    parent = str(path.parent)
    if parent not in folders:
        folders[parent] = path.parent.resolve().is_relative_to(root)
    if not folders[parent]:
        return False
    if path.is_symlink():  # only a link can leave a folder that is itself inside
        return path.resolve().is_relative_to(root)
    return True


def apply_verdicts(
    todo: list[int],
    current: _Verdicts,
    decode: Callable[[np.ndarray], list[str | None]],
    problems: Problems,
    cache: Path | None,
    setting: dict[str, str],
) -> None:
    """Mark rows `todo` whose image fails: cached verdicts where `current` matches the cache,
    `decode(misses)` (positions in `todo`) for the rest; the cache is rewritten on change."""
    cached = _read_verdicts(cache, setting) if cache is not None else None
    hits = _lookup(cached, current)  # (T,) row in `cached`, -1 to decode
    misses = np.flatnonzero(hits < 0)
    decoded = decode(misses)
    errors: list[str | None] = [None] * len(todo)
    if cached is not None:
        errors = [cached.errors[h] if h >= 0 else None for h in hits.tolist()]
    for j, error in zip(misses.tolist(), decoded, strict=True):
        errors[j] = error
    for i, error in zip(todo, errors, strict=True):
        if error is not None:
            problems[i] = ("unreadable image", error)
    logger.info("verified %d images, %d decoded now", len(todo), len(misses))
    if cache is not None and (len(misses) or cached is None or len(cached.keys) != len(todo)):
        _write_verdicts(cache, setting, dataclasses.replace(current, errors=errors))


def decode_error(
    source: Path | bytes,
    max_pixels: int,
    name: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> str | None:
    """Why `source` cannot be used as an image (the report's detail), or None when it can."""
    try:
        load_image(source, max_pixels=max_pixels, name=name, max_bytes=max_bytes)
    except Exception as e:  # noqa: BLE001 - a hostile file must become a report line, never a crash
        return str(e) or type(e).__name__
    return None


# --- verification cache: (name hash, size, mtime, ctime, inode) -> verdict, per dataset ----------------


@dataclass(frozen=True, eq=False)
class _Verdicts:
    """One row per image file: who it is (name hash, size, mtime, ctime, inode) and its verdict
    (None = ok). Size and mtime alone can be kept by a rewrite in place (`touch -r`, some sync
    tools); the inode change time cannot be set from user space, and a replaced file has a
    new inode, so all four together mean "the same bytes"."""

    keys: np.ndarray  # (M,) uint64, blake2b of the file_name as written in the metadata
    sizes: np.ndarray  # (M,) int64 bytes, -1 when stat failed
    mtimes: np.ndarray  # (M,) int64 ns
    ctimes: np.ndarray  # (M,) int64 ns, st_ctime_ns
    inodes: np.ndarray  # (M,) uint64, st_ino
    errors: list[str | None]

    def stat_columns(self) -> tuple[str, ...]:
        return ("sizes", "mtimes", "ctimes", "inodes")


def _name_keys(names: Sequence[str]) -> np.ndarray:
    digests = b"".join(
        hashlib.blake2b(n.encode("utf-8", "surrogatepass"), digest_size=8).digest() for n in names
    )
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)  # (T,)


def _lookup(cached: _Verdicts | None, current: _Verdicts) -> np.ndarray:
    """For each current file, its row in `cached` when name and every stat field match, else -1."""
    if cached is None or len(cached.keys) == 0:
        return np.full(len(current.keys), -1, dtype=np.int64)
    order = np.argsort(cached.keys, kind="stable")  # (M,)
    pos = np.searchsorted(cached.keys, current.keys, sorter=order).clip(max=len(order) - 1)
    rows = order[pos]  # (T,) candidate row per current file
    same = (cached.keys[rows] == current.keys) & (current.sizes >= 0)
    for column in current.stat_columns():
        same &= getattr(cached, column)[rows] == getattr(current, column)
    return np.where(same, rows, -1)


def _verify_setting(root: Path, max_pixels: int, max_bytes: int) -> dict[str, str]:
    """What a verdict depends on besides the file: a cache made under other settings is void."""
    return {
        "format": str(_VERIFY_FORMAT),
        "root": str(root),
        "max_pixels": str(max_pixels),
        "max_bytes": str(max_bytes),
        "pillow": PIL.__version__,
    }


def _read_verdicts(path: Path, setting: dict[str, str]) -> _Verdicts | None:
    """The cached verdicts, or None when absent, made under other settings, or unreadable:
    a cache is a hint to skip work, so anything doubtful means decoding again."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
        if {k: meta.get(k) for k in setting} != setting:
            logger.info("verification cache %s is for other settings; verifying afresh", path)
            return None
        arrays = load_file(path)
        details = json.loads(arrays["details"].tobytes().decode("utf-8"))
        keys, codes = arrays["keys"], arrays["errors"]
        stats = [arrays[k].astype(np.int64) for k in ("sizes", "mtimes", "ctimes", "inodes")]
        n = len(keys)
        if not (keys.dtype == np.uint64 and all(a.shape == (n,) for a in [*stats, codes])):
            raise ValueError("inconsistent arrays")
        errors = [None if c < 0 else str(details[c]) for c in codes.tolist()]
    except Exception as e:  # noqa: BLE001 - torn, foreign or tampered file: never trust it
        logger.warning("ignoring unreadable verification cache %s (%s)", path, e)
        return None
    return _Verdicts(keys, *stats, errors)


def _write_verdicts(path: Path, setting: dict[str, str], verdicts: _Verdicts) -> None:
    """Save atomically; failing to save only costs speed next time, so it is a warning."""
    details = sorted({e for e in verdicts.errors if e is not None})
    code = {d: k for k, d in enumerate(details)}
    # Contiguous copies: safetensors writes a strided view's raw buffer, scrambling rows.
    arrays = {
        "keys": np.ascontiguousarray(verdicts.keys, dtype=np.uint64),
        **{
            k: np.ascontiguousarray(getattr(verdicts, k), dtype=np.int64)
            for k in verdicts.stat_columns()
        },
        "errors": np.array([-1 if e is None else code[e] for e in verdicts.errors], np.int32),
    }
    # Details as UTF-8 bytes, not header metadata: the header is size-capped, failures are not.
    arrays["details"] = np.frombuffer(json.dumps(details).encode("utf-8"), dtype=np.uint8)
    try:
        atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=setting))
    except OSError as e:
        logger.warning("cannot write verification cache %s (%s)", path, e)


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
    root: Path,
    df: pd.DataFrame,
    problems: Problems,
    views: list[int],
    shards: ImageStore | None = None,
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
    return ThumbnailDataset(root, table, report, None if shards is None else shards.subset(keep))


def _parse_optional(column: pd.Series) -> pd.Series:
    """Counts such as likes: unparseable or hidden values become <NA>, the row is kept."""

    def parse(text: str) -> int | None:
        try:
            return parse_count(text)
        except ValueError:
            return None

    return pd.Series([parse(t) for t in column], dtype="Int64", index=column.index)
