"""Regression heads: feature matrix (N, D) -> predicted target (N,).

Four heads, one interface. `RidgeHead` is the default: with a few thousand videos and
hundreds of embedding dimensions a well-regularised linear model is hard to beat, and its
efficient leave-one-out picks the penalty without a second loop. `MLPHead` exists for the
interactions a linear model cannot express (a face *and* big text, say); `GBMHead` for
thresholds in narrow descriptor blocks; `StackedHead` averages ridge and trees.

All serialise to plain arrays + a JSON-able config (`to_arrays`, `config`, `from_arrays`), so
artifacts are safetensors, never pickle.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from thumbview.schema import Number, check
from thumbview.tensorfile import meta_shapes

log = logging.getLogger(__name__)

DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-2, 4, 13))
# Blocks at most this wide (descriptors, context) are "narrow": trees may use them. Dense
# embeddings (MiniLM 384, CLIP 512) are left to linear heads.
GBM_MAX_DIM = 64


class HeadError(ValueError):
    """A head got inputs it cannot use (shape, NaN) or was used before `fit`."""


def check_xy(X, y=None, n_features: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate and convert to float64 `(X (N, D), y (N,))`, with messages a person can act on."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise HeadError(f"features must be a 2-d matrix (N, D), got shape {X.shape}")
    if n_features is not None and X.shape[1] != n_features:
        raise HeadError(f"features have {X.shape[1]} columns but the head was fit on {n_features}")
    if not np.isfinite(X).all():
        raise HeadError(f"features contain {int((~np.isfinite(X)).sum())} NaN/inf values")
    if y is None:
        return X, None
    y = np.asarray(y, dtype=np.float64)
    if y.shape != (X.shape[0],):
        raise HeadError(f"target has shape {y.shape}, expected ({X.shape[0]},) to match features")
    if not np.isfinite(y).all():
        raise HeadError(f"target contains {int((~np.isfinite(y)).sum())} NaN/inf values")
    return X, y


def column_scaling(X: np.ndarray, standardize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and scale (constant columns get scale 1, so they do not blow up)."""
    if not standardize:
        return np.zeros(X.shape[1]), np.ones(X.shape[1])
    std = X.std(axis=0)
    return X.mean(axis=0), np.where(std > 1e-12, std, 1.0)


def ridge_loo(X: np.ndarray, y: np.ndarray, alphas) -> tuple[float, np.ndarray, float, float]:
    """Ridge with the penalty picked by exact leave-one-out error -> (alpha, coef, intercept, mse).

    Same answer as sklearn's `RidgeCV(alphas)` (tested), but built on the eigendecomposition
    of the smaller Gram matrix (D x D or N x N) instead of an SVD of X: 5-10x faster at the
    sizes we see (5k x 1.5k), which matters because a predictor fits K + 1 heads.
    With X = U S V^T (centred), fitted values are A diag(1/(s2 + a)) A^T y for A = U S, and the
    hat diagonal is 1/N + rowsum(A^2 / (s2 + a)); LOO residual = residual / (1 - hat).
    """
    x_mean, y_mean = X.mean(axis=0), y.mean()
    Xc, yc = X - x_mean, y - y_mean  # (N, D), (N,)
    if X.shape[0] >= X.shape[1]:
        s2, V = _eigh(Xc.T @ Xc)  # (r,), (D, r)
        keep = s2 > 1e-10 * max(s2.max(), 1e-300)
        s2, V = s2[keep], V[:, keep]
        A = Xc @ V  # (N, r) = U S
    else:
        s2, U = _eigh(Xc @ Xc.T)  # (r,), (N, r)
        keep = s2 > 1e-10 * max(s2.max(), 1e-300)
        s2, U = s2[keep], U[:, keep]
        A = U * np.sqrt(s2)  # (N, r)
        V = (Xc.T @ U) / np.sqrt(s2)  # (D, r)
    Aty, A2 = A.T @ yc, A**2  # (r,), (N, r)
    errors = []
    for alpha in alphas:
        shrink = 1.0 / (s2 + alpha)  # (r,)
        resid = yc - A @ (shrink * Aty)  # (N,)
        hat = 1.0 / len(y) + A2 @ shrink  # (N,)
        errors.append(float(np.mean((resid / (1.0 - hat)) ** 2)))
    best = int(np.argmin(errors))  # first minimum, as sklearn
    coef = V @ (Aty / (s2 + alphas[best]))  # (D,)
    return float(alphas[best]), coef, float(y_mean - x_mean @ coef), errors[best]


