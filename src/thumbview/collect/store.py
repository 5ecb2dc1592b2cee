"""The crash-safe state of a collection: one SQLite file (WAL) beside the images.

SQLite is the source of truth; `metadata.csv` is an export of it. The invariants that
make kill -9 safe at any moment:
- an image is written to a temp file and `os.replace`d into place *before* its row is
  committed, so a committed row always has a whole image (an image without a row is an
  orphan, swept on the next start and fetched again);
- each video is one transaction (row + first view count + leaving the queue);
- `video_id` is the primary key, so a video can never be stored twice.

A video left out by a *filter* (`FILTER_REASONS`) is kept in `skipped` with the filter
settings that rejected it (`filters`, canonical JSON) and the metadata read at the time
(`info`), so a later run with other filters can re-check it locally and fetch only its
thumbnail. Databases made before these columns existed are upgraded in place.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from thumbview.collect.filters import FILTER_REASONS, check_video_id
from thumbview.collect.types import CollectError, Thumb, VideoInfo, optional_count, view_count

logger = logging.getLogger(__name__)

DB_NAME = "collect.sqlite"
IMAGE_DIR = "images"
SCRATCH_PREFIX = ".merge-"  # `collect merge`'s temporary copies, inside OUT
COLUMNS = (
    "file_name", "views", "title", "video_id", "channel_id", "channel_title", "published_at",
    "subscribers", "duration_s", "likes", "comments", "thumbnail_url", "width", "height",
    "query", "collected_at",
)  # fmt: skip
INT_COLUMNS = ("views", "subscribers", "likes", "comments", "width", "height")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS videos (
    video_id TEXT PRIMARY KEY, file_name TEXT NOT NULL, views INTEGER NOT NULL, title TEXT,
    channel_id TEXT, channel_title TEXT, published_at TEXT, subscribers INTEGER,
    duration_s REAL, likes INTEGER, comments INTEGER, thumbnail_url TEXT,
    width INTEGER, height INTEGER, query TEXT, collected_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS views_history (
    video_id TEXT NOT NULL, views INTEGER NOT NULL, observed_at TEXT NOT NULL,
    PRIMARY KEY (video_id, observed_at));
CREATE TABLE IF NOT EXISTS pending (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, video_id TEXT NOT NULL UNIQUE,
    query TEXT NOT NULL DEFAULT '', short_url INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS skipped (
    video_id TEXT PRIMARY KEY, reason TEXT NOT NULL, detail TEXT, attempts INTEGER NOT NULL,
    permanent INTEGER NOT NULL, at TEXT NOT NULL, filters TEXT, info TEXT);
CREATE TABLE IF NOT EXISTS listings (
    source TEXT PRIMARY KEY, n INTEGER NOT NULL, done_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS quota (day TEXT PRIMARY KEY, units INTEGER NOT NULL);
"""
# Columns added to `skipped` after the first release: (name, SQL type).
_SKIP_UPGRADE = (("filters", "TEXT"), ("info", "TEXT"))


