"""The view predictor as a reward, with the guards that keep the bot honest.

`PredictorReward.score` goes through `LoadedPredictor.blocks` + `.predict`, the exact path
`thumbview predict` takes, so the reward is the number a user would see. Its guards:
the OOD penalty on the visual descriptors, standardised with the predictor's own block
statistics, and optional CLIP title-image similarity from local weights. The KL term lives
with the policy (it needs the UNet). `TorchReward` is the differentiable twin for `draft`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from thumbview.bot.descriptors import PORTED, PORTED_INDEX, torch_describe
from thumbview.bot.rl import BotError, ood_penalty
from thumbview.inference import LoadedPredictor

log = logging.getLogger(__name__)

HELD_FIXED = "Canny edge density, centre-vs-border edges, aspect ratio, faces, OCR text"


@dataclass(frozen=True)
class RewardConfig:
    """Reward = log10 views - ood_weight * OOD + clip_weight * CLIP sim + aesthetic_weight * A.

    ood_threshold: |z| below it costs nothing (z: descriptor standardised by the predictor).
    clip_model: a local CLIPModel folder for title-image similarity (off when None).
    aesthetic_model: a safetensors linear head (`weight` (E,) or (1, E), `bias`) over the
    L2-normalised CLIP image embedding, as LAION's linear aesthetic predictor (converted).
    """

    ood_weight: float = 1.0
    ood_threshold: float = 3.0
    clip_weight: float = 0.0
    clip_model: str | None = None
    aesthetic_weight: float = 0.0
    aesthetic_model: str | None = None

    def __post_init__(self) -> None:
        weights = (self.ood_weight, self.clip_weight, self.aesthetic_weight)
        if min(weights) < 0 or self.ood_threshold <= 0:
            raise BotError("ood, clip and aesthetic weights must be >= 0 and the OOD threshold > 0")
        if (self.clip_weight > 0 or self.aesthetic_weight > 0) and not self.clip_model:
            raise BotError(
                "CLIP similarity and aesthetic terms need --clip-model DIR (local weights)"
            )
        if self.aesthetic_weight > 0 and not self.aesthetic_model:
            raise BotError("an aesthetic weight needs --aesthetic-model FILE.safetensors")


@dataclass(frozen=True)
class RewardBreakdown:
    """Per image (N,): the predictor's log10, the OOD penalty, CLIP similarity, the total.

    aesthetic: the aesthetic score (zeros when off). outside: True where the image (with
    its title) lies outside the predictor's training range by the check every command uses
    (`LoadedPredictor.out_of_range`), whose line is `warning` ("" when none or no range).
    """

    log10: np.ndarray
    ood: np.ndarray
    clip: np.ndarray
    total: np.ndarray
    aesthetic: np.ndarray | None = None
    outside: np.ndarray | None = None
    warning: str = ""


def predictor_digest(model_dir: str | Path) -> str:
    """sha256 of the predictor's weights and config: which model a bot was tuned against."""
    h = hashlib.sha256()
    for name in ("model.safetensors", "config.json", "encoders.json"):
        path = Path(model_dir) / name
        if path.exists():
            h.update(path.read_bytes())
    return h.hexdigest()


def visual_z(predictor: LoadedPredictor, blocks: dict[str, np.ndarray]) -> np.ndarray:
    """(N, D) visual descriptors standardised with the predictor's training statistics."""
    if "visual" not in blocks:
        return np.zeros((len(next(iter(blocks.values()))), 0))
    m = predictor.model
    return (blocks["visual"] - m.block_mean_["visual"]) / m.block_scale_["visual"]


class PredictorReward:
    """Scores (image, title) pairs with the full predictor; optional CLIP similarity."""

    def __init__(self, model_dir: str | Path, config: RewardConfig = RewardConfig()):
        self.predictor = LoadedPredictor.load(model_dir)
        self.config = config
        self.model_dir = Path(model_dir)
        extras = config.clip_weight > 0 or config.aesthetic_weight > 0
        self._clip = ClipSimilarity(config.clip_model, config.aesthetic_model) if extras else None

    def score(self, images: Sequence[Image.Image], titles: Sequence[str]) -> RewardBreakdown:
        blocks = self.predictor.blocks(images, titles)  # what `thumbview predict` computes
        log10 = self.predictor.predict(blocks)  # (N,)
        ood = ood_penalty(visual_z(self.predictor, blocks), self.config.ood_threshold)
        if ood.shape != log10.shape:
            ood = np.zeros_like(log10)
        clip, aesthetic = self._clip(images, titles) if self._clip else (np.zeros_like(log10),) * 2
        cfg = self.config
        total = log10 - cfg.ood_weight * ood + cfg.clip_weight * clip
        total = total + cfg.aesthetic_weight * aesthetic
        outside, warning = self.out_of_range(blocks, log10)
        return RewardBreakdown(log10, ood, clip, total, aesthetic, outside, warning)

    def out_of_range(
        self, blocks: dict[str, np.ndarray], log10: np.ndarray
    ) -> tuple[np.ndarray, str]:
        """((N,) True where an image lies outside the training range, or where the predictor
        extrapolates on it (its prediction `log10` (N,) beyond any for its training images:
        what a reward-tuned generator drifts towards), the line saying so)."""
        report = self.predictor.out_of_range(blocks, predicted=log10)
        if report is None:
            return np.zeros(len(log10), dtype=bool), ""
        return self.predictor.outside(blocks, log10), report.message() or ""


