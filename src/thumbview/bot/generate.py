"""Use a trained bot: generate candidates for a title, rank them, compare bot with base.

Ranking reuses the project's pieces: `LoadedPredictor.blocks` once, then its `predictions`
(views and the interval at the model's coverage) and compare's one verdict on the shown
candidates from those same features (`inference.verdict`: `chances` for the chance each is
the best, `judge` for whether the leader is reliably ahead or the top ones tie as "=1"), and
frames' `mmr_select` on colour histograms (so `--top` is not four near-copies).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from thumbview.bot.folder import BotConfig, Prompt, read_bot, save_grid
from thumbview.bot.policy import Policy, load_base
from thumbview.bot.reward import to_pil
from thumbview.fileio import atomic_write, json_safe
from thumbview.frames.select import hsv_histogram, mmr_select
from thumbview.inference import LoadedPredictor
from thumbview.inference.verdict import (
    CHANCE_BEST,
    chance_best_note,
    chance_best_shown,
    chance_text,
    chances,
    judge,
    rank_labels,
)
from thumbview.predict.card import WITHIN_CHANNEL

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One generated thumbnail: its seed, file (when saved), predicted views and interval."""

    seed: int
    file: str | None
    log10: float
    views: float
    low: float
    high: float
    p_best: float


@dataclass(frozen=True)
class Generation:
    """Candidates best first; `coverage` is the interval's level; `lora` False = base model."""

    title: str
    prompt: str
    candidates: tuple[Candidate, ...]
    coverage: float
    target: str
    lora: bool
    note: str = ""  # how P(best) was computed, when people must know (compare.FALLBACK_NOTE)
    # What the views are (after how long), what context was assumed, and one line when the
    # predictor showed no skill at choosing between one video's candidates (`ModelNotes`).
    predicts: str = ""
    assumed: str = ""
    ignored: str = ""
    no_skill_note: str = ""
    chance_best: str = CHANCE_BEST  # what "chance best" (`Candidate.p_best`) means, in words
    # compare's one verdict on the shown candidates (`inference.verdict.judge`); None/"" with
    # one candidate. `tied`: how many from the top it cannot tell apart (1: a clear leader).
    reliable: bool | None = None
    verdict: str = ""
    tied: int = 0

    def rank_labels(self) -> list[str]:
        """'1', '2', ... with a clear leader; '=1' for each candidate in a tie (as compare),
        every one of them under a predictor without demonstrated skill (compare's `tie`)."""
        n = len(self.candidates)
        tied = n if self.no_skill_note else max(self.tied, 2) if self.reliable is False else 1
        return rank_labels(n, tied, [c.log10 for c in self.candidates])

    @property
    def shows_chance_best(self) -> bool:
        """Compare's rule (`chance_best_shown`): no chance best when every candidate is "=1"."""
        n = len(self.candidates)
        return chance_best_shown(n, self.reliable, self.tied, self.no_skill_note)

    @property
    def chance_best_note(self) -> str:
        """The line under the candidates: what chance best means, or why it is not shown."""
        return chance_best_note(self.shows_chance_best, self.chance_best)

    def chance_text(self, p: float) -> str:
        """'55%', or '-' when no chance best is shown."""
        return chance_text(p, self.shows_chance_best)

    def to_json_dict(self) -> dict:
        """The fields, plus compare's keys: `rank_labels`, `chance_best_shown` (false: the
        `p_best` numbers are kept for reproducibility but are not a ranking; show "-") and
        `chance_best_note` (the line to show under the candidates)."""
        d = json_safe(asdict(self))
        d["rank_labels"] = self.rank_labels()
        d["chance_best_shown"] = self.shows_chance_best
        d["chance_best_note"] = self.chance_best_note
        return d


@dataclass
class LoadedBot:
    """A bot folder loaded once: its policy (base + its LoRA adapter) and config."""

    policy: Policy
    meta: dict
    config: BotConfig

    @classmethod
    def load(cls, bot_dir: str | Path, decoder: Callable | None = None) -> LoadedBot:
        """The bot's base with a fresh adapter of its rank, then its LoRA file copied in
        (`Policy.load_lora`: a file of other keys or shapes is a BotError, not a warning)."""
        meta = read_bot(bot_dir)
        config = BotConfig.from_dict(meta["config"])
        policy = Policy(load_base(meta["base"]), config.lora_rank, decoder)
        policy.load_lora(Path(bot_dir))
        return cls(policy, meta, config)

    def images(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        lora: bool = True,
        steps: int | None = None,
    ) -> list[Image.Image]:
        """Deterministic (eta 0) samples, one per (prompt, seed); `lora=False`: the base model."""
        cfg = replace(self.config.sample, eta=0.0, steps=steps or self.config.sample.steps)
        ctx = contextlib.nullcontext() if lora else self.policy.reference()
        import torch

        with ctx, torch.no_grad():
            rgb = self.policy.sample(list(prompts), list(seeds), cfg).rgb
        return [to_pil(x) for x in rgb]


