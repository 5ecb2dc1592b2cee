"""The SAE feature study on a dataset folder: latents in, features.csv + plots + report out.

`sae.study` is the study as pure statistics on arrays; this module is its IO layer. It
turns a dataset into SAE latents (CLIP residual stream through the cached `embed`, then the
SAE in batches, kept sparse so 500k videos x 65k latents fit in memory), or reads latents a
user computed elsewhere (`--latents FILE`), optionally removes upload-age and channel effects
from the views, runs the study, and writes everything a person (report.html) and
`thumbview explain` (all_features.csv, examples.json) need afterwards.
"""

from __future__ import annotations

import json
import logging
import time
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from thumbview.data.dataset import LoadReport, ThumbnailDataset
from thumbview.fileio import atomic_write, json_safe, while_running
from thumbview.layout import STUDY_UNFINISHED
from thumbview.progress import SILENT, Progress
from thumbview.sae import report
from thumbview.sae.arrays import StudyError
from thumbview.sae.config import LAYERED_SOURCES
from thumbview.sae.covariates import ResidualFit, adjust_views_fit, upload_age_years
from thumbview.sae.folder import encode_sparse, load_sae_encoder
from thumbview.sae.selection import check_latents, top_activations
from thumbview.sae.study import StudyConfig, StudyResult, channel_config, run_study

logger = logging.getLogger(__name__)

CONTROLS = ("age", "channel")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
FEATURES_CSV = "features.csv"
ALL_FEATURES_CSV = "all_features.csv"
SUMMARY_JSON = "summary.json"
EXAMPLES_JSON = "examples.json"
REPORT_HTML = "report.html"
LATENT_NAMES_JSON = "latent_names.json"  # every latent's name (explain names unstudied ones)
LatentMatrix = np.ndarray | sp.csr_matrix | sp.csc_matrix


@dataclass(frozen=True)
class AnalyzeConfig:
    """How to run the study on a dataset.

    `study=None` takes the paper's defaults: `StudyConfig()`, or `channel_config()` when
    `channel` is set (see `make_study_config` to override single numbers). `control` lists
    covariates ("age", "channel") removed from log views before grouping; `grid_size`
    thumbnails per feature grid; `reference` a folder of images shown under each grid.
    """

    study: StudyConfig | None = None
    control: tuple[str, ...] = ()
    channel: str | None = None
    grid_size: int = 11
    reference: Path | None = None
    batch_size: int = 256
    features: str | None = None  # what the SAE was trained on (cfg.json "features"): the
    # report's heading names thumbnail or title features by it; None when unknown

    def __post_init__(self) -> None:
        unknown = sorted(set(self.control) - set(CONTROLS))
        if unknown:
            raise StudyError(f"unknown control(s) {unknown}; choose from {list(CONTROLS)}")
        if self.grid_size < 1 or self.batch_size < 1:
            raise StudyError("grid_size and batch_size must be >= 1")

    def resolved_study(self) -> StudyConfig:
        if self.study is not None:
            return self.study
        return channel_config() if self.channel is not None else StudyConfig()


def feature_source(sae_dir: str | Path | None, latents_file: str | Path | None) -> str | None:
    """The `features` an SAE was trained on ("clip", "title", ...): from `sae_dir`, or from
    the SAE folder beside a `codes.npz` that `sae train --out` wrote; None when unknown."""
    from thumbview.sae.folder import read_sae_cfg

    where = sae_dir or (Path(latents_file).parent if latents_file else None)
    try:
        return str(read_sae_cfg(where).get("features", "clip")) if where else None
    except (OSError, ValueError):  # a bare codes file with no SAE folder beside it
        return None


