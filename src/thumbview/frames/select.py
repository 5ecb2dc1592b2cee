"""Pure frame selection: shot changes from colour histograms, quality filters, MMR diversity.

Nothing here touches a file. Decoding (`extract`) feeds small RGB arrays, one per sampled
frame, into a `ShotTracker`; the tracker decides online which frames are worth scoring,
so only those are kept in memory and a two-hour video costs no more RAM than a clip.

Shot changes use the Hellinger distance between HSV histograms (0 identical, 1 disjoint):
it ignores small motion and compression noise but jumps when the scene changes. A frame is
"stable" when its change to at least one neighbour is small; a cut is declared when a stable
frame differs from the previous stable frame by more than `cut_threshold`, which catches hard
cuts and dissolves/fades alike (the frames in between have high change to both neighbours and
are skipped as transitions, so the distance is taken across the whole dissolve).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np

HIST_BINS = (8, 4, 4)  # hue, saturation, value
SKIP_REASONS = ("black", "blurry", "transition", "duplicate", "capacity")


@dataclass(frozen=True)
class SelectConfig:
    """Thresholds of the pure selection (defaults tuned on 320-px-wide frames)."""

    cut_threshold: float = 0.35  # Hellinger distance between stable frames that starts a shot
    fade_threshold: float = 0.12  # change to both neighbours above this = mid-transition
    transition_max_gap_s: float = 1.0  # ... only when both neighbours are this close in time
    cut_guard_s: float = 0.25  # frames this soon after a detected cut are skipped
    black_threshold: float = 0.07  # mean luma (0-1) below this = black frame
    blur_threshold: float = 10.0  # Laplacian variance below this = blurry (flat graphics ~20-80)
    blur_relative: float = 0.1  # ... or below this share of the video's median sharpness
    uniform_every_s: float = 10.0  # also a candidate every this many seconds
    duplicate_threshold: float = 0.1  # histogram distance below this ...
    duplicate_pixel_threshold: float = 0.08  # ... and mean |difference| of 16x9 greys = duplicate
    max_candidates: int = 400  # memory bound: candidates kept at analysis size


@dataclass(frozen=True)
class FrameMeasures:
    """What selection needs from one sampled frame (the pixels ride along as `rgb`)."""

    timestamp_s: float
    hist: np.ndarray  # (B,) float32, sums to 1
    brightness: float  # mean luma, 0-1
    sharpness: float  # Laplacian variance
    rgb: np.ndarray = field(repr=False)  # (h, w, 3) uint8 analysis-size frame


@dataclass(frozen=True)
class Candidate:
    """A frame worth scoring: the best of its shot, or a uniform sample."""

    timestamp_s: float
    shot_index: int
    source: str  # "shot" | "uniform"
    hist: np.ndarray = field(repr=False)
    sharpness: float
    rgb: np.ndarray = field(repr=False)


def hsv_histogram(rgb: np.ndarray, bins: tuple[int, int, int] = HIST_BINS) -> np.ndarray:
    """Normalised joint HSV histogram (prod(bins),) float32."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, list(bins), [0, 180, 0, 256, 0, 256])
    hist = hist.ravel().astype(np.float32)
    return hist / max(float(hist.sum()), 1.0)


