"""What an SAE reads, per feature source: the encoder, its cfg.json keys, and latent names.

One table (`_SOURCES`) says, for each layered source (clip, imagenet), how to build the
encoder of its activations, which cfg.json keys record them (so `sae analyze`, `explain`
and `serve --sae` rebuild the same activations for a new image), and how to read them back.
Cached encoders ("title", "visual") come from the embed registry as they are. Training,
loading and the study go through here and never name a source themselves.

ImageNet activations (`ImagenetStage`): the EfficientNet-Lite0 at one block (or its conv
head), either spatially averaged (one vector per image, cached like any encoder's
features) or at every spatial position (streamed, like CLIP's patch tokens). The network's
own classifier names SAE latents of the head: the pooled head vector is what it reads, so a
decoder direction d moves the class logits by W_fc @ d, with no ImageNet images needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from PIL import Image

from thumbview.embed.base import Encoder
from thumbview.sae.arrays import StudyError
from thumbview.sae.config import ActivationSource

if TYPE_CHECKING:
    import torch


class ImagenetStage(Encoder):
    """The ImageNet EfficientNet-Lite0's activations at `layer`, as an encoder for the cache.

    `encode` gives one vector per image, (B, C): the spatial average of the layer (for
    layer -1 that is the pooled head vector the classifier reads). `residual_stream(...,
    tokens="all")` gives every position, (B, H*W, C), the counterpart of CLIP's tokens.
    """

    name: ClassVar[str] = "imagenet-stage"
    version: ClassVar[str] = "1"
    modality: ClassVar[Literal["image"]] = "image"

    def __init__(self, layer: int = -1, positions: bool = False, batch_size: int = 32) -> None:
        from thumbview.embed.imagenet import ImagenetEncoder, stage_index

        self.block = stage_index(layer)  # None = conv head; raises on a bad layer
        self.layer = layer
        self.positions = positions  # the SAE reads every position: codes via `image_codes`
        self.batch_size = batch_size
        self.net = ImagenetEncoder(outputs="pooled", batch_size=batch_size)

    @property
    def is_head(self) -> bool:
        """The conv head: its pooled output is what the ImageNet classifier reads."""
        return self.block is None

    @property
    def hook_name(self) -> str:
        """The torch module whose output this is (SAELens' hook_name)."""
        return "_conv_head" if self.is_head else f"_blocks.{self.block}"

    @property
    def dim(self) -> int:
        from thumbview.embed.imagenet import POOLED_DIM

        if self.is_head:
            return POOLED_DIM
        return int(self.net.network._blocks[self.block]._bn2.num_features)

    def spec(self) -> dict[str, Any]:
        base = {k: v for k, v in self.net.spec().items() if k not in ("encoder", "version", "dim")}
        return {**super().spec(), **base, "hook": self.hook_name, "reduce": "spatial-mean"}

    def encode(self, inputs: Sequence[Image.Image]) -> np.ndarray:
        """float32 (B, C): the layer averaged over its spatial positions."""
        return self.net.stage(list(inputs), layer=self.layer, tokens="pooled")

    def residual_stream(
        self, images: Sequence[Image.Image], layer: int | None = None, tokens: str = "all"
    ) -> np.ndarray:
        """float32 (B, H*W, C) for tokens="all" (or (B, C) for "pooled"): CLIP's interface."""
        return self.net.stage(list(images), layer=self.layer, tokens=tokens)


# ------------------------------------------------------------------ the sources' table


@dataclass(frozen=True)
class _Source:
    """How one layered source builds its encoder and records / reads its cfg.json keys."""

    build: Callable[[ActivationSource, str], Any]
    to_cfg: Callable[[ActivationSource, Any], dict[str, Any]]
    from_cfg: Callable[[dict[str, Any]], ActivationSource]


def _clip_build(source: ActivationSource, device: str) -> Any:
    from thumbview.embed.clip import ClipEncoder

    return ClipEncoder(source.clip_model, layer=source.layer, tokens="cls", device=device)


def _clip_cfg(source: ActivationSource, encoder: Any) -> dict[str, Any]:
    index = encoder.layer_index(source.layer)
    # hidden_states[i] is the output of block i - 1; hidden_states[0] the embeddings.
    hook = f"vision_model.encoder.layers.{index - 1}" if index else "vision_model.pre_layrnorm"
    return {
        "features": "clip",
        "clip_model": source.clip_model,
        "model_name": source.clip_model,
        "hook_name": hook,
        "hook_layer": max(index - 1, 0),
        "clip_layer": source.layer,
        "clip_tokens": source.tokens,
    }


# cfg.json keys naming the activations an SAE was trained on (thumbview's, then SAELens').
CLIP_MODEL_KEYS = ("clip_model", "model_name")
CLIP_LAYER_KEYS = ("clip_layer",)
CLIP_TOKENS_KEYS = ("clip_tokens",)


def _clip_from_cfg(cfg: dict[str, Any]) -> ActivationSource:
    model = next((cfg[k] for k in CLIP_MODEL_KEYS if cfg.get(k)), None)
    layer = next((cfg[k] for k in CLIP_LAYER_KEYS if cfg.get(k) is not None), None)
    tokens = next((cfg[k] for k in CLIP_TOKENS_KEYS if cfg.get(k)), "cls")
    if model is None or layer is None:
        raise StudyError(
            "the SAE's cfg.json does not say which activations it was trained on: it needs "
            f"'features', or 'clip_model' and 'clip_layer' (found keys: {sorted(cfg)})"
        )
    if tokens != "cls":
        raise StudyError(f"the study uses one vector per thumbnail (CLS); SAE has {tokens!r}")
    return ActivationSource("clip", str(model), int(layer), str(tokens))


def _imagenet_build(source: ActivationSource, device: str) -> ImagenetStage:
    return ImagenetStage(layer=int(source.layer), positions=not source.per_image)


def _imagenet_cfg(source: ActivationSource, encoder: ImagenetStage) -> dict[str, Any]:
    from thumbview.embed.imagenet import ARCH

    return {
        "features": "imagenet",
        "model_name": ARCH,
        "hook_name": encoder.hook_name,
        "hook_layer": 16 if encoder.is_head else encoder.block,
        "imagenet_layer": source.layer,
        "imagenet_tokens": source.tokens,
    }


def _imagenet_from_cfg(cfg: dict[str, Any]) -> ActivationSource:
    layer, tokens = cfg.get("imagenet_layer"), cfg.get("imagenet_tokens")
    if not isinstance(layer, int) or tokens not in ("pooled", "all"):
        raise StudyError(
            "the SAE's cfg.json says features 'imagenet' but not which layer and tokens "
            f"(imagenet_layer={layer!r}, imagenet_tokens={tokens!r})"
        )
    return ActivationSource("imagenet", layer=layer, tokens=tokens)


_SOURCES: dict[str, _Source] = {
    "clip": _Source(_clip_build, _clip_cfg, _clip_from_cfg),
    "imagenet": _Source(_imagenet_build, _imagenet_cfg, _imagenet_from_cfg),
}
IMAGE_SOURCES = tuple(_SOURCES)  # sources an image can be explained with (explain, serve)


def activation_encoder(source: ActivationSource, device: str = "cpu") -> Any:
    """The encoder whose output the SAE reads (a network at its layer, or a cached encoder)."""
    if source.features in _SOURCES:
        return _SOURCES[source.features].build(source, device)
    from thumbview.embed.registry import get_encoder

    return get_encoder(source.features)


def source_cfg(source: ActivationSource, encoder: Any) -> dict[str, Any]:
    """cfg.json keys naming the activations: thumbview's, plus SAELens' model/hook names."""
    if source.features in _SOURCES:
        return _SOURCES[source.features].to_cfg(source, encoder)
    return {"features": source.features, "model_name": encoder.spec().get("encoder")}


def source_from_cfg(cfg: dict[str, Any]) -> ActivationSource:
    """Inverse of `source_cfg` (also SAELens-only CLIP folders, which lack 'features')."""
    features = cfg.get("features", "clip")
    if features in _SOURCES:
        return _SOURCES[features].from_cfg(cfg)
    return ActivationSource(features=str(features))


def image_codes(sae: Any, encoder: Any, images: Sequence[Image.Image]) -> np.ndarray:
    """Dense SAE codes, one row per image (I, d_sae) float32 >= 0.

    An SAE of one vector per image codes that vector. An SAE of every spatial position
    (`encoder.positions`) codes each position and keeps each latent's maximum over the
    image: "does this pattern appear anywhere in the thumbnail", one row per video as the
    study needs.
    """
    import torch

    images = [img.convert("RGB") for img in images]
    positions = getattr(encoder, "positions", False)
    out = np.zeros((len(images), sae.cfg.d_sae), np.float32)
    device = next(sae.parameters()).device
    step = getattr(encoder, "batch_size", 32)
    with torch.inference_mode():
        for s in range(0, len(images), step):
            batch = images[s : s + step]
            acts = encoder.residual_stream(batch, tokens="all") if positions else None
            acts = encoder.encode(batch)[:, None] if acts is None else acts  # (B, T, d_in)
            x = torch.from_numpy(np.ascontiguousarray(acts, dtype=np.float32)).to(device)
            z = sae.encode(x.flatten(0, 1)).view(*x.shape[:2], -1)  # (B, T, d_sae)
            out[s : s + len(batch)] = z.amax(dim=1).clamp_min(0).float().cpu().numpy()
    return out


def position_max_codes(sae: Any, acts: Any, n_tokens: int, batch_images: int = 32):
    """CSR (N, d_sae): per image, each latent's max over its `n_tokens` consecutive rows of
    `acts` (N * n_tokens, d_in), e.g. the memory-mapped all-position training activations."""
    import scipy.sparse as sp
    import torch

    device = next(sae.parameters()).device
    n_images, rows = len(acts) // n_tokens, batch_images * n_tokens
    blocks = []
    with torch.inference_mode():
        for s in range(0, n_images * n_tokens, rows):
            x = torch.from_numpy(np.array(acts[s : s + rows], dtype=np.float32))  # a writable copy
            z = sae.encode(x.to(device)).view(-1, n_tokens, sae.cfg.d_sae)  # (B, T, d_sae)
            blocks.append(sp.csr_matrix(z.amax(dim=1).clamp_min(0).float().cpu().numpy()))
    if not blocks:
        return sp.csr_matrix((0, sae.cfg.d_sae), dtype=np.float32)
    return sp.vstack(blocks, format="csr")


# ------------------------------------------------------------------------ latent names


def latent_names(sae: Any, source: ActivationSource, top: int = 3) -> dict[int, str] | None:
    """Latent -> what the source's own readout says its decoder direction is, or None.

    Only ImageNet SAEs of the conv head have such a readout: the classifier (W_fc) reads the
    pooled head vector, so latent i moves the logits by W_fc @ W_dec[i]; it is named by the
    `top` classes that rise most. (An SAE of all positions: one position moves the pooled
    vector by W_dec[i] / (H*W), the same direction.) Other layers reach the classifier
    through the rest of the network, not linearly, so they get no names.
    """
    if source.features != "imagenet" or not _is_head(source):
        return None
    import torch

    from thumbview.embed.imagenet import build_network, class_names

    fc = build_network()._fc
    with torch.no_grad():
        shift = decoder_logit_shift(sae.W_dec.detach().float().cpu(), fc.weight.float())
    names = class_names()
    top_ids = torch.topk(shift, k=min(top, shift.shape[1]), dim=1).indices.numpy()  # (d_sae, top)
    return {i: ", ".join(names[c] for c in row) for i, row in enumerate(top_ids)}


def _is_head(source: ActivationSource) -> bool:
    """An ImageNet source at the conv head (layer -1 or 16)."""
    from thumbview.embed.imagenet import stage_index

    return stage_index(int(source.layer)) is None


def decoder_logit_shift(w_dec: torch.Tensor, w_fc: torch.Tensor) -> torch.Tensor:
    """(d_sae, n_classes): how each latent's decoder row (d_sae, d_in) moves the logits of a
    linear classifier W_fc (n_classes, d_in); the bias cancels in a difference."""
    return w_dec @ w_fc.T


def names_description(source: ActivationSource | None) -> str | None:
    """What the names of `latent_names` are, for the report and summary.json."""
    if source is None or source.features != "imagenet":
        return None
    if not _is_head(source):
        return (
            f"not available: layer {source.layer} is not the conv head, which the ImageNet "
            "classifier reads linearly"
        )
    return (
        "the 3 ImageNet classes whose logits the latent's decoder direction raises most "
        "through the network's own classifier (W_fc @ decoder row)"
    )
