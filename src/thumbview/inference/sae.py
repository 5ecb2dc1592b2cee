"""`SaeEncoder`: image -> CLIP activations -> sparse-autoencoder latents, in one place.

Explain, compare, the web page and the study all need SAE latents; they load the SAE and
its CLIP once through here (`SaeEncoder.load`, or `load_sae_encoder` for the bare pair) and
call `latents` (a few images) or `encode_sparse` (a whole dataset's cached activations).
torch, transformers and scipy load only when an SAE does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from thumbview.layout import sae_weights_dir


def load_sae_encoder(sae_dir: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """(SparseAutoencoder, ClipEncoder) for an SAE folder, checked to fit each other.

    `sae_dir` is the folder given to `sae train --out` or the `sae/` inside it.
    """
    from thumbview.embed.clip import ClipEncoder
    from thumbview.sae.analyze import clip_settings, read_sae_cfg
    from thumbview.sae.stats import StudyError
    from thumbview.sae.train import load_sae

    sae_dir = sae_weights_dir(sae_dir)
    model, layer, tokens = clip_settings(read_sae_cfg(sae_dir))
    sae = load_sae(sae_dir).to(device).eval()
    encoder = ClipEncoder(model, layer=layer, tokens=tokens, device=device)
    if encoder.dim != sae.cfg.d_in:
        raise StudyError(
            f"the SAE expects {sae.cfg.d_in}-dim inputs but CLIP {model!r} layer {layer} "
            f"gives {encoder.dim}; the SAE was trained on other activations"
        )
    return sae, encoder


def encode_sparse(
    sae: Any,
    activations: np.ndarray,
    batch_size: int = 256,
    advance: Callable[[int], None] | None = None,
):
    """SAE latents of activations (N, d_in) as float32 CSR (N, d_sae), positives only.

    Each batch is densified on its own only: (batch_size, d_sae) at a time.
    """
    import scipy.sparse as sp
    import torch

    device = next(sae.parameters()).device
    blocks = []
    with torch.inference_mode():
        for s in range(0, len(activations), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(activations[s : s + batch_size]))
            z = sae.encode(x.float().to(device)).float().cpu().numpy()  # (B, d_sae) f32
            np.maximum(z, 0, out=z)  # ReLU/TopK codes are >= 0 already; stay safe
            blocks.append(sp.csr_matrix(z))  # stores the > 0 entries only
            if advance:
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
        return cls(sae, clip, sae_weights_dir(sae_dir))

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    def latents(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Dense SAE codes (I, d_sae) float32 for a few images (>= 0)."""
        acts = self.clip.encode([img.convert("RGB") for img in images])  # (I, d_in)
        return encode_sparse(self.sae, acts).toarray()
