"""Configurations of the SAE package, light enough for the CLI to import at start-up.

Each field's `metadata["help"]` is its one description: the CLI builds its options' help,
defaults and choices from these dataclasses (`option_help`), so flags, defaults and docs
cannot drift apart. Nothing here imports torch, scipy or pandas.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, ClassVar

from thumbview.sae.arrays import Alternative, Statistic, require


def _doc(text: str) -> Any:
    """A dataclass field's help text, read by the CLI (`metadata["help"]`)."""
    return {"help": text}


@dataclass(frozen=True)
class StudyConfig:
    """Every knob of the study; the defaults are the paper's main analysis.

    Each field's `metadata["help"]` is the one description of it (the CLI shows it).
    """

    top_k: int = field(default=400, metadata=_doc("Top activations per latent."))
    threshold: float = field(
        default=0.05, metadata=_doc("An activation counts as active above this.")
    )
    min_active: int = field(
        default=399,
        metadata=_doc("A latent qualifies when MORE than this many of its top-k are active."),
    )
    hold_out: int = field(default=1, metadata=_doc("Top videos held out of each group."))
    statistic: Statistic = field(
        default="median", metadata=_doc("Group statistic: median or mean.")
    )
    n_extreme: int = field(default=100, metadata=_doc("Features per side in the magnitude table."))
    heldout_group: int = field(
        default=100,
        metadata=_doc("Features per side whose held-out videos form the held-out test."),
    )
    n_random: int | None = field(
        default=None, metadata=_doc("Random groups for the KS test (default: one per feature).")
    )
    n_perm: int = field(
        default=100_000, metadata=_doc("Random groups in the null of the per-feature p-values.")
    )
    n_shuffles: int = field(
        default=199, metadata=_doc("View shuffles for the KS and held-out tests (p >= 1/(n+1)).")
    )
    alternative: Alternative = field(
        default="two-sided", metadata=_doc("Per-feature test: two-sided, greater or less.")
    )
    n_boot: int = field(
        default=1000, metadata=_doc("Bootstrap resamples per table row (0: no CIs).")
    )
    ci: float = field(default=0.95, metadata=_doc("Confidence level of the table's intervals."))
    seed: int = field(default=0, metadata=_doc("Seed of every random draw of the study."))

    def __post_init__(self) -> None:
        require(self.statistic in ("median", "mean"), "statistic must be 'median' or 'mean'")
        require(self.alternative in ("two-sided", "greater", "less"), "bad alternative")
        require(self.hold_out >= 1, "hold_out must be >= 1 (the held-out test needs it)")
        require(self.top_k > self.hold_out, "top_k must exceed hold_out (empty group)")
        require(
            0 <= self.min_active < self.top_k,
            f"min_active must be in [0, top_k): a latent qualifies with MORE than min_active "
            f"of its top {self.top_k} active, so min_active={self.min_active} admits none",
        )
        require(self.threshold >= 0, "threshold must be >= 0 (SAE latents are non-negative)")
        require(0 < self.ci < 1, "ci must be in (0, 1)")
        for name in ("n_extreme", "heldout_group", "n_perm", "n_shuffles"):
            require(getattr(self, name) >= 1, f"{name} must be >= 1")
        require(self.n_boot >= 0, "n_boot must be >= 0 (0 disables bootstrap CIs)")
        require(self.n_random is None or self.n_random >= 1, "n_random must be >= 1 or None")

    @property
    def group_size(self) -> int:
        """Videos per feature group (the paper's 399): ranks hold_out+1..top_k."""
        return self.top_k - self.hold_out


def channel_config(**overrides: Any) -> StudyConfig:
    """Defaults of the per-channel mode (channels of ~330-390 videos).

    Latents active on at least 11 videos (`min_active=10`: qualification is "more than"),
    top-1 held out, group = the next 10 videos summarised by their MEAN (a median of 10 is
    too coarse), top/bottom 10 features, held-out test on the 10 top-1 videos per side.
    """
    base = StudyConfig(
        top_k=11, min_active=10, statistic="mean", n_extreme=10, heldout_group=10, n_perm=20_000
    )
    return replace(base, **overrides)


def option_help(cls: type, name: str, show_default: bool = True, **variants: Any) -> str:
    """A field's help plus its default, e.g. "Top activations per latent (default 400)".

    `variants` name other defaults of the same field, shown after it (e.g. the per-channel
    mode's: ``option_help(StudyConfig, "top_k", **{"--channel": channel_config()})``).
    `show_default=False` where the CLI shows the option's default itself.
    """
    f = next(f for f in fields(cls) if f.name == name)
    text = f.metadata.get("help", "").rstrip(".")
    default = f.default if f.default is not MISSING else None
    shown = [f"default {_fmt(default)}"] if default is not None and show_default else []
    for label, obj in variants.items():
        value = getattr(obj, name)
        if value != default:
            shown.append(f"{_fmt(value)} with {label}")
    return f"{text} ({'; '.join(shown)})." if shown else f"{text}."


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


