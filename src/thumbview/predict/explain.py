"""Explain one prediction of a trained `ViewPredictor`: which inputs pushed it up or down.

A creator asks "why does the model expect *this* many views?". The answer is an additive
split of the prediction, in log10 units, relative to the model's "average thumbnail":

    prediction = baseline + sum over inputs of contribution

The baseline is the prediction for an input whose every feature equals its training mean,
which is where the predictor's standardised design row is all zeros. A contribution of
+0.3 means "this pushed the expected views up by a factor of 10**0.3 = 2".

- Ridge head: the model is linear in the design row, so contribution_j = w_j * x_j is exact.
- MLP head: integrated gradients along the straight path from the all-mean input to this
  one (Sundararajan et al. 2017). Its completeness axiom makes the split additive up to the
  error of the path integral (midpoint rule, 32 steps): approximate, and the leftover is
  reported as `residual_log10`.

Dense embedding blocks (CLIP, title) have no nameable columns, so each is reported as one
block contribution; descriptor blocks (`visual`) are also listed feature by feature, and so
are the named columns of a mixed block (`imagenet`'s class probabilities, "looks like: ...").
`linear_attribution` and `integrated_gradients` are the pure maths on arrays; `explain_row`
applies them to a model and one row of feature blocks; `thumbview.explain.explain_prediction`
does the IO for a loaded model.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from thumbview.embed.base import Encoder
from thumbview.predict.heads import GBMHead, MLPHead, RidgeHead, StackedHead, linear_split
from thumbview.predict.model import ViewPredictor
from thumbview.predict.target import to_views

log = logging.getLogger(__name__)

IG_STEPS = 32


class ExplainError(ValueError):
    """A prediction cannot be explained with these inputs; the message says why."""


@dataclass(frozen=True)
class FeatureContribution:
    """One named descriptor: its value here, its training mean, and its push on the prediction.

    `factor` = 10**contribution_log10: the multiplier on expected views this feature accounts for.
    """

    block: str
    name: str
    value: float
    typical: float
    contribution_log10: float
    factor: float


@dataclass(frozen=True)
class BlockContribution:
    """One encoder's total push (the sum over its columns); `interpretable` = named columns."""

    name: str
    contribution_log10: float
    factor: float
    interpretable: bool


