"""`SaeEncoder`: image -> CLIP activations -> sparse-autoencoder latents, in one place.

Explain, compare, the web page and the study all need SAE latents; they load the SAE and
its CLIP once through here (`SaeEncoder.load`, or `load_sae_encoder` for the bare pair) and
call `latents` (a few images) or `encode_sparse` (a whole dataset's cached activations).
torch, transformers and scipy load only when an SAE does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from thumbview.layout import resolve_sae_dir
from thumbview.progress import SILENT, Progress


def load_sae_encoder(
    sae_dir: str | Path, device: str = "cpu", images_only: bool = True
) -> tuple[Any, Any]:
    """(SparseAutoencoder, its activation encoder) for an SAE folder, checked to fit.

    `sae_dir` is the folder given to `sae train --out` or the `sae/` inside it.
    `images_only`: the caller feeds images (explain, compare, serve), so the SAE must read
    CLIP activations; `sae analyze` passes False to accept any cached encoder's features.
    """
    from thumbview.sae.analyze import _resolved, activation_source, read_sae_cfg
    from thumbview.sae.arrays import StudyError
    from thumbview.sae.pipeline import activation_encoder
    from thumbview.sae.train import load_sae

    folder = _resolved(sae_dir)
    source = activation_source(read_sae_cfg(folder))
    if images_only and source.features != "clip":
        raise StudyError(
            f"this SAE was trained on {source.features!r} features, not CLIP activations of "
            f"images; use it with `sae analyze` (explaining an image needs a CLIP SAE)"
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


@dataclass
class SaeEncoder:
    """A loaded SAE and the CLIP encoder whose activations it was trained on."""

    sae: Any  # thumbview.sae.model.SparseAutoencoder
    clip: Any  # thumbview.embed.clip.ClipEncoder
    sae_dir: Path

    @classmethod
    def load(cls, sae_dir: str | Path, device: str = "cpu") -> SaeEncoder:
        """Accepts the `sae train --out` folder or the `sae/` inside it."""
        sae, clip = load_sae_encoder(sae_dir, device)
        return cls(sae, clip, resolve_sae_dir(sae_dir))

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    def latents(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Dense SAE codes (I, d_sae) float32 for a few images (>= 0)."""
        acts = self.clip.encode([img.convert("RGB") for img in images])  # (I, d_in)
        return encode_sparse(self.sae, acts).toarray()
