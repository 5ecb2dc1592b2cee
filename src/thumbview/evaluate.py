"""Score a saved model folder on a labelled dataset it never saw (`thumbview evaluate`).

The model is loaded through the inference layer (any kind: a head on frozen features or a
fine-tuned network) and scored by the training workflow's own evaluation
(`predict.workflow.score_rows`), so `eval.json` written at training time and this report
compute the same numbers. Rows the model was trained on are excluded and counted.

It ends, as `train` does, with the verdict on the rows it scored (`Evaluation.skill`): the
MAE gain over the training median with the channel-clustered interval of
`predict.card.heldout_skill` (the function that writes card.json's verdict), and whether
same-channel calls beat a coin on these rows' pairs, so a model with no skill on this data
is told so in words.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from thumbview.data.dataset import ThumbnailDataset
from thumbview.embed.cache import finite_rows
from thumbview.fileio import json_safe
from thumbview.inference import LoadedPredictor
from thumbview.predict.card import POOLED, HeldOutSkill, heldout_skill
from thumbview.predict.crossval import EvalResult
from thumbview.predict.model import PredictorError, block_rows
from thumbview.predict.target import make_target
from thumbview.predict.workflow import (
    dataset_blocks,
    evaluation_plots,
    score_rows,
    shared_channels,
    training_ids,
)
from thumbview.progress import SILENT, Progress


# ----- evaluation ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Evaluation:
    """Scores of a saved model on a dataset; rows it was trained on are excluded and counted.

    skill: the verdict on the scored rows (`verdict_on_rows`), in the words `train` ends with.
    """

    result: EvalResult
    n_excluded_seen: int
    n_shared_channels: int
    plots: tuple[Path, ...]
    skill: HeldOutSkill | None = None

    def to_json_dict(self) -> dict:
        """`EvalResult.to_json_dict` + the exclusion counts + `verdict` (`skill_json`)."""
        extra = {
            "n_excluded_seen": self.n_excluded_seen,
            "n_shared_channels": self.n_shared_channels,
        }
        return {**self.result.to_json_dict(), **extra, "verdict": skill_json(self.skill)}


def evaluate(
    model_dir: Path,
    dataset: ThumbnailDataset,
    cache_dir: Path | None = None,
    out_dir: Path | None = None,
    progress: Progress = SILENT,
) -> Evaluation:
    """Metrics of a saved model and its baselines on rows it never saw."""
    loaded = LoadedPredictor.load(model_dir)
    model, encoders = loaded.model, loaded.encoders
    seen = training_ids(model_dir)
    keep = np.array([k not in seen for k in dataset.keys], dtype=bool)
    y, mask = make_target(dataset.views, model.config.target, dataset.channels)
    rows = np.flatnonzero(keep & mask)
    if len(rows) < 3:
        raise PredictorError(f"only {len(rows)} unseen rows with a target: nothing to evaluate on")
    blocks = dataset_blocks(dataset.subset(rows), encoders, cache_dir, progress)
    embedded = finite_rows(blocks)  # rows an encoder skipped (unreadable input) have no features
    blocks, rows = block_rows(blocks, embedded), rows[embedded]
    result = score_rows(model, Path(model_dir), blocks, y, dataset, rows)
    paths = evaluation_plots(model, blocks, y[rows], Path(out_dir)) if out_dir else []
    shared = shared_channels(model_dir, dataset, rows)
    skill = verdict_on_rows(model, blocks, y[rows], dataset.channels, rows, result.pairwise)
    return Evaluation(result, int((~keep).sum()), shared, tuple(paths), skill)


def verdict_on_rows(model, blocks, y, channels, rows, pairwise: dict | None) -> HeldOutSkill:
    """The held-out verdict on the scored rows: y (N,) their target, `blocks` their features.

    The same function as card.json's (`heldout_skill`: the gain over the model's TRAINING
    median, its interval clustered by channel); within-channel skill is the scored pairs'
    (`pairwise["skilful"]`, None when no two scored videos share a channel).
    """
    groups = None if channels is None else np.asarray(channels, dtype=object)[rows]
    within = None if not pairwise else pairwise.get("skilful")
    return heldout_skill(y, model.predict(blocks), model.y_median_, groups, within)


def skill_json(skill: HeldOutSkill | None) -> dict | None:
    """The verdict as JSON: its fields, `gain`, `beats_median` (True only when the interval
    lies above 0), `summary` (the sentence) and `no_skill_note` ("" when skill was shown)."""
    if skill is None:
        return None
    said = {"gain": skill.gain, "beats_median": skill.beats_median, "summary": skill.summary()}
    return json_safe({**asdict(skill), **said, "no_skill_note": skill.note(POOLED)})
