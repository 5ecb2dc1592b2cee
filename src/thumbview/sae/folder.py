"""A saved SAE folder: written and read in the SAELens layout, and what its inputs are.

Everything that *uses* a trained SAE (the study, explain, compare, the web page) needs the
same three things: the SAE rebuilt from its folder (`load_sae`), the encoder whose
activations it reads (`activation_source` / `activation_encoder`, from its cfg.json), and
its sparse codes over an array of activations (`encode_sparse`). They live here, apart from
the training loop (`sae.train`), so loading an SAE never imports training code.

Saved-SAE layout (``save_sae``/``load_sae``) follows SAELens: ``sae_weights.safetensors``
with W_enc (d_in, d_sae), b_enc (d_sae,), W_dec (d_sae, d_in), b_dec (d_in,) in float32, and
``cfg.json`` with SAELens field names (d_in, d_sae, architecture "topk"/"standard",
activation_fn_kwargs {"k": k}, apply_b_dec_to_input true, normalize_activations "none",
dtype, device, model_name, hook_name, ...). Where it differs from what SAELens expects:

- ``cfg.json`` has no ``sae_lens_version``, so SAELens reads it through its pre-6.0 config
  converter (which maps ``activation_fn_kwargs`` / top-level ``hook_name`` to the 6.x fields);
  ``k`` is also written at top level for 6.x readers.
- ``model_name`` / ``hook_name`` name Hugging Face ``transformers`` modules
  (e.g. "vision_model.encoder.layers.10"), not TransformerLens hook points, when the caller
  passes them in ``extra_cfg``. Otherwise (cached features, activation shards) ``hook_name``
  is ``"thumbview.<features>"``: SAELens' loader needs a string there (it tests
  ``"hook_z" in hook_name``; null raised a TypeError in SAELens 6.54).
- thumbview's own training config is kept under a ``"thumbview"`` key, which SAELens ignores.
- No ``sparsity.safetensors`` is written; the firing-frequency histogram is a PNG instead.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from thumbview.fileio import atomic_write
from thumbview.layout import SAE_CONFIG as CFG_FILE
from thumbview.layout import SAE_SUBDIR, SaeFolderError, check_finished, resolve_sae_dir
from thumbview.layout import SAE_WEIGHTS as WEIGHTS_FILE
from thumbview.progress import SILENT, Progress
from thumbview.sae import sources
from thumbview.sae.architectures import build_sae
from thumbview.sae.arrays import StudyError
from thumbview.sae.config import (
    ActivationSource,
    ReluL1Config,
    SaeConfigs,
    SaeError,
    TopKConfig,
    sae_config,
    sae_config_from_dict,
)
from thumbview.sae.model import SparseAutoencoder
from thumbview.schema import MapOf, Number, Optional, check, load_json
from thumbview.tensorfile import cap_sizes, read_header, shape_problem

_PARAM_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec")


class SaeFileError(ValueError):
    """A saved SAE or checkpoint is missing, corrupt, or does not fit the model at hand."""


def _read_json(path: Path) -> dict[str, Any]:
    data = load_json(path, SaeFileError, allow_nan=True)  # size and depth limited
    if not isinstance(data, dict):
        raise SaeFileError(f"{path}: expected a JSON object")
    return data


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise SaeFileError(f"{path}: file not found")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise SaeFileError(f"{path}: unreadable or corrupt safetensors file ({e})") from e


def sae_lens_cfg(sae: SparseAutoencoder, extra_cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """``cfg.json`` content: SAELens field names, caller's metadata, thumbview's own config."""
    cfg = sae.cfg
    topk = cfg.arch == "topk"
    core = {
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "architecture": "topk" if topk else "standard",
        "activation_fn_str": "topk" if topk else "relu",
        "activation_fn_kwargs": {"k": cfg.k} if topk else {},
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "dtype": "float32",
        "thumbview": cfg.to_dict(),
    }
    if topk:
        core["k"] = cfg.k
    clash = set(extra_cfg or {}) & set(core)
    if clash:
        raise SaeError(f"extra_cfg may not override {sorted(clash)}")
    defaults = {
        "device": "cpu",
        "model_name": None,
        "hook_name": None,
        "hook_layer": None,
        "hook_head_index": None,
        "context_size": None,
        "prepend_bos": False,
        "dataset_path": None,
        "finetuning_scaling_factor": False,
    }
    merged = {**defaults, **(extra_cfg or {}), **core}
    if merged["hook_name"] is None:  # no module to name: say where the activations came from
        merged["hook_name"] = f"thumbview.{merged.get('features') or 'activations'}"
    return merged


def save_sae(
    sae: SparseAutoencoder, directory: str | Path, extra_cfg: dict[str, Any] | None = None
) -> Path:
    """Write ``sae_weights.safetensors`` + ``cfg.json`` (SAELens layout; see module docstring)."""
    directory = Path(directory)
    cfg_json = json.dumps(sae_lens_cfg(sae, extra_cfg), indent=2)
    tensors = {k: getattr(sae, k).detach().float().cpu().contiguous() for k in _PARAM_KEYS}
    # Each file atomically (a kill mid-write keeps the earlier file whole); cfg.json last.
    atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp))
    atomic_write(directory / CFG_FILE, cfg_json)
    return directory


# cfg.json as SAELens reads it (the sizes and activation; other keys are metadata), and the
# JSON type of each field of thumbview's own config (under "thumbview"), by its annotation.
SAELENS_SCHEMA = {
    "d_in": Optional(int),
    "d_sae": Optional(int),
    "architecture": Optional(str),
    "k": Optional(int),
    "activation_fn_kwargs": Optional(MapOf((int, float, str, bool, type(None)))),
    "thumbview": Optional(dict),
}
_FIELD_JSON = {"int": int, "float": Number, "bool": bool, "int | None": Optional(int)}


def _own_schema() -> dict[str, Any]:
    """Every field of every architecture's config, optional (defaults), typed."""
    schema: dict[str, Any] = {"arch": Optional(str)}
    for cls in (TopKConfig, ReluL1Config):
        for f in fields(cls):
            schema[f.name] = Optional(_FIELD_JSON.get(str(f.type), object))
    return schema