# --------------------------------------------------------------------- SAE architectures

ARCHS = ("topk", "relu-l1")


class SaeError(ValueError):
    """An SAE configuration or input that cannot work; the message says why."""


@dataclass(frozen=True)
class SaeBaseConfig:
    """What every SAE architecture shares; an architecture's config adds its own fields.

    `arch` (a class constant) names the architecture in cfg.json and on the CLI.
    """

    arch: ClassVar[str] = ""
    d_in: int = field(metadata=_doc("Width of the activations (set from the data)."))
    expansion_factor: int = field(
        default=64, metadata=_doc("Latents per input dimension (d_sae = d_in x this).")
    )
    dead_after: int = field(
        default=10_000_000,
        metadata=_doc("A latent is dead after this many samples without firing."),
    )
    normalize_decoder: bool = field(
        default=True, metadata=_doc("Keep decoder rows at unit norm during training.")
    )

    def __post_init__(self) -> None:
        for name in ("d_in", "expansion_factor", "dead_after"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SaeError(f"{name} must be a positive integer, got {value!r}")

    @property
    def d_sae(self) -> int:
        return self.d_in * self.expansion_factor

    def to_dict(self) -> dict[str, Any]:
        """Fields plus "arch": what cfg.json stores under "thumbview"."""
        return {"arch": self.arch, **{f.name: getattr(self, f.name) for f in fields(self)}}


@dataclass(frozen=True)
class TopKConfig(SaeBaseConfig):
    """TopK SAE (Gao et al. 2024): exactly k latents per input, AuxK revives dead latents."""

    arch: ClassVar[str] = "topk"
    k: int = field(default=32, metadata=_doc("Active latents per input (TopK)."))
    aux_k: int | None = field(
        default=None, metadata=_doc("Dead latents in the AuxK loss (default d_in / 2).")
    )
    aux_coefficient: float = field(default=1 / 32, metadata=_doc("Weight of the AuxK loss."))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.k, int) or self.k < 1:
            raise SaeError(f"k must be a positive integer, got {self.k!r}")
        if self.k > self.d_sae:
            raise SaeError(f"k={self.k} exceeds the number of latents d_sae={self.d_sae}")
        if self.aux_k is not None and self.aux_k < 1:
            raise SaeError(f"aux_k must be positive or None, got {self.aux_k}")
        if self.aux_coefficient < 0:
            raise SaeError("aux_coefficient must be >= 0")

    @property
    def resolved_aux_k(self) -> int:
        """``aux_k`` or the TopK paper's heuristic d_in / 2."""
        return self.aux_k if self.aux_k is not None else max(1, self.d_in // 2)


@dataclass(frozen=True)
class ReluL1Config(SaeBaseConfig):
    """ReLU + L1 SAE (Anthropic 2023/24, SAELens "standard") with ghost grads.

    The L1 penalty's size relative to the reconstruction error depends on the scale of the
    activations, so by default inputs are scaled during training to a mean squared norm of
    d_in (SAELens' "expected_average_only_in"), which makes one `l1_coefficient` mean the
    same for any model or layer; the scale is folded into the saved weights.
    """

    arch: ClassVar[str] = "relu-l1"
    l1_coefficient: float = field(
        default=8e-5,
        metadata=_doc("L1 weight (on activations normalised to mean squared norm d_in)."),
    )
    ghost_grads: bool = field(default=True, metadata=_doc("Ghost grads for dead latents."))
    normalize_activations: bool = field(
        default=True,
        metadata=_doc("Scale inputs to mean squared norm d_in while training (SAELens)."),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.l1_coefficient < 0:
            raise SaeError("l1_coefficient must be >= 0")


SaeConfigs = TopKConfig | ReluL1Config
_BY_ARCH: dict[str, type[SaeBaseConfig]] = {"topk": TopKConfig, "relu-l1": ReluL1Config}


def sae_config(arch: str = "topk", **values: Any) -> SaeConfigs:
    """The config of architecture `arch`; a field of the other architecture is an error."""
    if arch not in _BY_ARCH:
        raise SaeError(f"unknown SAE architecture {arch!r}; choose one of {ARCHS}")
    cls = _BY_ARCH[arch]
    own = {f.name for f in fields(cls)}
    foreign = sorted(set(values) - own)
    if foreign:
        raise SaeError(
            f"{foreign} are not settings of the {arch} SAE (its settings: {sorted(own)})"
        )
    return cls(**values)


def sae_config_from_dict(data: dict[str, Any]) -> SaeConfigs:
    """Inverse of `to_dict`; also reads the pre-split layout, which listed every field of
    both architectures: the other architecture's fields are dropped there."""
    arch = data.get("arch", "topk")
    if arch not in _BY_ARCH:
        raise SaeError(f"unknown SAE architecture {arch!r}; choose one of {ARCHS}")
    known = {f.name for cls in _BY_ARCH.values() for f in fields(cls)}
    unknown = sorted(set(data) - known - {"arch"})
    if unknown:
        raise SaeError(f"unknown SAE config fields {unknown}")
    own = {f.name for f in fields(_BY_ARCH[arch])}
    kept = {k: v for k, v in data.items() if k in own}
    if arch == "relu-l1" and "normalize_activations" not in data:
        kept["normalize_activations"] = False  # saved before normalisation existed
    return _BY_ARCH[arch](**kept)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping of SAE training (`thumbview.sae.train.SaeTrainer`)."""

    batch_size: int = field(default=1024, metadata=_doc("Activations per optimiser step."))
    lr: float = field(default=4e-4, metadata=_doc("Adam learning rate (after warm-up)."))
    warmup_steps: int = field(default=1000, metadata=_doc("Linear learning-rate warm-up steps."))
    epochs: int = field(default=1, metadata=_doc("Passes over the activations."))
    seed: int = field(default=0, metadata=_doc("Seed of the initialisation and data order."))
    checkpoint_every: int = field(default=1000, metadata=_doc("Steps between checkpoints."))
    log_every: int = field(default=100, metadata=_doc("Steps between log lines."))
    dead_window: int = field(
        default=1_000_000, metadata=_doc("Samples over which the dead fraction is measured.")
    )
    holdout_fraction: float = field(
        default=0.05,
        metadata=_doc("Share of activations kept out of training to measure explained variance."),
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            skip = ("seed", "warmup_steps", "holdout_fraction")
            if f.name not in skip and not value > 0:
                raise SaeError(f"TrainConfig.{f.name} must be positive, got {value!r}")
        if self.warmup_steps < 0:
            raise SaeError(f"TrainConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.holdout_fraction < 0.5:
            raise SaeError(f"holdout_fraction must be in [0, 0.5), got {self.holdout_fraction}")


# ------------------------------------------------------------------------ activations

STUDY_CLIP_MODEL = "openai/clip-vit-large-patch14"  # the original study's model
# `thumbview.embed.registry.ENCODER_NAMES` an SAE can read. clip and imagenet are networks
# with layers (`--layer`, `--tokens`); the others give one cached vector per video.
FEATURE_SOURCES = ("clip", "imagenet", "title", "visual")
LAYERED_SOURCES = ("clip", "imagenet")
# Per source, the tokens it offers (first = default) and the default `--layer`.
SOURCE_TOKENS = {"clip": ("cls", "all"), "imagenet": ("pooled", "all")}
SOURCE_LAYERS = {"clip": -2, "imagenet": -1}
TOKENS = ("cls", "pooled", "all")


@dataclass(frozen=True)
class ActivationSource:
    """Which activations an SAE reads; recorded in its cfg.json so analysis can rebuild them.

    `features="clip"` is the study's recipe (CLIP's residual stream at `layer`);
    `features="imagenet"` the ImageNet EfficientNet-Lite0 at block `layer` (-1 = its conv
    head), one spatially averaged vector per image ("pooled") or every spatial position
    ("all", the counterpart of CLIP's patch tokens). Any other cached encoder ("title",
    "visual") trains the SAE on that encoder's features. `layer=None` and `tokens=None`
    take the source's defaults (`SOURCE_LAYERS`, first of `SOURCE_TOKENS`).
    """

    features: str = field(
        default="clip",
        metadata=_doc(
            "Activations to train on: clip (residual stream), imagenet (EfficientNet-Lite0 "
            "blocks) or a cached encoder's features (title, visual)."
        ),
    )
    clip_model: str = field(default=STUDY_CLIP_MODEL, metadata=_doc("CLIP id or local folder."))
    layer: int | None = field(
        default=None,
        metadata=_doc(
            "Layer: CLIP hidden_states index (default -2, after the second-to-last block); "
            "imagenet block 0..15 or -1 = the conv head (default)."
        ),
    )
    tokens: str | None = field(
        default=None,
        metadata=_doc(
            "One vector per image (clip: cls, imagenet: pooled; the default) or all "
            "tokens / spatial positions."
        ),
    )

    def __post_init__(self) -> None:
        if self.features not in FEATURE_SOURCES:
            raise SaeError(f"unknown features {self.features!r}; choose one of {FEATURE_SOURCES}")
        offered = SOURCE_TOKENS.get(self.features, ("cls",))
        tokens = offered[0] if self.tokens is None else self.tokens
        if tokens not in TOKENS:
            raise SaeError(f"tokens must be one of {TOKENS}, got {self.tokens!r}")
        if self.features not in LAYERED_SOURCES and tokens != "cls":
            raise SaeError(
                f"--tokens {tokens} needs --features clip or imagenet "
                "(other encoders give one vector)"
            )
        if tokens not in offered:
            raise SaeError(f"--features {self.features} takes --tokens {' or '.join(offered)}")
        object.__setattr__(self, "tokens", tokens)  # the resolved defaults are what is saved
        if self.layer is None:
            object.__setattr__(self, "layer", SOURCE_LAYERS.get(self.features, -2))

    @property
    def per_image(self) -> bool:
        """One activation vector per image (cls/pooled), the rows the study groups."""
        return self.tokens != "all"
