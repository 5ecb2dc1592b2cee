"""Sparse autoencoders over vision-model activations: the part every architecture shares.

Why an SAE: a CLIP residual-stream vector mixes many features; an SAE rewrites it as a
sparse, non-negative combination of learned unit-norm directions (latents) that are far
easier to name and to correlate with views. Two architectures, each in its own module over
this base (as dictionary_learning's trainers/ do):

- `thumbview.sae.topk.TopKSae` (Gao et al. 2024, EleutherAI/sparsify): k latents per input
  and the AuxK loss that revives dead latents;
- `thumbview.sae.relu_l1.ReluL1Sae` (Anthropic 2023/24, SAELens "standard"): ReLU latents,
  a decoder-norm-weighted L1 penalty, ghost grads for dead latents.

`thumbview.sae.architectures.build_sae(cfg)` builds the architecture that `cfg` (a
`TopKConfig` or `ReluL1Config`) names; this base knows none of its subclasses. Both subtract ``b_dec`` from the input before encoding (SAELens
``apply_b_dec_to_input``) and keep decoder rows at unit norm while training. Pure compute:
tensors in, tensors out; files live in ``thumbview.sae.folder``.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from thumbview.sae.config import (
    ARCHS,
    ReluL1Config,
    SaeBaseConfig,
    SaeError,
    TopKConfig,
    sae_config,
    sae_config_from_dict,
)

__all__ = [
    "ARCHS",
    "ForwardOutput",
    "ReluL1Config",
    "SaeConfig",
    "SaeError",
    "SaeInputError",
    "SparseAutoencoder",
    "TopKConfig",
    "sae_config",
    "sae_config_from_dict",
]

EPS = 1e-12
# The config factory under its pre-split name, for callers outside the package.
SaeConfig = sae_config


class SaeInputError(SaeError):
    """Activations of the wrong shape or type were given to an SAE."""


class ForwardOutput(NamedTuple):
    """One forward pass. ``loss`` is what training minimises; the rest are diagnostics.

    ``aux_loss`` is the AuxK loss (topk) or the ghost-grad loss (relu-l1), before its
    coefficient; ``l1_loss`` is the decoder-norm-weighted L1 (relu-l1 only, else 0).
    ``fired`` is ``(latents > 0).sum(0)`` when the architecture counts it from its sparse
    codes (topk); the trainer counts it from ``latents`` otherwise.
    """

    recon: Tensor  # (B, d_in)
    latents: Tensor  # (B, d_sae)
    loss: Tensor  # ()
    fvu: Tensor  # ()
    l0: Tensor  # () mean nonzero latents per row
    aux_loss: Tensor  # ()
    l1_loss: Tensor  # ()
    fired: Tensor | None = None  # (d_sae,) rows each latent fired on, where cheap to count


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


def sparse_rows_t_matmul(idx: Tensor, weights: Tensor, dense: Tensor, n_rows: int) -> Tensor:
    """(n_rows, D) = Z^T @ dense for the sparse (B, n_rows) Z with Z[b, idx[b, j]] = weights[b, j].

    The weight gradient of a gather-and-sum: each of the B k entries adds one scaled row of
    `dense` (B, D). A COO sparse-dense product does it without the (B k, D) block that
    `index_add_` of the products would write first (5x faster at B 1024, k 32, D 768).
    """
    b, k = idx.shape
    rows = torch.arange(b, device=idx.device).repeat_interleave(k)  # (B k,)
    z_t = torch.sparse_coo_tensor(
        torch.stack([idx.reshape(-1), rows]),
        weights.reshape(-1),
        (n_rows, b),
        check_invariants=False,
    )  # (n_rows, B)
    return torch.sparse.mm(z_t, dense)


def sampled_rows_dot(idx: Tensor, left: Tensor, rows: Tensor) -> Tensor:
    """(B, k) with [b, j] = <left[b], rows[idx[b, j]]>: only the B k dot products needed.

    A sampled dense-dense product (SDDMM) over a CSR mask with k entries per row, in the
    order of `idx` (rows need not be sorted; indices within a row must be distinct, as top-k
    indices are).
    """
    b, k = idx.shape
    crow = torch.arange(0, b * k + 1, k, device=idx.device)
    with warnings.catch_warnings():  # "CSR support is in beta" (once per process)
        warnings.simplefilter("ignore", UserWarning)
        mask = torch.sparse_csr_tensor(
            crow, idx.reshape(-1), left.new_zeros(b * k), (b, rows.shape[0]), check_invariants=False
        )
    out = torch.sparse.sampled_addmm(mask, left, rows.T, beta=0.0)
    return out.values().view(b, k)


class SparseDecode(torch.autograd.Function):
    """y[b] = sum_j acts[b, j] * W[idx[b, j]]: (B, k), (B, k), (S, D) -> (B, D).

    Forward is `embedding_bag` (reads the k rows in place); backward gives acts' gradient as
    k dot products per row (`sampled_rows_dot`) and W's as a sparse product
    (`sparse_rows_t_matmul`). Same values as gathering the rows and multiplying, to float
    rounding; no (B, k, D) intermediate in either direction.
    """

    @staticmethod
    def forward(ctx: Any, acts: Tensor, idx: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(acts, idx, weight)
        return F.embedding_bag(idx, weight, per_sample_weights=acts, mode="sum")

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, Tensor | None]:
        acts, idx, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_acts = sampled_rows_dot(idx, grad, weight) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[2]:
            grad_w = sparse_rows_t_matmul(idx, acts, grad, weight.shape[0])
        return grad_acts, None, grad_w


class SparseAutoencoder(nn.Module):
    """``latents = act(W_enc^T (x - b_dec) + b_enc)``, ``recon = latents @ W_dec + b_dec``.

    Parameters use SAELens names and shapes: W_enc (d_in, d_sae), b_enc (d_sae,),
    W_dec (d_sae, d_in), b_dec (d_in,). Subclasses give the activation (`encode`) and the
    training loss (`forward`); constructing the base builds the subclass `cfg` names.
    """

    config_class: type[SaeBaseConfig] = SaeBaseConfig
    _registry: dict[type[SaeBaseConfig], type[SparseAutoencoder]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        SparseAutoencoder._registry[cls.config_class] = cls

    def __new__(cls, cfg: SaeBaseConfig, seed: int = 0) -> SparseAutoencoder:
        if cls is SparseAutoencoder:
            raise SaeError(
                "SparseAutoencoder is the shared base: build an SAE with "
                "thumbview.sae.architectures.build_sae(cfg)"
            )
        return super().__new__(cls)

    def __init__(self, cfg: SaeBaseConfig, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(cfg, self.config_class):
            raise SaeError(f"{type(self).__name__} needs a {self.config_class.__name__}")
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
        """(B, d_in) -> dense (B, d_sae) latents (>= 0)."""
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        """(B, d_sae) -> (B, d_in)."""
        z = self._check_input(z, width=self.cfg.d_sae, what="latents")
        return z @ self.W_dec + self.b_dec

    def forward(self, x: Tensor, dead_mask: Tensor | None = None) -> ForwardOutput:
        """Reconstruct ``x`` and compute the training loss.

        ``dead_mask`` (d_sae,) bool marks latents that have not fired lately; they drive
        the architecture's dead-latent loss. FVU is normalised by this batch's variance.
        """
        x = self._check_input(x)
        total_var = (x - x.mean(0)).pow(2).sum().clamp_min(EPS)  # ()
        return self._forward(x, total_var, dead_mask)

    def _forward(self, x: Tensor, total_var: Tensor, dead_mask: Tensor | None) -> ForwardOutput:
        raise NotImplementedError

    def _decode_sparse(self, acts: Tensor, idx: Tensor) -> Tensor:
        """sum_j acts[b, j] * W_dec[idx[b, j]] without materialising the dense latents.

        Nor the (B, k, D) block of gathered rows: `SparseDecode` reads each row in place
        (see it for the backward), which made a TopK step ~2x faster on CPU.
        """
        return SparseDecode.apply(acts, idx, self.W_dec)  # (B, D)

    # -- constraints and init -----------------------------------------------------------
    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale decoder rows to unit norm, so latent magnitudes cannot hide in W_dec."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(EPS)

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

    @torch.no_grad()
    def fold_input_scale_(self, scale: float) -> None:
        """Make an SAE trained on ``scale * x`` take raw ``x`` (SAELens' fold).

        W_enc *= scale, W_dec /= scale, b_dec /= scale: latents are unchanged (still in the
        normalised units the training saw) and the reconstruction comes back in raw units.
        Decoder rows then have norm 1 / scale.
        """
        self.W_enc *= scale
        self.W_dec /= scale
        self.b_dec /= scale

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    def extra_repr(self) -> str:
        return f"d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae}, arch={self.cfg.arch}"


def registered_architecture(config_type: type) -> type[SparseAutoencoder] | None:
    """The subclass registered for a config type (None when its module was never imported)."""
    return SparseAutoencoder._registry.get(config_type)
