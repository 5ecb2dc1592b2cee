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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from thumbview.layout import SAE_CONFIG as CFG_FILE
from thumbview.layout import SAE_WEIGHTS as WEIGHTS_FILE
from thumbview.layout import SaeFolderError, resolve_sae_dir
from thumbview.progress import SILENT, Progress
from thumbview.sae import sources
from thumbview.sae.architectures import build_sae
from thumbview.sae.arrays import StudyError
from thumbview.sae.config import (
    ActivationSource,
    SaeConfigs,
    SaeError,
    sae_config,
    sae_config_from_dict,
)
from thumbview.sae.model import SparseAutoencoder

_PARAM_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec")


class SaeFileError(ValueError):
    """A saved SAE or checkpoint is missing, corrupt, or does not fit the model at hand."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise SaeFileError(f"{path}: file not found") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SaeFileError(f"{path}: unreadable or corrupt JSON ({e})") from e
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
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: getattr(sae, k).detach().float().cpu().contiguous() for k in _PARAM_KEYS}
    save_file(tensors, directory / WEIGHTS_FILE)
    (directory / CFG_FILE).write_text(cfg_json)
    return directory


def _config_from_cfg_json(data: dict[str, Any], path: Path) -> SaeConfigs:
    """thumbview's own config if present (either layout), else one rebuilt from SAELens fields."""
    try:
        if "thumbview" in data:
            return sae_config_from_dict(data["thumbview"])
        d_in, d_sae = int(data["d_in"]), int(data["d_sae"])
        if d_sae % d_in:
            raise SaeFileError(f"{path}: d_sae={d_sae} is not a multiple of d_in={d_in}")
        if data.get("architecture") == "topk":
            k = int(data.get("k") or data.get("activation_fn_kwargs", {}).get("k") or 1)
            return sae_config("topk", d_in=d_in, expansion_factor=d_sae // d_in, k=k)
        return sae_config(
            "relu-l1", d_in=d_in, expansion_factor=d_sae // d_in, normalize_activations=False
        )
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, SaeFileError):
            raise
        raise SaeFileError(f"{path}: not a usable SAE config ({e})") from e


def load_sae(directory: str | Path) -> SparseAutoencoder:
    """Inverse of `save_sae`; exact round-trip. Raises `SaeFileError` with the cause.

    `directory` is the SAE folder or the `sae train --out` folder above it.
    """
    try:
        directory = resolve_sae_dir(directory)
    except SaeFolderError as e:
        raise SaeFileError(str(e)) from e
    cfg = _config_from_cfg_json(_read_json(directory / CFG_FILE), directory / CFG_FILE)
    tensors = _read_safetensors(directory / WEIGHTS_FILE)
    sae = build_sae(cfg)
    missing = [k for k in _PARAM_KEYS if k not in tensors]
    if missing:
        raise SaeFileError(f"{directory / WEIGHTS_FILE}: missing tensors {missing}")
    for key in _PARAM_KEYS:
        want, got = tuple(getattr(sae, key).shape), tuple(tensors[key].shape)
        if want != got:
            raise SaeFileError(
                f"{directory / WEIGHTS_FILE}: {key} has shape {got}, config implies {want}"
            )
    sae.load_state_dict({k: tensors[k].float() for k in _PARAM_KEYS})
    return sae


# ------------------------------------------------------------------------ SAE latents


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object; a missing or broken file is a StudyError."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StudyError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise StudyError(f"{path} is not a JSON object")
    return data


def read_sae_cfg(sae_dir: str | Path) -> dict[str, Any]:
    """The SAE's cfg.json as a dict (`sae_dir`: the SAE folder or the `sae train --out` one)."""
    return read_json_object(_resolved(sae_dir) / CFG_FILE)


def _resolved(sae_dir: str | Path) -> Path:
    try:
        return resolve_sae_dir(sae_dir)
    except SaeFolderError as e:
        raise StudyError(str(e)) from e


def activation_source(cfg: dict[str, Any]) -> ActivationSource:
    """The activations an SAE was trained on, from its cfg.json (thumbview's or SAELens' keys)."""
    if cfg.get("features") == "shards":  # no encoder to rerun: codes were written at training
        raise StudyError(
            f"this SAE was trained on activation shards ({cfg.get('dataset_path')}), so it "
            "cannot compute activations itself: pass its codes, `--latents SAE/codes.npz`"
        )
    return sources.source_from_cfg(cfg)


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
    source = activation_source(read_sae_cfg(folder))
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
