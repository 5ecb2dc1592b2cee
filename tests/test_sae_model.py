"""The SAE module: shapes, TopK sparsity, the fast sparse path against a dense reference,
decoder constraints, AuxK and ghost-grad mechanics, and input errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from thumbview.sae.architectures import build_sae
from thumbview.sae.config import (
    ReluL1Config,
    TopKConfig,
    sae_config,
    sae_config_from_dict,
)
from thumbview.sae.model import SaeError, SaeInputError, SparseAutoencoder, geometric_median
from thumbview.sae.relu_l1 import ReluL1Sae
from thumbview.sae.topk import TopKSae


def _sae(arch: str = "topk", **kw) -> SparseAutoencoder:
    own = {"k": 5} if arch == "topk" else {}
    return build_sae(sae_config(arch, d_in=16, expansion_factor=8, **own, **kw), seed=0)


def _x(n: int = 64, d: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ["topk", "relu-l1"])
def test_shapes_and_sae_lens_parameter_layout(arch):
    sae = _sae(arch)
    assert sae.W_enc.shape == (16, 128) and sae.W_dec.shape == (128, 16)
    assert sae.b_enc.shape == (128,) and sae.b_dec.shape == (16,)
    out = sae(_x())
    assert out.recon.shape == (64, 16) and out.latents.shape == (64, 128)
    assert sae.encode(_x()).shape == (64, 128) and sae.decode(out.latents).shape == (64, 16)
    assert all(t.ndim == 0 for t in (out.loss, out.fvu, out.l0, out.aux_loss, out.l1_loss))


def test_init_ties_encoder_to_unit_norm_decoder():
    sae = _sae()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(128))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.T)


def test_topk_keeps_exactly_k_nonzeros_per_row():
    sae = _sae()
    out = sae(_x())
    assert ((out.latents > 0).sum(1) == 5).all()
    assert out.l0.item() == 5
    assert ((sae.encode(_x()) > 0).sum(1) == 5).all()


def _dense_topk_fvu(sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """The plain reference: dense pre-activations, dense top-k mask, dense decode."""
    pre = F.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    top = pre.topk(sae.cfg.k, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    recon = z @ sae.W_dec + sae.b_dec
    return (x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()


def test_sparse_topk_path_matches_dense_reference_values_and_gradients():
    sae, x = _sae(), _x()
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0))
        sae.b_enc.uniform_(-0.1, 0.1)
    out = sae(x)
    torch.testing.assert_close(out.latents, sae.encode(x))
    torch.testing.assert_close(out.recon, sae.decode(sae.encode(x)))
    out.fvu.backward()
    fast = [p.grad.clone() for p in sae.parameters()]
    sae.zero_grad()
    ref = _dense_topk_fvu(sae, x)
    ref.backward()
    torch.testing.assert_close(out.fvu, ref)
    for got, want in zip(fast, [p.grad for p in sae.parameters()], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_fvu_is_one_for_mean_reconstruction():
    sae, x = _sae("relu-l1"), _x()
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0))
        sae.b_enc.fill_(-100.0)  # every latent off: recon == mean
    out = sae(x)
    assert out.fvu.item() == pytest.approx(1.0, rel=1e-5)
    assert out.l0.item() == 0


def test_remove_parallel_decoder_grad_leaves_only_orthogonal_part():
    sae, x = _sae(), _x()
    sae(x).loss.backward()
    sae.remove_parallel_decoder_grad_()
    parallel = (sae.W_dec.grad * sae.W_dec).sum(1)
    assert parallel.abs().max() < 1e-6
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.normalize_decoder_()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(128))


def test_auxk_loss_trains_only_dead_latents():
    sae, x = _sae(), _x()
    assert sae(x).aux_loss.item() == 0  # no dead mask, no aux loss
    dead = torch.zeros(128, dtype=torch.bool)
    dead[64:] = True
    out = sae(x, dead_mask=dead)
    assert out.aux_loss.item() > 0
    assert out.loss.item() == pytest.approx(out.fvu.item() + out.aux_loss.item() / 32, rel=1e-5)
    sae.zero_grad()
    out.aux_loss.backward()
    rows_with_grad = sae.W_dec.grad.abs().sum(1) > 0
    assert rows_with_grad[64:].any() and not rows_with_grad[:64].any()
    assert sae.b_dec.grad is None or sae.b_dec.grad.abs().max() == 0


@pytest.mark.parametrize("ghost", [True, False])
def test_ghost_grads_reach_latents_that_never_fire(ghost):
    sae, x = _sae("relu-l1", ghost_grads=ghost), _x()
    with torch.no_grad():
        sae.b_enc[64:] = -50.0  # these latents cannot fire: no L1 or MSE gradient reaches them
    dead = torch.zeros(128, dtype=torch.bool)
    dead[64:] = True
    out = sae(x, dead_mask=dead)
    out.loss.backward()
    dead_grad = sae.b_enc.grad[64:].abs().sum().item()
    if ghost:
        assert out.aux_loss.item() > 0 and dead_grad > 0
    else:
        assert out.aux_loss.item() == 0 and dead_grad == 0


def test_relu_l1_loss_adds_weighted_l1():
    sae, x = _sae("relu-l1", l1_coefficient=0.5), _x()
    out = sae(x)
    mse = (x - out.recon).pow(2).sum(1).mean()
    assert out.l1_loss.item() == pytest.approx(out.latents.sum(1).mean().item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(mse.item() + 0.5 * out.l1_loss.item(), rel=1e-5)


def test_geometric_median_ignores_outliers():
    x = torch.cat([torch.randn(200, 4) * 0.1 + 1.0, torch.full((20, 4), 100.0)])
    median = geometric_median(x)
    assert (median - 1.0).abs().max() < 0.2
    assert (x.mean(0) - 1.0).abs().max() > 5


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.zeros(4, 15), r"shape \(batch, 16\), got \(4, 15\)"),
        (torch.zeros(16), "got \\(16,\\)"),
        (torch.zeros(0, 16), "empty"),
        ([[0.0] * 16], "torch.Tensor"),
    ],
)
def test_wrong_input_raises_clear_error(bad, message):
    sae = _sae()
    with pytest.raises(SaeInputError, match=message):
        sae(bad)
    with pytest.raises(SaeInputError):
        sae.encode(bad)


def test_decode_checks_latent_width():
    with pytest.raises(SaeInputError, match=r"latents of shape \(batch, 128\)"):
        _sae().decode(torch.zeros(2, 16))


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"arch": "gated"}, "unknown SAE architecture"),
        ({"k": 1000}, "exceeds"),
        ({"d_in": 0}, "d_in"),
        ({"aux_k": 0}, "aux_k"),
    ],
)
def test_bad_config_raises(kw, message):
    with pytest.raises(SaeError, match=message):
        sae_config(**{"d_in": 16, "expansion_factor": 4, **kw})


def test_configs_do_not_mix_architectures():
    with pytest.raises(SaeError, match=r"\['k'\] are not settings of the relu-l1 SAE"):
        sae_config("relu-l1", d_in=16, k=4)
    with pytest.raises(SaeError, match="l1_coefficient"):
        sae_config("topk", d_in=16, l1_coefficient=1e-3)
    assert not hasattr(TopKConfig(d_in=4), "l1_coefficient")
    assert not hasattr(ReluL1Config(d_in=4), "k")


def test_architecture_classes_are_built_from_the_config():
    assert type(_sae("topk")) is TopKSae and type(_sae("relu-l1")) is ReluL1Sae
    with pytest.raises(SaeError, match="needs a TopKConfig"):
        TopKSae(ReluL1Config(d_in=4))


def test_config_defaults_and_dict_round_trip():
    cfg = sae_config(d_in=1024)
    assert cfg.d_sae == 65_536 and cfg.resolved_aux_k == 512 and cfg.arch == "topk"
    assert sae_config_from_dict(cfg.to_dict()) == cfg
    l1 = sae_config("relu-l1", d_in=8, l1_coefficient=1e-3)
    assert sae_config_from_dict(l1.to_dict()) == l1
    with pytest.raises(SaeError, match="unknown SAE config fields"):
        sae_config_from_dict({**cfg.to_dict(), "bogus": 1})


def test_pre_split_config_layout_still_loads():
    """cfg.json written before the split listed both architectures' fields."""
    old = {
        "d_in": 8, "expansion_factor": 4, "arch": "relu-l1", "k": 32, "l1_coefficient": 1e-4,
        "aux_k": None, "aux_coefficient": 1 / 32, "dead_after": 500, "normalize_decoder": True,
        "ghost_grads": False,
    }  # fmt: skip
    cfg = sae_config_from_dict(old)
    assert cfg == ReluL1Config(
        d_in=8, expansion_factor=4, dead_after=500, l1_coefficient=1e-4, ghost_grads=False,
        normalize_activations=False,  # those SAEs were trained on raw activations
    )  # fmt: skip
    assert sae_config_from_dict({**old, "arch": "topk", "k": 3}) == TopKConfig(
        d_in=8, expansion_factor=4, dead_after=500, k=3
    )
