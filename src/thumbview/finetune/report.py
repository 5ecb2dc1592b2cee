"""Write a fine-tuned model folder with the same conventions as `thumbview train`:
model + config, encoders.json, training.json (rows it saw), baselines/, eval.json, card.json,
pairwise/pairwise.json, plots.

The pairwise calibration (P(A beats B) for one video's candidates, `predict.pairwise`) is
fitted by `train`'s own `calibrate_pairs`, on the network's predictions for the rows its
weights never saw: the validation and the hold-out channels (disjoint, so no pair spans
the two). Its skill is cross-fitted there (each pair scored by a sigma fitted on other
channels' pairs), so a network that orders nothing within a channel is not called skilful.
There are no fold models (one network is not refitted K times): verdicts skip the jackknife.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from thumbview.embed.title import TitleEncoder
from thumbview.fileio import write_json
from thumbview.finetune.encoders import PixelEncoder, TitleTokenEncoder
from thumbview.finetune.model import FinetunedPredictor
from thumbview.finetune.range import fit_range, heldout_chunks, save_range
from thumbview.predict import plots
from thumbview.predict.card import write_card
from thumbview.predict.crossval import EvalResult, compute_metrics
from thumbview.predict.model import PredictorConfig, ViewPredictor
from thumbview.predict.pairwise import (
    PAIRWISE_DIR,
    PairwiseError,
    PairwiseModel,
    calibrate_pairs,
)
from thumbview.predict.workflow import EVAL_FILE, write_training_record

log = logging.getLogger(__name__)


def _title_baseline(cfg, titles, y, split, out_dir: Path) -> ViewPredictor | None:
    """A frozen-title model's title-only ridge (saved under baselines/title), else None."""
    if cfg.title != "frozen":
        return None
    single = PredictorConfig(encoders=("title",), target=cfg.target, seed=cfg.seed)
    baseline = ViewPredictor(single).fit({"title": titles[split.train]}, y[split.train],
                                         calibrate=False)  # fmt: skip
    baseline.save(out_dir / "baselines" / "title")
    return baseline


def _heldout(split, val_pred, test_pred) -> tuple[np.ndarray, np.ndarray]:
    """(rows (N,), predictions (N,)) of the validation and hold-out rows that have them."""
    parts = [(split.val, val_pred), (split.test, test_pred)]
    parts = [(r, np.asarray(p, np.float64)) for r, p in parts if p is not None and len(r)]
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate([r for r, _ in parts]), np.concatenate([p for _, p in parts])


def fit_pairwise(out_dir: Path, dataset, rows, pred, y, seed: int = 0) -> bool | None:
    """`pairwise/pairwise.json` from held-out predictions `pred` (N,) of `rows` (N,) of the
    dataset (`y`: the whole target); returns its `skilful` (None: not checked, or no file:
    no channel ids, or no two held-out videos of one channel)."""
    shutil.rmtree(Path(out_dir) / PAIRWISE_DIR, ignore_errors=True)  # never an older run's
    if dataset.channels is None or not len(rows):
        log.warning("no calibrated P(A beats B) for this model: no held-out channels")
        return None
    try:
        cal = calibrate_pairs(pred, y[rows], dataset.channels[rows], seed=seed)
    except PairwiseError as e:
        log.warning("no calibrated P(A beats B) for this model: %s", e)
        return None
    PairwiseModel.from_calibration(cal).save(out_dir)
    log.info("pairwise sigma %.3f on %d held-out pairs; skilful %s", cal.sigma, cal.n_pairs,
             cal.skilful)  # fmt: skip
    return cal.skilful


def _record_range(model: FinetunedPredictor, dataset, split, y, titles, out_dir: Path) -> None:
    """training_range.json of the validation and hold-out rows, which the weights never
    trained on (`finetune.range`); none when there are too few of them."""
    rows = np.concatenate([split.val, split.test])
    groups = None if dataset.channels is None else dataset.channels[rows]
    chunks = heldout_chunks(model, [str(p) for p in dataset.paths], titles, rows)
    save_range(fit_range(model, chunks, y[rows], groups), out_dir)


def finish(
    model: FinetunedPredictor, dataset, split, y, titles, test_pred, out_dir: Path, val_pred=None
):
    """Save everything; score the hold-out when there is one. Returns (EvalResult | None,
    plots, the held-out verdict written to card.json: what `thumbview finetune` ends with).

    `val_pred`, `test_pred`: the network's predictions for the validation and hold-out rows,
    which calibrate P(A beats B) (`fit_pairwise`)."""
    model.save(out_dir)
    _record_range(model, dataset, split, y, titles, out_dir)
    cfg = model.config
    size, frame = model.arch_["image_size"], model.arch_.get("frame", "squash")
    options = {"pixels": {"image_size": size, "frame": frame}, "title": {}, "title-tokens": {}}
    encoders = {"pixels": PixelEncoder(size, frame), "title": TitleEncoder(),
                "title-tokens": TitleTokenEncoder()}  # fmt: skip
    names = cfg.encoders
    seen = np.concatenate([split.train, split.val])
    write_training_record(
        out_dir, dataset, seen, {n: options[n] for n in names}, {n: encoders[n] for n in names}
    )
    baseline = _title_baseline(cfg, titles, y, split, out_dir)
    pred = None if test_pred is None else np.asarray(test_pred)
    within = fit_pairwise(out_dir, dataset, *_heldout(split, val_pred, pred), y, cfg.seed)
    card = write_card(out_dir, dataset, seen, split.test, y, pred, model.y_median_, within)
    paths = []
    if model.history_:
        paths.append(plots.plot_training_curve(model.history_, out_dir / "learning_curve.png"))
    if test_pred is None:
        return None, tuple(paths), card.skill
    y_test = y[split.test]
    baselines = {"global-median": compute_metrics(y_test, np.full(len(y_test), model.y_median_))}
    if baseline is not None:
        baselines["title-only"] = compute_metrics(
            y_test, baseline.predict({"title": titles[split.test]})
        )
    lo, hi = model.residual_quantile([(1 - cfg.coverage) / 2, (1 + cfg.coverage) / 2])
    inside = (y_test >= test_pred + lo) & (y_test <= test_pred + hi)
    result = EvalResult(compute_metrics(y_test, test_pred), baselines, float(inside.mean()),
                        cfg.coverage)  # fmt: skip
    relative = cfg.target == "channel-relative"
    paths.append(plots.plot_pred_vs_actual(y_test, test_pred, out_dir / "pred_vs_actual.png",
                                           relative=relative))  # fmt: skip
    paths.append(plots.plot_residual_hist(y_test - test_pred, out_dir / "residuals.png",
                                          interval=(float(lo), float(hi))))  # fmt: skip
    write_json(out_dir / EVAL_FILE, {**result.to_json_dict(), "split": "holdout"})
    return result, tuple(paths), card.skill