def make_study_config(channel_mode: bool = False, **overrides: Any) -> StudyConfig:
    """The main-study or per-channel defaults with the given fields replaced (CLI options)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return channel_config(**given) if channel_mode else StudyConfig(**given)


def parse_controls(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """'age,channel' (or a list) -> ('age', 'channel'); unknown names are a StudyError."""
    if not text:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(dict.fromkeys(s.strip().lower() for s in items if s.strip()))
    AnalyzeConfig(control=names)  # validates
    return names


@dataclass(frozen=True, eq=False)
class AnalysisOutputs:
    """Where `run_analysis` wrote each artifact, and the study result itself."""

    out_dir: Path
    features_csv: Path
    all_features_csv: Path
    summary_json: Path
    examples_json: Path
    histogram_png: Path
    magnitude_png: Path
    grids: tuple[Path, ...]
    report_html: Path
    result: StudyResult


def latents_for_dataset(
    dataset: ThumbnailDataset,
    sae_dir: str | Path,
    cache_dir: str | Path | None = None,
    progress: Progress = SILENT,
    device: str = "cpu",
    batch_size: int = 256,
) -> sp.csr_matrix:
    """CSR (len(dataset), d_sae): each video's cached activations, through the SAE.

    The codes `sae train` wrote are reused when their sidecar vouches for these weights,
    activations and rows (`sae.codes.saved_codes`; the log says why not otherwise). An SAE
    of every spatial position has no cacheable per-video vector: its images are then
    streamed and each latent's max over an image's positions kept (`image_codes`).
    """
    from thumbview.embed.cache import embed
    from thumbview.layout import resolve_sae_dir
    from thumbview.sae.codes import codes_path, saved_codes

    sae, encoder = load_sae_encoder(sae_dir, device, images_only=False)
    folder = resolve_sae_dir(sae_dir)
    codes, why = saved_codes(folder, encoder, dataset, sae.cfg.d_sae)
    if codes is not None:
        logger.info("SAE latents: reusing %s", why)
        return codes
    refused = codes_path(folder).is_file()  # there but unusable: say so, it costs minutes
    logger.log(logging.WARNING if refused else logging.INFO, "SAE latents: recomputing (%s)", why)
    if getattr(encoder, "positions", False):
        return _streamed_codes(dataset, sae, encoder, progress)
    acts, stats = embed(dataset, encoder, Path(cache_dir) if cache_dir else None, progress=progress)
    logger.info("activations: %d cached, %d computed", stats.n_cached, stats.n_computed)
    return encode_sparse(sae, acts, batch_size, progress)


def _streamed_codes(dataset: ThumbnailDataset, sae: Any, encoder: Any, progress: Progress):
    from thumbview.data.images import load_image
    from thumbview.sae.sources import image_codes

    blocks, step = [], 8 * encoder.batch_size
    with progress.task("SAE latents (every position)", len(dataset)) as advance:
        for s in range(0, len(dataset), step):
            rows = range(s, min(s + step, len(dataset)))
            images = [load_image(dataset.image_source(r)) for r in rows]
            blocks.append(sp.csr_matrix(image_codes(sae, encoder, images)))
            advance(len(images))
    if not blocks:
        return sp.csr_matrix((0, sae.cfg.d_sae), dtype=np.float32)
    return sp.vstack(blocks, format="csr")


def list_images(folder: str | Path) -> list[Path]:
    """Image files below `folder` (any depth), sorted, hidden folders skipped."""
    root = Path(folder)
    if not root.is_dir():
        raise StudyError(f"reference folder not found: {root}")
    found = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not found:
        raise StudyError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    return found


def image_folder_dataset(folder: str | Path) -> ThumbnailDataset:
    """A folder of images (no metadata, e.g. ImageNet samples) as a dataset for `embed`."""
    root = Path(folder).resolve()
    names = [p.resolve().relative_to(root).as_posix() for p in list_images(root)]
    table = pd.DataFrame({"file_name": names, "views": 0, "title": "", "video_id": names}).astype(
        {"views": np.int64}
    )
    return ThumbnailDataset(root, table, LoadReport(len(names), len(names), ()))


# ---------------------------------------------------------------------- latents files


def load_latents_file(path: str | Path, n_rows: int | None = None) -> LatentMatrix:
    """Latents a user computed: dense `.npy` or scipy.sparse `.npz`, rows = metadata rows.

    Never unpickles (object arrays are refused). `n_rows`, when given, must match.
    """
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"latents file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        x = _load_npy(path)
    elif suffix == ".npz":
        x = _load_npz(path)
    else:
        raise StudyError(f"{path.name}: latents must be a dense .npy or a scipy.sparse .npz")
    if x.ndim != 2:
        raise StudyError(f"{path.name}: latents must be 2-D (videos x latents), got {x.shape}")
    if x.dtype.kind not in "fiub":
        raise StudyError(f"{path.name}: latents must be numeric, got dtype {x.dtype}")
    if n_rows is not None and x.shape[0] != n_rows:
        raise StudyError(f"{path.name} has {x.shape[0]} rows but the dataset has {n_rows}")
    return x


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as e:
        if "allow_pickle" in str(e) or "object" in str(e).lower():
            raise StudyError(
                f"{path.name} holds Python objects; save a numeric array (np.save of float32)"
            ) from e
        raise StudyError(f"{path.name} is not a readable .npy file: {e}") from e
    except (OSError, EOFError) as e:
        raise StudyError(f"{path.name} is not a readable .npy file: {e}") from e


def _load_npz(path: Path) -> sp.csr_matrix | sp.csc_matrix:
    try:
        x = sp.load_npz(path)
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise StudyError(
            f"{path.name} is not a scipy.sparse .npz (write it with scipy.sparse.save_npz; "
            f"for a dense array use .npy): {e}"
        ) from e
    return x if x.format in ("csr", "csc") else x.tocsr()


def align_latents(latents: Any, dataset: ThumbnailDataset) -> LatentMatrix:
    """Latents with one row per kept dataset row.

    Accepts rows = kept rows, or rows = every metadata row (the rows the loader skipped
    are then dropped), since a user's file naturally follows metadata.csv.
    """
    n = latents.shape[0]
    if n == len(dataset):
        return latents
    rep = dataset.report
    if n == rep.n_rows:
        skipped = {s.row for s in rep.skipped}
        kept = np.array([i for i in range(rep.n_rows) if i not in skipped], dtype=np.int64)
        logger.info("dropping %d latents rows of skipped metadata rows", len(skipped))
        return latents[kept]
    raise StudyError(
        f"latents have {n} rows but the dataset has {len(dataset)} usable rows "
        f"({rep.n_rows} in the metadata file); rows must follow the metadata file's order"
    )


# -------------------------------------------------------------------- views and rows


def grouping_views(dataset: ThumbnailDataset, control: Sequence[str]) -> np.ndarray:
    """Views the study groups (N,): raw, or with upload age / channel effects removed."""
    return _grouping(dataset, control)[0]


def _grouping(
    dataset: ThumbnailDataset, control: Sequence[str]
) -> tuple[np.ndarray, ResidualFit | None]:
    """(views to group, the covariate fit or None without controls)."""
    if not control:
        return dataset.views, None
    table = dataset.table
    age = None
    if "age" in control:
        _require_column(table, "published_at", "age")
        age = upload_age_years(table["published_at"])
    channels = None
    if "channel" in control:
        _require_column(table, "channel_id", "channel")
        channels = dataset.channels
    return adjust_views_fit(dataset.views, age, channels)


def _control_summary(fit: ResidualFit | None) -> dict[str, Any]:
    """What the covariate control did and, for channels, what it can identify here."""
    if fit is None or fit.identifiability is None:
        return {"channel_shrinkage_lambda": None, "channel_identifiability": None}
    ident = fit.identifiability
    return {
        "channel_shrinkage_lambda": fit.channel_lambda,
        "channel_identifiability": {**asdict(ident), "message": ident.message},
    }


def _require_column(table: pd.DataFrame, column: str, control: str) -> None:
    if column not in table.columns:
        raise StudyError(
            f"--control {control} needs a '{column}' column in the metadata; "
            f"columns found: {', '.join(map(str, table.columns))}"
        )


def channel_rows(dataset: ThumbnailDataset, channel: str, min_videos: int) -> np.ndarray:
    """Row positions of one channel's videos; too few (or none) is a StudyError."""
    if dataset.channels is None:
        raise StudyError("--channel needs a 'channel_id' column in the metadata")
    ch = dataset.channels.astype(str)
    rows = np.flatnonzero(ch == str(channel))
    if len(rows) == 0:
        names, counts = np.unique(ch, return_counts=True)
        biggest = [f"{n} ({c})" for c, n in sorted(zip(counts, names, strict=True))[::-1][:5]]
        raise StudyError(f"channel {channel!r} is not in the dataset; largest: {biggest}")
    if len(rows) < min_videos:
        raise StudyError(
            f"channel {channel!r} has {len(rows)} videos; the per-channel study needs at "
            f"least {min_videos} (top_k). Pick a bigger channel or lower top_k."
        )
    return rows


