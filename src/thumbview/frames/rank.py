"""Pick thumbnail-worthy frames from a video: scan, score with the view predictor, diversify.

`rank_frames` is the library entry point (the CLI is a thin shell over it). Candidates come
from `extract.scan_video` (one per shot plus a uniform sample, minus black, blurry,
mid-transition and near-duplicate frames). Each is scored by the trained predictor, with the
video's title when given, and the top-k are chosen by maximal marginal relevance so they
are good *and* different: at most one frame per shot until every shot has been used, and a
penalty for looking like a frame already chosen.

Similarity for MMR is the cosine between the model's own image features (each image block
standardised with the model's block mean/scale, weighted 1/sqrt(D) as in the model's
design matrix): frames the model sees as alike count as alike. A model with no image
encoder (title only) falls back to the frames' HSV colour histograms (square-rooted, so the
cosine is the Bhattacharyya coefficient).
"""

from __future__ import annotations

import logging
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from thumbview.data.images import fit_frame
from thumbview.embed.base import Encoder
from thumbview.fileio import write_json
from thumbview.frames.extract import FramesError, ScanResult, grab_frames, scan_video
from thumbview.frames.select import SelectConfig, mmr_select
from thumbview.inference import LoadedPredictor
from thumbview.inference.verdict import chances, judge, rank_labels
from thumbview.layout import FRAMES_CONTACT_SHEET, FRAMES_JSON
from thumbview.predict.card import WITHIN_CHANNEL
from thumbview.predict.model import ViewPredictor
from thumbview.predict.target import to_views
from thumbview.progress import SILENT, Progress
from thumbview.units import format_range, format_views, interval_label

log = logging.getLogger(__name__)

CONTACT_SHEET = FRAMES_CONTACT_SHEET
FITS = ("crop", "letterbox")
# How the time of `rank_frames` splits between its two tasks, for a `Fractions` reporter.
PROGRESS_SHARES = (0.9, 0.1)


@dataclass(frozen=True)
class FramesConfig:
    """Every knob of frame ranking. `select` holds the shot/quality/duplicate thresholds."""

    sample_fps: float = 2.0  # frames analysed per second of video
    analysis_width: int = 320  # frames are scaled to this width for analysis and scoring
    keyframes_only: bool = False  # decode keyframes only: much faster, sparser sampling
    select: SelectConfig = SelectConfig()
    diversity: float = 0.3  # MMR weight of dissimilarity vs predicted views (0 = pure score)
    one_per_shot: bool = True  # no shot twice until every shot has one pick
    output_size: tuple[int, int] = (1280, 720)
    fit: str = "crop"  # "crop" to 16:9, or "letterbox" (black bars)
    jpeg_quality: int = 92

    def __post_init__(self) -> None:
        if not self.sample_fps > 0:
            raise FramesError(f"sample_fps must be > 0, got {self.sample_fps}")
        if self.analysis_width < 32:
            raise FramesError(f"analysis_width must be >= 32, got {self.analysis_width}")
        if not 0 <= self.diversity <= 1:
            raise FramesError(f"diversity must be in [0, 1], got {self.diversity}")
        if self.fit not in FITS:
            raise FramesError(f"fit must be one of {', '.join(FITS)}, got {self.fit!r}")
        if min(self.output_size) < 16:
            raise FramesError(f"output_size too small: {self.output_size}")


@dataclass(frozen=True)
class FrameChoice:
    """One chosen frame; views are view counts (log10 target) or channel multipliers."""

    timestamp_s: float
    shot_index: int
    predicted_views: float
    low: float
    high: float
    path: Path | None
    log10: float = 0.0  # the prediction in target units, for sorting and comparison


@dataclass(frozen=True)
class FramesResult:
    """Chosen frames, best predicted first, and what happened to the rest."""

    choices: tuple[FrameChoice, ...]
    skipped: dict[str, int] = field(hash=False)  # reason -> frames/candidates dropped
    n_sampled: int
    n_candidates: int
    n_shots: int
    duration_s: float
    target: str
    coverage: float  # the model's calibrated interval coverage (low/high of each choice)
    contact_sheet: Path | None = None
    json_path: Path | None = None
    # compare's one verdict on the chosen frames (`inference.verdict`): None/"" with one frame
    reliable: bool | None = None
    verdict: str = ""
    tied: int = 0  # how many from the top are not told apart (1: a clear leader)
    warning: str = ""  # the chosen stills far outside the training range, in one line
    note: str = ""  # how the chances were computed, when the user must know

    def rank_labels(self) -> list[str]:
        """'1', '2', ... with a clear leader; '=1' for each frame in a tie (as compare)."""
        tied = max(self.tied, 2) if self.reliable is False else 1
        return rank_labels(len(self.choices), tied, [c.log10 for c in self.choices])

    # What the numbers are and what was assumed (`LoadedPredictor.notes`), and one line when
    # the model showed no skill at choosing between one video's candidates ("" when it did).
    predicts: str = ""
    assumed: str = ""
    ignored: str = ""
    no_skill_note: str = ""

    def to_json_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rank_labels"] = self.rank_labels()
        d["choices"] = [
            {**asdict(c), "path": None if c.path is None else str(c.path)} for c in self.choices
        ]
        for key in ("contact_sheet", "json_path"):
            d[key] = None if d[key] is None else str(d[key])
        return d

    @property
    def interval_label(self) -> str:
        return interval_label(self.coverage)

    def shortfall(self, top: int) -> str | None:
        """Why fewer than `top` frames came back, in one line (None when `top` were found)."""
        if len(self.choices) >= top:
            return None
        return (
            f"only {len(self.choices)} of {top} frames: {self.n_shots} distinct shot(s) and "
            f"{self.n_candidates} candidate frame(s) passed the filters out of "
            f"{self.n_sampled} sampled ({_skips(self.skipped)})"
        )


