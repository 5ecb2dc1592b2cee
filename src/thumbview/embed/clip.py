"""CLIP image embeddings and residual-stream activations from the vision tower.

Two uses share one encoder: the predictor wants the projected, L2-normalised image
embedding (what CLIP matches against text), and the SAE study wants the residual stream
of an inner block, where features are richer and less tied to the contrastive objective.

Layer indexing follows `transformers`' ``hidden_states`` tuple of a model with L blocks:
``hidden_states[0]`` is the embeddings output (patch + position embeddings after
``pre_layrnorm``), ``hidden_states[i]`` is the residual stream after block ``i`` (1..L),
and negative indexes count from the end, so ``layer=-1`` is the output of the last block
(before ``post_layernorm``) and ``layer=-2`` the residual stream after the second-to-last
block. Token 0 is the CLS token; tokens 1.. are the image patches.

Preprocessing re-implements ``CLIPImageProcessor`` (PIL backend) with a thread pool and
one vectorised normalisation per batch, because the processor handles one image at a
time in Python and would otherwise cost as much as the ViT-B/32 forward pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from PIL import Image

from thumbview.data.images import to_rgb
from thumbview.embed.base import DEFAULT_CLIP_MODEL, Encoder

log = logging.getLogger(__name__)

DEFAULT_MODEL = DEFAULT_CLIP_MODEL
# The normalisation every OpenAI CLIP checkpoint was trained with; used when a checkpoint
# ships no preprocessor_config.json (same values as transformers.image_utils.OPENAI_CLIP_*).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, the CLIP processor's default
HUB_FILES = [
    "config.json",
    "preprocessor_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
]

Tokens = Literal["cls", "mean", "all"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_OFFLINE_VALUES = {"1", "ON", "YES", "TRUE"}


def native_bf16(device: str) -> bool:
    """Whether `device` runs bf16 matrix multiplies in hardware (else bf16 is emulated, slower)."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: stay exact
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, device: str) -> str:
    """'auto' -> 'bfloat16' where the hardware has it (~3-4x faster, cosine > 0.9999 to
    float32), else 'float32'. The resolved name goes into the cache key."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if native_bf16(device) else "float32"


class ClipError(ValueError):
    """A CLIP encoder was asked for something it cannot do (bad layer, tokens, inputs)."""


class ClipModelError(ClipError):
    """The CLIP weights cannot be found or loaded; the message says how to get them."""


@dataclass(frozen=True)
class ClipPreprocessing:
    """What `CLIPImageProcessor` does to an image, read from preprocessor_config.json.

    Exactly one of `shortest_edge` / `resize_hw` is set when the processor resizes;
    `crop_hw` is None when it does not centre-crop; None rescale/mean/std skip that step.
    """

    shortest_edge: int | None
    resize_hw: tuple[int, int] | None
    crop_hw: tuple[int, int] | None
    resample: int
    rescale_factor: float | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    @classmethod
    def clip_default(cls, image_size: int) -> ClipPreprocessing:
        """CLIP's standard pipeline at the model's input resolution."""
        square = (image_size, image_size)
        return cls(image_size, None, square, BICUBIC, 1 / 255, CLIP_MEAN, CLIP_STD)

    @classmethod
    def from_dict(cls, cfg: dict[str, Any], image_size: int) -> ClipPreprocessing:
        """Parse a saved processor config; missing keys take CLIP's defaults."""
        size = cfg.get("size", {"shortest_edge": image_size})
        shortest, resize_hw = None, None
        if cfg.get("do_resize", True):
            if isinstance(size, int):  # legacy configs: an int is the shortest edge for CLIP
                shortest = size
            elif "shortest_edge" in size:
                shortest = int(size["shortest_edge"])
            else:
                resize_hw = (int(size["height"]), int(size["width"]))
        crop = cfg.get("crop_size", image_size)
        crop_hw = (crop, crop) if isinstance(crop, int) else (crop["height"], crop["width"])
        return cls(
            shortest_edge=shortest,
            resize_hw=resize_hw,
            crop_hw=tuple(map(int, crop_hw)) if cfg.get("do_center_crop", True) else None,
            resample=int(cfg.get("resample", BICUBIC)),
            rescale_factor=cfg.get("rescale_factor", 1 / 255)
            if cfg.get("do_rescale", True)
            else None,
            mean=tuple(cfg.get("image_mean", CLIP_MEAN)) if cfg.get("do_normalize", True) else None,
            std=tuple(cfg.get("image_std", CLIP_STD)) if cfg.get("do_normalize", True) else None,
        )