def _eigh(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`np.linalg.eigh` on one BLAS thread.

    LAPACK's eigensolver scales poorly with threads and collapses under CPU contention
    (measured on 1000 x 1000: 0.3 s on 1 thread vs 1.5-12 s on 2 threads of a busy 2-core box).
    """
    with threadpool_limits(1, user_api="blas"):
        return np.linalg.eigh(gram)


def linear_split(coef, intercept: float, mean, scale) -> tuple[np.ndarray, float]:
    """`((x - mean) / scale) @ coef + intercept` as `x @ slope + bias`: (slope (D,), bias).

    The one place the linear head's prediction is split into per-column terms (explain's
    `linear_attribution`, `RidgeHead.contributions`, the stacked head's linear half).
    """
    return coef / scale, float(intercept - (mean / scale) @ coef)


class RidgeHead:
    """Ridge regression on standardised columns, penalty chosen by efficient leave-one-out.

    `standardize=False` is for callers that already scaled their columns on purpose (the
    `ViewPredictor` weights whole blocks, which per-column standardising would undo).
    """

    kind = "ridge"

    def __init__(self, alphas=DEFAULT_ALPHAS, standardize: bool = True):
        self.alphas = tuple(float(a) for a in np.atleast_1d(alphas))
        self.standardize = standardize
        if not self.alphas or min(self.alphas) <= 0:
            raise HeadError("ridge alphas must be a non-empty list of positive numbers")

    def fit(self, X, y) -> RidgeHead:
        X, y = check_xy(X, y)
        if X.shape[0] < 2:
            raise HeadError(f"ridge needs at least 2 training rows, got {X.shape[0]}")
        self.mean_, self.scale_ = column_scaling(X, self.standardize)
        self.alpha_, self.coef_, self.intercept_, self.loo_mse_ = ridge_loo(
            (X - self.mean_) / self.scale_, y, self.alphas
        )
        if self.alpha_ in (min(self.alphas), max(self.alphas)):
            log.debug("ridge alpha %.3g is at the edge of the grid", self.alpha_)
        return self

    def predict(self, X) -> np.ndarray:
        _require_fitted(self, "coef_")
        X, _ = check_xy(X, n_features=len(self.coef_))
        return ((X - self.mean_) / self.scale_) @ self.coef_ + self.intercept_  # (N,)

    def contributions(self, X) -> tuple[float, np.ndarray]:
        """(bias, (N, D) per-column terms): bias + row sum == predict(X), exactly."""
        _require_fitted(self, "coef_")
        X, _ = check_xy(X, n_features=len(self.coef_))
        slope, bias = linear_split(self.coef_, self.intercept_, self.mean_, self.scale_)
        return bias, X * slope  # (N, D)

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "kind": self.kind,
            "alphas": list(self.alphas),
            "standardize": self.standardize,
        }
        if hasattr(self, "coef_"):
            cfg.update(alpha=self.alpha_, intercept=self.intercept_, n_features=len(self.coef_))
        return cfg

    def to_arrays(self) -> dict[str, np.ndarray]:
        _require_fitted(self, "coef_")
        return {"mean": self.mean_, "scale": self.scale_, "coef": self.coef_}

    SAVED = {"kind": str, "alphas": [Number], "standardize": bool, "alpha": Number,
             "intercept": Number, "n_features": int}  # fmt: skip

    @classmethod
    def from_arrays(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> RidgeHead:
        _check_config(config, cls.SAVED)
        head = cls(alphas=config["alphas"], standardize=config["standardize"])
        head.mean_, head.scale_, head.coef_ = (
            np.asarray(arrays[k], dtype=np.float64) for k in ("mean", "scale", "coef")
        )
        head.intercept_, head.alpha_ = float(config["intercept"]), float(config["alpha"])
        n = config["n_features"]
        _check_loaded_shapes(n, {k: arrays[k] for k in ("mean", "scale", "coef")})
        return head


@dataclass(frozen=True)
class MLPParams:
    """Hyper-parameters of `MLPHead` (kept apart so configs can be validated and serialised)."""

    hidden: int = 256
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_epochs: int = 200
    patience: int = 15
    batch_size: int = 256
    val_frac: float = 0.15
    seed: int = 0
    standardize: bool = True

    def __post_init__(self):
        if self.hidden < 1 or self.max_epochs < 1 or self.patience < 1 or self.batch_size < 1:
            raise HeadError("mlp hidden, max_epochs, patience and batch_size must be >= 1")
        if not 0 <= self.dropout < 1 or not 0 < self.val_frac < 1:
            raise HeadError("mlp dropout must be in [0, 1) and val_frac in (0, 1)")
        if self.lr <= 0 or self.weight_decay < 0:
            raise HeadError("mlp lr must be > 0 and weight_decay >= 0")


def build_mlp(n_features: int, hidden: int, dropout: float) -> nn.Sequential:
    """Two hidden GELU layers: enough for pairwise interactions, small enough for CPU."""
    return nn.Sequential(
        nn.Linear(n_features, hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, 1),
    )


class MLPHead:
    """A small torch MLP with early stopping on an internal random validation split.

    Inputs and the target are standardised inside so the defaults (lr, weight decay) work
    for any feature scale. Training is deterministic for a given `seed` and leaves torch's
    global random state untouched. `history_` holds `(epoch, train_mse, val_mse)` in target
    units, and the weights of the best validation epoch are kept.
    """

    kind = "mlp"

    def __init__(
        self,
        hidden: int = 256,
        dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        max_epochs: int = 200,
        patience: int = 15,
        batch_size: int = 256,
        val_frac: float = 0.15,
        seed: int = 0,
        standardize: bool = True,
    ):
        self.params = MLPParams(
            hidden, dropout, lr, weight_decay, max_epochs, patience, batch_size, val_frac, seed,
            standardize,
        )  # fmt: skip

    def fit(self, X, y) -> MLPHead:
        X, y = check_xy(X, y)
        p = self.params
        n_val = int(round(p.val_frac * len(y)))
        if n_val < 1 or len(y) - n_val < 2:
            raise HeadError(f"the MLP needs more rows to hold out a validation split, got {len(y)}")
        self.x_mean_, self.x_scale_ = column_scaling(X, p.standardize)
        y_std = float(y.std())
        self.y_mean_, self.y_scale_ = float(y.mean()), (y_std if y_std > 1e-12 else 1.0)
        Xt = torch.as_tensor((X - self.x_mean_) / self.x_scale_, dtype=torch.float32)  # (N, D)
        yt = torch.as_tensor((y - self.y_mean_) / self.y_scale_, dtype=torch.float32)  # (N,)
        with torch.random.fork_rng(devices=[]), _torch_threads(1):
            torch.manual_seed(p.seed)
            perm = torch.randperm(len(yt))
            val, train = perm[:n_val], perm[n_val:]
            self.net_ = build_mlp(X.shape[1], p.hidden, p.dropout)
            self.history_ = self._train(Xt[train], yt[train], Xt[val], yt[val])
        self.n_features_ = X.shape[1]
        self.best_epoch_ = min(self.history_, key=lambda h: h[2])[0]
        return self

    def _train(self, Xtr, ytr, Xva, yva) -> list[tuple[int, float, float]]:
        p, net = self.params, self.net_
        opt = torch.optim.AdamW(net.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        history, best, best_state, stale = [], float("inf"), None, 0
        unit = self.y_scale_**2  # report MSE in target units, not standardised ones
        for epoch in range(1, p.max_epochs + 1):
            net.train()
            total = 0.0
            for idx in torch.randperm(len(ytr)).split(p.batch_size):
                loss = nn.functional.mse_loss(net(Xtr[idx]).squeeze(1), ytr[idx])  # (B,)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            val_loss = self._mse(Xva, yva)
            history.append((epoch, total / len(ytr) * unit, val_loss * unit))
            if val_loss < best - 1e-6:
                best, stale = val_loss, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                stale += 1
                if stale >= p.patience:
                    break
        if best_state is None:
            raise HeadError("MLP training diverged (validation loss was never finite); lower lr")
        net.load_state_dict(best_state)
        net.eval()
        log.debug("mlp stopped at epoch %d, best val mse %.4f", epoch, best * unit)
        return history

    @torch.no_grad()
    def _mse(self, X: torch.Tensor, y: torch.Tensor) -> float:
        self.net_.eval()
        return float(nn.functional.mse_loss(self.net_(X).squeeze(1), y))

    @torch.no_grad()
    def predict(self, X) -> np.ndarray:
        _require_fitted(self, "net_")
        X, _ = check_xy(X, n_features=self.n_features_)
        Xt = torch.as_tensor((X - self.x_mean_) / self.x_scale_, dtype=torch.float32)  # (N, D)
        self.net_.eval()
        with _torch_threads(1):
            out = self.net_(Xt).squeeze(1).double().numpy()  # (N,) standardised
        return out * self.y_scale_ + self.y_mean_

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"kind": self.kind, **asdict(self.params)}
        if hasattr(self, "net_"):
            cfg.update(
                n_features=self.n_features_,
                y_mean=self.y_mean_,
                y_scale=self.y_scale_,
                best_epoch=self.best_epoch_,
                history=[list(h) for h in self.history_],
            )
        return cfg

    def to_arrays(self) -> dict[str, np.ndarray]:
        _require_fitted(self, "net_")
        arrays = {f"net.{k}": v.detach().numpy().copy() for k, v in self.net_.state_dict().items()}
        return {"x_mean": self.x_mean_, "x_scale": self.x_scale_, **arrays}

    SAVED = {"kind": str, "hidden": int, "dropout": Number, "lr": Number, "weight_decay": Number,
             "max_epochs": int, "patience": int, "batch_size": int, "val_frac": Number,
             "seed": int, "standardize": bool, "n_features": int, "y_mean": Number,
             "y_scale": Number, "best_epoch": int, "history": [[Number]]}  # fmt: skip

    @classmethod
    def from_arrays(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> MLPHead:
        """The head, its sizes checked against the stored arrays *before* the network is
        built: a `hidden` of 10^9 in config.json must not allocate 40 GB first."""
        _check_config(config, cls.SAVED)
        names = set(MLPParams.__dataclass_fields__)
        head = cls(**{k: v for k, v in config.items() if k in names})
        p = head.params
        head.n_features_ = config["n_features"]
        head.y_mean_, head.y_scale_ = float(config["y_mean"]), float(config["y_scale"])
        head.best_epoch_ = config["best_epoch"]
        if any(len(h) != 3 for h in config["history"]):
            raise HeadError("history: each entry must be [epoch, train_mse, val_mse]")
        head.history_ = [(int(e), float(t), float(v)) for e, t, v in config["history"]]
        head.x_mean_, head.x_scale_ = (
            np.asarray(arrays[k], np.float64) for k in ("x_mean", "x_scale")
        )
        _check_loaded_shapes(head.n_features_, {k: arrays[k] for k in ("x_mean", "x_scale")})
        state = {k[4:]: torch.as_tensor(v) for k, v in arrays.items() if k.startswith("net.")}
        _check_net_shapes(state, head.n_features_, p)
        head.net_ = build_mlp(head.n_features_, p.hidden, p.dropout)
        head.net_.load_state_dict(state)
        head.net_.eval()
        return head


class GBMHead:
    """Gradient-boosted trees (scikit-learn's HistGradientBoostingRegressor) as a head.

    The number of trees is chosen by early stopping on a validation split that is grouped by
    channel when `fit` gets `groups` (a random split would let trees memorise a channel and
    keep adding trees), then the model is refit on all rows with that many trees. The trees
    are stored as plain node arrays and predicted by a vectorised traversal, so saving needs
    neither pickle nor sklearn internals at load time. `contributions` gives per-feature
    contributions by the tree-path (Saabas) method: each split credits its feature with the
    change in the node's mean value; they sum exactly to prediction - baseline.
    """

    kind = "gbm"
    NODE_FIELDS = ("feature_idx", "num_threshold", "left", "right", "is_leaf", "value", "count")

    def __init__(self, max_iter: int = 300, learning_rate: float = 0.06, max_leaf_nodes: int = 15,
                 min_samples_leaf: int = 30, l2_regularization: float = 1.0, val_frac: float = 0.15,
                 seed: int = 0):  # fmt: skip
        self.params = dict(
            max_iter=max_iter, learning_rate=learning_rate, max_leaf_nodes=max_leaf_nodes,
            min_samples_leaf=min_samples_leaf, l2_regularization=l2_regularization,
            val_frac=val_frac, seed=seed,
        )  # fmt: skip

    def fit(self, X, y, groups=None) -> GBMHead:
        from sklearn.ensemble import HistGradientBoostingRegressor

        from thumbview.predict.metrics import group_train_test_split

        X, y = check_xy(X, y)
        p = self.params
        opts = {
            k: p[k]
            for k in ("learning_rate", "max_leaf_nodes", "min_samples_leaf", "l2_regularization")
        }
        fit_idx, val_idx = group_train_test_split(groups, p["val_frac"], p["seed"], n=len(y))
        # One OpenMP thread: on a busy 2-core machine sklearn's spinning threads made a fit of
        # 500 rows take 31 s instead of 1.2 s; the trees are small, so one core is enough.
        with threadpool_limits(1, user_api="openmp"):
            probe = HistGradientBoostingRegressor(
                max_iter=p["max_iter"], early_stopping=False, random_state=p["seed"], **opts
            ).fit(X[fit_idx], y[fit_idx])
            val = [float(np.mean((q - y[val_idx]) ** 2)) for q in probe.staged_predict(X[val_idx])]
            self.n_trees_ = int(np.argmin(val)) + 1
            est = HistGradientBoostingRegressor(
                max_iter=self.n_trees_, early_stopping=False, random_state=p["seed"], **opts
            ).fit(X, y)
        self.baseline_, nodes = _tree_arrays(est)
        self.tree_sizes_ = np.array([len(n) for n in nodes], dtype=np.int64)
        self.nodes_ = {
            f: np.concatenate([n[f] for n in nodes]).astype(np.float64) for f in self.NODE_FIELDS
        }
        self.n_features_ = X.shape[1]
        return self

    def _leaves(self, X: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Leaf node (global index) per (row, tree) (N, T), and the path of each tree.

        Bounded: a tree of S nodes is at most S deep (children come after their parent,
        checked at load), so a loop in a damaged tree ends in an error, not forever."""
        n = self.nodes_
        starts = np.concatenate([[0], np.cumsum(self.tree_sizes_)[:-1]])  # (T,)
        node = np.broadcast_to(starts, (len(X), len(starts))).copy()  # (N, T)
        paths = [node.copy()]
        for _ in range(int(self.tree_sizes_.max(initial=0)) + 1):
            leaf = n["is_leaf"][node] > 0
            if leaf.all():
                return node, paths
            f = n["feature_idx"][node].astype(np.int64)
            go_left = np.take_along_axis(X, f, axis=1) <= n["num_threshold"][node]
            child = np.where(go_left, n["left"][node], n["right"][node]).astype(np.int64) + starts
            node = np.where(leaf, node, child)
            paths.append(node.copy())
        raise HeadError("gbm trees are deeper than their node count: a tree loops")

    def predict(self, X) -> np.ndarray:
        _require_fitted(self, "nodes_")
        X, _ = check_xy(X, n_features=self.n_features_)
        leaves, _ = self._leaves(X)
        return self.baseline_ + self.nodes_["value"][leaves].sum(axis=1)  # (N,)

    def contributions(self, X) -> tuple[float, np.ndarray]:
        """(bias, (N, D) per-feature contributions): bias + row sum == predict(X) (Saabas)."""
        _require_fitted(self, "nodes_")
        X, _ = check_xy(X, n_features=self.n_features_)
        mean = self._node_means()
        _, paths = self._leaves(X)
        out = np.zeros(X.shape)  # (N, D)
        rows = np.arange(len(X))[:, None]
        for parent, child in zip(paths[:-1], paths[1:], strict=True):
            moved = parent != child  # (N, T)
            f = self.nodes_["feature_idx"][parent].astype(np.int64)
            delta = np.where(moved, mean[child] - mean[parent], 0.0)
            np.add.at(out, (np.broadcast_to(rows, f.shape), f), delta)
        starts = np.concatenate([[0], np.cumsum(self.tree_sizes_)[:-1]])
        return self.baseline_ + float(mean[starts].sum()), out

    def _node_means(self) -> np.ndarray:
        """Count-weighted mean leaf value below every node (leaves: their own value)."""
        n, mean = self.nodes_, self.nodes_["value"].copy()
        starts = np.concatenate([[0], np.cumsum(self.tree_sizes_)])
        for t in range(len(self.tree_sizes_)):
            for i in range(starts[t + 1] - 1, starts[t] - 1, -1):  # children come after parents
                if not n["is_leaf"][i]:
                    left, right = int(n["left"][i]) + starts[t], int(n["right"][i]) + starts[t]
                    cl, cr = n["count"][left], n["count"][right]
                    mean[i] = (cl * mean[left] + cr * mean[right]) / max(cl + cr, 1)
        return mean

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"kind": self.kind, **self.params}
        if hasattr(self, "nodes_"):
            cfg.update(baseline=self.baseline_, n_trees=self.n_trees_, n_features=self.n_features_)
        return cfg

    def to_arrays(self) -> dict[str, np.ndarray]:
        _require_fitted(self, "nodes_")
        return {"tree_sizes": self.tree_sizes_, **{f"node.{k}": v for k, v in self.nodes_.items()}}

    SAVED = {"kind": str, "max_iter": int, "learning_rate": Number, "max_leaf_nodes": int,
             "min_samples_leaf": int, "l2_regularization": Number, "val_frac": Number,
             "seed": int, "baseline": Number, "n_trees": int, "n_features": int}  # fmt: skip

    @classmethod
    def from_arrays(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> GBMHead:
        _check_config(config, cls.SAVED)
        head = cls(**{k: config[k] for k in ("max_iter", "learning_rate", "max_leaf_nodes",
                                              "min_samples_leaf", "l2_regularization", "val_frac",
                                              "seed")})  # fmt: skip
        head.baseline_, head.n_trees_ = float(config["baseline"]), int(config["n_trees"])
        head.n_features_ = int(config["n_features"])
        sizes = np.asarray(arrays["tree_sizes"])
        if sizes.ndim != 1 or sizes.dtype.kind not in "iu" or len(sizes) != head.n_trees_:
            raise HeadError(
                f"tree_sizes must be {head.n_trees_} integers (n_trees), got {sizes.dtype} "
                f"of shape {sizes.shape}"
            )
        head.tree_sizes_ = sizes.astype(np.int64)
        head.nodes_ = {k: np.asarray(arrays[f"node.{k}"], np.float64) for k in cls.NODE_FIELDS}
        if problem := tree_problem(head.tree_sizes_, head.nodes_, head.n_features_):
            raise HeadError(f"stored gbm trees are not trees: {problem}")
        return head


def tree_problem(sizes: np.ndarray, nodes: dict[str, np.ndarray], n_features: int) -> str | None:
    """Why node arrays of consecutive trees (`sizes` (T,) nodes each) are not valid trees,
    or None.

    Valid: every array 1-d with sum(sizes) nodes; `is_leaf` 0/1; at every split node,
    `left`/`right` whole numbers pointing *after* the node inside its own tree (so no cycle,
    and depth <= tree size), `feature_idx` a column in [0, n_features); every node but a
    root the child of exactly one split (reachable exactly once); `count` >= 0. Checked at
    load so that a damaged tree is refused in words, never looped over."""
    if len(sizes) == 0:
        return "tree_sizes is empty (no trees)"
    total = int(sizes.sum())
    if int(sizes.min()) < 1:
        return f"tree_sizes holds {int(sizes.min())}; every tree has at least one node"
    for name, a in nodes.items():
        if a.shape != (total,):
            return f"node.{name} has shape {a.shape}, expected ({total},) = sum(tree_sizes)"
    starts = np.repeat(np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)  # (M,) own tree start
    ends = np.repeat(np.cumsum(sizes), sizes)  # (M,)
    own = np.arange(total)
    is_leaf = nodes["is_leaf"]
    if not np.isin(is_leaf, (0.0, 1.0)).all():
        return "node.is_leaf holds values other than 0 and 1"
    split = is_leaf == 0
    for name in ("left", "right", "feature_idx"):
        v = nodes[name][split]
        if not (np.isfinite(v) & (v == np.floor(v))).all():
            return f"node.{name} holds a value that is not a whole number"
    feature = nodes["feature_idx"][split]
    if len(feature) and not (0 <= feature.min() and feature.max() < n_features):
        return f"node.feature_idx holds {feature.max():.0f}, outside the {n_features} features"
    children = []
    for name in ("left", "right"):
        child = nodes[name][split].astype(np.int64) + starts[split]  # (S,) global index
        if not ((child > own[split]) & (child < ends[split])).all():
            return f"node.{name} points outside its tree or back to an earlier node (a loop)"
        children.append(child)
    parents = np.bincount(np.concatenate(children), minlength=total)  # (M,) splits reaching it
    roots = np.zeros(total, bool)
    roots[np.concatenate([[0], np.cumsum(sizes)[:-1]])] = True
    if (parents[~roots] != 1).any() or (parents[roots] != 0).any():
        return "a node is reached from more than one split, or from none"
    if (nodes["count"] < 0).any():
        return "node.count holds a negative count"
    return None


def _tree_arrays(est) -> tuple[float, list[np.ndarray]]:
    """(baseline, node array per tree) of a fitted HistGradientBoostingRegressor.

    scikit-learn has no public accessor for these; they are read once, at fit time, and
    saved as plain arrays, so a scikit-learn that stores them differently fails here, in
    words, and saved models keep loading whatever scikit-learn is installed.
    """
    try:
        baseline = float(np.ravel(est._baseline_prediction)[0])
        return baseline, [tree[0].nodes for tree in est._predictors]
    except (AttributeError, IndexError, TypeError) as e:
        import sklearn

        raise HeadError(
            f"scikit-learn {sklearn.__version__} stores its boosted trees differently from the "
            "one the gbm head was written against (1.9); install scikit-learn<2, or use "
            "--head ridge"
        ) from e


class StackedHead:
    """The average of a ridge on every column and gradient-boosted trees on the narrow ones.

    Why: trees catch thresholds and interactions in the descriptor blocks (face count, text
    area, upload age) that a linear head cannot, while only the linear head can use the dense
    384-512-d embeddings (trees on them are slow on CPU and their directions are not
    axis-aligned). Averaging two heads with different errors is the simplest stack; a weight
    learned on out-of-fold predictions was not used because, on the real data, the equal
    average already ties ridge (README ablation), so a learned weight would only add variance.
    `gbm_columns` are the design columns the trees see (the caller knows which blocks are
    narrow); explanations stay exact: half the ridge's linear terms plus half the trees' paths.
    """

    kind = "stacked"

    def __init__(self, gbm_columns: Sequence[int], seed: int = 0, **gbm_params):
        self.gbm_columns = tuple(int(c) for c in gbm_columns)
        if not self.gbm_columns:
            raise HeadError(
                f"the stacked head needs at least one narrow block (<= {GBM_MAX_DIM} columns, "
                "e.g. visual, context, title-desc) for its trees"
            )
        self.ridge = RidgeHead(standardize=False)
        self.gbm = GBMHead(seed=seed, **gbm_params)

    @staticmethod
    def blend(ridge_pred: np.ndarray, gbm_pred: np.ndarray) -> np.ndarray:
        """The one definition of the stack, shared with the ablation's stacked rows."""
        return (np.asarray(ridge_pred) + np.asarray(gbm_pred)) / 2

    def fit(self, X, y, groups=None) -> StackedHead:
        X, y = check_xy(X, y)
        self._check_columns(X.shape[1])
        self.ridge.fit(X, y)
        self.gbm.fit(X[:, self.gbm_columns], y, groups)
        self.n_features_ = X.shape[1]
        return self

    def predict(self, X) -> np.ndarray:
        _require_fitted(self, "n_features_")
        X, _ = check_xy(X, n_features=self.n_features_)
        return self.blend(self.ridge.predict(X), self.gbm.predict(X[:, self.gbm_columns]))

    def contributions(self, X) -> tuple[float, np.ndarray]:
        """(bias, (N, D)) with bias + row sum == predict(X): half ridge, half tree paths."""
        _require_fitted(self, "n_features_")
        X, _ = check_xy(X, n_features=self.n_features_)
        ridge_bias, out = self.ridge.contributions(X)  # (N, D)
        gbm_bias, gbm_contrib = self.gbm.contributions(X[:, self.gbm_columns])  # (N, G)
        out[:, self.gbm_columns] += gbm_contrib
        return (ridge_bias + gbm_bias) / 2, out / 2

    def _check_columns(self, n_features: int) -> None:
        if max(self.gbm_columns) >= n_features or min(self.gbm_columns) < 0:
            raise HeadError(f"stacked gbm columns {self.gbm_columns} outside {n_features} features")

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"kind": self.kind, "gbm_columns": list(self.gbm_columns)}
        for name, part in (("ridge", self.ridge), ("gbm", self.gbm)):  # flat: the schema is flat
            cfg.update({f"{name}.{k}": v for k, v in part.config().items()})
        if hasattr(self, "n_features_"):
            cfg["n_features"] = self.n_features_
        return cfg

    def to_arrays(self) -> dict[str, np.ndarray]:
        _require_fitted(self, "n_features_")
        parts = {"ridge": self.ridge.to_arrays(), "gbm": self.gbm.to_arrays()}
        return {f"{name}.{k}": v for name, arrays in parts.items() for k, v in arrays.items()}

    @classmethod
    def from_arrays(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> StackedHead:
        _check_config(config, {"kind": str, "gbm_columns": [int], "n_features": int})
        head = cls(config["gbm_columns"])
        head.ridge = RidgeHead.from_arrays(*_part("ridge", config, arrays))
        head.gbm = GBMHead.from_arrays(*_part("gbm", config, arrays))
        head.n_features_ = int(config["n_features"])
        head._check_columns(head.n_features_)
        if len(head.ridge.coef_) != head.n_features_:
            raise HeadError("stored stacked ridge does not match its feature count")
        if head.gbm.n_features_ != len(head.gbm_columns):
            raise HeadError("gbm.n_features: the stacked trees read len(gbm_columns) columns")
        if len(set(head.gbm_columns)) != len(head.gbm_columns):
            raise HeadError("gbm_columns: a column is listed twice")
        return head


def _part(name: str, config: dict[str, Any], arrays: dict[str, np.ndarray]):
    """The config and arrays of one part of a composite head, prefix `name.` removed."""
    cut = len(name) + 1
    return (
        {k[cut:]: v for k, v in config.items() if k.startswith(name + ".")},
        {k[cut:]: v for k, v in arrays.items() if k.startswith(name + ".")},
    )


HEADS = {"ridge": RidgeHead, "mlp": MLPHead, "gbm": GBMHead, "stacked": StackedHead}


def head_from_arrays(config: dict[str, Any], arrays: dict[str, np.ndarray]):
    """Rebuild whichever head `config["kind"]` names."""
    kind = config.get("kind")
    if kind not in HEADS:
        raise HeadError(f"unknown head kind {kind!r}; expected one of {', '.join(HEADS)}")
    try:
        return HEADS[kind].from_arrays(config, arrays)
    except KeyError as e:
        raise HeadError(f"stored {kind} head is missing {e}") from e


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run torch on `n` intra-op threads, then restore the setting.

    A 256-wide MLP's matmuls are too small to gain from threads, and on a shared 2-core
    machine OpenMP threads spin against other processes: measured 0.16 s/epoch on one
    thread vs 3.4 s on two under load (5k x 1000 input).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _require_fitted(head, attr: str) -> None:
    if not hasattr(head, attr):
        raise HeadError(f"this {type(head).__name__} is not fitted yet; call fit(X, y) first")


def _check_config(config: dict[str, Any], schema: dict[str, Any]) -> None:
    """A head's saved settings, each of its type (a head's config is untrusted JSON)."""
    if problem := check(config, schema):
        raise HeadError(problem)


def _check_net_shapes(state: dict[str, torch.Tensor], n_features: int, p: MLPParams) -> None:
    """The stored network's tensors are exactly those `build_mlp` makes for these sizes.

    The sizes are first capped by the stored elements, then the expected shapes come from
    a build on the meta device (no memory), so nothing is allocated from config.json."""
    stored = sum(t.numel() for t in state.values())
    for name, size in (("n_features", n_features), ("hidden", p.hidden)):
        if size > stored:
            raise HeadError(f"{name}={size} is larger than the stored network ({stored} weights)")
    want = meta_shapes(lambda: build_mlp(n_features, p.hidden, 0.0))
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != want:
        bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))[0]
        raise HeadError(
            f"stored MLP weight net.{bad} is {got.get(bad)}, its config implies {want.get(bad)}"
        )
    if any(not t.is_floating_point() for t in state.values()):
        raise HeadError("stored MLP weights must be floating point")


def _check_loaded_shapes(n_features: int, arrays: dict[str, np.ndarray]) -> None:
    for name, a in arrays.items():
        if np.shape(a) != (n_features,):
            raise HeadError(
                f"stored array {name!r} has shape {np.shape(a)}, expected ({n_features},)"
            )
        if name.endswith("scale") and not (np.asarray(a) > 0).all():  # column sd, 1 if constant
            raise HeadError(f"stored array {name!r} must be > 0 (a scale)")
