"""Explain one thumbnail with the SAE study: which features fire, and how their videos fare.

A creator's question is "what in *my* thumbnail goes with views?". The study ranked every
qualifying SAE latent by the views of the videos that activate it most; here the latents
active in one new image are looked up in that ranking (`all_features.csv`) and shown with
example thumbnails from the study (`examples.json`). `load_study` reads a study once, so a
server can explain many images against it; `explain_latents` is the pure lookup.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from thumbview.layout import STUDY_UNFINISHED, check_finished
from thumbview.sae.analyze import (
    ALL_FEATURES_CSV,
    EXAMPLES_JSON,
    FEATURES_CSV,
    LATENT_NAME,
    LATENT_NAMES_JSON,
    SUMMARY_JSON,
)
from thumbview.sae.arrays import StudyError
from thumbview.sae.folder import read_json_object

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureExplanation:
    """One SAE latent active in the image.

    ratio / q / group_views are None when the latent was not in the study (it fired on too
    few videos to qualify); `examples` are study thumbnails that activate it most; `name`
    what the SAE's source calls the latent (ImageNet SAEs: the classes its direction
    raises), None where it has no names.
    """

    latent: int
    activation: float
    ratio: float | None
    q: float | None
    group_views: float | None
    examples: tuple[Path, ...]
    name: str | None = None


@dataclass(frozen=True, eq=False)
class StudyIndex:
    """What `explain` needs from a finished study: per-latent numbers and example files."""

    stats: dict[int, tuple[float, float, float]]  # latent -> (ratio, q, group views)
    examples: dict[int, tuple[str, ...]]  # latent -> file names relative to dataset_root
    dataset_root: Path | None
    n_latents: int | None
    names: dict[int, str] = field(default_factory=dict)  # latent -> name (the CSV's latent_name)


def load_study(path: str | Path) -> StudyIndex:
    """A study folder (written by `run_analysis`) or its features CSV, as a `StudyIndex`.

    The folder's all_features.csv (every qualifying latent) is preferred over features.csv
    (the top/bottom table only). A folder an `sae analyze` run did not finish is a
    StudyError (`layout.check_finished`, its `STUDY_UNFINISHED` marker).
    """
    path = Path(path)
    if path.is_dir():
        folder = path
        csv = (
            path / ALL_FEATURES_CSV if (path / ALL_FEATURES_CSV).is_file() else path / FEATURES_CSV
        )
    else:
        folder, csv = path.parent, path
    check_finished(
        folder, StudyError, "`thumbview sae analyze` with the same --out", STUDY_UNFINISHED
    )
    if not csv.is_file():
        raise StudyError(
            f"no study results at {path} (expected {ALL_FEATURES_CSV} or {FEATURES_CSV})"
        )
    table = _read_table(csv)
    stats = _read_stats(table, csv)
    examples, root = _read_examples(folder / EXAMPLES_JSON)
    n_latents = None
    if (folder / SUMMARY_JSON).is_file():
        n_latents = read_json_object(folder / SUMMARY_JSON).get("n_latents")
    n_latents = None if n_latents is None else int(n_latents)
    names = _read_names(table)
    if (folder / LATENT_NAMES_JSON).is_file():  # every latent's, studied or not
        given = read_json_object(folder / LATENT_NAMES_JSON).get("names") or {}
        names = {int(k): str(v) for k, v in given.items()}
    return StudyIndex(stats, examples, root, n_latents, names)


def _read_table(csv: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(csv)
    except (OSError, ValueError) as e:
        raise StudyError(f"cannot read {csv}: {e}") from e


def _read_names(table: pd.DataFrame) -> dict[int, str]:
    """Latent -> name from the `latent_name` column (absent: the source names no latents)."""
    if LATENT_NAME not in table.columns:
        return {}
    named = table.dropna(subset=[LATENT_NAME]).drop_duplicates("latent_feature_index")
    latents, names = named["latent_feature_index"].astype(int), named[LATENT_NAME].astype(str)
    return dict(zip(latents, names, strict=True))


def _read_stats(table: pd.DataFrame, csv: Path) -> dict[int, tuple[float, float, float]]:
    group = [c for c in table.columns if str(c).startswith("group_") and str(c).endswith("_views")]
    missing = {"latent_feature_index", "ratio", "q"} - set(table.columns)
    if missing or not group:
        raise StudyError(
            f"{csv.name} is not a study table (missing {sorted(missing) or 'group_*_views'})"
        )
    table = table.drop_duplicates("latent_feature_index")
    return {
        int(lat): (float(r), float(q), float(g))
        for lat, r, q, g in zip(
            table["latent_feature_index"], table["ratio"], table["q"], table[group[0]], strict=True
        )
    }


def _read_examples(path: Path) -> tuple[dict[int, tuple[str, ...]], Path | None]:
    if not path.is_file():
        logger.warning("%s not found: explanations come without example thumbnails", path)
        return {}, None
    data = read_json_object(path)
    examples = {int(k): tuple(v) for k, v in (data.get("examples") or {}).items()}
    root = data.get("dataset_root")
    return examples, Path(root) if root else None


def explain_latents(
    latents: np.ndarray, study: StudyIndex, top: int = 10, n_examples: int = 3
) -> list[FeatureExplanation]:
    """The `top` most active latents of one image (d_sae,), strongest first, with study numbers."""
    z = np.asarray(latents, dtype=np.float64).ravel()  # (d_sae,)
    if study.n_latents is not None and len(z) != study.n_latents:
        raise StudyError(
            f"the SAE has {len(z)} latents but the study was run with {study.n_latents}; "
            "use the SAE the study was made with"
        )
    active = np.flatnonzero(z > 0)
    order = active[np.lexsort((active, -z[active]))][:top]  # ties: lower latent first
    out = []
    for latent in order.tolist():
        ratio, q, views = study.stats.get(latent, (None, None, None))
        names = study.examples.get(latent, ())[:n_examples]
        root = study.dataset_root or Path(".")
        examples = tuple(root / n for n in names)
        name = study.names.get(latent)
        out.append(FeatureExplanation(latent, float(z[latent]), ratio, q, views, examples, name))
    return out
