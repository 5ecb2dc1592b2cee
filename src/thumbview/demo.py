"""The demo: the whole pipeline on built-in synthetic data, checked against the planted truth.

Real view counts have no ground truth, so the demo shows what the pipeline can do where
the answer is known: synthetic thumbnails whose traits multiply views by recorded factors.
A predictor trained on the offline encoders must rank held-out videos by their true
expected views and recover each planted factor from its own predictions.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import stats

from thumbview.data.dataset import load_dataset
from thumbview.data.synth import SynthConfig, make_synthetic, render_thumbnail
from thumbview.inference import LoadedPredictor, Prediction
from thumbview.layout import MODEL_TRAINING
from thumbview.predict.model import PredictorConfig
from thumbview.predict.workflow import TrainResult, dataset_blocks, train
from thumbview.progress import SILENT, Progress

log = logging.getLogger(__name__)

DEMO_ENCODERS = ("visual", "title")


@dataclass(frozen=True)
class EffectRecovery:
    """A planted factor next to the factor implied by the model's held-out predictions."""

    name: str
    description: str
    planted: float
    estimated: float


@dataclass(frozen=True)
class DemoReport:
    """Everything the demo measured. `spearman_truth`: held-out predictions vs true means."""

    out_dir: Path
    n: int
    train: TrainResult
    spearman_truth: float
    effects: tuple[EffectRecovery, ...]
    examples: tuple[Prediction, ...]
    seconds: float


def run_demo(
    out_dir: Path, n: int = 1000, seed: int = 0, progress: Progress = SILENT
) -> DemoReport:
    start = time.perf_counter()
    out_dir = Path(out_dir)
    data_dir = _synthetic_data(out_dir / "data", SynthConfig(n=n, seed=seed), progress)
    dataset = load_dataset(data_dir, progress=progress)
    config = PredictorConfig(encoders=DEMO_ENCODERS, seed=seed)
    result = train(dataset, config, out_dir / "model", holdout_frac=0.25, progress=progress)
    predictor = LoadedPredictor.load(out_dir / "model")
    held_out = _held_out_rows(out_dir / "model", dataset.keys)
    blocks = dataset_blocks(dataset.subset(held_out), predictor.encoders)
    predicted = predictor.predict(blocks)
    truth = pd.read_csv(data_dir / "truth.csv", dtype={"video_id": str}).set_index("video_id")
    truth = truth.loc[[dataset.keys[i] for i in held_out]]
    rho = float(stats.spearmanr(predicted, truth["true_log10_mean"]).statistic)
    effects = _recover_effects(
        predicted, truth, json.loads((data_dir / "planted.json").read_text())
    )
    examples = predictor.predict_images(*_example_thumbnails(seed))
    return DemoReport(
        out_dir, n, result, rho, effects, tuple(examples), time.perf_counter() - start
    )


def _synthetic_data(data_dir: Path, config: SynthConfig, progress: Progress) -> Path:
    """Reuse a previous demo's data when it was made with the same settings."""
    planted = data_dir / "planted.json"
    if planted.exists():
        if json.loads(planted.read_text()).get("config", {}).get("n") == config.n and (
            json.loads(planted.read_text())["config"].get("seed") == config.seed
        ):
            return data_dir
        shutil.rmtree(data_dir)  # only ever a folder the demo itself made (it has planted.json)
    return make_synthetic(data_dir, config, progress=progress)


def _held_out_rows(model_dir: Path, keys: list[str]) -> np.ndarray:
    seen = set(json.loads((model_dir / MODEL_TRAINING).read_text())["video_ids"])
    return np.array([i for i, k in enumerate(keys) if k not in seen], dtype=np.int64)


def _recover_effects(
    predicted: np.ndarray, truth: pd.DataFrame, planted: dict
) -> tuple[EffectRecovery, ...]:
    """OLS of predicted log10 views on the effect indicators: each coefficient is a factor."""
    effects = planted["effects"]
    X = np.column_stack([np.ones(len(truth))] + [truth[e["name"]].to_numpy(float) for e in effects])
    coef, *_ = np.linalg.lstsq(X, predicted, rcond=None)  # (1 + n_effects,)
    return tuple(
        EffectRecovery(e["name"], e["description"], float(e["factor"]), float(10 ** coef[i + 1]))
        for i, e in enumerate(effects)
    )


def _example_thumbnails(seed: int) -> tuple[list[Image.Image], list[str], list[str]]:
    """Three fresh candidates: everything planted as good, everything bad, and plain."""
    rng = np.random.default_rng(seed + 10_000)
    good = {"warm_colours": 1, "big_text": 1, "face": 1, "dark_blurry": 0}
    bad = {"warm_colours": 0, "big_text": 0, "face": 0, "dark_blurry": 1}
    plain = {"warm_colours": 0, "big_text": 0, "face": 0, "dark_blurry": 0}
    images = [
        Image.fromarray(render_thumbnail(rng, flags, 320, 180)) for flags in (good, bad, plain)
    ]
    names = ["warm + text + face", "dark + blurry", "plain"]
    return images, names, ["I tried the INSANE secret trick 🔥"]
