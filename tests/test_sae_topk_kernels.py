"""The TopK SAE's sparse kernels (issue 31's speed-up) against the plain implementation they
replaced: codes, reconstructions, losses, every gradient, and whole training runs equal to
float tolerance, with and without dead latents (AuxK)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from thumbview.sae.architectures import build_sae
from thumbview.sae.config import sae_config
from thumbview.sae.model import ForwardOutput, sampled_rows_dot, sparse_rows_t_matmul
from thumbview.sae.train import SaeTrainer, TrainConfig

D_IN, EXPANSION, K = 32, 16, 8
S = D_IN * EXPANSION


# -- the plain reference: the implementation before the sparse kernels, kept verbatim -----
def _ref_decode(sae, acts, idx):
    b, k = idx.shape
    rows = sae.W_dec.index_select(0, idx.reshape(-1)).view(b, k, -1)  # (B, k, D)
    return torch.bmm(acts.unsqueeze(1), rows).squeeze(1)


def _ref_auxk(sae, x_c, err, dead_mask, total_var):
    n_dead = 0 if dead_mask is None else int(dead_mask.sum())
    if n_dead == 0:
        return err.new_zeros(())
    aux_k = sae.cfg.resolved_aux_k
    dead_idx = dead_mask.nonzero().squeeze(1)
    pre = F.relu(x_c @ sae.W_enc[:, dead_idx] + sae.b_enc[dead_idx])
    vals, local = pre.topk(min(aux_k, n_dead), dim=-1, sorted=False)
    e_hat = _ref_decode(sae, vals, dead_idx[local])
    scale = min(n_dead / aux_k, 1.0)
    return scale * (e_hat - err.detach()).pow(2).sum() / total_var


def _ref_forward(sae, x, dead_mask=None):
    """(recon, latents, loss, fvu, aux) as TopKSae computed them before issue 31."""
    total_var = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
    x_c = x - sae.b_dec
    with torch.no_grad():
        pre = x_c @ sae.W_enc + sae.b_enc
        idx = F.relu(pre).topk(sae.cfg.k, dim=-1, sorted=False).indices
    b, k = idx.shape
    w = sae.W_enc.T.index_select(0, idx.reshape(-1)).view(b, k, -1)
    acts = F.relu(torch.bmm(w, x_c.unsqueeze(-1)).squeeze(-1) + sae.b_enc[idx])
    recon = _ref_decode(sae, acts, idx) + sae.b_dec
    err = x - recon
    fvu = err.pow(2).sum() / total_var
    aux = _ref_auxk(sae, x_c.detach(), err, dead_mask, total_var)
    latents = torch.zeros_like(pre).scatter(-1, idx, acts)
    return recon, latents, fvu + sae.cfg.aux_coefficient * aux, fvu, aux


def _sae(seed=0, **kw):
    cfg = sae_config("topk", d_in=D_IN, expansion_factor=EXPANSION, k=K, **kw)
    sae = build_sae(cfg, seed=seed)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # away from the tied init, so encoder and decoder gradients differ
        sae.W_enc.add_(0.05 * torch.randn(sae.W_enc.shape, generator=g))
        sae.b_enc.uniform_(-0.2, 0.2, generator=g)
    return sae


def _x(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D_IN, generator=g) + 0.5


@pytest.mark.parametrize("n_dead", [0, 100, S])  # none, some, every latent dead
def test_forward_and_gradients_equal_the_plain_reference(n_dead):
    sae, x = _sae(), _x()
    dead = torch.zeros(S, dtype=torch.bool)
    dead[torch.randperm(S, generator=torch.Generator().manual_seed(2))[:n_dead]] = True
    out = sae(x, dead_mask=dead)
    out.loss.backward()
    fast = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    recon, latents, loss, fvu, aux = _ref_forward(sae, x, dead)
    loss.backward()
    torch.testing.assert_close(out.latents, latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.recon, recon, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.aux_loss, aux, rtol=1e-5, atol=1e-7)
    assert (aux > 0) == (n_dead > 0)
    for name, p in sae.named_parameters():
        torch.testing.assert_close(fast[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(out.fired, (latents > 0).sum(0))


def test_kernels_equal_their_dense_formulas():
    g = torch.Generator().manual_seed(3)
    idx = torch.stack([torch.randperm(S, generator=g)[:K] for _ in range(40)])  # (40, K)
    w, left, vals = (
        torch.randn(S, D_IN, generator=g),
        torch.randn(40, D_IN, generator=g),
        torch.randn(40, K, generator=g),
    )
    z = torch.zeros(40, S).scatter(-1, idx, vals)  # the dense (B, S) matrix the kernels avoid
    torch.testing.assert_close(sparse_rows_t_matmul(idx, vals, left, S), z.T @ left)
    torch.testing.assert_close(sampled_rows_dot(idx, left, w), (left @ w.T).gather(1, idx))


def _reference_trainer(sae, cfg):
    """A trainer stepping the plain forward with the plain (foreach) Adam, as before."""
    trainer = SaeTrainer(sae, cfg)
    trainer.optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr)

    def forward(x, dead_mask=None):
        recon, latents, loss, fvu, aux = _ref_forward(sae, x, dead_mask)
        zero = fvu.new_zeros(())
        return ForwardOutput(recon, latents, loss, fvu, zero, aux, zero)

    sae.forward = forward
    return trainer


def test_training_runs_end_with_equal_codes():
    """40 steps of SaeTrainer (AuxK active from step 10), sparse kernels vs the reference."""
    data = np.random.default_rng(0).standard_normal((20, 128, D_IN)).astype(np.float32)
    cfg = TrainConfig(batch_size=128, lr=1e-3, warmup_steps=3)
    fast, slow = _sae(dead_after=1280), _sae(dead_after=1280)
    for sae in (fast, slow):
        with torch.no_grad():
            sae.b_enc[:64] -= 3.0  # these fire rarely: dead after 10 steps, then AuxK works
    trainers = [SaeTrainer(fast, cfg), _reference_trainer(slow, cfg)]
    aux = []
    for trainer in trainers:
        for batch in list(data) * 2:
            aux.append(trainer.step(torch.from_numpy(batch))["aux_loss"])
    assert max(aux) > 0  # AuxK was part of the runs
    for name, p in fast.named_parameters():
        torch.testing.assert_close(p, dict(slow.named_parameters())[name], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(trainers[0].since_fired, trainers[1].since_fired)
    x = torch.from_numpy(data[0])
    with torch.no_grad():
        torch.testing.assert_close(fast.encode(x), slow.encode(x), rtol=1e-5, atol=1e-6)
