"""The loaded models behind the web app, and the micro-batcher in front of /predict.

Models load once, at start-up, through `thumbview.inference` (`LoadedPredictor`,
`SaeEncoder`), so a missing or broken model folder stops `serve` before it listens.
Every model call takes one lock, so concurrent requests never multiply memory. Concurrent
/predict requests are not served one by one behind that lock: a `MicroBatcher` gathers
those that arrive within a few milliseconds of each other into one encoder call (one
batched OCR / text-model pass instead of N), and hands each request its own row.

Every model call runs in a worker thread (the batcher's for /predict, a second one for
/compare and /explain), never in the request's: the request waits at most
`compute_timeout_s` and then answers 503, and a call that never returns (a hostile model
folder, a deadlock) holds one daemon thread, not the server. While a call has run past the
deadline, new requests get the 503 at once instead of queueing behind it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from thumbview import __version__
from thumbview.inference import LoadedPredictor, SaeEncoder
from thumbview.layout import find_study_dir
from thumbview.serve.uploads import DecodedImage, UploadError

log = logging.getLogger(__name__)

EXAMPLE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Batching:
    """How concurrent /predict requests are gathered into one model call.

    window_s: how long the first request of a batch waits for others to join (seconds);
        requests that arrive while the model is busy join the next batch without waiting.
    max_batch: the most requests in one call (bounds memory per call).
    """

    window_s: float = 0.015
    max_batch: int = 32

    def __post_init__(self) -> None:
        if not 0 <= self.window_s <= 1 or self.max_batch < 1:
            raise ValueError(f"Batching needs 0 <= window_s <= 1 and max_batch >= 1: {self}")


# glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after
# which the encoders' image-sized buffers come from per-thread heaps that fragment and never
# shrink: serving 32-image batches then held ~2x the memory of single requests
# (BENCHMARKS.md). A fixed threshold keeps blocks this large mmapped and returned on free.
MMAP_THRESHOLD_BYTES = 8 * 1024 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt parameter number, from glibc's <malloc.h>


def steady_heap(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold for this process; False where the C library is not glibc.

    A long-running server calls it once at start-up; batch jobs need not (their peak, not
    their steady state, is what counts).
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        log.debug("no glibc mallopt here (%s); heap left as the C library sets it", name)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))


class MicroBatcher(Generic[T, R]):
    """`submit(item)` from many threads; one worker thread runs `run(items)` on batches.

    `run` maps a list of items to a list of results of the same length. When a batch
    fails, its items are retried one by one, so a bad item fails only its own request.
    `submit(item, timeout)` raises TimeoutError when the result is not there in time (and
    at once while the worker has been busy longer than that with an earlier batch).
    """

    def __init__(self, run: Callable[[list[T]], list[R]], batching: Batching = Batching()):
        self._run, self._batching = run, batching
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batch_sizes: list[int] = []  # for tests and benchmarks: the size of each call
        self._busy_since: float | None = None  # when the running batch started

    def submit(self, item: T, timeout: float | None = None) -> R:
        """The result for `item`, computed in a batch with whatever else is waiting."""
        busy_since = self._busy_since
        if timeout is not None and busy_since is not None:
            if time.monotonic() - busy_since > timeout:
                raise TimeoutError(f"busy for over {timeout:g} s with an earlier request")
        future: Future = Future()
        self._ensure_worker()
        self._queue.put((item, future))
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()  # not started yet: the worker skips it
            raise TimeoutError(f"no result within {timeout:g} s") from None

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)

    def _ensure_worker(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="thumbview-batcher", daemon=True
                )
                self._thread.start()

    def _loop(self) -> None:
        while (first := self._queue.get()) is not None:
            batch, stop = self._gather(first)
            batch = [(i, f) for i, f in batch if f.set_running_or_notify_cancel()]
            self._busy_since = time.monotonic()
            try:
                if batch:
                    self._serve(batch)
            finally:
                self._busy_since = None
            if stop:
                return

    def _gather(self, first) -> tuple[list, bool]:
        """`first` plus what arrives within the window (and what already waits), up to max."""
        batch, deadline = [first], time.monotonic() + self._batching.window_s
        while len(batch) < self._batching.max_batch:
            remaining = deadline - time.monotonic()
            try:  # after the window, take only what is already waiting
                item = (
                    self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get(False)
                )
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _serve(self, batch: list) -> None:
        self.batch_sizes.append(len(batch))
        try:
            results = self._run([item for item, _ in batch])
        except Exception as e:
            if len(batch) == 1:
                batch[0][1].set_exception(e)
                return
            for one in batch:  # find the item that failed; the others still get answers
                self._serve([one])
            return
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)


class Engine:
    """The loaded models behind one lock: the only place requests touch them."""

    def __init__(
        self,
        predictor: LoadedPredictor,
        sae: SaeEncoder | None = None,
        study: Any = None,
        batching: Batching = Batching(),
        compute_timeout_s: float | None = None,
    ):
        self.predictor, self.sae, self.study = predictor, sae, study
        self.compute_timeout_s = compute_timeout_s
        self.lock = threading.Lock()
        self.batcher: MicroBatcher = MicroBatcher(self._predict_rows, batching)
        # /compare and /explain: one at a time in their own worker, under the same deadline.
        self.calls: MicroBatcher = MicroBatcher(_call_each, Batching(window_s=0, max_batch=1))

    @classmethod
    def load(
        cls,
        model_dir: Path,
        sae_dir: Path | None = None,
        study_dir: Path | None = None,
        batching: Batching = Batching(),
        compute_timeout_s: float | None = None,
    ) -> Engine:
        """Load everything now: a bad folder fails here, before the server listens."""
        predictor = LoadedPredictor.load(model_dir)
        study_dir = study_dir or find_study_dir(sae_dir)
        if sae_dir is None or study_dir is None:
            if sae_dir is not None or study_dir is not None:
                log.warning("explanations need both an SAE and its study; /explain is disabled")
            return cls(predictor, batching=batching, compute_timeout_s=compute_timeout_s)
        from thumbview.sae.explain import load_study

        sae, study = SaeEncoder.load(sae_dir), load_study(study_dir)
        return cls(predictor, sae, study, batching, compute_timeout_s)

    def close(self) -> None:
        """Stop the workers (a call still running is left to finish: threads are daemons)."""
        self.batcher.close()
        self.calls.close()

    def _within_deadline(self, batcher: MicroBatcher, item: Any) -> Any:
        """`batcher.submit(item)` under the compute deadline; 503 in words when it passes."""
        try:
            return batcher.submit(item, self.compute_timeout_s)
        except TimeoutError as e:
            log.warning("model call refused or abandoned: %s", e)
            raise UploadError(
                f"the model did not answer within {self.compute_timeout_s:g} s ({e}); "
                "try again later",
                503,
            ) from None

    @property
    def coverage(self) -> float:
        return self.predictor.coverage

    # ----- predict: micro-batched ---------------------------------------------------------
    def predict(self, image: DecodedImage, title: str, context: dict | None = None) -> dict:
        """One image x one title, computed together with concurrent requests, under the compute
        deadline; `context` (`uploads.clean_context`) is the video's date, subscribers and
        channel size."""
        return self._within_deadline(self.batcher, (image, title, context or {}))

    def notes(self, question: str, context: dict | None = None) -> dict[str, str]:
        """What a result predicts, assumed and ignored, and the no-skill line (`ModelNotes`)."""
        return self.predictor.notes(question, context or {}).to_json_dict()

    def _predict_rows(self, rows: list[tuple[DecodedImage, str, dict]]) -> list[dict[str, Any]]:
        """(image, title, context) rows -> one prediction each, one encoder call per context
        (concurrent requests for different videos may share a batch)."""
        out: list[dict[str, Any] | None] = [None] * len(rows)
        groups: dict[str, list[int]] = {}
        for k, (_, _, context) in enumerate(rows):
            groups.setdefault(json.dumps(context, sort_keys=True), []).append(k)
        with self.lock:
            for ks in groups.values():
                found = self.predictor.predict_rows(
                    [rows[k][0].image for k in ks],
                    [rows[k][0].name for k in ks],
                    [rows[k][1] for k in ks],
                    rows[ks[0]][2],
                )
                for k, p in zip(ks, found, strict=True):
                    out[k] = asdict(p)
        return out

    # ----- compare, explain ---------------------------------------------------------------
    def compare(
        self, images: list[DecodedImage], titles: list[str], context: dict | None = None
    ) -> dict[str, Any]:
        from thumbview.compare import compare

        p, sae = self.predictor, self.sae if self.study is not None else None

        def run():
            with self.lock:
                return compare(
                    p,
                    [d.image for d in images],
                    [d.name for d in images],
                    titles or [""],
                    study=self.study,
                    sae=sae,
                    context=context or {},
                )

        result = self._within_deadline(self.calls, run)
        # `images` in upload order lets the page match candidates to its previews.
        return {"images": [d.name for d in images], **result.to_json_dict()}

    def require_study(self) -> None:
        if self.study is None or self.sae is None:
            raise UploadError(
                "explanations are not available: start the server with an SAE and its study "
                "(thumbview serve --sae DIR)",
                409,
            )

    def explain(self, image: DecodedImage, top: int) -> list[dict[str, Any]]:
        self.require_study()
        from thumbview.sae.explain import explain_latents

        def run():
            with self.lock:
                z = self.sae.latents([image.image])[0]  # (d_sae,)
            return [_feature_json(f) for f in explain_latents(z, self.study, top)]

        return self._within_deadline(self.calls, run)

    def example(self, latent: int, k: int) -> Path:
        """A study thumbnail for a latent: looked up in the study, not built from the URL."""
        names = self.study.examples.get(latent, ()) if self.study else ()
        root = self.study.dataset_root if self.study else None
        path = root / names[k] if root is not None and 0 <= k < len(names) else None
        if path is None or path.suffix.lower() not in EXAMPLE_SUFFIXES or not path.is_file():
            raise UploadError("no such example thumbnail", 404)
        return path

    def health(self) -> dict[str, Any]:
        cfg = self.predictor.model.config
        return {
            "status": "ok",
            "version": __version__,
            "model": self.predictor.model_dir.name,
            "encoders": list(cfg.encoders),
            "target": self.predictor.target,
            "coverage": self.coverage,
            "explain": self.study is not None,
            "reads_context": self.predictor.reads_context,
            "predicts": self.predictor.notes().context.predicts,
        }


def _call_each(calls: list[Callable[[], Any]]) -> list[Any]:
    return [call() for call in calls]


def _feature_json(f) -> dict[str, Any]:
    return {
        "latent": f.latent,
        "name": getattr(f, "name", None),  # the ImageNet classes an imagenet SAE's latent moves
        "activation": f.activation,
        "ratio": f.ratio,
        "q": f.q,
        "group_views": f.group_views,
        "examples": [f"/explain/examples/{f.latent}/{i}" for i in range(len(f.examples))],
    }
