"""Sparse autoencoders over vision-model activations: TopK (+AuxK) and ReLU + L1 (+ghost grads).

Why an SAE: a CLIP residual-stream vector mixes many features; an SAE rewrites it as a
sparse, non-negative combination of learned unit-norm directions (latents) that are far
easier to name and to correlate with views. Two recipes are offered:

- ``"topk"`` (Gao et al. 2024, EleutherAI/sparsify): keep the k largest ReLU pre-activations.
  Sparsity is fixed by construction, so the loss is only the fraction of variance unexplained
  (FVU) plus the AuxK loss, which lets the top ``aux_k`` *dead* latents reconstruct the
  residual so they get gradient and revive. Unlike sparsify, AuxK ranks dead latents by their
  raw (pre-ReLU) pre-activations, as the paper does, so even latents whose pre-activations are
  all negative receive gradient.
- ``"relu-l1"`` (Anthropic 2023/24, SAELens "standard"): ReLU latents, squared error summed
  over features and averaged over the batch, plus ``l1_coefficient`` times the L1 norm of the
  latents weighted by decoder row norms, plus ghost grads for dead latents.

Both subtract ``b_dec`` from the input before encoding (SAELens ``apply_b_dec_to_input``) and
keep decoder rows at unit norm. Pure compute: tensors in, tensors out; files live in
``thumbview.sae.train``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ARCHS = ("topk", "relu-l1")
_EPS = 1e-12


class SaeError(ValueError):
    """An SAE configuration or input that cannot work; the message says why."""


class SaeInputError(SaeError):
    """Activations of the wrong shape or type were given to an SAE."""


@dataclass(frozen=True)
class SaeConfig:
    """Architecture and loss hyper-parameters; everything needed to rebuild the module.

    ``dead_after``: a latent counts as dead (for AuxK / ghost grads) once it has not fired
    in the last ``dead_after`` training samples (sparsify's ``dead_feature_threshold``).
    """

    d_in: int
    expansion_factor: int = 64
    arch: str = "topk"
    k: int = 32
    l1_coefficient: float = 8e-5
    aux_k: int | None = None
    aux_coefficient: float = 1 / 32
    dead_after: int = 10_000_000
    normalize_decoder: bool = True
    ghost_grads: bool = True

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise SaeError(f"unknown SAE architecture {self.arch!r}; choose one of {ARCHS}")
        for name in ("d_in", "expansion_factor", "k", "dead_after"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise SaeError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.k > self.d_sae:
            raise SaeError(f"k={self.k} exceeds the number of latents d_sae={self.d_sae}")
        if self.aux_k is not None and self.aux_k < 1:
            raise SaeError(f"aux_k must be positive or None, got {self.aux_k}")
        if self.l1_coefficient < 0 or self.aux_coefficient < 0:
            raise SaeError("l1_coefficient and aux_coefficient must be >= 0")

    @property
    def d_sae(self) -> int:
        return self.d_in * self.expansion_factor

    @property
    def resolved_aux_k(self) -> int:
        """``aux_k`` or the TopK paper's heuristic d_in / 2."""
        return self.aux_k if self.aux_k is not None else max(1, self.d_in // 2)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SaeConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise SaeError(f"unknown SaeConfig fields {sorted(unknown)}")
        return cls(**data)


class ForwardOutput(NamedTuple):
    """One forward pass. ``loss`` is what training minimises; the rest are diagnostics.

    ``aux_loss`` is the AuxK loss (topk) or the ghost-grad loss (relu-l1), before its
    coefficient; ``l1_loss`` is the decoder-norm-weighted L1 (relu-l1 only, else 0).
    """

    recon: Tensor  # (B, d_in)
    latents: Tensor  # (B, d_sae)
    loss: Tensor  # ()
    fvu: Tensor  # ()
    l0: Tensor  # () mean nonzero latents per row
    aux_loss: Tensor  # ()
    l1_loss: Tensor  # ()


def geometric_median(x: Tensor, iters: int = 50, tol: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm: a robust centre for ``b_dec`` that outliers barely move."""
    y = x.mean(0)  # (D,)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(1e-8)  # (B,)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        converged = (y_new - y).norm() <= tol * (1.0 + y.norm())
        y = y_new
        if converged:
            break
    return y


class SparseAutoencoder(nn.Module):
    """``latents = act(W_enc^T (x - b_dec) + b_enc)``, ``recon = latents @ W_dec + b_dec``.

    Parameters use SAELens names and shapes: W_enc (d_in, d_sae), b_enc (d_sae,),
    W_dec (d_sae, d_in), b_dec (d_in,).
    """

    def __init__(self, cfg: SaeConfig, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(seed)
        w_dec = torch.randn(cfg.d_sae, cfg.d_in, generator=gen)  # (S, D)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        # (D, S), tied at init as in the TopK paper. Stored as a transposed view of a (S, D)
        # block so that gathering the winning latents' encoder rows is a contiguous copy.
        self.W_enc = nn.Parameter(w_dec.clone().T)
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(w_dec)
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))

    # -- checks -------------------------------------------------------------------------
    def _check_input(
        self, x: Tensor, width: int | None = None, what: str = "activations"
    ) -> Tensor:
        width = self.cfg.d_in if width is None else width
        if not isinstance(x, Tensor):
            raise SaeInputError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != width:
            raise SaeInputError(f"expected {what} of shape (batch, {width}), got {tuple(x.shape)}")
        if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
            raise SaeInputError(f"{what} must be numeric, got dtype {x.dtype}")
        if x.shape[0] == 0:
            raise SaeInputError(f"{what} is an empty batch")
        return x.to(device=self.W_enc.device, dtype=self.W_enc.dtype)

    # -- public encode / decode (dense) --------------------------------------------------
    def pre_activations(self, x: Tensor) -> Tensor:
        """(B, d_in) -> (B, d_sae) before the nonlinearity."""
        x = self._check_input(x)
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        """(B, d_in) -> dense (B, d_sae) latents; TopK keeps at most k nonzeros per row."""
        acts = F.relu(self.pre_activations(x))  # (B, S)
        if self.cfg.arch == "relu-l1":
            return acts
        top = acts.topk(self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(acts).scatter(-1, top.indices, top.values)

    def decode(self, z: Tensor) -> Tensor:
        """(B, d_sae) -> (B, d_in)."""
        z = self._check_input(z, width=self.cfg.d_sae, what="latents")
        return z @ self.W_dec + self.b_dec

    # -- training forward ---------------------------------------------------------------
    def forward(self, x: Tensor, dead_mask: Tensor | None = None) -> ForwardOutput:
        """Reconstruct ``x`` and compute the training loss.

        ``dead_mask`` (d_sae,) bool marks latents that have not fired lately; they drive
        AuxK (topk) or ghost grads (relu-l1). FVU is normalised by this batch's variance.
        """
        x = self._check_input(x)
        total_var = (x - x.mean(0)).pow(2).sum().clamp_min(_EPS)  # ()
        if self.cfg.arch == "topk":
            return self._forward_topk(x, total_var, dead_mask)
        return self._forward_relu(x, total_var, dead_mask)

    def _forward_topk(
        self, x: Tensor, total_var: Tensor, dead_mask: Tensor | None
    ) -> ForwardOutput:
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

    def _decode_sparse(self, acts: Tensor, idx: Tensor) -> Tensor:
        """sum_j acts[b, j] * W_dec[idx[b, j]] without materialising the dense latents."""
        b, k = idx.shape
        rows = self.W_dec.index_select(0, idx.reshape(-1)).view(b, k, -1)  # (B, k, D)
        return torch.bmm(acts.unsqueeze(1), rows).squeeze(1)  # (B, D)

    def _auxk_loss(
        self, x_c: Tensor, err: Tensor, dead_mask: Tensor | None, total_var: Tensor
    ) -> Tensor:
        """Let the top ``aux_k`` dead latents model the residual, so they get gradient."""
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

    def _forward_relu(
        self, x: Tensor, total_var: Tensor, dead_mask: Tensor | None
    ) -> ForwardOutput:
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

    # -- constraints and init -----------------------------------------------------------
    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale decoder rows to unit norm, so latent magnitudes cannot hide in W_dec."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(_EPS)

    @torch.no_grad()
    def remove_parallel_decoder_grad_(self) -> None:
        """Drop the gradient component along each (unit) decoder row before the step.

        Along-the-row moves only change the norm, which `normalize_decoder_` undoes; removing
        them keeps Adam's moment estimates about the directions that matter.
        """
        grad = self.W_dec.grad
        if grad is None:
            return
        parallel = (grad * self.W_dec).sum(dim=1, keepdim=True)  # (S, 1)
        grad -= parallel * self.W_dec

    @torch.no_grad()
    def init_b_dec_(self, x: Tensor) -> None:
        """Centre the input on the geometric median of a batch (sparsify/SAELens init)."""
        self.b_dec.copy_(geometric_median(self._check_input(x)))

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    def extra_repr(self) -> str:
        return f"d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae}, arch={self.cfg.arch}, k={self.cfg.k}"
