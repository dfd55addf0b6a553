"""Batch models over a user-item matrix: numeric code that takes arrays and returns arrays.

Every item-to-item family (EASE, cosine and BM25 item-kNN) is reduced to the same served form: for each
item, its top-N neighbours with weights, so the API blends any of them with the live state the same way.
ALS and popularity are baselines only (they are not item-to-item).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack
from threadpoolctl import threadpool_limits

from streamrec import event_types
from streamrec.trainer.splits import Split


def _positive(type_name: str) -> bool:
    """Whether an action of this type is a positive interaction (in the binary training matrix)."""
    row = event_types.info(type_name)
    return row is None or row.weight > 0


@dataclass
class Matrix:
    """The training interactions of a split as a binary users x items CSR matrix, with the id maps."""

    users: list[str]
    items: list[str]
    X: sp.csr_matrix
    item_index: dict[str, int] = field(default_factory=dict)
    user_index: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_split(cls, split: Split) -> Matrix:
        items = list(split.items)
        item_index = {item: n for n, item in enumerate(items)}
        users = list(split.train)
        rows, cols = [], []
        for u, user in enumerate(users):
            for etype, item, _ in split.train[user]:
                if _positive(str(etype)):
                    rows.append(u)
                    cols.append(item_index[item])
        X = sp.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(users), len(items))
        )
        X.data[:] = 1.0  # repeats count once: every baseline sees the same binary matrix
        return cls(users, items, X, item_index, {user: n for n, user in enumerate(users)})


def ease(X: sp.csr_matrix, lam: float) -> np.ndarray:
    """EASE (Steck 2019): ``B = I - P diagMat(1/diag(P))`` with ``P = (X'X + lam I)^-1``, zero diagonal.

    The inverse comes from a float32 Cholesky factorisation (LAPACK potrf/potri), about three times
    faster than a general inverse of the same Gram matrix.
    """
    gram = (X.T @ X).toarray().astype(np.float32)
    gram[np.diag_indices_from(gram)] += lam
    factor, info = lapack.spotrf(gram, lower=0, overwrite_a=1)
    if info != 0:
        raise ValueError(f"EASE: the Gram matrix is not positive definite (potrf info {info})")
    inverse, info = lapack.spotri(factor, lower=0, overwrite_c=1)
    if info != 0:
        raise ValueError(f"EASE: inversion failed (potri info {info})")
    upper = np.triu(inverse)
    P = upper + np.triu(inverse, 1).T
    B = -P / np.diag(P)[None, :]
    np.fill_diagonal(B, 0.0)
    return B


def item_knn(X: sp.csr_matrix, kind: str, k: int = 100) -> sp.csr_matrix:
    """implicit's item-kNN similarity (``cosine`` or ``bm25``), K neighbours per item, as items x items."""
    from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

    model = CosineRecommender(K=k) if kind == "cosine" else BM25Recommender(K=k)
    with threadpool_limits(1, "blas"), warnings.catch_warnings():
        # implicit converts its own intermediate COO matrix and warns about it; nothing to act on
        warnings.filterwarnings("ignore", message="Method expects CSR input")
        model.fit(X.tocsr().astype(np.float32), show_progress=False)
    return model.similarity.tocsr()


def als(X: sp.csr_matrix, factors: int = 64, regularization: float = 0.05, iterations: int = 15):
    """implicit's ALS (CPU, seeded): returns ``(user_factors, item_factors)``."""
    from implicit.cpu.als import AlternatingLeastSquares

    with threadpool_limits(1, "blas"):  # implicit's advice: its own threads, not OpenBLAS's
        model = AlternatingLeastSquares(
            factors=factors, regularization=regularization, iterations=iterations, random_state=42
        )
        model.fit(X.tocsr().astype(np.float32), show_progress=False)
    return np.asarray(model.user_factors), np.asarray(model.item_factors)


def top_neighbours(weights: np.ndarray | sp.spmatrix, n: int) -> sp.csr_matrix:
    """Keep each row's ``n`` largest positive weights (the served, bounded form of an item-to-item model)."""
    if sp.issparse(weights):
        W = sp.csr_matrix(weights)
        rows, cols, vals = [], [], []
        for r in range(W.shape[0]):
            start, end = W.indptr[r], W.indptr[r + 1]
            idx, data = W.indices[start:end], W.data[start:end]
            keep = data > 0
            idx, data = idx[keep], data[keep]
            if len(data) > n:
                best = np.argpartition(-data, n)[:n]
                idx, data = idx[best], data[best]
            rows.extend([r] * len(idx))
            cols.extend(idx.tolist())
            vals.extend(data.tolist())
        return sp.csr_matrix((vals, (rows, cols)), shape=W.shape, dtype=np.float32)
    dense = np.asarray(weights)
    n = min(n, dense.shape[1] - 1)
    idx = np.argpartition(-dense, n, axis=1)[:, :n]
    vals = np.take_along_axis(dense, idx, axis=1)
    rows = np.repeat(np.arange(dense.shape[0]), n)
    out = sp.csr_matrix((vals.ravel(), (rows, idx.ravel())), shape=dense.shape, dtype=np.float32)
    out.data[out.data < 0] = 0
    out.eliminate_zeros()
    return out


def top_k_lists(
    scores_for: Callable[[np.ndarray], Any],
    users: Sequence[str],
    m: Matrix,
    exclude: Mapping[str, set[str]],
    k: int = 10,
    batch: int = 2048,
) -> dict[str, list[str]]:
    """Rank every item for each user by ``scores_for(user_rows) -> dense scores``, excluding what they may not get."""
    out: dict[str, list[str]] = {}
    for start in range(0, len(users), batch):
        chunk = users[start : start + batch]
        rows = np.array([m.user_index[u] for u in chunk])
        S = np.asarray(scores_for(rows), dtype=np.float32).copy()
        for r, user in enumerate(chunk):
            banned = [m.item_index[i] for i in exclude.get(user, ()) if i in m.item_index]
            S[r, banned] = -np.inf
        top = (
            np.argpartition(-S, k, axis=1)[:, :k]
            if k < S.shape[1]
            else np.tile(np.arange(S.shape[1]), (len(chunk), 1))
        )
        order = np.argsort(-np.take_along_axis(S, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        for r, user in enumerate(chunk):
            out[user] = [m.items[j] for j in top[r] if np.isfinite(S[r, j])]
    return out


def popularity_scores(m: Matrix) -> np.ndarray:
    """How many users interacted with each item."""
    return np.asarray(m.X.sum(axis=0)).ravel().astype(np.float32)
