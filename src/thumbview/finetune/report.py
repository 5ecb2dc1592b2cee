"""Write a fine-tuned model folder with the same conventions as `thumbview train`:
model + config, encoders.json, training.json (rows it saw), baselines/, eval.json, card.json,
plots.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from thumbview.embed.title import TitleEncoder
from thumbview.fileio import write_json
from thumbview.finetune.encoders import PixelEncoder, TitleTokenEncoder
from thumbview.finetune.model import FinetunedPredictor
from thumbview.predict import plots
from thumbview.predict.card import write_card
from thumbview.predict.crossval import EvalResult, compute_metrics
from thumbview.predict.model import PredictorConfig, ViewPredictor
from thumbview.predict.workflow import EVAL_FILE, write_training_record


def _title_baseline(cfg, titles, y, split, out_dir: Path) -> ViewPredictor | None:
    """A frozen-title model's title-only ridge (saved under baselines/title), else None."""
    if cfg.title != "frozen":
        return None
    single = PredictorConfig(encoders=("title",), target=cfg.target, seed=cfg.seed)
    baseline = ViewPredictor(single).fit({"title": titles[split.train]}, y[split.train],
                                         calibrate=False)  # fmt: skip
    baseline.save(out_dir / "baselines" / "title")
    return baseline


def finish(model: FinetunedPredictor, dataset, split, y, titles, test_pred, out_dir: Path):
    """Save everything; score the hold-out when there is one. Returns (EvalResult | None, plots)."""
    model.save(out_dir)
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
    write_card(out_dir, dataset, seen, split.test, y, pred, model.y_median_)  # no pairwise
    paths = []
    if model.history_:
        paths.append(plots.plot_training_curve(model.history_, out_dir / "learning_curve.png"))
    if test_pred is None:
        return None, tuple(paths)
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
    return result, tuple(paths)
