"""`SaeEncoder`: image -> CLIP activations -> sparse-autoencoder latents, in one place.

Explain, compare and the web page all need the latents of a few thumbnails; they load the
SAE and its CLIP once through here and call `latents`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


@dataclass
class SaeEncoder:
    """A loaded SAE and the CLIP encoder whose activations it was trained on."""

    sae: Any  # thumbview.sae.model.SparseAutoencoder
    clip: Any  # thumbview.embed.clip.ClipEncoder
    sae_dir: Path

    @classmethod
    def load(cls, sae_dir: str | Path, device: str = "cpu") -> SaeEncoder:
        from thumbview.sae.analyze import load_sae_encoder

        sae, clip = load_sae_encoder(sae_dir, device)
        return cls(sae, clip, Path(sae_dir))

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    def latents(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Dense SAE codes (I, d_sae) float32 for a few images (>= 0)."""
        from thumbview.sae.analyze import encode_sparse

        acts = self.clip.encode([img.convert("RGB") for img in images])  # (I, d_in)
        return encode_sparse(self.sae, acts).toarray()