class ClipSimilarity:
    """Cosine similarity of CLIP image and title embeddings (and an aesthetic head), local only."""

    def __init__(self, model_dir: str, aesthetic_model: str | None = None):
        from transformers import CLIPModel, CLIPProcessor

        if not Path(model_dir).is_dir():
            raise BotError(f"CLIP model folder {model_dir} not found (local weights only)")
        self.model = CLIPModel.from_pretrained(model_dir).eval()
        self.processor = CLIPProcessor.from_pretrained(model_dir)
        self.aesthetic = _linear_head(aesthetic_model) if aesthetic_model else None

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image], titles: Sequence[str]) -> np.ndarray:
        inputs = self.processor(
            text=list(titles),
            images=list(images),
            return_tensors="pt",
            padding=True,
            truncation=True,
        )
        out = self.model(**inputs)
        img = torch.nn.functional.normalize(out.image_embeds, dim=-1)  # (N, E)
        txt = torch.nn.functional.normalize(out.text_embeds, dim=-1)
        sim = (img * txt).sum(dim=-1).double().numpy()  # (N,)
        if self.aesthetic is None:
            return sim, np.zeros_like(sim)
        weight, bias = self.aesthetic
        return sim, (img.double() @ weight + bias).numpy()  # (N,)


def _linear_head(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (E,), bias ()) from a safetensors file with `weight` and `bias` (no pickle)."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise BotError(f"aesthetic model {path} not found (a safetensors file: weight, bias)")
    tensors = load_file(path)
    if not {"weight", "bias"} <= set(tensors):
        raise BotError(f"{path} needs tensors 'weight' and 'bias', has {sorted(tensors)}")
    return tensors["weight"].double().reshape(-1), tensors["bias"].double().reshape(())


class TorchReward:
    """Differentiable log10 views - OOD for `draft`: torch descriptors + the fitted head.

    The ported descriptor columns carry gradients; the rest (HELD_FIXED) and every text
    block are computed by the full encoders on the current image and held fixed, so the
    value matches the predictor (to the descriptor tolerance) while only colour, contrast,
    sharpness and hue are steered. An image encoder with a differentiable twin
    (`torch_encode(rgb) -> (B, D)`, e.g. `imagenet`) carries gradients through all its
    columns; other image encoders (CLIP) are refused.
    """

    def __init__(self, reward: PredictorReward):
        self.reward = reward
        pred = reward.predictor
        others = [
            n
            for n, e in pred.encoders.items()
            if e.modality == "image" and n != "visual" and not hasattr(e, "torch_encode")
        ]
        if others:
            raise BotError(
                f"draft backpropagates through the visual descriptors and differentiable image "
                f"encoders only; the predictor also uses {', '.join(others)}: use --method ddpo"
            )
        if reward.config.clip_weight > 0 or reward.config.aesthetic_weight > 0:
            raise BotError(
                "CLIP similarity / aesthetic terms are scored by ddpo only: use --method ddpo"
            )
        log.info("draft: gradients through %d descriptors; held fixed: %s", len(PORTED), HELD_FIXED)

    def __call__(
        self, rgb: torch.Tensor, titles: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(total, ood), each (B,), from (B, 3, H, W) RGB in [0, 1] with gradients."""
        pred = self.reward.predictor
        images = [to_pil(x) for x in rgb.detach()]
        blocks = pred.blocks(images, titles)  # every column, no gradient
        parts, ood = [], torch.zeros(len(images), dtype=torch.float64)
        for name in pred.model.config.encoders:
            X = torch.as_tensor(blocks[name], dtype=torch.float64)  # (B, D)
            if name == "visual":
                ported = torch_describe(rgb.double()).cpu()  # (B, P), the head runs on the CPU
                X = X.index_copy(1, torch.as_tensor(PORTED_INDEX), ported)
            elif hasattr(encoder := pred.encoders[name], "torch_encode"):
                X = encoder.torch_encode(rgb.float().cpu()).double()  # (B, D) with gradients
            z = (X - torch.as_tensor(pred.model.block_mean_[name])) / torch.as_tensor(
                pred.model.block_scale_[name]
            )
            if name == "visual":
                ood = ood_penalty(z, self.reward.config.ood_threshold)
            parts.append(z / np.sqrt(X.shape[1]))
        log10 = head_forward(pred.model.head_, torch.cat(parts, dim=1))
        return log10 - self.reward.config.ood_weight * ood, ood


def head_forward(head, X: torch.Tensor) -> torch.Tensor:
    """The fitted head's prediction (N,) as a torch function of its design matrix (N, D)."""
    if head.kind == "ridge":
        z = (X - torch.as_tensor(head.mean_)) / torch.as_tensor(head.scale_)
        return z @ torch.as_tensor(head.coef_) + head.intercept_
    z = ((X - torch.as_tensor(head.x_mean_)) / torch.as_tensor(head.x_scale_)).float()
    head.net_.eval()
    return head.net_(z).squeeze(1).double() * head.y_scale_ + head.y_mean_


def to_pil(rgb: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> PIL, rounded the way diffusers' numpy_to_pil rounds."""
    arr = (rgb.clamp(0, 1).permute(1, 2, 0).float().cpu().numpy() * 255).round().astype("uint8")
    return Image.fromarray(arr)