def resize_and_crop(image: Image.Image, prep: ClipPreprocessing) -> np.ndarray:
    """One image to uint8 (H, W, 3), pixel-for-pixel what the PIL processor produces.

    The shortest-edge arithmetic and the crop offsets copy `transformers`'
    `get_resize_output_image_size` and `center_crop`; PIL's crop pads with black where
    the box leaves the image, which is what the processor's zero padding amounts to.
    """
    image = to_rgb(image)
    if prep.shortest_edge is not None:
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = prep.shortest_edge, int(prep.shortest_edge * long / short)
        size = (new_short, new_long) if width <= height else (new_long, new_short)
        image = image.resize(size, resample=prep.resample)
    elif prep.resize_hw is not None:
        image = image.resize(prep.resize_hw[::-1], resample=prep.resample)
    if prep.crop_hw is not None:
        crop_h, crop_w = prep.crop_hw
        top, left = (image.height - crop_h) // 2, (image.width - crop_w) // 2
        image = image.crop((left, top, left + crop_w, top + crop_h))
    return np.asarray(image, dtype=np.uint8)


def normalise_batch(pixels: np.ndarray, prep: ClipPreprocessing) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W), rescaled and normalised in one pass."""
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()  # (B, 3, H, W)
    if prep.rescale_factor is not None:
        x = x * prep.rescale_factor
    if prep.mean is not None and prep.std is not None:
        mean = torch.tensor(prep.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(prep.std, dtype=torch.float32).view(1, -1, 1, 1)
        x = (x - mean) / std
    return x.contiguous()


def preprocess(
    images: Sequence[Image.Image],
    prep: ClipPreprocessing,
    pool: ThreadPoolExecutor | None = None,
) -> torch.Tensor:
    """A batch of PIL images -> float32 (B, 3, H, W); resizing runs on `pool` if given.

    PIL releases the GIL while resampling, so threads give real parallelism here.
    """
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise ClipError(f"input {i} is a {type(image).__name__}, not a PIL image")
    mapper = pool.map if pool is not None else map
    arrays = list(mapper(lambda im: resize_and_crop(im, prep), images))
    if len({a.shape for a in arrays}) > 1:
        raise ClipError("images have different sizes after preprocessing; set a crop_size")
    return normalise_batch(np.stack(arrays), prep)  # (B, 3, H, W)


def select_tokens(hidden: torch.Tensor, tokens: Tokens) -> torch.Tensor:
    """Residual stream (B, T, D) -> (B, D) for "cls" / "mean" (over patches), or as is."""
    if tokens == "cls":
        return hidden[:, 0]  # (B, D)
    if tokens == "mean":
        return hidden[:, 1:].mean(dim=1)  # (B, D)
    return hidden  # (B, T, D)


@dataclass(frozen=True)
class _Checkpoint:
    """Where the weights are and what they are, known before the weights are read."""

    path: Path
    source: str  # the Hub id, or the resolved local directory
    config: Any  # CLIPVisionConfig with the projection size of the checkpoint
    config_sha: str
    prep: ClipPreprocessing


# huggingface-hub >= 1.0 installs `hf` (its `huggingface-cli` is gone); tests check it exists.
DOWNLOAD_COMMAND = "hf download"


def _offline() -> bool:
    """Read the offline switches now, not at import time as huggingface_hub does."""
    flags = (os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(flag.upper() in _OFFLINE_VALUES for flag in flags)


def _how_to_get(model: str) -> str:
    return (
        f"To use the Hub model {model!r}, run once with internet access (it is then cached), "
        f"or fetch it with `{DOWNLOAD_COMMAND} {model}`, or pass the path of a local "
        "directory holding config.json and model.safetensors."
    )


def _looks_like_path(model: str) -> bool:
    """Hub ids are "name" or "owner/name"; anything else was meant as a directory."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


