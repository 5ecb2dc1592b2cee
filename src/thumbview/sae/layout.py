"""Names of the files in an SAE folder, and the one function that finds the SAE in a folder.

`sae train --out SAE` writes the SAE itself to SAE/sae (SAELens layout: cfg.json +
sae_weights.safetensors), with metrics, checkpoint and the dataset's codes beside it. Every
command that takes an SAE (`sae analyze --sae`, `explain`, `compare`, `serve`,
`thumbview.inference.SaeEncoder.load`) accepts either folder and goes through
`resolve_sae_dir`. No heavy imports here: the CLI uses it to tell folders apart.
"""

from __future__ import annotations

from pathlib import Path

from thumbview.layout import SAE_CONFIG as CFG_FILE
from thumbview.layout import SAE_METRICS as METRICS_JSON
from thumbview.layout import SAE_SUBDIR, STUDY_SUBDIR
from thumbview.layout import SAE_WEIGHTS as WEIGHTS_FILE

# The file names are defined once, in thumbview.layout; these are the SAE-only ones.
CHECKPOINT_DIR = "checkpoint"
CODES_FILE = "codes.npz"  # the training dataset's latents, rows = metadata rows

__all__ = [
    "CFG_FILE",
    "CHECKPOINT_DIR",
    "CODES_FILE",
    "METRICS_JSON",
    "SAE_SUBDIR",
    "STUDY_SUBDIR",
    "WEIGHTS_FILE",
    "SaeFolderError",
    "default_study_dir",
    "resolve_sae_dir",
    "training_root",
]


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
        if (candidate / CFG_FILE).is_file():
            if not (candidate / WEIGHTS_FILE).is_file():
                raise SaeFolderError(f"{candidate / WEIGHTS_FILE} is missing (cfg.json is there)")
            return candidate
    raise SaeFolderError(
        f"{path} holds no SAE: neither {path / CFG_FILE} nor {path / SAE_SUBDIR / CFG_FILE} "
        f"exists; give the folder passed to `thumbview sae train --out`"
    )


def training_root(path: str | Path) -> Path:
    """The `sae train --out` folder of an SAE given as either folder (else the SAE folder)."""
    sae = resolve_sae_dir(path)
    parent = sae.parent
    trained_here = sae.name == SAE_SUBDIR and (
        (parent / METRICS_JSON).is_file() or (parent / CHECKPOINT_DIR).is_dir()
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
