"""TopK sparse autoencoder (Gao et al. 2024, EleutherAI/sparsify) with the AuxK loss.

Sparsity is fixed by construction (the k largest ReLU pre-activations per input), so the
loss is only the fraction of variance unexplained (FVU) plus the AuxK loss: the top
``aux_k`` *dead* latents reconstruct the residual error, so they get gradient and revive.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from thumbview.sae.config import TopKConfig
from thumbview.sae.model import ForwardOutput, SparseAutoencoder, sparse_rows_t_matmul


class SelectedCodes(torch.autograd.Function):
    """ReLU codes of the chosen latents, differentiable in (x_c, W_enc, b_enc) through them only.

    ``values`` (B, k) are relu(x_c @ W_enc + b_enc) at ``idx`` (B, k), already computed by the
    dense, gradient-free pass that chose the winners, so the forward only copies them. The
    backward touches only the B k chosen (row, latent) pairs: x_c's gradient is an
    `embedding_bag` over W_enc's rows, W_enc's a sparse product (`sparse_rows_t_matmul`),
    b_enc's an `index_add_`. Equal, to float rounding, to recomputing the k pre-activations
    per row with autograd (the implementation before; kept as the reference in the tests),
    without its (B, k, D) gathered block.
    """

    @staticmethod
    def forward(
        ctx: Any, x_c: Tensor, w_enc: Tensor, b_enc: Tensor, idx: Tensor, values: Tensor
    ) -> Tensor:
        ctx.save_for_backward(x_c, w_enc, idx, values)
        ctx.n_latents = b_enc.shape[0]
        return values.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x_c, w_enc, idx, values = ctx.saved_tensors
        g = grad * (values > 0)  # (B, k) ReLU's derivative
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(idx, w_enc.T, per_sample_weights=g, mode="sum")  # (B, D)
        if ctx.needs_input_grad[1]:  # (S, D) built, returned as W_enc's (D, S) transposed view
            grad_w = sparse_rows_t_matmul(idx, g, x_c.contiguous(), ctx.n_latents).T
        if ctx.needs_input_grad[2]:
            grad_b = g.new_zeros(ctx.n_latents).index_add_(0, idx.reshape(-1), g.reshape(-1))
        return grad_x, grad_w, grad_b, None, None


class TopKSae(SparseAutoencoder):
    """k latents per input; AuxK on dead latents (see the module docstring)."""

    config_class = TopKConfig
    cfg: TopKConfig

    def encode(self, x: Tensor) -> Tensor:
        """(B, d_in) -> dense (B, d_sae) latents with at most k nonzeros per row."""
        acts = F.relu(self.pre_activations(x))  # (B, S)
        top = acts.topk(self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(acts).scatter(-1, top.indices, top.values)

    def _forward(self, x: Tensor, total_var: Tensor, dead_mask: Tensor | None) -> ForwardOutput:
        x_c = x - self.b_dec  # (B, D)
        with torch.no_grad():  # choose the winners densely, then differentiate only them
            relu_pre = torch.addmm(self.b_enc, x_c, self.W_enc).relu_()  # (B, S)
            values, idx = relu_pre.topk(self.cfg.k, dim=-1, sorted=False)  # (B, k) each
        acts = SelectedCodes.apply(x_c, self.W_enc, self.b_enc, idx, values)  # (B, k)
        recon = self._decode_sparse(acts, idx) + self.b_dec  # (B, D)
        err = x - recon  # (B, D)
        fvu = err.pow(2).sum() / total_var
        aux = self._auxk_loss(x_c.detach(), relu_pre, err, dead_mask, total_var)
        latents = torch.zeros_like(relu_pre).scatter_(-1, idx, acts)  # (B, S), one buffer
        firing = acts.detach() > 0  # (B, k)
        l0 = firing.sum(-1).float().mean()
        fired = torch.bincount(idx[firing], minlength=self.cfg.d_sae)  # (S,)
        loss = fvu + self.cfg.aux_coefficient * aux
        return ForwardOutput(recon, latents, loss, fvu, l0, aux, fvu.new_zeros(()), fired)

    def _auxk_loss(
        self,
        x_c: Tensor,
        relu_pre: Tensor,
        err: Tensor,
        dead_mask: Tensor | None,
        total_var: Tensor,
    ) -> Tensor:
        """Let the top ``aux_k`` dead latents model the residual, so they get gradient.

        Dead latents are ranked by their ReLU'd pre-activations, as in sparsify: the
        auxiliary reconstruction then uses exactly the non-negative codes the latent would
        produce if it fired, so the gradient trains it for the job it would do when alive.
        A latent whose pre-activations are negative on the whole batch gets no AuxK gradient
        from that batch (ReLU is flat there); the paper's raw-pre-activation variant would
        reach it but would fit the residual with negative codes a live latent never emits.
        """
        n_dead = 0 if dead_mask is None else int(dead_mask.sum())
        if n_dead == 0:
            return err.new_zeros(())
        aux_k = self.cfg.resolved_aux_k
        dead_idx = dead_mask.nonzero().squeeze(1)  # (n_dead,)
        dead_pre = relu_pre if n_dead == relu_pre.shape[1] else relu_pre[:, dead_idx]
        values, local = dead_pre.topk(min(aux_k, n_dead), dim=-1, sorted=False)  # (B, k_aux)
        idx = dead_idx[local]  # (B, k_aux) latent ids
        vals = SelectedCodes.apply(x_c, self.W_enc, self.b_enc, idx, values)
        e_hat = self._decode_sparse(vals, idx)  # (B, D)
        scale = min(n_dead / aux_k, 1.0)  # fewer dead latents -> smaller push
        return scale * (e_hat - err.detach()).pow(2).sum() / total_var

    def extra_repr(self) -> str:
        return super().extra_repr() + f", k={self.cfg.k}"