def _config_from_cfg_json(data: dict[str, Any], path: Path) -> SaeConfigs:
    """thumbview's own config if present (either layout), else one rebuilt from SAELens fields.

    Every field typed first (a `k` of true is not 1, a `d_in` of 0 divides nothing), and in
    thumbview's layout the SAELens sizes beside it must agree with it: SAELens reads those."""
    if (problem := check(data, SAELENS_SCHEMA)) or (
        "thumbview" in data and (problem := check(data["thumbview"], _own_schema(), ".thumbview"))
    ):
        raise SaeFileError(f"{path}: {problem}")
    try:
        cfg = _sae_config(data, path)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, SaeFileError):
            raise
        raise SaeFileError(f"{path}: not a usable SAE config ({e})") from e
    for key, value in (("d_in", cfg.d_in), ("d_sae", cfg.d_sae), ("k", getattr(cfg, "k", None))):
        if data.get(key) is not None and data[key] != value:
            raise SaeFileError(f"{path}: {key}={data[key]} disagrees with thumbview.{key}={value}")
    return cfg


def _sae_config(data: dict[str, Any], path: Path) -> SaeConfigs:
    if "thumbview" in data:
        return sae_config_from_dict(data["thumbview"])
    d_in, d_sae = data["d_in"], data["d_sae"]
    if d_in < 1 or d_sae < 1 or d_sae % d_in:
        raise SaeFileError(f"{path}: d_sae={d_sae} is not a positive multiple of d_in={d_in}")
    if data.get("architecture") == "topk":
        k = data.get("k") or (data.get("activation_fn_kwargs") or {}).get("k") or 1
        if isinstance(k, bool) or not isinstance(k, int):
            raise SaeFileError(f"{path}: activation_fn_kwargs.k must be an integer")
        return sae_config("topk", d_in=d_in, expansion_factor=d_sae // d_in, k=k)
    return sae_config(
        "relu-l1", d_in=d_in, expansion_factor=d_sae // d_in, normalize_activations=False
    )


def _checked_tensors(path: Path, cfg: SaeConfigs) -> dict[str, torch.Tensor]:
    """The four parameters, their shapes checked in the header against the config *before*
    anything is allocated (a d_sae of 10^9 with a 10 KB file is refused, not built), and
    finite."""
    header = read_header(path, SaeFileError)
    cap_sizes(path.parent / CFG_FILE, header, {"d_in": cfg.d_in, "d_sae": cfg.d_sae}, SaeFileError)
    expected = {
        "W_enc": (cfg.d_in, cfg.d_sae),
        "b_enc": (cfg.d_sae,),
        "W_dec": (cfg.d_sae, cfg.d_in),
        "b_dec": (cfg.d_in,),
    }
    if problem := shape_problem(header, expected, exact=False):
        raise SaeFileError(f"{path}: {problem} (cfg.json)")
    tensors = _read_safetensors(path)
    bad = [k for k in _PARAM_KEYS if not bool(torch.isfinite(tensors[k]).all())]
    if bad:
        raise SaeFileError(f"{path}: non-finite values (NaN or inf) in {', '.join(bad)}")
    return tensors


def load_sae(directory: str | Path) -> SparseAutoencoder:
    """Inverse of `save_sae`; exact round-trip. Raises `SaeFileError` with the cause.

    `directory` is the SAE folder or the `sae train --out` folder above it.
    """
    directory = _finished_sae_dir(directory, SaeFileError)
    cfg = _config_from_cfg_json(_read_json(directory / CFG_FILE), directory / CFG_FILE)
    tensors = _checked_tensors(directory / WEIGHTS_FILE, cfg)
    sae = build_sae(cfg)
    sae.load_state_dict({k: tensors[k].float() for k in _PARAM_KEYS})
    return sae


# ------------------------------------------------------------------------ SAE latents


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object; a missing or broken file is a StudyError."""
    data = load_json(path, StudyError, allow_nan=True)  # size and depth limited
    if not isinstance(data, dict):
        raise StudyError(f"{path} is not a JSON object")
    return data


# cfg.json keys naming the activations, typed: a clip_layer of [1] is refused in words.
SOURCE_SCHEMA = {
    "features": Optional(str),
    **{k: Optional(str) for k in (*sources.CLIP_MODEL_KEYS, *sources.CLIP_TOKENS_KEYS)},
    **{k: Optional(int) for k in sources.CLIP_LAYER_KEYS},
    "imagenet_layer": Optional(int),
    "imagenet_tokens": Optional(str),
}


def read_sae_cfg(sae_dir: str | Path) -> dict[str, Any]:
    """The SAE's cfg.json as a dict (`sae_dir`: the SAE folder or the `sae train --out` one),
    its activation fields typed."""
    path = _resolved(sae_dir) / CFG_FILE
    cfg = read_json_object(path)
    if problem := check(cfg, SOURCE_SCHEMA):
        raise StudyError(f"{path}: {problem}")
    return cfg


def _resolved(sae_dir: str | Path) -> Path:
    return _finished_sae_dir(sae_dir, StudyError)


def _finished_sae_dir(path: str | Path, error: type[Exception]) -> Path:
    """The SAE folder (`resolve_sae_dir`), refused when the `sae train` that writes it (into
    it or into the folder above) did not finish."""
    check_finished(path, error)
    try:
        folder = resolve_sae_dir(path)
    except SaeFolderError as e:
        raise error(str(e)) from e
    check_finished(folder, error)
    if folder.name == SAE_SUBDIR:
        check_finished(folder.parent, error)
    return folder


def activation_source(cfg: dict[str, Any]) -> ActivationSource:
    """The activations an SAE was trained on, from its cfg.json (thumbview's or SAELens' keys)."""
    if cfg.get("features") == "shards":  # no encoder to rerun: codes were written at training
        raise StudyError(
            f"this SAE was trained on activation shards ({cfg.get('dataset_path')}), so it "
            "cannot compute activations itself: pass its codes, `--latents SAE/codes.npz`"
        )
    return sources.source_from_cfg(cfg)


def read_activation_source(sae_dir: str | Path) -> ActivationSource:
    """`activation_source` of an SAE folder's cfg.json; its errors name the file."""
    path = _resolved(sae_dir) / CFG_FILE
    try:
        return activation_source(read_sae_cfg(sae_dir))
    except StudyError as e:
        raise e if str(path) in str(e) else StudyError(f"{path}: {e}") from e
    except SaeError as e:
        raise StudyError(f"{path}: {e}") from e


def activation_encoder(source: ActivationSource, device: str = "cpu") -> Any:
    """The encoder whose output the SAE reads (a network at its layer, or a cached encoder)."""
    return sources.activation_encoder(source, device)


def load_sae_encoder(
    sae_dir: str | Path, device: str = "cpu", images_only: bool = True
) -> tuple[Any, Any]:
    """(SparseAutoencoder, its activation encoder) for an SAE folder, checked to fit.

    `sae_dir` is the folder given to `sae train --out` or the `sae/` inside it.
    `images_only`: the caller feeds images (explain, compare, serve), so the SAE must read
    an image network's activations (CLIP or ImageNet); `sae analyze` passes False to accept
    any cached encoder's features.
    """
    folder = _resolved(sae_dir)
    source = read_activation_source(folder)
    if images_only and source.features not in sources.IMAGE_SOURCES:
        raise StudyError(
            f"this SAE was trained on {source.features!r} features, not an image network's "
            f"activations; use it with `sae analyze` (explaining an image needs a CLIP or "
            f"ImageNet SAE)"
        )
    sae = load_sae(folder).to(device).eval()
    encoder = activation_encoder(source, device)
    if encoder.dim != sae.cfg.d_in:
        raise StudyError(
            f"the SAE expects {sae.cfg.d_in}-dim inputs but {source.features} "
            f"{source.clip_model if source.features == 'clip' else ''} gives {encoder.dim}; "
            f"the SAE was trained on other activations"
        )
    return sae, encoder


def encode_sparse(
    sae: Any,
    activations: np.ndarray,
    batch_size: int = 256,
    progress: Progress = SILENT,
):
    """SAE latents of activations (N, d_in) as float32 CSR (N, d_sae), positives only.

    Each batch is densified on its own only: (batch_size, d_sae) at a time.
    """
    import scipy.sparse as sp
    import torch

    device = next(sae.parameters()).device
    blocks = []
    with torch.inference_mode(), progress.task("SAE latents", len(activations)) as advance:
        for s in range(0, len(activations), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(activations[s : s + batch_size]))
            z = sae.encode(x.float().to(device)).float().cpu().numpy()  # (B, d_sae) f32
            np.maximum(z, 0, out=z)  # ReLU/TopK codes are >= 0 already; stay safe
            blocks.append(sp.csr_matrix(z))  # stores the > 0 entries only
            advance(len(x))
    if not blocks:
        return sp.csr_matrix((0, sae.cfg.d_sae), dtype=np.float32)
    return sp.vstack(blocks, format="csr")
