"""Top-k selection of the SAE study: which videos activate each latent most, and their group.

For every latent the study takes its `top_k` strongest activations, holds out the very top
video(s) and summarises the views of the rest (the *group statistic*). A latent qualifies
when strictly more than `min_active` of those activations exceed `threshold`. Latents may be
dense or scipy.sparse (CSR/CSC) and are never densified (column blocks of `CHUNK_ELEMS`).
Groups that share most of their videos are clustered (`share_clusters`): their statistics
are largely the same numbers, so the study counts discoveries by cluster as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from thumbview.sae import arrays
from thumbview.sae.arrays import Statistic, StudyError, require, row_statistics

# ----------------------------------------------------------------------------- validation


def check_views(views: Any, n_rows: int | None = None, min_videos: int = 1) -> np.ndarray:
    """Return views as float64 (N,), rejecting NaN/inf/negative values and bad lengths."""
    v = np.asarray(views, dtype=np.float64)
    require(v.ndim == 1, f"views must be 1-D, got shape {v.shape}")
    if n_rows is not None and len(v) != n_rows:
        raise StudyError(f"latents have {n_rows} rows but views has {len(v)} entries")
    bad = ~np.isfinite(v)
    if bad.any():
        raise StudyError(
            f"views has {int(bad.sum())} NaN/inf values (first at row {int(np.argmax(bad))})"
        )
    neg = v < 0
    require(not neg.any(), f"views has {int(neg.sum())} negative values")
    if len(v) < min_videos:
        raise StudyError(
            f"only {len(v)} videos: the study needs at least {min_videos} (hold-out + group "
            f"size); for a small channel lower top_k or pick a bigger channel"
        )
    return v


def check_latents(latents: Any) -> np.ndarray | sp.csc_matrix | sp.csr_matrix:
    """Return latents as a non-negative, finite 2-D dense array or canonical CSR/CSC."""
    if sp.issparse(latents):
        x = latents if latents.format in ("csr", "csc") else latents.tocsc()
        if not x.has_canonical_format:
            x = x.copy()
            x.sum_duplicates()
        data = x.data
    else:
        x = np.asarray(latents)
        require(x.dtype.kind in "fiub", f"latents must be numeric, got dtype {x.dtype}")
        data = x
    require(x.ndim == 2, f"latents must be 2-D (videos x latents), got {x.ndim}-D")
    require(bool(np.isfinite(data).all()), "latents contain NaN/inf")
    require(not (data < 0).any(), "latents contain negative values; SAE codes are >= 0")
    return x


# ----------------------------------------------------------------------- top activations


def _active_counts(x: Any, threshold: float) -> np.ndarray:
    if sp.issparse(x):
        if x.format == "csr":
            return np.bincount(x.indices[x.data > threshold], minlength=x.shape[1])
        csum = np.concatenate([[0], np.cumsum(x.data > threshold)])
        return csum[x.indptr[1:]] - csum[x.indptr[:-1]]
    step = max(1, arrays.CHUNK_ELEMS // max(1, x.shape[0]))
    blocks = [(x[:, s : s + step] > threshold).sum(axis=0) for s in range(0, x.shape[1], step)]
    return np.concatenate(blocks).astype(np.int64) if blocks else np.zeros(0, np.int64)


def top_activations(
    latents: Any, top_k: int, columns: Sequence[int] | np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the `top_k` strongest activations of each latent, strongest first.

    Returns (indices (C, top_k) int64, values (C, top_k)) for the C requested `columns`
    (default all). Ties break by row index (lower first), so dense and sparse inputs give the
    same answer; zeros (implicit in sparse) rank after every positive activation.
    """
    return _top_activations(check_latents(latents), top_k, columns)