# ------------------------------------------------------------------------- the study


def run_analysis(
    dataset: ThumbnailDataset,
    latents: Any,
    config: AnalyzeConfig,
    out_dir: str | Path,
    progress: Progress = SILENT,
    *,
    sae_dir: str | Path | None = None,
    reference_latents: Any = None,
    cache_dir: str | Path | None = None,
) -> AnalysisOutputs:
    """Run the study on `latents` (rows of `dataset`) and write every artifact to `out_dir`.

    Reference grids need `config.reference` plus either `reference_latents` (rows = the
    folder's images in `list_images` order) or `sae_dir` to compute them.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study = config.resolved_study()
    ds, x = _study_rows(dataset, check_latents(align_latents(latents, dataset)), config, study)
    activations, names = sae_activations_info(sae_dir)
    views, fit = _grouping(ds, config.control)
    t1 = time.perf_counter()
    result = run_study(x, views, study)
    t2 = time.perf_counter()
    reference = _reference(config, x.shape[1], sae_dir, reference_latents, cache_dir, progress)
    # A killed run leaves new tables beside an earlier run's examples, names and summary:
    # `load_study` refuses the folder until a run writes it to the end. Its own marker name,
    # so a study written into an SAE folder never makes that SAE refused (layout).
    with while_running(out / STUDY_UNFINISHED, "thumbview sae analyze"):
        paths = _write_outputs(ds, x, result, config, out, reference, progress, names)
        timings = {"prepare_s": t1 - t0, "study_s": t2 - t1, "write_s": time.perf_counter() - t2}
        summary = _summary(dataset, ds, result, config, views, timings, sae_dir)
        summary["activations"] = activations
        summary.update(json_safe(_control_summary(fit)))
        atomic_write(paths["summary_json"], json.dumps(summary, indent=2, allow_nan=False))
        paths["report_html"] = report.write_report(out / REPORT_HTML, summary, paths["cards"])
    logger.info("study written to %s", out)
    grids = tuple(out / c.grid for c in paths.pop("cards"))
    return AnalysisOutputs(out_dir=out, grids=grids, result=result, **paths)


def _study_rows(
    dataset: ThumbnailDataset, x: Any, config: AnalyzeConfig, study: StudyConfig
) -> tuple[ThumbnailDataset, Any]:
    """The studied rows (all, or one channel's) and their latents, sparse as CSC."""
    ds = dataset
    if config.channel is not None:
        rows = channel_rows(dataset, config.channel, study.top_k)
        ds, x = dataset.subset(rows), x.tocsr()[rows] if sp.issparse(x) else x[rows]
    return ds, x.tocsc() if sp.issparse(x) else x  # one conversion serves every column scan


@dataclass(frozen=True)
class _Reference:
    """Reference images and their latents (n_ref, d_sae), for the second grid row."""

    paths: list[Path]
    latents: Any = field(repr=False)


def _reference(
    config: AnalyzeConfig,
    n_latents: int,
    sae_dir: str | Path | None,
    given: Any,
    cache_dir: str | Path | None,
    progress: Progress,
) -> _Reference | None:
    if config.reference is None:
        return None
    ref = image_folder_dataset(config.reference)
    if given is None:
        if sae_dir is None:
            raise StudyError("--reference needs --sae (or precomputed reference latents)")
        given = latents_for_dataset(ref, sae_dir, cache_dir, progress, batch_size=config.batch_size)
    x = check_latents(given)
    if x.shape != (len(ref), n_latents):
        raise StudyError(
            f"reference latents have shape {x.shape}; expected ({len(ref)} images, {n_latents})"
        )
    return _Reference(ref.paths, x.tocsc() if sp.issparse(x) else x)


def _write_outputs(
    ds: ThumbnailDataset,
    x: Any,
    result: StudyResult,
    config: AnalyzeConfig,
    out: Path,
    reference: _Reference | None,
    progress: Progress,
    latent_names: dict[int, str] | None = None,
) -> dict[str, Any]:
    """features.csv, all_features.csv, examples.json, plots and per-feature grids.

    `latent_names` (latent -> name, when the SAE's source names its latents) become a
    `latent_name` column of both CSVs and a line on each grid's card.
    """
    paths: dict[str, Any] = {k: out / v for k, v in _FILES.items()}
    _write_csv(_named(result.table(), latent_names), paths["features_csv"])
    names = ds.table["file_name"].to_numpy(dtype=object)
    all_features = result.features.assign(top_file_name=names[result.features["top_video"]])
    _write_csv(_named(all_features, latent_names), paths["all_features_csv"])
    examples = top_examples(x, result.features["latent_feature_index"].to_numpy(), config.grid_size)
    _write_examples(paths["examples_json"], ds, names, examples)
    report.plot_histogram(result, paths["histogram_png"])
    report.plot_magnitude(result, paths["magnitude_png"])
    paths["cards"] = _grids(ds, result, examples, reference, config.grid_size, out, progress)
    if latent_names:
        paths["cards"] = [replace(c, name=latent_names.get(c.latent)) for c in paths["cards"]]
        names_json = {"names": {str(k): v for k, v in sorted(latent_names.items())}}
        atomic_write(out / LATENT_NAMES_JSON, json.dumps(names_json))
    else:
        (out / LATENT_NAMES_JSON).unlink(missing_ok=True)  # from an earlier run into out
    return paths


LATENT_NAME = "latent_name"  # the CSV column `explain` reads names from


def _write_csv(table: pd.DataFrame, path: Path) -> Path:
    """A study table, written whole or not at all (a rerun killed mid-table keeps the old one)."""
    return atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))


