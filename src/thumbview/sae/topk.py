"""TopK sparse autoencoder (Gao et al. 2024, EleutherAI/sparsify) with the AuxK loss.

Sparsity is fixed by construction (the k largest ReLU pre-activations per input), so the
loss is only the fraction of variance unexplained (FVU) plus the AuxK loss: the top
``aux_k`` *dead* latents reconstruct the residual error, so they get gradient and revive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from thumbview.sae.config import TopKConfig
from thumbview.sae.model import ForwardOutput, SparseAutoencoder


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
            pre = x_c @ self.W_enc + self.b_enc  # (B, S)
            idx = F.relu(pre).topk(self.cfg.k, dim=-1, sorted=False).indices  # (B, k)
        acts = self._selected_acts(x_c, idx)  # (B, k)
        recon = self._decode_sparse(acts, idx) + self.b_dec  # (B, D)
        err = x - recon  # (B, D)
        fvu = err.pow(2).sum() / total_var
        aux = self._auxk_loss(x_c.detach(), err, dead_mask, total_var)
        latents = torch.zeros_like(pre).scatter(-1, idx, acts)  # (B, S)
        l0 = (acts > 0).sum(-1).float().mean()
        loss = fvu + self.cfg.aux_coefficient * aux
        return ForwardOutput(recon, latents, loss, fvu, l0, aux, fvu.new_zeros(()))

    def _selected_acts(self, x_c: Tensor, idx: Tensor) -> Tensor:
        """ReLU pre-activations of the chosen latents only: O(B k D) instead of O(B S D)."""
        b, k = idx.shape
        w = self.W_enc.T.index_select(0, idx.reshape(-1)).view(b, k, -1)  # (B, k, D)
        pre = torch.bmm(w, x_c.unsqueeze(-1)).squeeze(-1) + self.b_enc[idx]  # (B, k)
        return F.relu(pre)

    def _auxk_loss(
        self, x_c: Tensor, err: Tensor, dead_mask: Tensor | None, total_var: Tensor
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
        pre = F.relu(x_c @ self.W_enc[:, dead_idx] + self.b_enc[dead_idx])  # (B, n_dead)
        vals, local = pre.topk(min(aux_k, n_dead), dim=-1, sorted=False)  # (B, k_aux)
        e_hat = self._decode_sparse(vals, dead_idx[local])  # (B, D)
        scale = min(n_dead / aux_k, 1.0)  # fewer dead latents -> smaller push
        return scale * (e_hat - err.detach()).pow(2).sum() / total_var

    def extra_repr(self) -> str:
        return super().extra_repr() + f", k={self.cfg.k}"