def rank(
    predictor: LoadedPredictor,
    images: list[Image.Image],
    title: str,
    seeds: Sequence[int],
    top: int | None,
    diversity: float = 0.3,
) -> tuple[list[int], list, dict[str, np.ndarray]]:
    """(indices shown, best first; every image's Prediction; the shown ones' features
    {encoder: (K, D)} best first, kept for the verdict). MMR picks `top` diverse ones first."""
    for message in predictor.missing_inputs([title]):
        log.warning(message)
    blocks = predictor.blocks(images, [title] * len(images))  # {encoder: (N, D)}, once
    preds = predictor.predictions(blocks, [str(s) for s in seeds], [title] * len(images))
    log10 = np.array([p.log10 for p in preds])  # (N,)
    chosen = list(range(len(images)))
    if top and top < len(images):
        hists = np.stack([hsv_histogram(np.asarray(img)) for img in images])  # (N, bins)
        chosen = mmr_select(log10, hists, top, diversity)
    chosen.sort(key=lambda i: -log10[i])
    return chosen, preds, {name: np.asarray(X)[chosen] for name, X in blocks.items()}


def verdict(predictor: LoadedPredictor, pred: np.ndarray, blocks, seeds, tie_reason: str):
    """(P(best) (K,), compare's verdict fields) for the shown candidates, `pred` (K,) and
    `blocks` {encoder: (K, D)} best first: the same `chances` and `judge` as compare and
    frames, so close candidates tie as "=1" there and here. `tie_reason` (the no-skill
    line) ties them all."""
    odds = chances(predictor, pred)
    out = {"note": odds.note}
    if len(pred) < 2:
        return odds.best, out
    labels = [f"the image of seed {s}" for s in seeds]
    said = judge(predictor, pred, blocks, labels, range(len(pred)), odds.beats, tie_reason)
    return odds.best, {**out, "reliable": said.reliable, "verdict": said.text, "tied": said.tied}


def generate(
    bot: LoadedBot,
    title: str,
    prompt: str | None = None,
    n: int = 8,
    top: int | None = None,
    seed: int = 0,
    lora: bool = True,
    model_dir: str | Path | None = None,
    out: str | Path | None = None,
    steps: int | None = None,
    sink: dict | None = None,
) -> Generation:
    """n candidates for `title`, scored by the predictor, the shown ones best first.

    `sink`, when given, receives {seed: PNG bytes} of the shown images (the web panel).
    """
    predictor = LoadedPredictor.load(model_dir or bot.meta["predictor"])
    seeds = [seed + i for i in range(n)]
    images = bot.images([prompt or title] * n, seeds, lora, steps)
    chosen, preds, shown = rank(predictor, images, title, seeds, top)
    notes = predictor.notes(WITHIN_CHANNEL)
    pred = np.array([preds[i].log10 for i in chosen])  # (K,) best first
    pb, said = verdict(predictor, pred, shown, [seeds[i] for i in chosen], notes.no_skill)
    files = _write(images, chosen, seeds, out)
    if sink is not None:
        sink.update({str(seeds[i]): png_bytes(images[i]) for i in chosen})
    cands = tuple(
        Candidate(
            seeds[i],
            files[k],
            preds[i].log10,
            preds[i].views,
            preds[i].low,
            preds[i].high,
            float(pb[k]),
        )
        for k, i in enumerate(chosen)
    )
    result = Generation(
        title, prompt or title, cands, predictor.coverage, predictor.target, lora,
        **notes.context.to_json_dict(), no_skill_note=notes.no_skill, **said,
    )  # fmt: skip
    if out is not None:
        atomic_write(
            Path(out) / "generation.json", json.dumps(result.to_json_dict(), indent=2) + "\n"
        )
    return result


def _write(images, chosen, seeds, out) -> list[str | None]:
    if out is None:
        return [None] * len(chosen)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for k, i in enumerate(chosen):
        path = out / f"{k + 1:02d}_seed{seeds[i]}.png"
        atomic_write(path, lambda tmp, img=images[i]: img.save(tmp, "PNG"))
        files.append(str(path))
    return files


@dataclass(frozen=True)
class EvalResult:
    """Base vs bot on the same seeds, scored by `model`: mean log10 views and bot's win rate."""

    model: str
    n: int
    base_log10: float
    bot_log10: float
    win_rate: float
    grid: str | None


def evaluate_bot(
    bot: LoadedBot,
    prompts: Sequence[Prompt],
    model_dir: str | Path,
    seeds: int = 2,
    out: str | Path | None = None,
) -> EvalResult:
    """Fixed seeds per held-out prompt; win = the bot's image predicted above the base's."""
    predictor = LoadedPredictor.load(model_dir)
    image_prompts = [p.image_prompt for p in prompts for _ in range(seeds)]
    titles = [p.title for p in prompts for _ in range(seeds)]
    seed_list = [20_000 + s for _ in prompts for s in range(seeds)]
    base = bot.images(image_prompts, seed_list, lora=False)
    tuned = bot.images(image_prompts, seed_list, lora=True)
    score = lambda imgs: predictor.predict(predictor.blocks(imgs, titles))  # noqa: E731
    b, t = score(base), score(tuned)
    grid = None
    if out is not None:
        pairs = [img for pair in zip(base, tuned, strict=True) for img in pair]
        grid = str(save_grid(pairs, 2, Path(out) / "base_vs_bot.png"))
    return EvalResult(
        str(model_dir), len(b), float(b.mean()), float(t.mean()), float((t > b).mean()), grid
    )


def png_bytes(image: Image.Image) -> bytes:
    """The PNG file of an image, in memory (what the web panel sends as base64)."""
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()
