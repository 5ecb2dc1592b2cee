"""Frame ranking as background jobs: one worker thread, a bounded queue, stills by job id.

Ranking the frames of a video takes far longer than an HTTP request should, so `/frames`
queues a job and returns its id; the page polls for progress. One worker thread runs jobs
one at a time, so at most one extra model copy (the one `rank_frames` loads) is in memory.
Each job owns a `TemporaryDirectory` holding the upload and the stills; stills are served
by looking a name up in the job's own table, never by joining a client string to a path.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import secrets
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from thumbview.progress import Fractions

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")

# (video, out_dir, progress: thumbview.progress.Progress, **options) -> a result (a dataclass,
# or with to_json_dict()). The job hands it a `Fractions` reporter split by `shares`.
RankFn = Callable[..., Any]


class JobError(ValueError):
    """A job request that cannot be served (unknown id, queue full); `status` is the HTTP code."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass(eq=False)
class Job:
    """Mutable state of one job; the manager's lock guards every change."""

    id: str
    tmp: tempfile.TemporaryDirectory
    options: dict[str, Any]
    label: str = "video"  # the upload's display name, shown instead of server paths
    status: str = "queued"  # queued | running | done | failed
    progress: float = 0.0  # the whole job's fraction done, for the page's bar
    stage: str = ""  # what it is doing now ("scanning video", ...)
    result: dict[str, Any] | None = None
    error: str | None = None
    stills: dict[str, Path] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return Path(self.tmp.name)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.id,
            "status": self.status,
            "progress": round(self.progress, 4),
            "stage": self.stage,
            "result": self.result,
            "error": self.error,
        }


class FrameJobs:
    """Creates, runs, reports and cleans up frame-ranking jobs."""

    def __init__(
        self,
        rank: RankFn,
        max_active: int = 2,
        keep_finished: int = 8,
        shares: Sequence[float] = (1.0,),
    ):
        self._rank, self._shares = rank, tuple(shares)
        self._max_active = max_active
        self._keep_finished = keep_finished
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="thumbview-frames")

    def new(self, **options: Any) -> Job:
        """A job with its own temporary folder, or 429 when enough jobs are waiting already."""
        with self._lock:
            active = sum(j.status in ("queued", "running") for j in self._jobs.values())
            if active >= self._max_active:
                raise JobError(
                    f"{active} videos are already being ranked; try again when one finishes", 429
                )
            tmp = tempfile.TemporaryDirectory(prefix="thumbview-")
            job = Job(secrets.token_hex(12), tmp, options)
            self._jobs[job.id] = job
        return job

    def discard(self, job: Job) -> None:
        """Drop a job whose upload was refused before it ran."""
        with self._lock:
            self._jobs.pop(job.id, None)
        job.tmp.cleanup()

    def submit(self, job: Job, video: Path) -> None:
        self._pool.submit(self._run, job, video)

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise JobError(f"no frames job {job_id[:40]!r} (unknown or expired)", 404)
        return job

    def still(self, job_id: str, name: str) -> Path:
        path = self.get(job_id).stills.get(name)
        if path is None or not path.is_file():
            raise JobError("no such still in this job", 404)
        return path

    def close(self) -> None:
        """Stop the worker and delete every job folder (server shutdown)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            jobs, self._jobs = list(self._jobs.values()), OrderedDict()
        for job in jobs:
            job.tmp.cleanup()

    def _run(self, job: Job, video: Path) -> None:
        job.status = "running"
        out_dir = job.dir / "stills"
        out_dir.mkdir()

        def report(fraction: float, stage: str) -> None:
            job.progress, job.stage = fraction, stage

        try:
            result = self._rank(video, out_dir, Fractions(report, self._shares), **job.options)
            stills: dict[str, Path] = {}
            payload = to_jsonable(result, out_dir, f"/frames/{job.id}/stills/", stills)
            with self._lock:
                job.stills, job.result, job.progress, job.status = stills, payload, 1.0, "done"
        except ValueError as e:  # the library's human-readable errors, minus server paths
            self._fail(job, str(e).replace(str(video), job.label).replace(str(job.dir), ""))
        except Exception:
            log.exception("frames job %s failed", job.id)
            self._fail(job, "ranking the frames failed unexpectedly; see the server log")
        finally:
            video.unlink(missing_ok=True)
            self._evict()

    def _fail(self, job: Job, message: str) -> None:
        with self._lock:
            job.error, job.status = message, "failed"

    def _evict(self) -> None:
        """Keep the newest `keep_finished` finished jobs; older ones lose their folder."""
        with self._lock:
            finished = [j for j in self._jobs.values() if j.status in ("done", "failed")]
            old = finished[: max(len(finished) - self._keep_finished, 0)]
            for job in old:
                del self._jobs[job.id]
        for job in old:
            job.tmp.cleanup()


def to_jsonable(obj: Any, root: Path, url_prefix: str, stills: dict[str, Path]) -> Any:
    """JSON-safe copy of a result; image paths under `root` become URLs, other paths names.

    Server paths never reach the client: a file inside the job folder is registered in
    `stills` under its relative name and replaced by its URL; any other path by its name.
    """
    if hasattr(obj, "to_json_dict"):
        obj = obj.to_json_dict()
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v, root, url_prefix, stills) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v, root, url_prefix, stills) for v in obj]
    if isinstance(obj, np.generic | np.ndarray):
        return to_jsonable(obj.tolist(), root, url_prefix, stills)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, str) and os.path.isabs(obj):  # results carry paths as strings too
        obj = Path(obj)
    if isinstance(obj, Path):
        return _path_url(obj, root, url_prefix, stills)
    return obj


def _path_url(path: Path, root: Path, url_prefix: str, stills: dict[str, Path]) -> str:
    resolved, base = path.resolve(), root.resolve()
    if resolved.is_relative_to(base) and resolved.is_file() and _is_image(resolved):
        name = resolved.relative_to(base).as_posix()
        stills[name] = resolved
        return url_prefix + name
    return path.name


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES
