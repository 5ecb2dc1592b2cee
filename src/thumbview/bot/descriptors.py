"""Differentiable torch ports of the colour, contrast, sharpness and hue descriptors.

`thumbview.embed.visual.describe` runs on uint8 arrays through OpenCV, which has no
gradient. Direct reward backprop (`draft`) needs d(descriptor)/d(pixel), so the columns
listed in `PORTED` are recomputed here from an RGB tensor in [0, 1]. Every uint8 rounding
in the OpenCV path is reproduced with a straight-through estimator (forward: rounded,
backward: identity), so values match `describe()` to `TOLERANCE` while gradients flow.
Hard thresholds (hue bins, near-white/black, the grey-level histogram) become sigmoids
or Gaussian kernels of width `SOFT_*` in the backward pass only.

Not ported (held fixed at `describe()`'s value for the current image, no gradient):
Canny edge density and its centre-vs-border difference, aspect ratio, faces and OCR.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from thumbview.embed.visual import FEATURE_NAMES, HUE_BINS, WORKING_SIZE

# Ported to torch: every descriptor but those with no useful gradient (edges, aspect) or no
# differentiable form (faces, OCR), which the draft reward holds fixed at the image's value.
NOT_PORTED = frozenset(
    n
    for n in FEATURE_NAMES
    if n.startswith(
        ("edge", "centre minus border edge", "picture aspect", "face", "largest face", "text")
    )
)
PORTED: tuple[str, ...] = tuple(n for n in FEATURE_NAMES if n not in NOT_PORTED)
PORTED_INDEX = np.array([FEATURE_NAMES.index(n) for n in PORTED])  # (P,) columns of describe()

# Allowed |torch - describe()| per column, about 4x the largest difference measured on
# noise, smooth gradients and flat images at 64x64 .. 512x512 (tests/test_bot_descriptors.py).
# The residue is OpenCV's fixed-point resize and HSV rounding (sharpness of an upscaled
# smooth image is the most sensitive); colourfulness is on 0-255.
TOLERANCE: dict[str, float] = {
    **{n: 0.002 for n in PORTED},
    "colorfulness": 0.2,
    "sharpness (log Laplacian variance)": 0.05,  # 5% of the variance
}
SOFT_HUE_DEG = 15.0  # sigmoid width at hue-bin edges (backward only): wide, so hues far
# from a bin still feel its pull
SOFT_LEVEL = 0.02  # sigmoid width at the near-white/black thresholds (backward only)


def ste(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Forward value `hard`, gradient of `soft` (straight-through)."""
    return soft + (hard - soft).detach()


def quantise(x: torch.Tensor) -> torch.Tensor:
    """x in [0, 1] rounded to the uint8 grid, identity gradient."""
    return ste(torch.round(x * 255.0) / 255.0, x)


