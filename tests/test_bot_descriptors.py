"""The torch descriptors equal `describe()` within `TOLERANCE` and carry gradients."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from thumbview.bot.descriptors import PORTED, PORTED_INDEX, TOLERANCE, torch_describe  # noqa: E402
from thumbview.embed.visual import describe  # noqa: E402


def _images(rng: np.random.Generator):
    for shape in [(64, 64), (512, 512), (90, 160)]:
        yield rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
        smooth = [np.sin(xx / 7) * 120 + 128, np.cos(yy / 5) * 120 + 128, (xx * yy) % 256]
        yield np.stack(smooth, -1).astype(np.uint8)
        flat = np.full((*shape, 3), rng.integers(0, 256, 3), np.uint8)
        flat[: shape[0] // 2] = 0
        yield flat


def test_torch_descriptors_equal_describe_within_tolerance():
    torch.set_num_threads(1)
    tol = np.array([TOLERANCE[n] for n in PORTED])
    for rgb in _images(np.random.default_rng(0)):
        x = torch.tensor(rgb).permute(2, 0, 1)[None].double() / 255
        got = torch_describe(x)[0].numpy()
        want = describe(rgb)[PORTED_INDEX]
        bad = np.abs(got - want) > tol
        assert not bad.any(), {PORTED[i]: (want[i], got[i]) for i in np.flatnonzero(bad)}


def test_gradients_flow_and_point_the_right_way():
    torch.set_num_threads(1)
    x = torch.full((1, 3, 32, 32), 0.5, dtype=torch.float64)
    x[:, 0] = 0.8  # reddish
    x.requires_grad_(True)
    out = torch_describe(x)[0]
    out[PORTED.index("brightness")].backward(retain_graph=True)
    assert x.grad is not None and x.grad.sum() > 0  # brighter pixels raise brightness
    x.grad = None
    out[PORTED.index("warmth (red minus blue)")].backward()
    assert x.grad[:, 0].sum() > 0 > x.grad[:, 2].sum()
