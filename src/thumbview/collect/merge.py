"""Merge shard folders (`collect ids ... --shard i/n` on several machines) into one dataset.

Each shard is a collect folder; its `collect.sqlite` is read (read-only) and every video is
folded into OUT's own store, so OUT is a collect folder too (refresh and further merges work):

- rows are deduplicated by `video_id`; when two folders hold the same video the row with the
  **latest `collected_at`** (the newest view count) wins, then the one with **more filled
  fields**, and on a full tie the row already in OUT (else the first shard named) stays;
- `views_history` is the union of every folder's snapshots, so no count is lost;
- the winning row's image is validated and copied atomically *before* the row is committed
  (the collector's invariant: a committed row always has its whole image);
- `skipped` records are copied for videos no folder collected, so a later run does not
  re-fetch what a shard already gave up on.

Merging is idempotent: a second merge of the same shards changes nothing (same rule, ties
keep OUT's row, snapshots are keyed by time). Shards are never written to (`_open_shard`).
Anything in a shard that is not what the collector writes (an id not of YouTube's form, a
file name that is not the id's, a count the loader refuses, a symlinked or oversized or
undecodable image) is refused and counted; so is a count that contradicts OUT's at the same
instant ("conflicting views": the history holds one count per instant). A shard whose
database is a link out of it, or that a run is collecting into, is refused whole.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from thumbview.collect.collector import export_metadata
from thumbview.collect.filters import is_video_id, show_id
from thumbview.collect.lock import dataset_lock, lock_holder
from thumbview.collect.store import COLUMNS, DB_NAME, SCRATCH_PREFIX, Store, image_relpath
from thumbview.collect.thumbs import DEFAULT_MAX_BYTES, JPEG_MAGIC
from thumbview.collect.types import CollectError, InvalidCount, view_count
from thumbview.data.images import ImageError, load_image
from thumbview.fileio import atomic_write
from thumbview.progress import SILENT, Progress

logger = logging.getLogger(__name__)

PAGE = 1000  # rows read from a shard at a time: memory stays flat at a million rows
COPY_THREADS = 8  # image copies in flight: their fsyncs overlap
Row = dict[str, object]


@dataclass(frozen=True)
class MergeSummary:
    """What a merge did: rows `added` to OUT, `updated` (a newer row won), `unchanged`."""

    out: Path
    shards: int
    added: int
    updated: int
    unchanged: int
    history_added: int
    refused: Mapping[str, int]
    total_rows: int
    elapsed_s: float

    def describe(self) -> str:
        refused = ", ".join(f"{k}: {v}" for k, v in sorted(self.refused.items())) or "none"
        return (
            f"merged {self.shards} shards into {self.out}: {self.added} added, "
            f"{self.updated} updated, {self.unchanged} unchanged, {self.history_added} view "
            f"snapshots added; refused {refused}; {self.total_rows} rows in {self.elapsed_s:.1f}s"
        )


def completeness(row: Row) -> tuple[str, int]:
    """The merge's order on two rows of one video: newest `collected_at`, then most filled."""
    filled = sum(row.get(c) not in (None, "") for c in COLUMNS)
    return str(row.get("collected_at") or ""), filled


def merge_shards(
    out: str | Path,
    shards: Sequence[str | Path],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: Progress = SILENT,
) -> MergeSummary:
    """Fold every shard's videos, view history and skips into OUT (see the module doc)."""
    started = time.monotonic()
    out = Path(out)
    sources = _check_shards(out, shards)
    counts: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    with dataset_lock(out), Store(out) as store:
        store.sweep()
        try:
            with tempfile.TemporaryDirectory(dir=out, prefix=SCRATCH_PREFIX) as scratch:
                for shard in sources:
                    with _open_shard(shard, Path(scratch)) as db:
                        _merge_one(store, shard, db, max_bytes, counts, refused, progress)
        finally:
            export_metadata(out, store)
        total = store.count()
    return MergeSummary(
        out, len(sources), counts["added"], counts["updated"], counts["unchanged"],
        counts["history"], MappingProxyType(dict(refused)), total, time.monotonic() - started,
    )  # fmt: skip


def _check_shards(out: Path, shards: Sequence[str | Path]) -> list[Path]:
    """The distinct shard folders, each a collect folder, none of them OUT itself, none being
    collected into now, each holding its own database (not a link to one elsewhere, OUT's
    included): any of these is refused before anything is merged."""
    found: dict[Path, Path] = {}
    for shard in map(Path, shards):
        db = shard / DB_NAME
        if not db.is_file():
            raise CollectError(f"{shard} is not a collect folder (no {DB_NAME})")
        if shard.resolve() == out.resolve():
            raise CollectError(f"{shard} is OUT itself: merge other folders into it")
        if db.is_symlink() or not db.resolve().is_relative_to(shard.resolve()):
            raise CollectError(f"{db} is a link to a database outside its shard; copy it in")
        if (holder := lock_holder(shard)) is not None:
            raise CollectError(f"{shard} is being collected into by {holder.describe()}; merge it when that run ends")  # fmt: skip
        found.setdefault(shard.resolve(), shard)
    if not found:
        raise CollectError("give at least one shard folder to merge")
    return list(found.values())


