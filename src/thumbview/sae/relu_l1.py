"""ReLU + L1 sparse autoencoder (Anthropic 2023/24, SAELens "standard") with ghost grads.

Loss: squared error summed over features and averaged over the batch, plus
``l1_coefficient`` times the L1 norm of the latents weighted by decoder row norms, plus
ghost grads for dead latents. The L1 term's balance with the error depends on the scale of
the inputs; the trainer normalises them (`ReluL1Config.normalize_activations`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from thumbview.sae.config import ReluL1Config
from thumbview.sae.model import ForwardOutput, SparseAutoencoder


class ReluL1Sae(SparseAutoencoder):
    """ReLU latents, decoder-norm-weighted L1, ghost grads (see the module docstring)."""

    config_class = ReluL1Config
    cfg: ReluL1Config

    def encode(self, x: Tensor) -> Tensor:
        """(B, d_in) -> dense (B, d_sae) ReLU latents."""
        return F.relu(self.pre_activations(x))

    def _forward(self, x: Tensor, total_var: Tensor, dead_mask: Tensor | None) -> ForwardOutput:
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc  # (B, S)
        latents = F.relu(pre)
        recon = latents @ self.W_dec + self.b_dec  # (B, D)
        err = x - recon
        sq_err = err.pow(2).sum(-1)  # (B,)
        fvu = sq_err.sum() / total_var
        l1 = (latents * self.W_dec.norm(dim=1)).sum(-1).mean()
        ghost = self._ghost_loss(pre, err, sq_err, dead_mask)
        loss = sq_err.mean() + self.cfg.l1_coefficient * l1 + ghost
        l0 = (latents > 0).sum(-1).float().mean()
        return ForwardOutput(recon, latents, loss, fvu, l0, ghost, l1)

    def _ghost_loss(
        self, pre: Tensor, err: Tensor, sq_err: Tensor, dead_mask: Tensor | None
    ) -> Tensor:
        """Ghost grads (Anthropic Jan 2024, as in SAELens): exp-activated dead latents fit the residual.

        The ghost output is rescaled to half the residual norm, and its loss to the size of
        the reconstruction loss, so it pushes dead latents without swamping the live ones.
        """
        if not self.cfg.ghost_grads or dead_mask is None or not bool(dead_mask.any()):
            return err.new_zeros(())
        ghost = torch.exp(pre[:, dead_mask]) @ self.W_dec[dead_mask]  # (B, D)
        norm_scale = err.norm(dim=-1) / (2 * ghost.norm(dim=-1) + 1e-6)  # (B,)
        ghost = ghost * norm_scale.detach()[:, None]
        ghost_sq = (ghost - err.detach()).pow(2).sum(-1)  # (B,)
        weight = (sq_err / (ghost_sq + 1e-6)).detach()  # (B,)
        return (weight * ghost_sq).mean()