def to_working(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> longest side WORKING_SIZE, on the uint8 grid like cv2.resize.

    Up: bilinear with half-pixel centres (cv2.INTER_LINEAR). Down: cv2.INTER_AREA, i.e. each
    output pixel averages the input area it covers, fractional edge pixels weighted.
    """
    h, w = rgb.shape[-2:]
    scale = WORKING_SIZE / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = quantise(rgb)
    if scale < 1:
        wh, ww = _area_weights(h, size[0], x), _area_weights(w, size[1], x)
        out = torch.einsum("ih,bchw,jw->bcij", wh, x, ww)
    else:
        out = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return quantise(out.clamp(0, 1))


def _area_weights(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """(n_out, n_in) overlap of each output cell [i s, (i+1) s) with each input pixel, / s."""
    s = n_in / n_out
    edges = torch.arange(n_out + 1, dtype=torch.float64) * s
    lo, hi = edges[:-1, None], edges[1:, None]  # (n_out, 1)
    j = torch.arange(n_in, dtype=torch.float64)[None, :]  # (1, n_in)
    overlap = (torch.minimum(hi, j + 1) - torch.maximum(lo, j)).clamp_min(0)
    return (overlap / s).to(like)


def torch_describe(rgb: torch.Tensor) -> torch.Tensor:
    """(B, P) descriptors in `PORTED` order from (B, 3, H, W) RGB in [0, 1]."""
    work = to_working(rgb)  # (B, 3, h, w) on the uint8 grid
    r, g, b = work[:, 0], work[:, 1], work[:, 2]  # (B, h, w)
    gray = quantise(0.299 * r + 0.587 * g + 0.114 * b)
    val = quantise(work.amax(dim=1))
    chroma = val - work.amin(dim=1)
    sat = quantise(torch.where(val > 0, chroma / val.clamp_min(1e-6), torch.zeros_like(val)))
    hue = _hue_degrees(r, g, b, val, chroma)  # (B, h, w) OpenCV-rounded, 0-360
    cols = [
        _mean(val),
        gray.flatten(1).std(dim=1, unbiased=False),
        _mean(sat),
        _colorfulness(r * 255, g * 255, b * 255),
        _mean(r - b),
        *_hue_histogram(hue, sat, val).unbind(dim=1),
        _mean(_soft_gt(val, 0.9) * _soft_lt(sat, 0.15)),
        _mean(_soft_lt(val, 0.1)),
        _soft_entropy(gray),
        _centre_minus_border(gray),
        _log_laplacian_var(gray),
    ]
    return torch.stack(cols, dim=1)  # (B, P)


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(dim=1)  # (B,)


def _soft_gt(x: torch.Tensor, level: float) -> torch.Tensor:
    return ste((x > level).to(x.dtype), torch.sigmoid((x - level) / SOFT_LEVEL))


def _soft_lt(x: torch.Tensor, level: float) -> torch.Tensor:
    return ste((x < level).to(x.dtype), torch.sigmoid((level - x) / SOFT_LEVEL))


def _hue_degrees(r, g, b, val, chroma) -> torch.Tensor:
    """OpenCV's 8-bit hue (0-179, i.e. degrees / 2 rounded) times 2, differentiable inside."""
    c = chroma.clamp_min(1e-6)
    h = torch.where(
        val == r,
        60.0 * (g - b) / c,
        torch.where(val == g, 120.0 + 60.0 * (b - r) / c, 240.0 + 60.0 * (r - g) / c),
    )
    h = torch.where(h < 0, h + 360.0, h)
    h = torch.where(chroma > 0, h, torch.zeros_like(h))
    return ste(torch.remainder(torch.round(h / 2.0), 180.0) * 2.0, h)


def _hue_histogram(hue: torch.Tensor, sat: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
    """(B, len(HUE_BINS)) saturation-weighted share per named hue, as in `hue_histogram`."""
    weight = ste((val >= 0.1).to(sat.dtype), _soft_gt(val, 0.1)) * sat  # (B, h, w)
    shares = []
    for _, lo, hi in HUE_BINS:
        hard = ((hue >= lo) | (hue < hi)) if lo > hi else ((hue >= lo) & (hue < hi))
        up = torch.sigmoid((hue - lo) / SOFT_HUE_DEG)
        down = torch.sigmoid((hi - hue) / SOFT_HUE_DEG)
        soft = torch.maximum(up, down) if lo > hi else up * down
        shares.append(_mean(weight * ste(hard.to(hue.dtype), soft)))
    return torch.stack(shares, dim=1)


def _colorfulness(r, g, b) -> torch.Tensor:
    """Hasler & Suesstrunk on 0-255 channels, as `colorfulness`."""
    rg, yb = (r - g).flatten(1), (0.5 * (r + g) - b).flatten(1)
    spread = torch.sqrt(rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False) + 1e-12)
    offset = torch.sqrt(rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2 + 1e-12)
    return spread + 0.3 * offset


def _soft_entropy(gray: torch.Tensor) -> torch.Tensor:
    """Grey-level entropy in bits: exact 256-bin counts forward, linear-binned counts backward."""
    x = (gray * 255.0).flatten(1)  # (B, N)
    lo = x.detach().floor().clamp(0, 254)
    frac = x - lo  # (B, N) share of each pixel that goes to the bin above
    soft = torch.zeros(x.shape[0], 256, dtype=x.dtype, device=x.device)
    soft = soft.scatter_add(1, lo.long(), 1 - frac).scatter_add(1, lo.long() + 1, frac)
    hard = torch.stack([torch.bincount(row.detach().round().long(), minlength=256) for row in x])
    p = ste(hard.to(x.dtype), soft) / x.shape[1]  # (B, 256)
    return -(p * torch.log2(p.clamp_min(1e-12))).sum(dim=1)


def _centre_minus_border(lum: torch.Tensor) -> torch.Tensor:
    h, w = lum.shape[-2:]
    mask = torch.zeros(h, w, dtype=torch.bool, device=lum.device)
    mask[h // 4 : h - h // 4, w // 4 : w - w // 4] = True
    if mask.all() or not mask.any():
        return torch.zeros(lum.shape[0], dtype=lum.dtype, device=lum.device)
    return lum[:, mask].mean(dim=1) - lum[:, ~mask].mean(dim=1)


def _log_laplacian_var(gray: torch.Tensor) -> torch.Tensor:
    """log1p of the variance of cv2.Laplacian (3x3 aperture, BORDER_REFLECT_101) on 0-255 grey."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=gray.dtype)
    x = F.pad((gray * 255.0)[:, None], (1, 1, 1, 1), mode="reflect")  # (B, 1, h+2, w+2)
    lap = F.conv2d(x, kernel[None, None].to(gray.device)).flatten(1)  # (B, h*w)
    return torch.log1p(lap.var(dim=1, unbiased=False))
