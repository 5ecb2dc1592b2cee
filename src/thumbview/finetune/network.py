"""The network: an image backbone (transformers ViT / ConvNeXt / CLIP vision tower, or any
timm model), an optional title tower, and a small MLP over their concatenated embeddings.

Backbones are built from transformers configs (no download, no torchvision), so a
from-scratch ViT works offline; `timm:MODEL` backbones are built by timm with
`pretrained=False` (`timm_backbone`, the `thumbview[timm]` extra). `--init` loads weights
from a local safetensors file or a Hugging Face / timm folder (or a Hub id when online).
The architecture is stored with the model, so loading rebuilds exactly what was trained.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from thumbview.finetune.config import FinetuneConfig, FinetuneError, backbone_spec
from thumbview.finetune.weights import download, is_hub_id, load_backbone, read_safetensors
from thumbview.schema import MAX_JSON_BYTES, parse_json, read_regular_file

log = logging.getLogger(__name__)

CLIP_MEAN, CLIP_STD = (0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758)
HALF = (0.5, 0.5, 0.5)
TITLE_DIM = 384  # MiniLM-L6
OWN_RECIPES = ("timm", "effnet")  # kinds whose recipe is stored under arch[kind], not hf_config


def _config_class(kind: str):
    from transformers import CLIPVisionConfig, ConvNextConfig, ViTConfig

    return {"vit": ViTConfig, "convnext": ConvNextConfig, "clip": CLIPVisionConfig}[kind]


def _model_class(kind: str):
    from transformers import CLIPVisionModel, ConvNextModel, ViTModel

    return {"vit": ViTModel, "convnext": ConvNextModel, "clip": CLIPVisionModel}[kind]


class ImageTower(nn.Module):
    """Pixels (B, 3, S, S) in 0..255 -> image embedding (B, D).

    `backbone_config` is the transformers config dict, or for kind "timm" the recipe of
    `timm_backbone.recipe` (normalised with timm's own mean/std for the model), or for kind
    "effnet" that of `effnet_backbone.recipe` (scaled to [-1, 1] as `imagenet.to_input` does).
    """

    def __init__(self, kind: str, backbone_config: dict[str, Any]):
        super().__init__()
        self.kind = kind
        if kind == "timm":
            from thumbview.finetune.timm_backbone import create

            self.model = create(backbone_config)
            mean, std = backbone_config["mean"], backbone_config["std"]
        elif kind == "effnet":
            from thumbview.finetune.effnet_backbone import create as create_effnet

            self.model = create_effnet(backbone_config)
            mean, std = HALF, HALF
        else:
            cfg = _config_class(kind).from_dict(backbone_config)
            extra = {"add_pooling_layer": False} if kind == "vit" else {}
            self.model = _model_class(kind)(cfg, **extra)
            mean, std = (CLIP_MEAN, CLIP_STD) if kind == "clip" else (HALF, HALF)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)

    @property
    def dim(self) -> int:
        if self.kind == "timm":
            from thumbview.finetune.timm_backbone import embedding_dim

            return embedding_dim(self.model)
        if self.kind == "effnet":
            from thumbview.finetune.effnet_backbone import embedding_dim as effnet_dim

            return effnet_dim(self.model)
        cfg = self.model.config
        return cfg.hidden_sizes[-1] if self.kind == "convnext" else cfg.hidden_size

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels.float() - self.mean) / self.std  # (B, 3, S, S)
        if self.kind == "timm":
            return self.model(x)  # (B, D) pooled, no classifier (num_classes=0)
        if self.kind == "effnet":
            from thumbview.finetune.effnet_backbone import features

            return features(self.model, x)  # (B, 1280) last stage, averaged over space
        if self.kind == "convnext":
            return self.model(pixel_values=x).pooler_output  # (B, D)
        out = self.model(pixel_values=x, interpolate_pos_encoding=True)
        if self.kind == "clip":
            return out.pooler_output  # (B, D)
        return out.last_hidden_state[:, 0]  # (B, D) CLS after the final layer norm


class TitleTower(nn.Module):
    """MiniLM (token ids, mask) (B, 2L) -> unit-norm mean-pooled embedding (B, 384), trainable."""

    def __init__(self, hf_config: dict[str, Any]):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        cfg = dict(hf_config)
        self.model = AutoModel.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        ids, mask = tokens.long().chunk(2, dim=1)  # (B, L) each
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, H)
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, H)
        return nn.functional.normalize(pooled, dim=-1)


class FusionNet(nn.Module):
    """Image embedding ++ title embedding -> LayerNorm -> MLP -> standardised target (B,)."""

    def __init__(self, arch: dict[str, Any]):
        super().__init__()
        kind = arch["kind"]
        self.image = ImageTower(kind, arch[kind] if kind in OWN_RECIPES else arch["hf_config"])
        self.title_mode = arch["title"]
        self.title = TitleTower(arch["title_config"]) if arch.get("title_config") else None
        width = self.image.dim + (0 if self.title_mode == "none" else TITLE_DIM)
        self.head = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, arch["hidden"]),
            nn.GELU(),
            nn.Dropout(arch["dropout"]),
            nn.Linear(arch["hidden"], 1),
        )

    def forward(self, pixels: torch.Tensor, title: torch.Tensor | None = None) -> torch.Tensor:
        return self.head_of(self.embed(pixels, title))  # (B,)

    def embed(self, pixels: torch.Tensor, title: torch.Tensor | None = None) -> dict:
        """{"image": (B, D_img), "title": (B, 384) unless title is "none"}: what the head reads
        (the training range describes these, `finetune.range`)."""
        parts = {"image": self.image(pixels)}
        if self.title_mode == "finetune":
            parts["title"] = self.title(title)  # trained tower
        elif self.title_mode == "frozen":
            parts["title"] = title.float()  # precomputed MiniLM
        return parts

    def head_of(self, parts: dict) -> torch.Tensor:
        """The standardised prediction (B,) from `embed`'s parts."""
        return self.head(torch.cat(list(parts.values()), dim=1)).squeeze(1)

    @property
    def embedding_dims(self) -> dict[str, int]:
        """{part: width} of `embed`'s output."""
        return {
            "image": self.image.dim,
            **({} if self.title_mode == "none" else {"title": TITLE_DIM}),
        }


# ----- building ------------------------------------------------------------------------------
def architecture(config: FinetuneConfig, init_config: dict | None = None) -> dict[str, Any]:
    """The JSON description `FusionNet` is built from (stored in the model's config.json)."""
    spec = backbone_spec(config.backbone)
    own_recipe = None
    if spec.kind == "timm":
        from thumbview.finetune.timm_backbone import recipe

        kind, hf = "timm", None
        own_recipe, size = recipe(config, init_config)
    elif spec.kind == "effnet":
        from thumbview.finetune.effnet_backbone import recipe as effnet_recipe

        kind, hf = "effnet", None
        own_recipe, size = effnet_recipe(spec.hf["arch"]), config.size
    else:
        kind = init_config.pop("_kind") if init_config else spec.kind
        hf = init_config if init_config else {**spec.hf, "image_size": config.size}
        size = config.image_size or hf.get("image_size") or spec.image_size  # an --init decides
        if kind == "convnext":
            hf.pop("image_size", None)
    title_config = None
    if config.title == "finetune":
        from thumbview.embed.title import default_model_path

        title_config = json.loads((default_model_path() / "config.json").read_text())
    return {
        "kind": kind,
        "hf_config": hf,
        **({kind: own_recipe} if own_recipe else {}),
        "title": config.title,
        "title_config": title_config,
        "hidden": config.hidden,
        "dropout": config.dropout,
        "image_size": int(size),
        "frame": spec.frame,
    }


def build_network(config: FinetuneConfig) -> tuple[FusionNet, dict[str, Any]]:
    """A fresh network for `config` ((weights from `--init` and MiniLM where asked), and its arch."""
    init_state, init_config = (None, None) if not config.init else read_init(config)
    arch = architecture(config, init_config)
    torch.manual_seed(config.seed)
    net = FusionNet(arch)
    if init_state is not None:
        if arch["kind"] == "timm":
            from thumbview.finetune.timm_backbone import load_weights as load
        elif arch["kind"] == "effnet":
            from thumbview.finetune.effnet_backbone import load_weights as load
        else:
            load = load_backbone
        load(net.image.model, init_state, config.init)
        log.info("backbone initialised from %s", config.init)
    else:
        log.info("backbone %s trained from scratch (no --init)", config.backbone)
    if net.title is not None:
        _load_minilm(net.title.model)
    return net, arch


def read_init(config: FinetuneConfig) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(backbone state dict, transformers config dict with `_kind` or None) from `--init`
    (for a timm backbone: the extras of its folder's config.json, see `timm_backbone`)."""
    kind = backbone_spec(config.backbone).kind
    if kind == "timm":
        from thumbview.finetune.timm_backbone import read_init as read_timm_init

        return read_timm_init(config)
    if kind == "effnet":
        from thumbview.finetune.effnet_backbone import read_init as read_effnet_init

        return read_effnet_init(config)
    path = Path(config.init).expanduser()
    if path.is_file():
        return read_safetensors(path, config.init), None
    if path.is_dir():
        return _read_hf_folder(path, config.init)
    if is_hub_id(config.init):
        return _read_hub(config.init)
    raise FinetuneError(f"--init {config.init}: no such file or folder")


def _read_hf_folder(path: Path, name: str) -> tuple[dict[str, torch.Tensor], dict]:
    cfg_path, weights = path / "config.json", path / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise FinetuneError(
            f"--init {name}: not a Hugging Face model folder (needs config.json and model.safetensors)"
        )
    try:
        hf = parse_json(read_regular_file(cfg_path, MAX_JSON_BYTES), allow_nan=True)
    except (OSError, ValueError) as e:  # also: not a file, over the cap, too deep
        raise FinetuneError(f"--init {name}: config.json is not valid JSON ({e})") from e
    kind = {"clip": "clip", "clip_vision_model": "clip", "vit": "vit", "convnext": "convnext"}.get(
        hf.get("model_type")
    )
    if kind is None:
        raise FinetuneError(
            f"--init {name}: model type {hf.get('model_type')!r} is not a ViT, ConvNeXt or CLIP"
        )
    if hf.get("model_type") == "clip":
        hf = {**hf["vision_config"], "model_type": "clip_vision_model"}
    state = read_safetensors(weights, name)
    return state, {
        **_config_class(kind).from_dict(hf).to_dict(),
        "_kind": kind,
    }


def _read_hub(hub_id: str) -> tuple[dict[str, torch.Tensor], dict]:
    return _read_hf_folder(download(hub_id, hub_id), hub_id)


def _load_minilm(model: nn.Module) -> None:
    """Start the trainable title tower from the shipped MiniLM weights."""
    from safetensors.torch import load_file

    from thumbview.embed.title import default_model_path

    state = load_file(default_model_path() / "model.safetensors")
    own = model.state_dict()
    model.load_state_dict({k: state.get(k, own[k]) for k in own})