def _named(table: pd.DataFrame, names: dict[int, str] | None) -> pd.DataFrame:
    if not names:
        return table
    return table.assign(**{LATENT_NAME: table["latent_feature_index"].map(names)})


def sae_activations_info(
    sae_dir: str | Path | None,
) -> tuple[dict[str, Any] | None, dict[int, str] | None]:
    """What the SAE read (summary.json's "activations", the report's title) and its latents'
    names where its source names them (`sae.sources.latent_names`); (None, None) without one.
    """
    if sae_dir is None:
        return None, None
    from thumbview.sae.folder import activation_source, load_sae, read_sae_cfg
    from thumbview.sae.sources import latent_names, names_description

    cfg = read_sae_cfg(sae_dir)
    info = {"features": cfg.get("features", "clip"), "hook_name": cfg.get("hook_name")}
    try:
        source = activation_source(cfg)
    except StudyError:  # activation shards: nothing more is known
        return info, None
    info.update(layer=source.layer, tokens=source.tokens, latent_names=names_description(source))
    if source.features not in LAYERED_SOURCES:
        info.update(layer=None, tokens=None)
    return info, latent_names(load_sae(sae_dir), source)


_FILES = {
    "features_csv": FEATURES_CSV,
    "all_features_csv": ALL_FEATURES_CSV,
    "summary_json": SUMMARY_JSON,
    "examples_json": EXAMPLES_JSON,
    "histogram_png": "histogram.png",
    "magnitude_png": "magnitude.png",
}


