"""The names of every file thumbview writes, and where a study goes by default.

Model, SAE and study folders are read by other stages (evaluate, compare, serve, explain),
so their file names are defined once, here, next to the one rule for the default study
folder. Writers and readers import these names instead of spelling them out.
"""

from __future__ import annotations

from pathlib import Path

# ----- a model folder (`thumbview train --out`) ----------------------------------------------
MODEL_WEIGHTS = "model.safetensors"  # every array of the fitted predictor
MODEL_CONFIG = "config.json"  # the predictor's config, head settings and block widths
MODEL_ENCODERS = "encoders.json"  # {encoder: {options, spec}} to rebuild its features
MODEL_TRAINING = "training.json"  # dataset, video ids and channels it was trained on
MODEL_EVAL = "eval.json"  # held-out evaluation
MODEL_BASELINES = "baselines"  # one single-encoder model per encoder
PLOT_TRAINING_CURVE = "training_curve.png"
PLOT_PRED_VS_ACTUAL = "pred_vs_actual.png"
PLOT_RESIDUALS = "residuals.png"

# ----- an SAE folder (`thumbview sae train --out`) -------------------------------------------
SAE_SUBDIR = "sae"  # the final SAE inside the `--out` folder
SAE_WEIGHTS = "sae_weights.safetensors"
SAE_CONFIG = "cfg.json"
SAE_STATE = "state.safetensors"  # trainer state for resuming
SAE_TRAINER = "trainer.json"
SAE_METRICS = "metrics.json"
SAE_DENSITY_PLOT = "feature_density.png"

# ----- a study folder (`thumbview sae analyze --out`) ----------------------------------------
STUDY_SUBDIR = "study"
STUDY_FEATURES = "features.csv"
STUDY_ALL_FEATURES = "all_features.csv"
STUDY_SUMMARY = "summary.json"
STUDY_EXAMPLES = "examples.json"
STUDY_REPORT = "report.html"
STUDY_HISTOGRAM = "histogram.png"
STUDY_MAGNITUDE = "magnitude.png"
STUDY_TABLES = (STUDY_ALL_FEATURES, STUDY_FEATURES)  # either one makes a folder a study

# ----- frames (`thumbview frames --out`) -----------------------------------------------------
FRAMES_JSON = "frames.json"
FRAMES_CONTACT_SHEET = "contact_sheet.png"


def find_study_dir(sae_dir: str | Path | None) -> Path | None:
    """A study inside the SAE folder (itself or its `study/`), when none is named; else None."""
    from thumbview.sae.layout import SaeFolderError, default_study_dir

    if sae_dir is None:
        return None
    try:
        candidates = (Path(sae_dir), default_study_dir(sae_dir))
    except SaeFolderError:
        candidates = (Path(sae_dir), Path(sae_dir) / STUDY_SUBDIR)
    for folder in candidates:
        if any((folder / name).is_file() for name in STUDY_TABLES):
            return folder
    return None