@contextmanager
def _open_shard(shard: Path, scratch: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to a shard's database that writes nothing into the shard (a
    WAL database opened read-only still creates its -shm and -wal files, and cannot be
    opened at all in a read-only folder): SQLite's `immutable` mode when the database file
    is whole, else (a run killed mid-write left a write-ahead log) a copy of the database
    and its log in `scratch`, so the log's committed rows are merged too."""
    db_path, wal = shard / DB_NAME, shard / f"{DB_NAME}-wal"
    if wal.is_file() and wal.stat().st_size > 0:
        copy = scratch / f"{len(list(scratch.iterdir()))}-{DB_NAME}"
        shutil.copyfile(db_path, copy)
        shutil.copyfile(wal, copy.with_name(f"{copy.name}-wal"))
        uri = copy.as_uri() + "?mode=ro"
    else:
        uri = db_path.resolve().as_uri() + "?mode=ro&immutable=1"
    try:
        db = sqlite3.connect(uri, uri=True)
        db.execute("SELECT 1 FROM videos LIMIT 1")
    except sqlite3.DatabaseError as e:
        raise CollectError(f"cannot read {shard / DB_NAME}: {e}") from e
    try:
        yield db
    finally:
        db.close()


def _pages(db: sqlite3.Connection) -> Iterator[list[Row]]:
    """The shard's rows in pages of PAGE, ordered by video_id."""
    after: object = ""
    select = f"SELECT {', '.join(COLUMNS)} FROM videos WHERE video_id > ? ORDER BY video_id LIMIT ?"  # fmt: skip
    while rows := db.execute(select, (after, PAGE)).fetchall():
        yield [dict(zip(COLUMNS, r, strict=True)) for r in rows]
        after = rows[-1][COLUMNS.index("video_id")]


def _history(db: sqlite3.Connection, first: object, last: object) -> dict[str, list[tuple]]:
    """Snapshots of the ids between `first` and `last` (one page), by id."""
    by_id: dict[str, list[tuple]] = {}
    rows = db.execute(
        "SELECT video_id, views, observed_at FROM views_history "
        "WHERE video_id >= ? AND video_id <= ?",
        (first, last),
    )
    for video_id, views, observed_at in rows:
        if isinstance(views, int) and isinstance(observed_at, str):
            by_id.setdefault(video_id, []).append((video_id, views, observed_at))
    return by_id


def _merge_one(
    store: Store,
    shard: Path,
    db: sqlite3.Connection,
    max_bytes: int,
    counts: Counter[str],
    refused: Counter[str],
    progress: Progress,
) -> None:
    """Merge a shard page by page: refuse, pick winners, copy their images in parallel,
    then commit the page's rows and snapshots in one transaction (images first)."""
    total = db.execute("SELECT COUNT(*) FROM videos").fetchone()[0]
    with (
        ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="merge") as pool,
        progress.task(f"merging {shard.name}", total) as advance,
    ):
        for page in _pages(db):
            history = _history(db, page[0]["video_id"], page[-1]["video_id"])
            valid = _valid_rows(shard, page, refused)
            clashes = _drop_conflicts(store, shard, valid, history, refused)
            winners, kept = _winners(store, valid, counts, clashes)
            copied = pool.map(lambda r: _copy_image(shard, store.root, r, max_bytes), winners)
            items = []
            for row, problem in zip(winners, copied, strict=True):
                if problem is not None:
                    _refuse(shard, row, problem, refused)
                    continue
                items.append((row, history.get(str(row["video_id"])) or [_first_snapshot(row)]))
                counts["updated" if row.pop("_known") else "added"] += 1
            others = [h for video_id in kept for h in history.get(video_id, [])]
            counts["history"] += store.put_videos(items, others)
            advance(len(page))
    _merge_skips(store, db)


def _valid_rows(shard: Path, page: list[Row], refused: Counter[str]) -> list[Row]:
    """The rows of `page` the collector could have written; the others are refused."""
    valid = []
    for row in page:
        problem = _row_problem(row)
        if problem is None:
            valid.append(row)
        else:
            _refuse(shard, row, problem, refused)
    return valid


