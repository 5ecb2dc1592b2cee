"""`SaeEncoder`: image -> network activations -> sparse-autoencoder latents, in one place.

Explain, compare, the web page and the study all need SAE latents; they load the SAE and
its encoder (CLIP or the ImageNet network) once through here (`SaeEncoder.load`, or `load_sae_encoder` for the bare pair) and
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
from thumbview.sae.folder import load_sae_encoder
from thumbview.sae.sources import image_codes


@dataclass
class SaeEncoder:
    """A loaded SAE and the image encoder whose activations it was trained on."""

    sae: Any  # thumbview.sae.model.SparseAutoencoder
    clip: Any  # the activation encoder: ClipEncoder, or sae.sources.ImagenetStage
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
        return image_codes(self.sae, self.clip, images)
