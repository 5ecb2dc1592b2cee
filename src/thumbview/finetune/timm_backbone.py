"""timm backbones: `thumbview finetune --backbone timm:MODEL` (the `thumbview[timm]` extra).

One more backbone kind beside the transformers ones: `network.ImageTower` builds it,
`network.build_network` initialises it from `--init`, and the model folder stores its recipe
(model name, constructor arguments, timm version, normalisation), so loading rebuilds it with
`pretrained=False`, offline. timm is imported here, only when a timm backbone is asked for:
it imports torchvision, which must be built for the installed torch.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from thumbview.finetune.config import TIMM_PREFIX, FinetuneConfig, FinetuneError
from thumbview.finetune.weights import download, is_hub_id, load_backbone, read_safetensors
from thumbview.schema import MAX_JSON_BYTES, parse_json, read_regular_file

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "timm backbones need timm, and timm needs a torchvision built for the installed torch: "
    "pip install torch==2.14.1 torchvision==0.29.1 'thumbview[timm]' "
    "(PyPI's torchvision does not import beside the CPU torch 2.13)"
)


class TimmMissingError(FinetuneError):
    """A timm backbone without a working timm; the message says how to install it."""


def import_timm():
    """The timm module, or `TimmMissingError` (also when torchvision does not fit the torch)."""
    try:
        import timm
    except Exception as e:  # ImportError, or torchvision's "torchvision::nms does not exist"
        raise TimmMissingError(f"{INSTALL_HINT} [{_first_line(e)}]") from e
    return timm


def _first_line(e: Exception) -> str:
    """`Kind: first line of the message` (errors reach the user as one line)."""
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


def create(recipe: dict[str, Any]) -> nn.Module:
    """The timm model of a stored recipe, random weights, no classifier: pixels -> (B, D)."""
    timm = import_timm()
    if recipe.get("timm_version") != timm.__version__:
        log.info("model built with timm %s, running timm %s", recipe.get("timm_version"),
                 timm.__version__)  # fmt: skip
    return timm.create_model(recipe["model_name"], pretrained=False, num_classes=0,
                             **recipe["kwargs"])  # fmt: skip


def embedding_dim(model: nn.Module) -> int:
    """Width of the pooled features (a head MLP, where the model has one, is kept)."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def recipe(config: FinetuneConfig, init_config: dict | None) -> tuple[dict[str, Any], int]:
    """(recipe stored in the model's config.json, input side): built once on the meta device
    to learn whether the model takes `img_size`, its default input side and its mean/std."""
    timm = import_timm()
    from timm.data import resolve_model_data_config

    name = config.backbone[len(TIMM_PREFIX) :]
    if not timm.is_model(name):
        raise FinetuneError(f"--backbone {config.backbone}: timm {timm.__version__} has no model "
                            f"{name!r} (timm.list_models() lists them)")  # fmt: skip
    init_config = init_config or {}
    kwargs = {**init_config.get("model_args", {}), **config.backbone_args}
    model, kwargs = _probe(timm, name, kwargs, config.image_size, config.backbone)
    data = resolve_model_data_config(model)
    mean = init_config.get("mean") or data["mean"]
    std = init_config.get("std") or data["std"]
    size = config.image_size or int(data["input_size"][-1])
    return {"model_name": name, "kwargs": kwargs, "timm_version": timm.__version__,
            "mean": [float(m) for m in mean], "std": [float(s) for s in std]}, size  # fmt: skip


def _probe(timm, name: str, kwargs: dict, size: int | None, backbone: str):
    """(model, kwargs it was built with): on the meta device (no memory, no init cost), on
    the CPU where a model cannot build there; what timm refuses is one clear line."""
    error: Exception | None = None
    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                return _create_sized(timm, name, kwargs, size)
        except Exception as e:  # timm raises many kinds for impossible settings
            error = e
    raise FinetuneError(f"--backbone {backbone}: timm cannot build it with these settings "
                        f"({_first_line(error)})") from error  # fmt: skip


def _create_sized(timm, name: str, kwargs: dict, size: int | None):
    """With `img_size=size` where the model takes it (a ViT), else without (a CNN takes any)."""
    if size is not None:
        sized = {**kwargs, "img_size": size}
        try:
            return timm.create_model(name, pretrained=False, num_classes=0, **sized), sized
        except TypeError as e:
            if "img_size" not in str(e):
                raise
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs), kwargs


# ----- --init --------------------------------------------------------------------------------
def read_init(config: FinetuneConfig) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, {mean, std, model_args} from a timm folder's config.json) from `--init`:
    a safetensors file, a timm folder (config.json + model.safetensors), or a Hub id."""
    init = config.init
    path = Path(init).expanduser()
    if path.is_file():
        return read_safetensors(path, init), {}
    if path.is_dir():
        return _read_folder(path, init, config.backbone)
    if init.startswith("hf-hub:") or is_hub_id(init):
        hub_id = init.removeprefix("hf-hub:")
        return _read_folder(download(hub_id, init), init, config.backbone)
    raise FinetuneError(f"--init {init}: no such file or folder")


def _read_folder(path: Path, name: str, backbone: str) -> tuple[dict[str, torch.Tensor], dict]:
    weights, cfg_path = path / "model.safetensors", path / "config.json"
    if not weights.is_file():
        raise FinetuneError(f"--init {name}: not a timm model folder (needs model.safetensors)")
    cfg: Any = {}
    if cfg_path.is_file():
        try:
            cfg = parse_json(read_regular_file(cfg_path, MAX_JSON_BYTES), allow_nan=True)
        except (OSError, ValueError) as e:  # also: not a file, over the cap, too deep
            raise FinetuneError(f"--init {name}: config.json is not valid JSON ({e})") from e
    if not isinstance(cfg, dict):
        raise FinetuneError(f"--init {name}: config.json is not a timm model config")
    want = backbone[len(TIMM_PREFIX) :].split(".")[0]
    have = cfg.get("architecture")
    if have and have != want:
        raise FinetuneError(f"--init {name} holds timm model {have!r}, not {want!r}: "
                            f"use --backbone timm:{have}")  # fmt: skip
    pretrained = cfg.get("pretrained_cfg")
    pretrained = pretrained if isinstance(pretrained, dict) else {}
    extra = {k: pretrained[k] for k in ("mean", "std") if k in pretrained}
    if isinstance(cfg.get("model_args"), dict):
        extra["model_args"] = cfg["model_args"]
    return read_safetensors(weights, name), extra


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """Load `--init` weights strictly: timm's own checkpoint filter for the model first
    (resamples position embeddings to this input side, converts CLIP/DINOv2 naming)."""
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception as e:  # a checkpoint of another shape or kind
            raise FinetuneError(f"--init {name}: weights do not fit this backbone (timm's "
                                f"checkpoint filter: {_first_line(e)})") from e  # fmt: skip
    load_backbone(model, state, name)