def resolve_model_dir(model: str) -> Path:
    """A local directory as given, or the Hub cache snapshot of `model` (downloaded if allowed)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists() or _looks_like_path(model):
        raise ClipModelError(
            f"CLIP model directory {model!r} does not exist. Pass a directory holding "
            f"config.json and model.safetensors, or a Hub id such as {DEFAULT_MODEL!r} "
            f"(fetch it with `{DOWNLOAD_COMMAND} {DEFAULT_MODEL}`)."
        )
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(model, allow_patterns=HUB_FILES, local_files_only=_offline())
    except (OSError, ValueError) as e:
        mode = "offline mode is on and it is not in the local cache" if _offline() else str(e)
        raise ClipModelError(
            f"cannot get CLIP model {model!r}: {mode}. {_how_to_get(model)}"
        ) from e
    return Path(local)


def _vision_config(path: Path, model_type: str | None) -> Any:
    """The CLIPVisionConfig of a vision-only or a full CLIP checkpoint."""
    from transformers import CLIPConfig, CLIPVisionConfig

    if model_type == "clip":  # a full CLIPModel: keep the vision tower and its projection
        full = CLIPConfig.from_pretrained(path)
        config = full.vision_config
        config.projection_dim = full.projection_dim
        return config
    if model_type == "clip_vision_model":
        return CLIPVisionConfig.from_pretrained(path)
    raise ClipModelError(f"{path} holds a {model_type!r} model, not a CLIP model")


def load_checkpoint_info(model: str) -> _Checkpoint:
    """Config, preprocessing and identity of a checkpoint, without reading the weights."""
    path = resolve_model_dir(model)
    config_file, prep_file = path / "config.json", path / "preprocessor_config.json"
    if not config_file.is_file():
        raise ClipModelError(f"{path} has no config.json; it is not a saved CLIP model")
    raw = config_file.read_bytes()
    try:
        config = _vision_config(path, json.loads(raw).get("model_type"))
        prep = (
            ClipPreprocessing.from_dict(json.loads(prep_file.read_text()), config.image_size)
            if prep_file.is_file()
            else ClipPreprocessing.clip_default(config.image_size)
        )
    except ClipModelError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ClipModelError(f"{path}: unreadable CLIP config ({type(e).__name__}: {e})") from e
    source = str(path) if Path(model).expanduser().is_dir() else model
    sha = hashlib.sha256(raw).hexdigest()[:12]
    return _Checkpoint(path, source, config, sha, prep)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide the load report of a full CLIP checkpoint (every text-tower key is "unexpected")."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_vision_model(ckpt: _Checkpoint, device: str) -> torch.nn.Module:
    """The vision tower + projection in eval mode; missing or misshapen weights are an error.

    Only safetensors are read (never pickle), and the text tower of a full CLIPModel
    checkpoint is skipped by `from_pretrained` as unexpected keys.
    """
    from transformers import CLIPVisionModelWithProjection

    try:
        with _quiet_transformers():
            model, info = CLIPVisionModelWithProjection.from_pretrained(
                ckpt.path, config=ckpt.config, use_safetensors=True, output_loading_info=True
            )
    except (OSError, ValueError) as e:
        raise ClipModelError(
            f"cannot load CLIP weights from {ckpt.path}: {e}. {_how_to_get(DEFAULT_MODEL)}"
        ) from e
    bad = sorted(info["missing_keys"]) + [str(k) for k in info["mismatched_keys"]]
    if bad:
        raise ClipModelError(f"{ckpt.path}: weights missing or of the wrong shape: {bad[:5]}")
    log.info("loaded CLIP vision tower from %s", ckpt.source)
    return model.to(device).eval()


class ClipEncoder(Encoder):
    """CLIP image embeddings (layer=None) or one layer's residual stream (layer=int).

    `layer` indexes `hidden_states` (see the module docstring: 0 = embeddings output,
    -2 = after the second-to-last block); `tokens` pools it: "cls" = token 0, "mean" =
    mean over the patch tokens. Nothing is loaded until `dim`, `spec()` or `encode` needs it.

    `dtype="auto"` (default) picks bfloat16 where the hardware supports it natively, else
    float32. `dtype="bfloat16"` runs the matrix multiplies under bf16 autocast (LayerNorm and
    softmax stay float32): ~3-4x faster on CPUs with AVX512-BF16/AMX, outputs within ~1%
    of float32. It is part of `spec()`, so the two never share a cache.
    """

    name: ClassVar[str] = "clip"
    version: ClassVar[str] = "1"
    modality: ClassVar[Literal["image"]] = "image"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        layer: int | None = None,
        tokens: str = "cls",
        device: str = "cpu",
        batch_size: int = 32,
        workers: int | None = None,
        dtype: str = "auto",
    ) -> None:
        if tokens not in ("cls", "mean"):
            raise ClipError(f"tokens must be 'cls' or 'mean' for encode, got {tokens!r}")
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
            raise ClipError(f"layer must be an int or None, got {layer!r}")
        if dtype != "auto" and dtype not in DTYPES:
            raise ClipError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = resolve_dtype(dtype, device)
        if batch_size < 1:
            raise ClipError(f"batch_size must be at least 1, got {batch_size}")
        self.model, self.layer, self.tokens = str(model), layer, tokens
        self.device, self.batch_size, self.dtype = device, batch_size, dtype
        self.workers = workers or min(4, os.cpu_count() or 1)
        self._ckpt: _Checkpoint | None = None
        self._net: torch.nn.Module | None = None

    @property
    def checkpoint(self) -> _Checkpoint:
        """Config + preprocessing of the model (resolved on first access, no weights read)."""
        if self._ckpt is None:
            self._ckpt = load_checkpoint_info(self.model)
            if self.layer is not None:
                self.layer_index(self.layer)  # fail early on an out-of-range layer
        return self._ckpt

    @property
    def network(self) -> torch.nn.Module:
        if self._net is None:
            self._net = load_vision_model(self.checkpoint, self.device)
        return self._net

    @property
    def dim(self) -> int:
        config = self.checkpoint.config
        return int(config.projection_dim if self.layer is None else config.hidden_size)

    def layer_index(self, layer: int) -> int:
        """`layer` as a non-negative index into `hidden_states` (0..L for L blocks)."""
        n_states = int(self.checkpoint.config.num_hidden_layers) + 1
        if not -n_states <= layer < n_states:
            raise ClipError(f"layer {layer} is out of range for {n_states - 1} blocks")
        return layer % n_states

    def spec(self) -> dict[str, Any]:
        ckpt = self.checkpoint
        layer = None if self.layer is None else self.layer_index(self.layer)
        return {
            **super().spec(),
            "model": ckpt.source,
            "config_sha256": ckpt.config_sha,
            "layer": layer,
            "tokens": self.tokens if layer is not None else None,
            "image_size": list(ckpt.prep.crop_hw or ckpt.prep.resize_hw or ()),
            "preprocessing": {
                "shortest_edge": ckpt.prep.shortest_edge,
                "resample": ckpt.prep.resample,
                "rescale": ckpt.prep.rescale_factor,
                "mean": list(ckpt.prep.mean or ()),
                "std": list(ckpt.prep.std or ()),
            },
            "projection_dim": int(ckpt.config.projection_dim),
            "dtype": self.dtype,
        }

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> float32 (B, 3, S, S), equal to `CLIPImageProcessor` output."""
        with ThreadPoolExecutor(self.workers) as pool:
            return preprocess(images, self.checkpoint.prep, pool)

    def encode(self, inputs: Sequence[Image.Image]) -> np.ndarray:
        """float32 (B, dim): normalised embeddings, or the pooled residual stream of `layer`."""
        if self.layer is None:
            return self._run(inputs, layer=None, tokens="cls")
        return self._run(inputs, layer=self.layer, tokens=self.tokens)

    def residual_stream(
        self, images: Sequence[Image.Image], layer: int = -2, tokens: str = "cls"
    ) -> np.ndarray:
        """Residual stream of `layer`: (B, D) for "cls"/"mean", (B, T, D) for "all" (T = 1 + patches)."""
        if tokens not in ("cls", "mean", "all"):
            raise ClipError(f"tokens must be 'cls', 'mean' or 'all', got {tokens!r}")
        return self._run(images, layer=layer, tokens=tokens)

    def _run(self, images: Sequence[Image.Image], layer: int | None, tokens: str) -> np.ndarray:
        """Batched forward passes; each batch is preprocessed by the thread pool."""
        index = None if layer is None else self.layer_index(layer)
        net = self.network
        outputs = []
        device_type = torch.device(self.device).type
        low_precision = self.dtype != "float32"
        autocast = torch.autocast(device_type, dtype=DTYPES[self.dtype], enabled=low_precision)
        with ThreadPoolExecutor(self.workers) as pool, torch.inference_mode(), autocast:
            for start in range(0, len(images), self.batch_size):
                pixels = preprocess(
                    images[start : start + self.batch_size], self.checkpoint.prep, pool
                )
                outputs.append(self._forward(net, pixels.to(self.device), index, tokens))
        if outputs:
            return np.concatenate(outputs)
        return np.zeros(self._empty_shape(index, tokens), dtype=np.float32)

    @staticmethod
    def _forward(
        net: torch.nn.Module, pixels: torch.Tensor, index: int | None, tokens: str
    ) -> np.ndarray:
        if index is None:
            embeds = net(pixel_values=pixels).image_embeds  # (B, P)
            out = torch.nn.functional.normalize(embeds.float(), dim=-1)
        else:
            hidden = net(pixel_values=pixels, output_hidden_states=True).hidden_states[
                index
            ]  # (B, T, D)
            out = select_tokens(hidden.float(), tokens)  # type: ignore[arg-type]
        return out.float().cpu().numpy()

    def _empty_shape(self, index: int | None, tokens: str) -> tuple[int, ...]:
        config = self.checkpoint.config
        if index is None:
            return (0, int(config.projection_dim))
        if tokens == "all":
            n_tokens = (config.image_size // config.patch_size) ** 2 + 1
            return (0, n_tokens, int(config.hidden_size))
        return (0, int(config.hidden_size))