def rank_frames(
    video: Path,
    predictor: LoadedPredictor,
    title: str = "",
    top: int = 5,
    out_dir: Path | None = None,
    config: FramesConfig = FramesConfig(),
    progress: Progress = SILENT,
    tie_reason: str = "",
    context: dict | None = None,
) -> FramesResult:
    """The `top` best, mutually different frames of `video` by predicted views.

    With `out_dir`: stills (JPEG, `config.output_size`), a contact sheet and frames.json.
    `predictor` is loaded once by the caller (`LoadedPredictor.load(dir)`), so a server
    ranks many videos with one copy of the model. Two tasks of `progress`: "scanning video",
    then "ranking frames" (`PROGRESS_SHARES` of the time, for a `Fractions` reporter).
    The result carries compare's verdict on the chosen stills; `tie_reason` forces "no
    reliable difference", as `compare(..., tie_reason)`, and so does a model without
    demonstrated within-channel skill (with its `no_skill_note`). `context`: the video's
    publication date, subscribers, channel size (see `compare`).
    """
    if top < 1:
        raise FramesError(f"top must be >= 1, got {top}")
    scan = scan_video(
        Path(video),
        config.select,
        analysis_width=config.analysis_width,
        sample_fps=config.sample_fps,
        keyframes_only=config.keyframes_only,
        progress=progress,
    )
    if not scan.candidates:
        raise FramesError(
            f"{video}: no usable frame among {scan.n_sampled} sampled ({_skips(scan.skipped)})"
        )
    with progress.task("ranking frames", 1 + (out_dir is not None)) as advance:
        notes = predictor.notes(WITHIN_CHANNEL, context)
        choices, said = _choose(predictor, scan, title, top, config, tie_reason or notes.no_skill,
                                context)  # fmt: skip
        result = FramesResult(tuple(choices), scan.skipped, scan.n_sampled, len(scan.candidates),
                              scan.n_shots, scan.duration_s, predictor.target,
                              predictor.coverage, **said, **notes.context.to_json_dict(),
                              no_skill_note=notes.no_skill)  # fmt: skip
        advance(1)
        if out_dir is not None:
            result = write_outputs(result, Path(video), Path(out_dir), title, config)
    log.info("%s: %d sampled, %d candidates, skipped %s", video, scan.n_sampled,
             len(scan.candidates), _skips(scan.skipped))  # fmt: skip
    return result


def _skips(skipped: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in skipped.items() if v) or "none skipped"


def _choose(
    predictor: LoadedPredictor,
    scan: ScanResult,
    title: str,
    top: int,
    config,
    tie_reason="",
    context: dict | None = None,
):
    """Score every candidate, pick a diverse set by MMR; (choices best-first, verdict fields).

    MMR decides *which* frames (so the top 5 are not one shot five times); the order shown
    to people is by predicted views, since that is what "rank 1" means to a creator.
    """
    cands = scan.candidates
    images = [Image.fromarray(c.rgb) for c in cands]
    blocks = predictor.blocks(images, [title] * len(images), context)
    pred = predictor.predict(blocks)  # (N,)
    lo, hi = predictor.intervals(blocks)  # at the model's own coverage
    hists = np.stack([c.hist for c in cands])  # (N, B)
    emb = diversity_embeddings(predictor.model, predictor.encoders, blocks, hists)
    shots = np.array([c.shot_index for c in cands]) if config.one_per_shot else None
    chosen = mmr_select(pred, emb, top, config.diversity, shots)
    order = sorted(chosen, key=lambda i: -pred[i])
    scale = to_views(predictor.target)
    choices = [
        FrameChoice(
            cands[i].timestamp_s,
            cands[i].shot_index,
            scale(pred[i]),
            scale(lo[i]),
            scale(hi[i]),
            None,
            float(pred[i]),
        )
        for i in order
    ]
    shown = {name: np.asarray(X)[order] for name, X in blocks.items()}  # (K, D) best first
    return choices, _verdict(predictor, pred[order], shown, choices, tie_reason)