def _top_activations(
    x: Any, top_k: int, columns: Sequence[int] | np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    n, n_lat = x.shape
    require(1 <= top_k <= n, f"top_k={top_k} must be in [1, {n}] (the number of videos)")
    cols = np.arange(n_lat) if columns is None else np.asarray(columns, dtype=np.int64)
    require(bool(((cols >= 0) & (cols < n_lat)).all()), "columns out of range")
    if sp.issparse(x):
        return _sparse_topk(x.tocsc(), cols, top_k)
    return _dense_topk(x, cols, top_k)


def _dense_topk(x: np.ndarray, cols: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column blocks through argpartition, then an exact tie fix at the k-th value."""
    idx = np.empty((len(cols), top_k), np.int64)
    val = np.empty((len(cols), top_k), x.dtype)
    step = max(1, arrays.CHUNK_ELEMS // max(1, x.shape[0]))
    for s in range(0, len(cols), step):
        block = x[:, cols[s : s + step]]  # (N, c)
        idx[s : s + step], val[s : s + step] = _dense_topk_block(block, top_k)
    return idx, val


def _dense_topk_block(block: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    neg = -block.astype(np.float64)  # (N, c): smallest first == strongest first
    part = np.argpartition(neg, top_k - 1, axis=0)[:top_k]  # (k, c), ties arbitrary
    kth = np.take_along_axis(neg, part, axis=0).max(axis=0)  # (c,) k-th strongest
    tie = neg == kth  # (N, c)
    need = top_k - (neg < kth).sum(axis=0)  # (c,) tied rows to take, lowest rows first
    take = (neg < kth) | (tie & (np.cumsum(tie, axis=0) <= need))
    _, rows = np.nonzero(take.T)  # column-major: exactly top_k per column, rows ascending
    rows = rows.reshape(block.shape[1], top_k)  # (c, k)
    vals = np.take_along_axis(block.T, rows, axis=1)  # (c, k)
    order = np.lexsort((rows, -vals.astype(np.float64)), axis=-1)
    return np.take_along_axis(rows, order, 1), np.take_along_axis(vals, order, 1)


def _sparse_topk(x: sp.csc_matrix, cols: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of columns with a bounded number of stored entries, sorted in one lexsort."""
    idx = np.empty((len(cols), top_k), np.int64)
    val = np.zeros((len(cols), top_k), x.dtype)
    cum = np.cumsum(np.diff(x.indptr)[cols])  # (C,) stored entries up to each column
    s = 0
    while s < len(cols):
        done = cum[s - 1] if s else 0
        e = max(s + 1, int(np.searchsorted(cum, done + arrays.CHUNK_ELEMS, side="right")))
        _sparse_topk_block(x, cols[s:e], top_k, idx[s:e], val[s:e])
        s = e
    return idx, val


def _sparse_topk_block(
    x: sp.csc_matrix, cols: np.ndarray, top_k: int, idx: np.ndarray, val: np.ndarray
) -> None:
    lens = x.indptr[cols + 1] - x.indptr[cols]  # (c,)
    offsets = np.cumsum(lens) - lens
    pos = np.repeat(x.indptr[cols] - offsets, lens) + np.arange(lens.sum())  # into x.data
    col_id, rows, vals = np.repeat(np.arange(len(cols)), lens), x.indices[pos], x.data[pos]
    keep = vals > 0  # explicit zeros rank with the implicit ones
    col_id, rows, vals = col_id[keep], rows[keep].astype(np.int64), vals[keep]
    order = np.lexsort((rows, -vals.astype(np.float64), col_id))
    col_id, rows, vals = col_id[order], rows[order], vals[order]
    n_pos = np.bincount(col_id, minlength=len(cols))  # (c,)
    rank = np.arange(len(col_id)) - np.repeat(np.cumsum(n_pos) - n_pos, n_pos)
    top = rank < top_k
    idx[col_id[top], rank[top]] = rows[top]
    val[col_id[top], rank[top]] = vals[top]
    starts = np.cumsum(n_pos) - n_pos
    for j in np.flatnonzero(n_pos < top_k):  # pad with zero-activation rows, lowest first
        positive = rows[starts[j] : starts[j] + n_pos[j]]
        cand = np.arange(top_k + n_pos[j])
        idx[j, n_pos[j] :] = cand[~np.isin(cand, positive)][: top_k - n_pos[j]]


def qualifying(x: Any, threshold: float, top_k: int, min_active: int) -> np.ndarray:
    """Indices of latents with more than `min_active` of their top `top_k` above threshold.

    Among the top_k strongest, the count above threshold is min(top_k, count over all
    videos), so qualification needs only per-latent counts, not a sort.
    """
    counts = np.minimum(_active_counts(x, threshold), top_k)  # (L,)
    keep = np.flatnonzero(counts > min_active)
    if len(keep) == 0:
        best = np.argsort(-counts, kind="stable")[:5]
        raise StudyError(
            f"no latent qualifies: need more than {min_active} of the top "
            f"{top_k} activations above {threshold}; the closest latents "
            f"{best.tolist()} have {counts[best].tolist()}. Lower `threshold`, `min_active` "
            f"or `top_k`."
        )
    return keep


# ------------------------------------------------------------------------ group statistics


def group_statistics(
    views: np.ndarray, indices: np.ndarray, hold_out: int = 1, statistic: Statistic = "median"
) -> tuple[np.ndarray, np.ndarray]:
    """Statistic of each feature's group (ranks hold_out+1..) and its held-out views.

    `indices` (F, top_k) are video rows, strongest first. Returns (stats (F,), heldout
    (F, hold_out)); holding out the top video keeps it free for the out-of-sample test.
    """
    v = np.asarray(views, dtype=np.float64)
    idx = np.asarray(indices)
    require(idx.ndim == 2 and idx.shape[1] > hold_out, "indices must be (F, top_k > hold_out)")
    return row_statistics(v, idx[:, hold_out:], statistic), v[idx[:, :hold_out]]


# ---------------------------------------------------------------------- shared videos


def share_clusters(groups: np.ndarray, n_rows: int, min_share: float = 0.5) -> np.ndarray:
    """Cluster features whose groups share most of their videos; cluster id per group (F,).

    `groups` (F, g) are each feature's group rows, most important feature first (the study
    passes them by p-value). Features whose groups overlap carry the same videos' views, so
    a run of discoveries among them is one piece of evidence, not many. Leader clustering:
    each feature joins the cluster of the first earlier *lead* feature whose group shares
    more than `min_share` of its g videos with its own, else it leads a new cluster. Every
    member then shares more than half its videos with its lead (no chaining across a long
    line of slightly overlapping groups), and the lead is the cluster's most important
    feature. Ids count up from 0 in the order of their leads. Work is in blocks of rows
    against the leads only, so memory stays bounded at any number of features.
    """
    grp = np.asarray(groups)
    require(grp.ndim == 2 and 0 < min_share < 1, "groups must be (F, g) and 0 < min_share < 1")
    f, g = grp.shape
    incidence = sp.csr_matrix(
        (np.ones(f * g, np.int32), grp.ravel(), np.arange(0, f * g + 1, g)), shape=(f, n_rows)
    )  # (F, N): 1 where a video is in a feature's group
    labels = np.full(f, -1, np.int64)
    leads: list[int] = []
    step = max(1, arrays.CHUNK_ELEMS // max(1, f))
    for s in range(0, f, step):
        _cluster_block(incidence, s, min(f, s + step), min_share * g, labels, leads)
    return labels


def _cluster_block(
    incidence: sp.csr_matrix, s: int, e: int, need: float, labels: np.ndarray, leads: list[int]
) -> None:
    """Label features s..e-1: first against the leads so far, then one by one in order."""
    block = incidence[s:e]  # (b, N)
    if leads:
        shared = (block @ incidence[leads].T).toarray() > need  # (b, L)
        hit = shared.any(axis=1)
        labels[s:e][hit] = labels[np.asarray(leads)[shared[hit].argmax(axis=1)]]
    rest = np.flatnonzero(labels[s:e] < 0)
    within = (block[rest] @ block[rest].T).toarray() > need  # (r, r)
    is_lead = np.zeros(len(rest), bool)  # (r,): leads found in this block so far
    for i, row in enumerate(s + rest):
        joins = within[i] & is_lead
        if joins.any():
            labels[row] = labels[s + rest[np.argmax(joins)]]
        else:
            labels[row], is_lead[i] = len(leads), True
            leads.append(int(row))