def top_examples(x: Any, columns: np.ndarray, k: int) -> dict[int, np.ndarray]:
    """Latent -> rows of its `k` strongest positive activations, strongest first."""
    k = min(k, x.shape[0])
    if len(columns) == 0 or k == 0:
        return {}
    idx, val = top_activations(x, k, columns)  # (C, k) each
    return {int(c): idx[i][val[i] > 0] for i, c in enumerate(columns)}


def _write_examples(
    path: Path, ds: ThumbnailDataset, names: np.ndarray, examples: dict[int, np.ndarray]
) -> None:
    """What `explain` needs: the dataset root and each qualifying latent's top file names."""
    payload = {
        "dataset_root": str(ds.root),
        "examples": {str(c): names[rows].tolist() for c, rows in examples.items()},
    }
    atomic_write(path, json.dumps(payload))


def _grids(
    ds: ThumbnailDataset,
    result: StudyResult,
    examples: dict[int, np.ndarray],
    reference: _Reference | None,
    grid_size: int,
    out: Path,
    progress: Progress,
) -> list[report.FeatureCard]:
    """One PNG per table feature (top and bottom) and the report's card for it."""
    table = result.table()
    (out / "grids").mkdir(exist_ok=True)
    for stale in (out / "grids").glob("*-latent-*.png"):  # from an earlier run into out_dir
        stale.unlink()
    ref_top = {}
    if reference is not None:
        cols = table["latent_feature_index"].to_numpy()
        ref_top = top_examples(reference.latents, np.unique(cols), grid_size)
    raw_views = ds.views
    cards = []
    with progress.task("feature grids", len(table)) as advance:
        for row in table.itertuples(index=False):
            latent = int(row.latent_feature_index)
            rows = examples.get(latent, np.zeros(0, np.int64))
            grid = f"grids/{row.top_or_bottom}-{int(row.rank):03d}-latent-{latent}.png"
            refs = [reference.paths[i] for i in ref_top.get(latent, [])] if reference else None
            items = [(ds.image_source(r), report.format_views(raw_views[r])) for r in rows]
            report.save_grid(items, out / grid, f"latent {latent}", refs, grid_size)
            titles = tuple(ds.titles[r] for r in rows[:3])
            cards.append(report.FeatureCard.from_table_row(row._asdict(), result, grid, titles))
            advance(1)
    return cards


def _summary(
    loaded: ThumbnailDataset,
    ds: ThumbnailDataset,
    result: StudyResult,
    config: AnalyzeConfig,
    views: np.ndarray,
    timings: dict[str, float],
    sae_dir: str | Path | None,
) -> dict[str, Any]:
    """StudyResult.summary() plus what was studied and how (JSON-safe)."""
    out = result.summary()
    out.update(
        {
            "dataset": {
                "root": str(loaded.root),
                "n_rows": loaded.report.n_rows,
                "n_kept": len(loaded),
                "load_report": loaded.report.summary(),
            },
            "n_rows": len(ds),
            "channel": config.channel,
            "controls": list(config.control),
            "views": "adjusted for " + " and ".join(config.control) if config.control else "raw",
            "raw_dataset_median": float(np.median(ds.views)),
            "grouping_views_median": float(np.median(views)),
            "grid_size": config.grid_size,
            "reference": str(config.reference) if config.reference else None,
            "sae_dir": str(sae_dir) if sae_dir else None,
            "features": config.features,
            "timings": {k: round(v, 3) for k, v in timings.items()},
        }
    )
    return json_safe(out)