def utc_now() -> str:
    """Timestamps are UTC ISO 8601 with microseconds, so they sort as text."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def encode_video(video: VideoInfo, observed_at: str) -> str:
    """JSON of a described video and when it was read, enough to collect it later offline."""
    return json.dumps(
        {"observed_at": observed_at, "video": dataclasses.asdict(video)}, ensure_ascii=False
    )


def decode_video(text: str) -> tuple[VideoInfo, str]:
    """Inverse of `encode_video`: (video, observed_at). Counts pass the loader's rule again
    (`InvalidCount`): a skip stored before that rule may hold a count SQLite cannot take."""
    data = json.loads(text)
    fields = dict(data["video"])
    fields["thumbnails"] = tuple(Thumb(**t) for t in fields["thumbnails"])
    fields["views"] = view_count(fields["views"])
    for name in ("subscribers", "likes", "comments"):
        fields[name] = optional_count(fields.get(name))
    return VideoInfo(**fields), str(data["observed_at"])


def _upgrade(db: sqlite3.Connection) -> None:
    """Add the `skipped` columns an older database lacks (one exclusive transaction).

    Filter skips recorded before the upgrade have no settings or metadata; they get
    `filters = ''` (matching no real settings) so the next run describes them again.
    """
    db.execute("BEGIN IMMEDIATE")  # two processes opening the same old file: one upgrades
    try:
        have = {row[1] for row in db.execute("PRAGMA table_info(skipped)")}
        missing = [(name, kind) for name, kind in _SKIP_UPGRADE if name not in have]
        for name, kind in missing:
            db.execute(f"ALTER TABLE skipped ADD COLUMN {name} {kind}")
        if ("filters", "TEXT") in missing:
            marks = ", ".join("?" * len(FILTER_REASONS))
            db.execute(
                f"UPDATE skipped SET filters = '' WHERE permanent = 1 AND reason IN ({marks})",
                sorted(FILTER_REASONS),
            )
            logger.info("upgraded %s: filter skips will be re-checked", DB_NAME)
        db.commit()
    except BaseException:
        db.rollback()
        raise


def image_relpath(video_id: str) -> str:
    """`images/ab/abcdefghijk.jpg`: two-character buckets keep directories small at 1M files.

    Raises `InvalidVideoId` for anything but a video id: this is where an id becomes a path.
    """
    video_id = check_video_id(video_id)
    return f"{IMAGE_DIR}/{video_id[:2]}/{video_id}.jpg"


class Store:
    """The collection state in `root/collect.sqlite`; safe to share between threads."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._check_image_folders()
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.root / DB_NAME, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        _upgrade(self._db)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._db:  # commit on success, roll back on error
            yield self._db

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- the work queue ---------------------------------------------------------------
    def add_pending(self, items: Iterable[tuple[str, str, bool]]) -> int:
        """Queue (video_id, query, short_url) triples; ids already queued are ignored.

        The caller filters ids (and counts the skips); one that is not an id here is a bug,
        so it raises `InvalidVideoId` and nothing of the batch is queued.
        """
        rows = [(check_video_id(v), q, int(s)) for v, q, s in items]
        with self._tx() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO pending (video_id, query, short_url) VALUES (?, ?, ?)", rows
            )
            return db.total_changes - before

    def pending(self, max_attempts: int) -> list[tuple[str, str, bool]]:
        """Queued ids to describe: not collected, not given up on, not filtered out.

        Filter skips are not described again: `filtered_skips` hands them to the
        collector, which re-checks them against the current filters from `info`.
        """
        rows = self._query(
            "SELECT p.video_id, p.query, p.short_url FROM pending p "
            "WHERE NOT EXISTS (SELECT 1 FROM videos v WHERE v.video_id = p.video_id) "
            "AND NOT EXISTS (SELECT 1 FROM skipped s WHERE s.video_id = p.video_id "
            "AND (s.permanent = 1 OR s.attempts >= ? OR s.filters IS NOT NULL)) "
            "ORDER BY p.seq",
            (max_attempts,),
        )
        return [(v, q, bool(s)) for v, q, s in rows]

    def listing_done(self, source: str, n: int) -> bool:
        """Whether `source` (a query or channel) was already listed to at least `n` results."""
        rows = self._query("SELECT n FROM listings WHERE source = ?", (source,))
        return bool(rows) and rows[0][0] >= n

    def mark_listing_done(self, source: str, n: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO listings (source, n, done_at) VALUES (?, ?, ?)",
                (source, n, utc_now()),
            )

    # -- results ----------------------------------------------------------------------
    def add_video(self, row: dict[str, object]) -> None:
        """Commit one collected video (its image must already be on disk) and its first count."""
        self.put_videos([(row, [(row.get("video_id"), row.get("views"), row.get("collected_at"))])])

    def put_videos(
        self,
        items: Sequence[tuple[dict[str, object], Sequence[tuple]]],
        history: Sequence[tuple] = (),
    ) -> int:
        """Insert or replace rows (images already on disk) with their view snapshots, plus
        other `history` snapshots, in one transaction; returns the snapshots added."""
        for row, _ in items:
            if row["file_name"] != image_relpath(str(row["video_id"])):
                raise RuntimeError(f"refusing a row whose file is not its id's: {row['file_name']!r}")  # fmt: skip
            if not (self.root / str(row["file_name"])).is_file():
                raise RuntimeError(f"refusing a row without its image: {row['file_name']}")
        with self._tx() as db:
            db.executemany(
                f"INSERT OR REPLACE INTO videos ({', '.join(COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(COLUMNS))})",
                [[row.get(c) for c in COLUMNS] for row, _ in items],
            )
            added = self._add_history(db, [h for _, rows in items for h in rows] + list(history))
            db.executemany(
                "DELETE FROM skipped WHERE video_id = ?", [(row["video_id"],) for row, _ in items]
            )
        return added

    def video_rows(self, video_ids: Sequence[str]) -> dict[str, dict[str, object]]:
        """The stored rows of those of `video_ids` that are collected, by id."""
        found: dict[str, dict[str, object]] = {}
        for start in range(0, len(video_ids), 500):  # SQLite's bound-parameter limit
            chunk = video_ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            for r in self._query(f"SELECT {', '.join(COLUMNS)} FROM videos WHERE video_id IN ({marks})", chunk):  # fmt: skip
                found[r[COLUMNS.index("video_id")]] = dict(zip(COLUMNS, r, strict=True))
        return found

    def conflicting(self, snapshots: Sequence[tuple[str, int, str]]) -> dict[tuple[str, str], int]:
        """Of (video_id, views, observed_at) `snapshots`, those this store already holds at the
        same instant with another count: (video_id, observed_at) -> the stored count. Adding
        them would keep one of the two counts silently (the history is keyed by instant)."""
        found: dict[tuple[str, str], int] = {}
        for start in range(0, len(snapshots), 300):  # 3 bound parameters each
            chunk = snapshots[start : start + 300]
            values = ", ".join("(?, ?, ?)" for _ in chunk)
            rows = self._query(
                f"WITH s(video_id, views, observed_at) AS (VALUES {values}) "
                "SELECT h.video_id, h.observed_at, h.views FROM s JOIN views_history h "
                "ON h.video_id = s.video_id AND h.observed_at = s.observed_at AND h.views != s.views",
                [x for snapshot in chunk for x in snapshot],
            )
            found.update({(v, t): n for v, t, n in rows})
        return found

    @staticmethod
    def _add_history(db: sqlite3.Connection, history: Sequence[tuple[str, int, str]]) -> int:
        before = db.total_changes
        db.executemany(
            "INSERT OR IGNORE INTO views_history (video_id, views, observed_at) VALUES (?, ?, ?)",
            history,
        )
        return db.total_changes - before

    def add_skips(self, rows: Sequence[tuple]) -> None:
        """Copy `skipped` rows (all columns, table order) for ids neither collected nor skipped."""
        with self._tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO skipped "
                "(video_id, reason, detail, attempts, permanent, at, filters, info) "
                "SELECT ?, ?, ?, ?, ?, ?, ?, ? "
                "WHERE NOT EXISTS (SELECT 1 FROM videos WHERE video_id = ?1)",
                rows,
            )

    def skip(self, video_id: str, reason: str, detail: str = "", *, permanent: bool) -> None:
        """Record why a video was not collected; transient failures count attempts across runs.

        This replaces a filter skip (its video then goes back to the describe queue);
        attempts count only failures, so they restart at 1 after a filter skip.
        """
        with self._tx() as db:
            db.execute(
                "INSERT INTO skipped (video_id, reason, detail, attempts, permanent, at) "
                "VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT(video_id) DO UPDATE SET "
                "reason = excluded.reason, detail = excluded.detail, "
                "attempts = CASE WHEN filters IS NULL THEN attempts + 1 ELSE 1 END, "
                "permanent = excluded.permanent, at = excluded.at, filters = NULL, info = NULL",
                (video_id, reason, detail[:500], int(permanent), utc_now()),
            )

    def skip_filtered(self, video_id: str, reason: str, filters: str, info: str) -> None:
        """Record a filter skip with the settings that caused it and the video's metadata."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO skipped "
                "(video_id, reason, detail, attempts, permanent, at, filters, info) "
                "VALUES (?, ?, '', 0, 0, ?, ?, ?)",
                (video_id, reason, utc_now(), filters, info),
            )

    def filtered_skips(
        self, filters: str, after: str = "", limit: int = 1000
    ) -> list[tuple[str, str | None, str, bool]]:
        """Filter skips made under other settings: (video_id, info, query, short_url).

        Paged by video id (`after` = the last id of the previous page) so a million of
        them never sit in memory at once; skips made under `filters` are left out.
        """
        rows = self._query(
            "SELECT s.video_id, s.info, COALESCE(p.query, ''), COALESCE(p.short_url, 0) "
            "FROM skipped s LEFT JOIN pending p ON p.video_id = s.video_id "
            "WHERE s.filters IS NOT NULL AND s.filters != ? AND s.video_id > ? "
            "ORDER BY s.video_id LIMIT ?",
            (filters, after, limit),
        )
        return [(v, info, q, bool(short)) for v, info, q, short in rows]

    def refilter(self, updates: Sequence[tuple[str, str]], filters: str) -> None:
        """Filter skips that the `filters` settings still reject: (video_id, new reason)."""
        with self._tx() as db:
            db.executemany(
                "UPDATE skipped SET reason = ?, filters = ?, at = ? WHERE video_id = ?",
                [(reason, filters, utc_now(), v) for v, reason in updates],
            )

    def unskip(self, video_ids: Sequence[str]) -> None:
        """Forget skips so their videos are described again (legacy filter skips)."""
        with self._tx() as db:
            db.executemany("DELETE FROM skipped WHERE video_id = ?", [(v,) for v in video_ids])

    def record_views(self, updates: Sequence[tuple[str, int]], observed_at: str) -> None:
        """Append a view-count snapshot to the history and make it the latest in `videos`."""
        with self._tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO views_history (video_id, views, observed_at) "
                "VALUES (?, ?, ?)",
                [(v, n, observed_at) for v, n in updates],
            )
            db.executemany(
                "UPDATE videos SET views = ?, collected_at = ? WHERE video_id = ?",
                [(n, observed_at, v) for v, n in updates],
            )

    # -- reading ----------------------------------------------------------------------
    def video_ids(self, collected_before: str | None = None) -> list[str]:
        """Collected ids, optionally only those whose latest count is older than a timestamp."""
        if collected_before is None:
            return [r[0] for r in self._query("SELECT video_id FROM videos ORDER BY video_id")]
        return [
            r[0]
            for r in self._query(
                "SELECT video_id FROM videos WHERE collected_at < ? ORDER BY video_id",
                (collected_before,),
            )
        ]

    def table(self) -> pd.DataFrame:
        """The metadata table in `COLUMNS` order (nullable integer columns stay integers)."""
        with self._lock:
            frame = pd.read_sql_query(
                f"SELECT {', '.join(COLUMNS)} FROM videos ORDER BY video_id", self._db
            )
        for column in INT_COLUMNS:
            frame[column] = frame[column].astype("Int64")
        return frame

    def history(self, video_id: str) -> list[tuple[int, str]]:
        """(views, observed_at) snapshots of one video, oldest first."""
        return [
            (int(n), str(t))
            for n, t in self._query(
                "SELECT views, observed_at FROM views_history WHERE video_id = ? "
                "ORDER BY observed_at",
                (video_id,),
            )
        ]

    def skipped(self) -> pd.DataFrame:
        with self._lock:
            return pd.read_sql_query("SELECT * FROM skipped ORDER BY video_id", self._db)

    def count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM videos")[0][0])

    def known_files(self) -> set[str]:
        return {r[0] for r in self._query("SELECT file_name FROM videos")}

    def _check_image_folders(self) -> None:
        """Refuse a folder whose `images/` (or a bucket in it) is a link leading outside it:
        images would be written, and orphans deleted, through it."""
        image_root, inside = self.root / IMAGE_DIR, self.root.resolve()
        if not image_root.is_dir():
            return
        for folder in (image_root, *image_root.iterdir()):
            if folder.is_symlink() and not folder.resolve().is_relative_to(inside):
                raise CollectError(
                    f"{folder} is a link leading outside {self.root}; refusing to write "
                    "images through it (replace it with a folder)"
                )

    # -- quota ------------------------------------------------------------------------
    def quota_used(self, day: str) -> int:
        rows = self._query("SELECT units FROM quota WHERE day = ?", (day,))
        return int(rows[0][0]) if rows else 0

    def add_quota(self, day: str, units: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO quota (day, units) VALUES (?, ?) "
                "ON CONFLICT(day) DO UPDATE SET units = units + excluded.units",
                (day, units),
            )

    def sweep(self) -> int:
        """Delete temp files and images that have no committed row (left by a crash)."""
        removed = 0
        for path in self.root.glob(".metadata*.tmp"):  # a metadata.csv export cut short
            path.unlink(missing_ok=True)
            removed += 1
        for path in self.root.glob(f"{SCRATCH_PREFIX}*"):  # a merge's copies, killed mid-way
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
        image_root = self.root / IMAGE_DIR
        if not image_root.is_dir():
            return removed
        known = self.known_files()
        for path in image_root.rglob("*"):
            rel = path.relative_to(self.root).as_posix()
            if path.is_file() and (path.name.endswith(".tmp") or rel not in known):
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            logger.info("removed %d leftover files from an interrupted run", removed)
        return removed