@dataclass(frozen=True)
class PredictionExplanation:
    """An additive split of one prediction: `log10 ~= baseline_log10 + sum(blocks)`.

    For the log10 target `views`/`baseline_views` are view counts; for the channel-relative
    target they are multipliers of the channel's usual views. `residual_log10` is
    log10 - baseline - sum of block contributions: 0 for ridge (up to rounding), the
    integration error for an MLP. `features` are the top descriptors by |contribution|.
    `warning`: the row's out-of-range line (`LoadedPredictor.out_of_range`, as predict
    shows it), "" when it lies inside the training range or the model records none.
    """

    image: str
    title: str
    target: str
    method: str  # "exact-linear" | "integrated-gradients"
    log10: float
    views: float
    baseline_log10: float
    baseline_views: float
    residual_log10: float
    blocks: tuple[BlockContribution, ...]
    features: tuple[FeatureContribution, ...]
    warning: str = ""

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists of dicts)."""
        out = asdict(self)
        out["blocks"] = [asdict(b) for b in self.blocks]
        out["features"] = [asdict(f) for f in self.features]
        return out


# ----- pure attribution maths -----------------------------------------------------------------
def linear_attribution(
    design: np.ndarray, coef: np.ndarray, intercept: float, mean=None, scale=None
) -> tuple[float, np.ndarray]:
    """Exact split of `((x - mean) / scale) @ coef + intercept` around the point x = 0.

    Returns `(baseline, contributions (D,))` with baseline + contributions.sum() equal to the
    prediction at `design`. x = 0 is the all-mean input of a `ViewPredictor` design row.
    """
    design, coef = np.asarray(design, np.float64), np.asarray(coef, np.float64)  # (D,), (D,)
    mean = np.zeros_like(coef) if mean is None else np.asarray(mean, np.float64)
    scale = np.ones_like(coef) if scale is None else np.asarray(scale, np.float64)
    if design.shape != coef.shape or mean.shape != coef.shape or scale.shape != coef.shape:
        raise ExplainError(
            f"design row {design.shape} does not match the coefficients {coef.shape}"
        )
    weight, baseline = linear_split(coef, intercept, mean, scale)  # (D,) slope per column
    return baseline, weight * design


def integrated_gradients(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: np.ndarray,
    x0: np.ndarray | None = None,
    steps: int = IG_STEPS,
) -> tuple[float, np.ndarray]:
    """Integrated gradients of a scalar `fn` ((B, D) -> (B,)) from `x0` (zeros) to `x`.

    Returns `(fn(x0), contributions (D,))`. Completeness makes fn(x0) + sum ~= fn(x); the
    gap is the midpoint-rule error of the path integral, which shrinks as 1/steps**2.
    """
    if steps < 1:
        raise ExplainError(f"integrated gradients needs steps >= 1, got {steps}")
    x_t = torch.as_tensor(np.asarray(x, np.float64))  # (D,)
    x0_t = torch.zeros_like(x_t) if x0 is None else torch.as_tensor(np.asarray(x0, np.float64))
    alphas = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps  # (S,) midpoints
    path = (x0_t + alphas[:, None] * (x_t - x0_t)).requires_grad_(True)  # (S, D)
    (grads,) = torch.autograd.grad(fn(path).sum(), path)  # (S, D)
    with torch.no_grad():
        baseline = float(fn(x0_t[None, :])[0])
    return baseline, ((x_t - x0_t) * grads.mean(dim=0)).numpy()  # (D,)


def mlp_function(head: MLPHead) -> Callable[[torch.Tensor], torch.Tensor]:
    """The fitted MLP head as a float64 torch function of the design: (B, D) -> (B,).

    A float64 copy in eval mode (no dropout) keeps the integration error, not float32
    rounding, as the only source of the additivity gap.
    """
    net = copy.deepcopy(head.net_).double().eval()
    x_mean, x_scale = (
        torch.as_tensor(a, dtype=torch.float64) for a in (head.x_mean_, head.x_scale_)
    )

    def fn(X: torch.Tensor) -> torch.Tensor:
        return net((X - x_mean) / x_scale).squeeze(1) * head.y_scale_ + head.y_mean_  # (B,)

    return fn


def attribute(head, design: np.ndarray, steps: int = IG_STEPS) -> tuple[str, float, np.ndarray]:
    """`(method, baseline, contributions (D,))` for one design row of a fitted head."""
    if isinstance(head, RidgeHead):
        return "exact-linear", *linear_attribution(
            design, head.coef_, head.intercept_, head.mean_, head.scale_
        )
    if isinstance(head, MLPHead):
        return "integrated-gradients", *integrated_gradients(
            mlp_function(head), design, None, steps
        )
    if isinstance(head, GBMHead | StackedHead):  # tree paths (Saabas): exact additivity
        bias, contrib = head.contributions(np.asarray(design, dtype=np.float64)[None, :])
        method = "tree-path (Saabas)" if isinstance(head, GBMHead) else "linear + tree-path / 2"
        return method, bias, contrib[0]
    raise ExplainError(
        f"cannot explain a {type(head).__name__} head (ridge, mlp, gbm and stacked are supported)"
    )


def split_blocks(contributions: np.ndarray, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """Cut a (sum D_k,) vector into per-block pieces, in `dims` order (the design's order)."""
    ends = np.cumsum(list(dims.values()))
    if len(contributions) != ends[-1]:
        raise ExplainError(f"{len(contributions)} contributions for {ends[-1]} design columns")
    return dict(zip(dims, np.split(np.asarray(contributions), ends[:-1]), strict=True))


def top_features(
    block: str, names: Sequence[str], values, typical, contributions, top: int
) -> list[FeatureContribution]:
    """The `top` columns of one block by |contribution|, largest first."""
    order = [j for j in np.argsort(-np.abs(contributions), kind="stable") if names[j]][:top]
    return [
        FeatureContribution(
            block,
            str(names[j]),
            float(values[j]),
            float(typical[j]),
            float(contributions[j]),
            float(10.0 ** contributions[j]),
        )
        for j in order
    ]


# ----- a model and one row of blocks ----------------------------------------------------------
def explain_row(
    model: ViewPredictor,
    blocks: dict[str, np.ndarray],
    feature_names: dict[str, Sequence[str] | None],
    top: int = 8,
    *,
    image: str = "",
    title: str = "",
    steps: int = IG_STEPS,
) -> PredictionExplanation:
    """Explain the prediction for one row of `{encoder: (1, D_k)}` blocks.

    `feature_names[name]` lists a block's column names when they mean something (the
    `visual` descriptors) and is None for dense embeddings, which are reported as a whole.
    """
    if top < 1:
        raise ExplainError(f"top must be >= 1, got {top}")
    prediction = float(model.predict(blocks)[0])  # also checks fitted, names, widths, NaN
    # private helpers on purpose: the design row must be exactly the one `predict` uses
    checked = model._check_blocks(blocks, 1)  # (1, D_k) each
    design = model._design(checked)[0]  # (sum D_k,)
    method, baseline, contrib = attribute(model.head_, design, steps)
    per_block = split_blocks(contrib, {n: model.block_dims_[n] for n in model.config.encoders})
    block_rows, features = [], []
    for name, c in per_block.items():
        names = feature_names.get(name)
        total = float(c.sum())
        block_rows.append(BlockContribution(name, total, float(10.0**total), names is not None))
        if names is not None:
            raw = np.asarray(checked[name], np.float64)[0]  # (D_k,)
            features += top_features(name, names, raw, model.block_mean_[name], c, top)
    features.sort(key=lambda f: -abs(f.contribution_log10))
    residual = prediction - baseline - float(contrib.sum())
    if method != "exact-linear":
        log.debug("integrated gradients: additivity gap %.2g log10", residual)
    scale = to_views(model.config.target)
    return PredictionExplanation(
        image, title, model.config.target, method, prediction, scale(prediction),
        baseline, scale(baseline), residual, tuple(block_rows), tuple(features[:top]),
    )  # fmt: skip


def interpretable_names(encoder: Encoder) -> list[str] | None:
    """The encoder's column names, "" for the generic `name[i]` placeholders among them (never
    listed: `imagenet`'s 1,280 pooled features are, its 1,000 class probabilities are not), or
    None when no column has a name."""
    names = list(encoder.feature_names())
    named = ["" if n == f"{encoder.name}[{i}]" else n for i, n in enumerate(names)]
    return named if any(named) else None
