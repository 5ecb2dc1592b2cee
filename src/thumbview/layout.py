"""The names of every file thumbview writes, and how a folder given by a user is resolved.

Model, SAE and study folders are read by other stages (evaluate, compare, serve, explain),
so their file names are defined once, here, next to the rules that find an SAE or a study
inside a folder. Writers and readers import these names instead of spelling them out. This
module sits at the bottom of the layers and imports no stage, so every stage may use it
(the CLI too, to tell folders apart without importing torch).

`sae train --out SAE` writes the SAE itself to SAE/sae (SAELens layout: cfg.json +
sae_weights.safetensors), with metrics, checkpoint and the dataset's codes beside it. Every
command that takes an SAE accepts either folder and goes through `resolve_sae_dir`.
"""

from __future__ import annotations

from pathlib import Path

# ----- a run in progress (`train`, `finetune`, `sae train`, `sae analyze`, `bot train`) ----
# Written before a run's first file and removed after its last: a folder holding it is being
# written, or was left by a run that was killed, and no loader reads it as a model. Folders
# written before the marker existed never hold it, so they load as they always did.
RUN_UNFINISHED = "UNFINISHED"
# `sae analyze`'s own marker: a study may be written into an SAE folder (`--out SAE`, found
# there by `find_study_dir`), and a killed analyze must not make that SAE refused as a killed
# `sae train` (nor a killed `sae train` make the study refused as a killed analyze).
STUDY_UNFINISHED = "UNFINISHED-study"

# ----- a model folder (`thumbview train --out`) ----------------------------------------------
MODEL_WEIGHTS = "model.safetensors"  # every array of the fitted predictor
MODEL_CONFIG = "config.json"  # the predictor's config, head settings and block widths
MODEL_ENCODERS = "encoders.json"  # {encoder: {options, spec}} to rebuild its features
MODEL_TRAINING = "training.json"  # dataset, video ids and channels it was trained on
MODEL_EVAL = "eval.json"  # held-out evaluation
MODEL_CARD = "card.json"  # typical context of the training data, horizon, held-out skill
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
SAE_CHECKPOINT_DIR = "checkpoint"  # trainer checkpoints, beside sae/
SAE_CODES = "codes.npz"  # the training dataset's latents, rows = its usable rows
SAE_CODES_KEY = "codes.json"  # what produced codes.npz; `sae analyze --sae` reuses it on a match

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


# ----- finding an SAE and its study in a folder ---------------------------------------------
class SaeFolderError(ValueError):
    """A folder that holds no SAE; the message names the file that is missing."""


def resolve_sae_dir(path: str | Path) -> Path:
    """The folder holding cfg.json and the weights: `path` itself or `path`/sae.

    Raises SaeFolderError naming the missing file(s) when neither holds an SAE.
    """
    path = Path(path)
    if not path.is_dir():
        raise SaeFolderError(f"SAE folder not found: {path}")
    for candidate in (path, path / SAE_SUBDIR):
        if (candidate / SAE_CONFIG).is_file():
            if not (candidate / SAE_WEIGHTS).is_file():
                raise SaeFolderError(f"{candidate / SAE_WEIGHTS} is missing (cfg.json is there)")
            return candidate
    raise SaeFolderError(
        f"{path} holds no SAE: neither {path / SAE_CONFIG} nor {path / SAE_SUBDIR / SAE_CONFIG} "
        f"exists; give the folder passed to `thumbview sae train --out`"
    )


def training_root(path: str | Path) -> Path:
    """The `sae train --out` folder of an SAE given as either folder (else the SAE folder)."""
    sae = resolve_sae_dir(path)
    parent = sae.parent
    trained_here = sae.name == SAE_SUBDIR and (
        (parent / SAE_METRICS).is_file() or (parent / SAE_CHECKPOINT_DIR).is_dir()
    )
    return parent if trained_here else sae


def default_study_dir(path: str | Path) -> Path:
    """Where `sae analyze --sae PATH` writes its study, and where `explain` looks for it.

    TRAIN_OUT/study; a study already at one of the other places a folder could name
    (PATH/study, PATH/sae/study) is found there, so older layouts keep working.
    """
    path = Path(path)
    preferred = training_root(path) / STUDY_SUBDIR
    for candidate in (preferred, path / STUDY_SUBDIR, resolve_sae_dir(path) / STUDY_SUBDIR):
        if candidate.is_dir():
            return candidate
    return preferred


def find_study_dir(sae_dir: str | Path | None) -> Path | None:
    """A study inside the SAE folder (itself or its `study/`), when none is named; else None."""
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


# ----- runs that did not finish ------------------------------------------------------------
def check_finished(
    folder: str | Path,
    error: type[Exception],
    resume: str = "finetune --resume, sae train",
    marker: str = RUN_UNFINISHED,
) -> None:
    """Raise `error` when the run that writes `folder` did not finish (its marker is there;
    runs write it with `fileio.while_running(folder / marker, ...)`). `resume` says how the
    command that writes this kind of folder goes on; `marker` is STUDY_UNFINISHED for a study."""
    if (Path(folder) / marker).exists():
        raise error(
            f"{folder}: the run that wrote this folder did not finish ({marker} is "
            f"there); run it again, or resume it ({resume})"
        )