def hellinger(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hellinger distance between histograms a (..., B) and b (..., B), in [0, 1]."""
    bc = np.sqrt(np.clip(a, 0, None) * np.clip(b, 0, None)).sum(axis=-1)
    return np.sqrt(np.clip(1.0 - bc, 0.0, 1.0))


def measure(rgb: np.ndarray, timestamp_s: float) -> FrameMeasures:
    """Histogram, brightness and sharpness of one analysis-size RGB frame."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)  # (h, w) uint8
    sharp = float(cv2.Laplacian(gray, cv2.CV_64F).var())
    return FrameMeasures(timestamp_s, hsv_histogram(rgb), float(gray.mean()) / 255.0, sharp, rgb)


class ShotTracker:
    """Online shot detection and candidate choice over a stream of `FrameMeasures`.

    `push` each sampled frame in time order, then `finish`; both yield `Candidate`s as soon
    as they are final. Memory: one frame of look-ahead, the current shot's best frame and a
    pending uniform sample. `skipped` counts frames dropped per reason; `sharpness` keeps
    every sampled frame's sharpness (one float each) for the relative blur filter.
    """

    def __init__(self, config: SelectConfig = SelectConfig()):
        self.config = config
        self.skipped = dict.fromkeys(SKIP_REASONS, 0)
        self.sharpness: list[float] = []
        self.n_shots = 0
        self._prev: FrameMeasures | None = None  # waits for its successor's distance
        self._prev_change, self._prev_gap = 0.0, np.inf
        self._anchor: np.ndarray | None = None  # histogram of the last stable frame
        self._shot_start = -np.inf
        self._best: Candidate | None = None
        self._next_uniform = 0.0

    def push(self, frame: FrameMeasures) -> Iterator[Candidate]:
        self.sharpness.append(frame.sharpness)
        change, gap = 0.0, np.inf
        if self._prev is not None:
            change = float(hellinger(self._prev.hist, frame.hist))
            gap = frame.timestamp_s - self._prev.timestamp_s
            near = max(gap, self._prev_gap) <= self.config.transition_max_gap_s
            yield from self._decide(self._prev, self._prev_change, change if near else 0.0, near)
        self._prev, self._prev_change, self._prev_gap = frame, change, gap

    def finish(self) -> Iterator[Candidate]:
        if self._prev is not None:
            yield from self._decide(self._prev, self._prev_change, 0.0, dense=True)
            self._prev = None
        if self._best is not None:
            yield self._best
            self._best = None

    def _decide(
        self, f: FrameMeasures, before: float, after: float, dense: bool
    ) -> Iterator[Candidate]:
        """Skip reasons in order black, transition, guard, blurry; else a candidate.

        With sparse sampling (`dense` False: a neighbour further than `transition_max_gap_s`,
        e.g. keyframes only) every frame differs from both neighbours and keyframes sit on
        the cuts, so neither the transition rule nor the cut guard applies.
        """
        cfg = self.config
        if f.brightness < cfg.black_threshold:
            self.skipped["black"] += 1
            return
        if before > cfg.fade_threshold and after > cfg.fade_threshold:
            self.skipped["transition"] += 1
            return
        if self._anchor is None or float(hellinger(self._anchor, f.hist)) > cfg.cut_threshold:
            yield from self._new_shot(f.timestamp_s)
        self._anchor = f.hist
        if dense and f.timestamp_s - self._shot_start < cfg.cut_guard_s and self.n_shots > 1:
            self.skipped["transition"] += 1
            return
        if f.sharpness < cfg.blur_threshold:
            self.skipped["blurry"] += 1
            return
        yield from self._consider(f)

    def _new_shot(self, t: float) -> Iterator[Candidate]:
        if self._best is not None:
            yield self._best
        self._best, self._shot_start = None, t
        self.n_shots += 1

    def _consider(self, f: FrameMeasures) -> Iterator[Candidate]:
        shot = self.n_shots - 1
        if f.timestamp_s >= self._next_uniform:
            self._next_uniform = f.timestamp_s + self.config.uniform_every_s
            yield Candidate(f.timestamp_s, shot, "uniform", f.hist, f.sharpness, f.rgb)
        elif self._best is None or f.sharpness > self._best.sharpness:
            self._best = Candidate(f.timestamp_s, shot, "shot", f.hist, f.sharpness, f.rgb)


class CandidatePool:
    """At most `max_candidates` candidates with no two near-duplicates (sharper one kept).

    When full, a new candidate is merged with its nearest neighbour instead of growing the
    pool: memory stays bounded and the pool keeps its spread over the video.
    """

    def __init__(self, config: SelectConfig = SelectConfig()):
        self.config = config
        self.items: list[Candidate] = []
        self._tiny: list[np.ndarray] = []  # (9, 16) grey thumbnails, aligned with items
        self.skipped = {"duplicate": 0, "capacity": 0}

    def add(self, cand: Candidate) -> None:
        tiny = tiny_gray(cand.rgb)
        if not self.items:
            self.items.append(cand)
            self._tiny.append(tiny)
            return
        hists = np.stack([c.hist for c in self.items])  # (M, B)
        dist = hellinger(hists, cand.hist[None, :])  # (M,)
        pixels = np.abs(np.stack(self._tiny) - tiny).mean(axis=(1, 2))  # (M,)
        cfg = self.config
        dup = (dist < cfg.duplicate_threshold) & (pixels < cfg.duplicate_pixel_threshold)
        full = len(self.items) >= cfg.max_candidates
        if dup.any() or full:
            nearest = (
                int(np.argmin(np.where(dup, dist, np.inf))) if dup.any() else int(np.argmin(dist))
            )
            self.skipped["duplicate" if dup.any() else "capacity"] += 1
            if cand.sharpness > self.items[nearest].sharpness:
                self.items[nearest], self._tiny[nearest] = cand, tiny
            return
        self.items.append(cand)
        self._tiny.append(tiny)


def tiny_gray(rgb: np.ndarray) -> np.ndarray:
    """(9, 16) grey thumbnail in [0, 1]: layout, which a colour histogram ignores."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.resize(gray, (16, 9), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def drop_blurry(
    candidates: list[Candidate], all_sharpness: np.ndarray, config: SelectConfig
) -> tuple[list[Candidate], int]:
    """Drop candidates far less sharp than the video's typical frame; returns (kept, n_dropped).

    The absolute threshold misses soft footage in a sharp video; this relative one needs
    the whole video's sharpness, known only at the end.
    """
    if len(all_sharpness) == 0:
        return candidates, 0
    floor = config.blur_relative * float(np.median(all_sharpness))
    kept = [c for c in candidates if c.sharpness >= floor]
    return kept, len(candidates) - len(kept)


def mmr_select(
    relevance: np.ndarray,
    embeddings: np.ndarray,
    k: int,
    diversity: float = 0.3,
    groups: np.ndarray | None = None,
) -> list[int]:
    """Maximal marginal relevance: indices of `k` items, in pick order.

    Each pick maximises (1 - diversity) * relevance - diversity * max cosine similarity to the
    items already picked. Relevance (N,) is min-max scaled to [0, 1] so `diversity` means the
    same for any score units. With `groups` (N,) (shot ids) no group is picked twice until
    every group has been used once.
    """
    rel = np.asarray(relevance, dtype=np.float64)  # (N,)
    span = rel.max() - rel.min() if len(rel) else 0.0
    rel = (rel - rel.min()) / span if span > 0 else np.zeros_like(rel)
    emb = np.asarray(embeddings, dtype=np.float64)  # (N, D)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sim = emb @ emb.T  # (N, N)
    chosen: list[int] = []
    max_sim = np.full(len(rel), -1.0)  # (N,) similarity to the closest chosen item
    while len(chosen) < min(k, len(rel)):
        score = (1 - diversity) * rel - diversity * (max_sim if chosen else 0.0)
        score[chosen] = -np.inf
        if groups is not None:
            used = {groups[i] for i in chosen}
            if len(used) < len(set(groups.tolist())):
                score[np.isin(groups, list(used))] = -np.inf
        best = int(np.argmax(score))
        chosen.append(best)
        max_sim = np.maximum(max_sim, sim[best])
    return chosen