def _drop_conflicts(
    store: Store,
    shard: Path,
    valid: list[Row],
    history: dict[str, list[tuple]],
    refused: Counter[str],
) -> set[str]:
    """Snapshots that OUT holds at the same instant with another count: one instant cannot
    have two counts, so each is refused and reported ("conflicting views", both counts in
    the log) and taken out of `history`. Returns the ids whose row was read at such an
    instant: those rows do not replace OUT's."""
    snapshots = [h for r in valid for h in history.get(str(r["video_id"])) or [_first_snapshot(r)]]
    clash = store.conflicting(snapshots)
    for (video_id, observed_at), stored in clash.items():
        theirs = next(n for v, n, t in snapshots if v == video_id and t == observed_at)
        logger.warning("%s: refused %s's count at %s: %s here, %s in OUT",
                       shard, show_id(video_id), observed_at, theirs, stored)  # fmt: skip
        refused["conflicting views"] += 1
        if video_id in history:
            history[video_id] = [h for h in history[video_id] if h[2] != observed_at]
    return {str(r["video_id"]) for r in valid if (r["video_id"], r["collected_at"]) in clash}


def _winners(
    store: Store, valid: list[Row], counts: Counter[str], clashes: set[str]
) -> tuple[list[Row], list[str]]:
    """Rows of `valid` that beat OUT's row (marked `_known` if OUT has one), and the ids
    whose OUT row stays (a row read at a conflicting instant never wins)."""
    current = store.video_rows([str(r["video_id"]) for r in valid])
    winners, kept = [], []
    for row in valid:
        video_id = str(row["video_id"])
        known = current.get(video_id)
        if video_id in clashes:
            kept.append(video_id)
        elif known is not None and completeness(row) <= completeness(known):
            kept.append(video_id)
            counts["unchanged"] += 1
        else:
            winners.append(row | {"_known": known is not None})
    return winners, kept


def _refuse(shard: Path, row: Row, problem: str, refused: Counter[str]) -> None:
    logger.warning("%s: refused %s: %s", shard, show_id(row["video_id"]), problem)
    refused[problem.split(":")[0]] += 1


def _first_snapshot(row: Row) -> tuple:
    return row["video_id"], row["views"], row["collected_at"]


def _row_problem(row: Row) -> str | None:
    """Why a shard row is not one the collector could have written, or None."""
    video_id = row["video_id"]
    if not is_video_id(video_id):
        return "invalid video id"
    if row["file_name"] != image_relpath(str(video_id)):
        return f"bad file name: {show_id(row['file_name'])}"
    if not isinstance(row["views"], int) or not _loadable(row["views"]):
        return "bad views"
    if not isinstance(row["collected_at"], str):
        return "bad collected_at"
    return None


def _loadable(views: int) -> bool:
    """The loader's rule for a count (what the collector stores): 0..MAX_COUNT."""
    try:
        view_count(views)
    except InvalidCount:
        return False
    return True


def _copy_image(shard: Path, out: Path, row: Row, max_bytes: int) -> str | None:
    """Copy a winner's image into OUT atomically (fsync'd); returns a refusal or None."""
    try:
        data = _read_image(shard, str(row["file_name"]), max_bytes)
    except (OSError, ImageError, ValueError) as e:
        return f"bad image: {str(e)[:200]}"
    atomic_write(out / str(row["file_name"]), data)
    return None


def _read_image(shard: Path, file_name: str, max_bytes: int) -> bytes:
    """A shard's image bytes: a regular file inside the shard, a whole JPEG, within the cap."""
    path = shard / file_name
    if path.is_symlink() or not path.resolve().is_relative_to(shard.resolve()):
        raise ValueError(f"{file_name} leaves the shard folder")
    if not path.is_file():
        raise ValueError(f"{file_name} is missing")
    if path.stat().st_size > max_bytes:
        raise ValueError(f"{file_name} is over the {max_bytes}-byte cap")
    data = path.read_bytes()
    if not data.startswith(JPEG_MAGIC):
        raise ValueError(f"{file_name} is not a JPEG")
    load_image(data)  # whole and decodable
    return data


def _merge_skips(store: Store, db: sqlite3.Connection) -> None:
    """Copy the shard's skips of valid ids, a page at a time (old databases lack two columns)."""
    have = {r[1] for r in db.execute("PRAGMA table_info(skipped)")}
    extra = ", ".join(c if c in have else "NULL" for c in ("filters", "info"))
    select = (
        f"SELECT video_id, reason, detail, attempts, permanent, at, {extra} FROM skipped "
        "WHERE video_id > ? ORDER BY video_id LIMIT ?"
    )
    after: object = ""
    while rows := db.execute(select, (after, PAGE)).fetchall():
        store.add_skips([r for r in rows if is_video_id(r[0])])
        after = rows[-1][0]