def _verdict(predictor: LoadedPredictor, pred, blocks, choices, tie_reason) -> dict[str, Any]:
    """compare's verdict and out-of-range line for the chosen frames (`pred` (K,) best first)."""
    report = predictor.out_of_range(blocks, predicted=pred)
    out: dict[str, Any] = {"warning": (report.message() or "") if report is not None else ""}
    if len(choices) < 2:
        return out
    labels = [f"the frame at {c.timestamp_s:.1f}s" for c in choices]
    odds = chances(predictor, pred)
    said = judge(predictor, pred, blocks, labels, range(len(pred)), odds.beats, tie_reason)
    return {**out, "reliable": said.reliable, "verdict": said.text, "tied": said.tied,
            "note": odds.note}  # fmt: skip


def diversity_embeddings(
    model: ViewPredictor,
    encoders: dict[str, Encoder],
    blocks: dict[str, np.ndarray],
    hists: np.ndarray,
) -> np.ndarray:
    """(N, D) rows whose cosine says how alike two frames are (see the module docstring)."""
    parts = []
    for name in model.config.encoders:
        if encoders[name].modality != "image":
            continue
        X = np.asarray(blocks[name], dtype=np.float64)  # (N, D_k)
        parts.append((X - model.block_mean_[name]) / model.block_scale_[name] / np.sqrt(X.shape[1]))
    if not parts:
        return np.sqrt(np.asarray(hists, dtype=np.float64))  # (N, B)
    return np.concatenate(parts, axis=1)


def write_outputs(
    result: FramesResult, video: Path, out_dir: Path, title: str, config: FramesConfig
) -> FramesResult:
    """Full-resolution stills, contact sheet and frames.json; returns the result with paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = grab_frames(video, [c.timestamp_s for c in result.choices])
    choices, stills = [], []
    for rank, c in enumerate(result.choices, start=1):
        still = fit_frame(frames[c.timestamp_s], config.output_size, config.fit)
        path = out_dir / f"frame_{rank:02d}_{c.timestamp_s:08.2f}s.jpg"
        still.save(path, "JPEG", quality=config.jpeg_quality)
        choices.append(_replace_path(c, path))
        stills.append(still)
    sheet = out_dir / CONTACT_SHEET
    heading = f"{video.name}  {title}".strip()
    picture = contact_sheet(stills, choices, result.target, heading, result.rank_labels(),
                            result.verdict, result.warning)  # fmt: skip
    picture.save(sheet)
    result = _with_paths(result, tuple(choices), sheet, out_dir / FRAMES_JSON)
    payload = {"video": str(video), "title": title, "config": _config_json(config)}
    payload.update(result.to_json_dict())
    write_json(out_dir / FRAMES_JSON, payload)
    return result


def _replace_path(c: FrameChoice, path: Path) -> FrameChoice:
    return FrameChoice(**{**asdict(c), "path": path})


def _with_paths(result: FramesResult, choices, sheet: Path, json_path: Path) -> FramesResult:
    fields = {k: getattr(result, k) for k in result.__dataclass_fields__}
    return FramesResult(
        **{**fields, "choices": choices, "contact_sheet": sheet, "json_path": json_path}
    )


def _config_json(config: FramesConfig) -> dict[str, Any]:
    d = asdict(config)
    d["output_size"] = list(config.output_size)
    return d


def contact_sheet(
    stills: list[Image.Image],
    choices: list[FrameChoice],
    target: str,
    heading: str,
    ranks: list[str] | None = None,
    verdict: str = "",
    warning: str = "",
) -> Image.Image:
    """A grid of the chosen stills with rank ('=1' when tied), timestamp, shot and predicted
    views, under the heading, the verdict and the out-of-range line (each wrapped)."""
    cell_w, cell_h, text_h, cols = 384, 216, 50, min(3, max(1, len(stills)))
    rows = -(-len(stills) // cols)
    ranks = ranks or [str(k + 1) for k in range(len(stills))]
    font = ImageFont.load_default(size=14)
    top_lines = [heading[:120]] + [
        line for text in (verdict, f"warning: {warning}" if warning else "")
        for line in textwrap.wrap(text, 6 + cols * 46)
    ]  # fmt: skip
    top = 10 + 20 * len(top_lines)
    sheet = Image.new("RGB", (cols * cell_w, top + rows * (cell_h + text_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for j, line in enumerate(top_lines):
        colour = (150, 20, 20) if line.startswith("warning") else (0, 0, 0)
        draw.text((6, 6 + 20 * j), line, fill=colour, font=font)
    for i, (still, c) in enumerate(zip(stills, choices, strict=True)):
        x, y = (i % cols) * cell_w, top + (i // cols) * (cell_h + text_h)
        sheet.paste(still.resize((cell_w - 4, cell_h - 4)), (x + 2, y + 2))
        mins, secs = divmod(c.timestamp_s, 60)
        line1 = f"{ranks[i]}  {int(mins):02d}:{secs:04.1f}  shot {c.shot_index}"
        views = f"{format_views(c.predicted_views, target)} views"
        band = f"({format_range(c.low, c.high, target)})"
        draw.text((x + 6, y + cell_h + 2), line1, fill=(0, 0, 0), font=font)
        draw.text((x + 6, y + cell_h + 22), f"{views} {band}", fill=(0, 0, 0), font=font)
    return sheet
