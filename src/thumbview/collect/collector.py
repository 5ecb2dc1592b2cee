"""Orchestration: list ids, describe them in batches, fetch thumbnails, commit one by one.

Network work runs in a thread pool; every database write happens on the calling thread,
one transaction per video, so killing the process at any instant loses at most the
videos in flight, and re-running the same command picks up the queue where it stopped.

Videos left out by a filter are re-checked at the start of every run whose filters differ
from the ones that rejected them, from the metadata stored with the skip (no request):
those the current filters keep are collected (only their thumbnail is downloaded), the
others stay skipped under the current reason. Filters only ever add rows: a stricter
re-run never deletes a video already collected.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType

from thumbview.collect.filters import (
    FILTER_REASONS,
    FilterConfig,
    filter_key,
    is_video_id,
    read_id_file,
    rejection_reason,
    shard_ids,
    show_id,
)
from thumbview.collect.http import FetchError, HttpClient, Unreachable
from thumbview.collect.lock import dataset_lock
from thumbview.collect.quota import QuotaExhausted, quota_day
from thumbview.collect.store import DB_NAME, Store, decode_video, encode_video, utc_now
from thumbview.collect.thumbs import (
    DEFAULT_MAX_BYTES,
    THUMB_HOSTS,
    SavedThumb,
    ThumbSkip,
    fetch_thumbnail,
)
from thumbview.collect.types import Backend, CollectError, Unavailable, VideoInfo
from thumbview.data.dataset import write_metadata
from thumbview.progress import SILENT, Advance, Progress

logger = logging.getLogger(__name__)

INVALID_ID = "invalid video id"  # the summary key of ids refused where they enter


@dataclass(frozen=True)
class CollectConfig:
    """How a run behaves (what to keep lives in `filters`)."""

    filters: FilterConfig = field(default_factory=FilterConfig)
    workers: int = 4
    max_attempts: int = 3  # runs a transiently failing video gets before it is given up
    export_every: int = 500  # rewrite metadata.csv after this many new rows
    thumb_max_bytes: int = DEFAULT_MAX_BYTES  # a larger thumbnail body is refused mid-stream
    thumb_hosts: frozenset[str] = THUMB_HOSTS  # image hosts a thumbnail may come (redirect) from

    def __post_init__(self) -> None:
        settings = (self.workers, self.max_attempts, self.export_every, self.thumb_max_bytes)
        if min(settings) < 1 or not self.thumb_hosts:
            raise CollectError(f"invalid collect settings: {self}")


OFFLINE = "YouTube could not be reached"  # a run's `stopped` when the network failed


@dataclass(frozen=True)
class CollectSummary:
    """What a run did. `stopped` is None when the queue was emptied, else "quota" /
    "interrupted" / OFFLINE (no network: the queue is kept for the next run).

    `rechecked` counts earlier filter skips re-checked offline against changed filters;
    those kept are in `collected`, those still rejected in `skipped`.
    """

    out: Path
    collected: int
    total_rows: int
    skipped: Mapping[str, int]
    quota_used: int
    remaining: int
    stopped: str | None
    elapsed_s: float
    rechecked: int = 0

    @property
    def unreachable(self) -> bool:
        """Nothing could be collected because YouTube could not be reached."""
        return self.stopped == OFFLINE and self.collected == 0

    def describe(self) -> str:
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        end = f"stopped ({self.stopped}), {self.remaining} left" if self.stopped else "done"
        rechecked = f", {self.rechecked} filtered videos re-checked" if self.rechecked else ""
        return (
            f"{self.collected} collected ({self.total_rows} in {self.out}){rechecked}, "
            f"skipped {skipped}; "
            f"quota used {self.quota_used}; {end} in {self.elapsed_s:.1f}s"
        )


@dataclass(frozen=True)
class RefreshSummary:
    refreshed: int
    unavailable: int
    quota_used: int
    remaining: int
    stopped: str | None


@dataclass(frozen=True)
class _Job:
    video_id: str
    query: str
    short_url: bool
    observed_at: str | None = None  # when its stored metadata was read (re-checked skips)


def export_metadata(root: Path, store: Store) -> Path:
    """Write metadata.csv atomically from the store."""
    return write_metadata(root, store.table())


def _attach_quota(backend: Backend, store: Store) -> int:
    if backend.quota is None:
        return 0
    day = quota_day()
    backend.quota.attach(store.quota_used(day), lambda units: store.add_quota(day, units))
    return backend.quota.used_this_run


def _quota_used(backend: Backend) -> int:
    return 0 if backend.quota is None else backend.quota.used_this_run


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def valid_ids(ids: Sequence[object], source: str) -> tuple[list[str], int]:
    """The ids of YouTube's form, and how many others were dropped (each logged).

    Ids come from responses (search, listings, yt-dlp) and from users' lists; one that is
    not an id (`../../x`) must never reach the queue, where it would later become a path.
    """
    good = [video_id for video_id in ids if _keep_id(video_id, source)]
    return good, len(ids) - len(good)


def _keep_id(video_id: object, source: str) -> bool:
    if is_video_id(video_id):
        return True
    logger.warning("skipped %s from %s: not a YouTube video id", show_id(video_id), source)
    return False


class _Run:
    """One pass over the queue: describe batches, fetch thumbnails, commit on this thread."""

    def __init__(self, store: Store, backend: Backend, http: HttpClient, config: CollectConfig):
        self.store, self.backend, self.http, self.config = store, backend, http, config
        self.filter_key = filter_key(config.filters)
        self.skipped: Counter[str] = Counter()
        self.collected = 0
        self.done = 0
        self.stopped: str | None = None
        self.advance: Advance = lambda n=1: None  # the "collecting" task's, while it runs

    def _describe(self, jobs: Sequence[_Job]) -> list[tuple[_Job, VideoInfo | Unavailable]]:
        try:
            results = self.backend.fetch([j.video_id for j in jobs])
        except Unreachable:
            raise  # no video can be described now: `_handle` stops the run, the queue stays
        except FetchError as e:
            results = [Unavailable(j.video_id, "fetch failed", str(e), False) for j in jobs]
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # a malformed answer
            if isinstance(e, CollectError):
                raise
            detail = f"malformed answer: {type(e).__name__}: {str(e)[:200]}"
            results = [Unavailable(j.video_id, "bad response", detail, False) for j in jobs]
        return list(zip(jobs, results, strict=True))

    def _thumb(self, job: _Job, video: VideoInfo) -> tuple[_Job, VideoInfo, object]:
        try:
            saved = fetch_thumbnail(
                self.http, video, self.store.root,
                max_bytes=self.config.thumb_max_bytes, hosts=self.config.thumb_hosts,
            )  # fmt: skip
            return job, video, saved
        except ThumbSkip as e:
            return job, video, e

    def run(self, jobs: Sequence[_Job], ready: Sequence[tuple[_Job, VideoInfo]] = ()) -> None:
        """Fetch thumbnails of the `ready` (already described) videos, then work the queue."""
        batches = _chunks(jobs, self.backend.batch_size)
        described = iter(ready)
        inflight: dict[Future, str] = {}
        pool = ThreadPoolExecutor(self.config.workers, thread_name_prefix="collect")
        try:
            while True:
                while self.stopped is None and len(inflight) < 2 * self.config.workers:
                    item = next(described, None)
                    if item is not None:
                        inflight[pool.submit(self._thumb, *item)] = "thumb"
                        continue
                    batch = next(batches, None)
                    if batch is None:
                        break
                    inflight[pool.submit(self._describe, batch)] = "describe"
                if not inflight:
                    break
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for future in done:
                    self._handle(pool, inflight, inflight.pop(future), future)
        except KeyboardInterrupt:
            self.stopped = "interrupted"
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _handle(self, pool: ThreadPoolExecutor, inflight: dict, kind: str, future: Future) -> None:
        if kind == "thumb":
            job, video, result = future.result()
            if isinstance(result, ThumbSkip):
                self._skip(job.video_id, result.reason, result.detail, result.permanent)
            else:
                self._commit(job, video, result)
            return
        try:
            described = future.result()
        except QuotaExhausted as e:
            logger.warning("stopping: %s", e)
            self.stopped = "quota"
            return
        except Unreachable as e:
            logger.info("stopping, YouTube could not be reached: %s", e)
            self.stopped = OFFLINE
            return
        for job, item in described:
            if item.video_id != job.video_id:  # the backend answered for another id
                logger.warning("skipped %s: the backend described it as %s",
                               job.video_id, show_id(item.video_id))  # fmt: skip
                self._skip(job.video_id, INVALID_ID, f"answered {show_id(item.video_id)}", True)
                continue
            if isinstance(item, Unavailable):
                self._skip(job.video_id, item.reason, item.detail, item.permanent)
                continue
            video = dataclasses.replace(item, short_url=item.short_url or job.short_url)
            reason = rejection_reason(video, self.config.filters)
            if reason is None and not video.thumbnails:
                reason = "no thumbnail"
            if reason in FILTER_REASONS:
                self._filtered(video, reason)
            elif reason is not None:
                self._skip(job.video_id, reason, "", True)
            else:
                inflight[pool.submit(self._thumb, job, video)] = "thumb"

    def _filtered(self, video: VideoInfo, reason: str) -> None:
        """A filter skip keeps its metadata, so other filters can take it later offline."""
        info = encode_video(video, utc_now())
        self.store.skip_filtered(video.video_id, reason, self.filter_key, info)
        self.skipped[reason] += 1
        self._tick()

    def _skip(self, video_id: str, reason: str, detail: str, permanent: bool) -> None:
        self.store.skip(video_id, reason, detail, permanent=permanent)
        self.skipped[reason] += 1
        self._tick()

    def _commit(self, job: _Job, video: VideoInfo, thumb: SavedThumb) -> None:
        row = dataclasses.asdict(video) | {
            "file_name": thumb.file_name,
            "thumbnail_url": thumb.url,
            "width": thumb.width,
            "height": thumb.height,
            "query": job.query,
            "collected_at": job.observed_at or utc_now(),  # when `views` was read
        }
        self.store.add_video(row)
        self.collected += 1
        if self.collected % self.config.export_every == 0:
            export_metadata(self.store.root, self.store)
        self._tick()

    def _tick(self) -> None:
        self.done += 1
        self.advance(1)


def _collect(
    store: Store,
    backend: Backend,
    http: HttpClient | None,
    config: CollectConfig,
    progress: Progress,
    started: float,
    invalid: int = 0,
    listing: str | None = None,
) -> CollectSummary:
    """Work through the queue and export; the shared tail of every collect command.

    `invalid` counts the ids refused on the way into the queue (reported as skips);
    `listing` is how listing stopped: OFFLINE is kept as the run's `stopped`.
    """
    store.sweep()
    ready, still, rechecked = _recheck_filtered(store, config.filters)
    jobs = [_Job(*p) for p in store.pending(config.max_attempts)]
    http = http or getattr(backend, "http", None)  # share the API backend's pooled client
    own_http = http is None
    run = _Run(store, backend, http or HttpClient(), config)
    run.skipped.update(still)
    if invalid:
        run.skipped[INVALID_ID] += invalid
    try:
        with progress.task("collecting", len(ready) + len(jobs)) as advance:
            run.advance = advance
            run.run(jobs, ready)
    finally:
        export_metadata(store.root, store)
        if own_http:
            run.http.close()
    return CollectSummary(
        out=store.root,
        collected=run.collected,
        total_rows=store.count(),
        skipped=MappingProxyType(dict(run.skipped)),
        quota_used=_quota_used(backend),
        remaining=len(store.pending(config.max_attempts)),
        stopped=run.stopped or (listing if listing == OFFLINE else None),
        elapsed_s=time.monotonic() - started,
        rechecked=rechecked,
    )


def _recheck_filtered(
    store: Store, filters: FilterConfig
) -> tuple[list[tuple[_Job, VideoInfo]], Counter[str], int]:
    """Re-apply `filters` to the filter skips made under other settings, from stored metadata.

    Returns the videos that now pass (to collect: thumbnail only), the reasons of those
    still rejected (their skips now name the current reason and settings) and how many
    were re-checked. Skips without usable metadata are put back in the queue (`_stored`).
    """
    key = filter_key(filters)
    ready: list[tuple[_Job, VideoInfo]] = []
    still: Counter[str] = Counter()
    legacy: list[str] = []
    after, rechecked = "", 0
    while rows := store.filtered_skips(key, after):
        updates = []
        for video_id, info, query, short_url in rows:
            stored = _stored(info)
            if stored is None:
                legacy.append(video_id)
                continue
            video, observed_at = stored
            rechecked += 1
            reason = rejection_reason(video, filters)
            if reason is None:
                ready.append((_Job(video_id, query, short_url, observed_at), video))
            else:
                updates.append((video_id, reason))
                still[reason] += 1
        store.refilter(updates, key)
        after = rows[-1][0]
    store.unskip(legacy)
    if rechecked or legacy:
        logger.info("re-checked %d filtered videos: %d now kept; %d to describe again",
                    rechecked, len(ready), len(legacy))  # fmt: skip
    return ready, still, rechecked


def _stored(info: str | None) -> tuple[VideoInfo, str] | None:
    """A filter skip's stored (video, observed_at), or None when there is none (a database
    from before metadata was stored) or it is not to be trusted (unreadable, or a count the
    loader refuses, stored before counts were checked): that video is described again."""
    if info is None:
        return None
    try:
        return decode_video(info)
    except (ValueError, KeyError, TypeError):
        return None


@dataclass
class _Listed:
    """How listing went: `stopped` is "quota" / "listing failed" / None; `invalid` ids refused."""

    stopped: str | None = None
    invalid: int = 0


def _list_into(
    store: Store, pages: Iterator[list], label: str, cache_key: str | None, n: int
) -> _Listed:
    """Queue every listed id (of YouTube's form) page by page, stopping at the quota."""
    listed = _Listed()
    if cache_key is not None and store.listing_done(cache_key, n):
        logger.info("%s: already listed, not paying for it again", label)
        return listed
    try:
        for page in pages:
            good = [item for item in page if _keep_id(item.video_id, f"listing {label!r}")]
            listed.invalid += len(page) - len(good)
            store.add_pending((item.video_id, label, item.short_url) for item in good)
    except QuotaExhausted as e:
        logger.warning("listing %s stopped: %s", label, e)
        listed.stopped = "quota"
    except Unreachable as e:  # said once, by whoever reports the summary
        logger.info("listing %s stopped, YouTube could not be reached: %s", label, e)
        listed.stopped = OFFLINE
    except FetchError as e:
        logger.error("listing %s failed (will be retried next run): %s", label, e)
        listed.stopped = "listing failed"
    if cache_key is not None and listed.stopped is None:
        store.mark_listing_done(cache_key, n)
    return listed


def collect_search(
    out: str | Path,
    queries: Sequence[str],
    *,
    backend: Backend,
    per_query: int = 100,
    http: HttpClient | None = None,
    config: CollectConfig | None = None,
    progress: Progress = SILENT,
) -> CollectSummary:
    """Search each query, queue up to `per_query` results, collect them."""
    if per_query < 1 or not queries:
        raise CollectError("give at least one query and --per-query >= 1")
    started = time.monotonic()
    with dataset_lock(out), Store(out) as store:
        _attach_quota(backend, store)
        invalid, stopped = 0, None
        for query in queries:
            key = f"search:{backend.name}:{query}"
            listed = _list_into(store, backend.search(query, per_query), query, key, per_query)
            invalid += listed.invalid
            if listed.stopped:
                stopped = listed.stopped
                break
        config = config or CollectConfig()
        return _collect(store, backend, http, config, progress, started, invalid, stopped)


def collect_channel(
    out: str | Path,
    channel: str,
    *,
    backend: Backend,
    limit: int | None = None,
    http: HttpClient | None = None,
    config: CollectConfig | None = None,
    progress: Progress = SILENT,
) -> CollectSummary:
    """Queue a channel's uploads (newest first, up to `limit`) and collect them."""
    started = time.monotonic()
    with dataset_lock(out), Store(out) as store:
        _attach_quota(backend, store)
        listed = _list_into(store, backend.channel(channel, limit), channel, None, limit or 0)
        config = config or CollectConfig()
        return _collect(
            store, backend, http, config, progress, started, listed.invalid, listed.stopped
        )


def collect_ids(
    out: str | Path,
    ids: Path | Iterable[str],
    *,
    backend: Backend,
    shard: tuple[int, int] = (0, 1),
    http: HttpClient | None = None,
    config: CollectConfig | None = None,
    progress: Progress = SILENT,
) -> CollectSummary:
    """Collect known ids (a file of ids/URLs, or parsed ids), keeping only shard i of n."""
    started = time.monotonic()
    if isinstance(ids, Path):
        ids, bad = read_id_file(ids)
        if bad:
            logger.warning("%d lines of the id file are not video ids or URLs", bad)
    ids, invalid = valid_ids(list(ids), "the id list")
    with dataset_lock(out), Store(out) as store:
        _attach_quota(backend, store)
        store.add_pending((video_id, "", False) for video_id in shard_ids(ids, *shard))
        config = config or CollectConfig()
        return _collect(store, backend, http, config, progress, started, invalid)


def refresh(
    out: str | Path,
    *,
    backend: Backend,
    older_than: timedelta = timedelta(hours=12),
    config: CollectConfig | None = None,
    progress: Progress = SILENT,
) -> RefreshSummary:
    """Append a new view count for every row whose latest count is older than `older_than`.

    The old counts stay in `views_history`; the row's `views`/`collected_at` become the
    latest. Rows refreshed less than `older_than` ago are left alone, so a killed refresh
    re-run continues instead of starting over.
    """
    config = config or CollectConfig()
    if not (Path(out) / DB_NAME).exists():
        raise CollectError(f"{out} has no {DB_NAME}: nothing collected there to refresh")
    cutoff = (datetime.now(UTC) - older_than).isoformat(timespec="microseconds")
    with dataset_lock(out), Store(out) as store:
        _attach_quota(backend, store)
        ids = store.video_ids(collected_before=cutoff.replace("+00:00", "Z"))
        try:
            counts, stopped = _refresh_ids(store, backend, ids, config.workers, progress)
        finally:
            export_metadata(store.root, store)
    refreshed, unavailable, done = counts
    return RefreshSummary(refreshed, unavailable, _quota_used(backend), len(ids) - done, stopped)


def _refresh_ids(
    store: Store, backend: Backend, ids: Sequence[str], workers: int, progress: Progress
) -> tuple[tuple[int, int, int], str | None]:
    """Fetch views batch by batch in a pool, committing each batch; stops at the quota."""
    done = refreshed = unavailable = 0
    stopped = None
    pool = ThreadPoolExecutor(workers, thread_name_prefix="refresh")
    batches = _chunks(ids, backend.batch_size)
    try:
        with progress.task("refreshing", len(ids)) as advance:
            for batch, future in _bounded(pool, _views_of(backend), batches, 2 * workers):
                try:
                    updates = future.result()
                except QuotaExhausted:
                    stopped = "quota"
                    break
                except FetchError as e:  # these rows keep their old count and are retried next time
                    logger.warning("refresh of %d videos failed: %s", len(batch), e)
                    continue
                store.record_views(updates, utc_now())
                refreshed += len(updates)
                unavailable += len(batch) - len(updates)
                done += len(batch)
                advance(len(batch))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return (refreshed, unavailable, done), stopped


def _views_of(backend: Backend) -> Callable[[Sequence[str]], list[tuple[str, int]]]:
    def views(ids: Sequence[str]) -> list[tuple[str, int]]:
        results = backend.fetch(ids, subscribers=False)
        asked = set(ids)  # an answer for an id not asked for (crafted or not) is ignored
        return [
            (r.video_id, r.views)
            for r in results
            if isinstance(r, VideoInfo) and r.views is not None and r.video_id in asked
        ]

    return views


def _bounded(
    pool: ThreadPoolExecutor, fn: Callable, items: Iterator, limit: int
) -> Iterator[tuple]:
    """Like pool.map, in completion order, with at most `limit` tasks in flight."""
    inflight: dict[Future, object] = {}
    for item in items:
        inflight[pool.submit(fn, item)] = item
        if len(inflight) >= limit:
            done, _ = wait(inflight, return_when=FIRST_COMPLETED)
            for future in done:
                yield inflight.pop(future), future
    for future in list(inflight):
        yield inflight.pop(future), future
