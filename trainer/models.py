"""Batch models over a user-item matrix: numeric code that takes arrays and returns arrays.

Every item-to-item family (SLIST, EASE, cosine and BM25 item-kNN) is reduced to the same served form: for
each item, its top-N neighbours with weights, so the API blends any of them with the live state the same
way. ALS and popularity are baselines only (they are not item-to-item).

Dense families (EASE, SLIST) hold several items x items float32 matrices at once: ``dense_bytes`` says
how much, so the trainer fits them only where they fit its memory budget; item-kNN stays sparse.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from streamrec import event_types
from streamrec.trainer.splits import Split


def _positive(type_name: str) -> bool:
    """Whether an action of this type is a positive interaction (in the binary training matrix)."""
    row = event_types.info(type_name)
    return row is None or row.weight > 0


@dataclass
class Matrix:
    """The training interactions of a split as a users x items CSR matrix, with the id maps.

    Binary by default (every baseline sees the same matrix); with ``type_weights`` an entry is the largest
    weight of the user's positive actions on the item. ``sequences`` holds each user's positive actions
    as item indices in time order (repeats kept), for the sequence-aware families.
    """

    users: list[str]
    items: list[str]
    X: sp.csr_matrix
    item_index: dict[str, int] = field(default_factory=dict)
    user_index: dict[str, int] = field(default_factory=dict)
    sequences: list[list[int]] = field(default_factory=list)

    @classmethod
    def from_split(cls, split: Split, type_weights: Mapping[str, float] | None = None) -> Matrix:
        """The users x items interaction matrix of ``split``'s training actions, each weighted by its event type
        (``type_weights``, relative to a purchase; None: binary), with each user's item sequence for SLIST.
        """
        items = list(split.items)
        item_index = {item: n for n, item in enumerate(items)}
        users = list(split.train)
        rows, cols, vals = [], [], []
        sequences = []
        for u, user in enumerate(users):
            seq = []
            for etype, item, _ in split.train[user]:
                if _positive(str(etype)):
                    j = item_index[item]
                    rows.append(u)
                    cols.append(j)
                    vals.append(1.0 if type_weights is None else type_weights.get(str(etype), 1.0))
                    seq.append(j)
            sequences.append(seq)
        X = sp.coo_matrix(
            (np.asarray(vals, dtype=np.float32), (rows, cols)), shape=(len(users), len(items))
        ).tocsr(copy=False)
        if type_weights is None:
            X.sum_duplicates()
            X.data[:] = 1.0  # repeats count once: every baseline sees the same binary matrix
        else:
            X = _max_duplicates(rows, cols, vals, (len(users), len(items)))
        return cls(users, items, X, item_index, {user: n for n, user in enumerate(users)}, sequences)

    @cached_property
    def fingerprint(self) -> str:
        """A digest of the matrix and its id maps: equal content, equal key (unlike ``id()``, never reused)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(repr(self.X.shape).encode())
        for array in (self.X.indptr, self.X.indices, self.X.data):
            h.update(np.ascontiguousarray(array).tobytes())
        h.update("\x1f".join(self.items).encode())
        h.update("\x1f".join(self.users).encode())
        for seq in self.sequences:
            h.update(np.asarray(seq, dtype=np.int64).tobytes() + b";")
        return h.hexdigest()


def _max_duplicates(
    rows: list[int], cols: list[int], vals: list[float], shape: tuple[int, int]
) -> sp.csr_matrix:
    """A CSR matrix keeping the largest of repeated (row, col) values (a purchase outweighs a cart add)."""
    best: dict[tuple[int, int], float] = {}
    for r, c, v in zip(rows, cols, vals, strict=True):
        if v > best.get((r, c), float("-inf")):
            best[(r, c)] = v
    if not best:
        return sp.csr_matrix(shape, dtype=np.float32)
    keys = np.array(list(best), dtype=np.int64)
    return sp.csr_matrix(
        (np.fromiter(best.values(), np.float32, len(best)), (keys[:, 0], keys[:, 1])), shape=shape
    )


DENSE_COPIES = 4  # items x items float32 matrices alive at once in a SLIST fit (measured peak)
# EASE inverts its Gram matrix in place (``_inverse``): on Yelp (20,033 items, one copy 1.50 GiB) its fit
# peaked 1.59 GiB above the process's start and fit plus ranking every user 2.03 GiB (/usr/bin/time -v)
EASE_COPIES = 2


def dense_bytes(n_items: int, copies: int = DENSE_COPIES) -> int:
    """Memory a dense fit needs: ``copies`` float32 items x items matrices (``DENSE_COPIES`` for SLIST,
    ``EASE_COPIES`` for EASE), in bytes."""
    return copies * 4 * n_items * n_items


def sparse_bytes(nnz: int, n_items: int, k: int) -> int:
    """A generous bound on an item-kNN fit: the matrix three times over and ``k`` neighbours per item."""
    return 3 * 12 * nnz + 3 * 12 * n_items * k


def _steps(desc: str, total: int, show: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="step", disable=not show, leave=False)


def _inverse(A: np.ndarray, name: str) -> np.ndarray:
    """``A^-1`` of a symmetric positive definite float32 matrix, in place (LAPACK potrf/potri), full, in
    C order (row ``i`` contiguous, as the sparse products and row top-k that follow want it).

    LAPACK works in Fortran order: a C-ordered ``A`` is handed over as ``A.T``, the same matrix since it is
    symmetric, so nothing is copied; the result is returned transposed back, again the same matrix.
    """
    if A.flags.c_contiguous:
        A = A.T
    factor, info = lapack.spotrf(A, lower=0, overwrite_a=1)
    if info != 0:
        raise ValueError(f"{name}: the Gram matrix is not positive definite (potrf info {info})")
    inverse, info = lapack.spotri(factor, lower=0, overwrite_c=1)
    if info != 0:
        raise ValueError(f"{name}: inversion failed (potri info {info})")
    # potri fills the upper triangle only: mirror it in blocks (index arrays would cost 4 x the matrix)
    n, block = inverse.shape[0], 2048
    for s in range(0, n, block):
        e = min(n, s + block)
        inverse[s:e, :s] = inverse[:s, s:e].T
        diag = inverse[s:e, s:e]
        lower = np.tril_indices(e - s, -1)
        diag[lower] = diag.T[lower]
    return inverse.T if inverse.flags.f_contiguous else inverse


def ease(X: sp.csr_matrix, lam: float, progress: bool = False) -> np.ndarray:
    """EASE (Steck 2019): ``B = I - P diagMat(1/diag(P))`` with ``P = (X'X + lam I)^-1``, zero diagonal.

    The inverse comes from a float32 Cholesky factorisation (LAPACK potrf/potri), about three times
    faster than a general inverse of the same Gram matrix. Returns items x items float32.
    """
    with _steps("EASE", 3, progress) as bar:
        gram = (X.T @ X).toarray().astype(np.float32, copy=False)
        gram[np.diag_indices_from(gram)] += lam
        bar.update()
        P = _inverse(gram, "EASE")
        bar.update()
        P /= -np.diag(P)[None, :]
        np.fill_diagonal(P, 0.0)
        bar.update()
    return P


def session_matrices(
    sequences: Iterable[Sequence[int]], n_items: int, window: int = 10, delta: float = 1.0
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """SLIT's past and future matrices (Choi et al., WWW 2021, section 3.2), one row per position.

    For each sequence and each position ``t >= 1``: the past row holds the ``window`` items before ``t``,
    weighted ``exp(-(t - 1 - j) / delta)`` (the newest weighs 1); the future row holds ``t`` and the
    ``window - 1`` items after it, weighted ``exp(-(j - t) / delta)``. Both are rows x ``n_items``.
    """
    past_r: list[int] = []
    past_c: list[int] = []
    past_v: list[float] = []
    fut_r: list[int] = []
    fut_c: list[int] = []
    fut_v: list[float] = []
    decay = [math.exp(-d / delta) for d in range(window)]
    row = 0
    for seq in sequences:
        n = len(seq)
        for t in range(1, n):
            for j in range(max(0, t - window), t):
                past_r.append(row)
                past_c.append(seq[j])
                past_v.append(decay[t - 1 - j])
            for j in range(t, min(n, t + window)):
                fut_r.append(row)
                fut_c.append(seq[j])
                fut_v.append(decay[j - t])
            row += 1
    shape = (row, n_items)
    S = sp.csr_matrix((past_v, (past_r, past_c)), shape=shape, dtype=np.float32)
    T = sp.csr_matrix((fut_v, (fut_r, fut_c)), shape=shape, dtype=np.float32)
    return S, T


def slist(
    X: sp.csr_matrix,
    S: sp.csr_matrix,
    T: sp.csr_matrix,
    alpha: float,
    lam: float,
    progress: bool = False,
    features: sp.csr_matrix | None = None,
    beta: float = 0.0,
) -> np.ndarray:
    """SLIST (Choi et al., WWW 2021, eq. 9): item similarity and item transitions in one closed form.

    Minimises ``alpha ||X - XB||^2 + (1 - alpha) ||T - SB||^2 + lam ||B||^2``:
    ``B = P (alpha X'X + (1 - alpha) S'T)`` with ``P = (alpha X'X + (1 - alpha) S'S + lam I)^-1``, computed
    as ``I - lam P - (1 - alpha) P (S'S - S'T)`` so that only a sparse product meets the dense ``P``.
    ``X`` is users x items, ``S``/``T`` from ``session_matrices``. Returns items x items float32 with a
    zero diagonal (an item does not recommend itself).

    With ``features`` (items x feature tokens, ``features.feature_matrix``) and ``beta > 0``, each token is
    also a pseudo-user who "bought" every item that has it, weighted ``beta``: the objective gains
    ``beta ||F' - F'B||^2``, as side information enters EASE in Jeunen et al., "Closed-Form Models for
    Collaborative Filtering with Side-Information" (RecSys 2020). Only ``P`` changes: ``beta F F'`` joins
    its Gram matrix, and the closed form above holds as written.
    """
    for _, B in slist_fits(X, S, T, alpha, lam, features, (beta,), progress):
        return B
    raise AssertionError("unreachable: slist_fits yields once per beta")


def slist_fits(
    X: sp.csr_matrix,
    S: sp.csr_matrix,
    T: sp.csr_matrix,
    alpha: float,
    lam: float,
    features: sp.csr_matrix | None,
    betas: Sequence[float],
    progress: bool = False,
) -> Iterator[tuple[float, np.ndarray]]:
    """``(beta, slist(..., features, beta))`` for each of ``betas`` (ascending), from one factorisation.

    The first ``beta``'s ``P`` is inverted; each later one adds ``d F F'`` (``d`` the step in beta) through
    the Woodbury identity, ``(A + d F F')^-1 = P - P F (I / d + F' P F)^-1 F' P``, which costs
    ``items^2 x tokens`` instead of a new ``items^3`` inversion. Each ``B`` is items x items float32, in C
    order; it is let go before the next is made, so use it (and drop it) before asking for the next. Raises ``ValueError`` for betas that
    are not ascending, or a later beta without ``features``.
    """
    if list(betas) != sorted(betas) or (len(betas) > 1 and features is None):
        raise ValueError("slist_fits needs ascending betas, and features for more than one")
    n = X.shape[1]
    with _steps("SLIST", 2 + 2 * len(betas), progress) as bar:
        SS = (S.T @ S).tocsr()
        A = (alpha * (X.T @ X) + (1.0 - alpha) * SS).toarray().astype(np.float32, copy=False)
        if features is not None and betas[0] > 0:
            _add_gram(A, features, betas[0])
        A[np.diag_indices(n)] += lam
        bar.update()
        P = _inverse(A, "SLIST")
        bar.update()
        M = ((1.0 - alpha) * (SS - (S.T @ T).tocsr())).astype(np.float32).tocsr()
        M.eliminate_zeros()
        Mt = M.T.tocsr()
        previous = betas[0]
        for beta in betas:
            if beta > previous:
                _woodbury_downdate(P, features, beta - previous)
                previous = beta
            bar.update()
            # B' = -(M' P) - lam P for a symmetric P, built in C order, then transposed in place
            B = _sparse_times_dense(Mt, P)
            B *= -1.0
            for s in range(0, n, 2048):
                B[s : s + 2048] -= lam * P[s : s + 2048]
            _transpose_in_place(B)
            B[np.diag_indices(n)] = 0.0  # the identity cancels on the diagonal, which is zeroed anyway
            bar.update()
            yield beta, B
            del B


def _transpose_in_place(A: np.ndarray, block: int = 1024) -> None:
    """Transpose a square array in place, block by block (a transposed copy would cost one more matrix)."""
    n = A.shape[0]
    for s in range(0, n, block):
        e = min(n, s + block)
        A[s:e, s:e] = A[s:e, s:e].T.copy()
        for t in range(e, n, block):
            f = min(n, t + block)
            upper = A[s:e, t:f].copy()
            A[s:e, t:f] = A[t:f, s:e].T
            A[t:f, s:e] = upper.T


def _sparse_times_dense(A: sp.csr_matrix, D: np.ndarray) -> np.ndarray:
    """``A @ D`` as float32, in row blocks over the machine's cores (SciPy runs each block's product
    without the GIL, but on one thread): on Beauty's 12k items about 1.5 x faster on 2 cores."""
    out = np.empty((A.shape[0], D.shape[1]), dtype=np.float32)
    parts = max(1, min(4, os.cpu_count() or 1))
    bounds = np.linspace(0, A.shape[0], parts + 1).astype(int)

    def block(k: int) -> None:
        out[bounds[k] : bounds[k + 1]] = A[bounds[k] : bounds[k + 1]] @ D

    with ThreadPoolExecutor(parts) as pool:
        list(pool.map(block, range(parts)))
    return out


def _woodbury_downdate(P: np.ndarray, F: sp.csr_matrix, d: float, block: int = 2048) -> None:
    """``P <- (P^-1 + d F F')^-1`` in place, for a symmetric ``P`` (Woodbury identity, in float64 where
    the small tokens x tokens system is solved)."""
    U = np.asarray((F.T.tocsr() @ P).T)  # P F, items x tokens
    W = np.asarray(F.T.tocsr() @ U, dtype=np.float64)  # F' P F
    K = np.linalg.inv(np.eye(W.shape[0]) / d + (W + W.T) / 2).astype(np.float32)
    V = U @ K
    for s in range(0, P.shape[0], block):
        P[s : s + block] -= V[s : s + block] @ U.T


def _add_gram(A: np.ndarray, F: sp.csr_matrix, beta: float, block: int = 2048) -> None:
    """``A += beta F F'`` in place, in row blocks (a whole ``F F'`` of many items would be A's size again)."""
    right = F.T.tocsc()
    for s in range(0, A.shape[0], block):
        A[s : s + block] += beta * (F[s : s + block] @ right).toarray()


def item_knn(X: sp.csr_matrix, kind: str, k: int = 100) -> sp.csr_matrix:
    """Item-kNN similarity from implicit (``cosine`` or ``bm25``), K neighbours per item, as items x items."""
    from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

    model = CosineRecommender(K=k) if kind == "cosine" else BM25Recommender(K=k)
    with threadpool_limits(1, "blas"), warnings.catch_warnings():
        # implicit converts its own intermediate COO matrix and warns about it; nothing to act on
        warnings.filterwarnings("ignore", message="Method expects CSR input")
        model.fit(X.tocsr().astype(np.float32), show_progress=False)
    return model.similarity.tocsr()


def als(X: sp.csr_matrix, factors: int = 64, regularization: float = 0.05, iterations: int = 15):
    """ALS from implicit (CPU, seeded): returns ``(user_factors, item_factors)``."""
    from implicit.cpu.als import AlternatingLeastSquares

    with threadpool_limits(1, "blas"):  # implicit's advice: its own threads, not OpenBLAS's
        model = AlternatingLeastSquares(
            factors=factors, regularization=regularization, iterations=iterations, random_state=42
        )
        model.fit(X.tocsr().astype(np.float32), show_progress=False)
    return np.asarray(model.user_factors), np.asarray(model.item_factors)


def top_neighbours(weights: np.ndarray | sp.spmatrix, n: int, progress: bool = False) -> sp.csr_matrix:
    """Keep each row's ``n`` largest positive weights (the served, bounded form of an item-to-item model)."""
    if sp.issparse(weights):
        W = sp.csr_matrix(weights)
        rows, cols, vals = [], [], []
        for r in tqdm(range(W.shape[0]), desc="top neighbours", disable=not progress, leave=False):
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
    idx = np.empty((dense.shape[0], n), dtype=np.int64)
    for start in range(0, dense.shape[0], 4096):  # bounded scratch memory: argpartition copies its input
        idx[start : start + 4096] = np.argpartition(-dense[start : start + 4096], n, axis=1)[:, :n]
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
    batch: int | None = None,
) -> dict[str, list[str]]:
    """Rank every item for each user by ``scores_for(user_rows) -> dense scores``, excluding what they may not get.

    Users go in batches of ``batch`` rows (default: about 128 MiB of float32 scores per batch).
    """
    batch = batch or score_batch(len(m.items))
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


def score_batch(n_items: int) -> int:
    """Users scored at once so that one dense batch of float32 scores stays near 128 MiB."""
    return max(16, min(2048, (128 << 20) // (4 * max(n_items, 1))))


def popularity_scores(m: Matrix) -> np.ndarray:
    """How many users interacted with each item."""
    return np.asarray(m.X.sum(axis=0)).ravel().astype(np.float32)


def sparse_item_bytes(nnz: int, n_items: int, neighbours: int) -> int:
    """A generous bound on a sparse item-item fit (``rp3beta``, ``local_slist``): the training matrices
    a few times over (COO indices and float32 values, 12 bytes an entry), ``neighbours`` weights per item
    for the fit and its transpose, and one block of scratch rows; it grows with the data, not items²."""
    return 6 * 12 * nnz + 4 * 12 * n_items * neighbours + 256 * (1 << 20)


def gram_entries(X: sp.csr_matrix) -> int:
    """A bound on the entries of ``X'X`` (each row of ``X`` adds at most its length squared), at most
    items²: what a co-occurrence model's Gram matrix may hold, known before it is built."""
    lengths = np.diff(sp.csr_matrix(X).indptr).astype(np.int64)
    return int(min(int((lengths**2).sum()), X.shape[1] ** 2))


def _row_normalised(X: sp.csr_matrix) -> sp.csr_matrix:
    """Each row divided by its sum (an empty row stays empty): a random walk's transition matrix."""
    sums = np.asarray(X.sum(axis=1)).ravel()
    inv = np.divide(1.0, sums, out=np.zeros_like(sums, dtype=np.float64), where=sums > 0)
    return (sp.diags(inv.astype(np.float32)) @ X).tocsr()


def _block_top(W: sp.csr_matrix, n: int, offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's ``n`` largest positive entries of a block of rows, as (row + offset, column, value)."""
    W = W.tocsr()
    W.sum_duplicates()
    rows, cols, vals = [], [], []
    for r in range(W.shape[0]):
        start, end = W.indptr[r], W.indptr[r + 1]
        idx, data = W.indices[start:end], W.data[start:end]
        keep = data > 0
        idx, data = idx[keep], data[keep]
        if len(data) > n:
            best = np.argpartition(-data, n)[:n]
            idx, data = idx[best], data[best]
        rows.append(np.full(len(idx), r + offset, dtype=np.int32))
        cols.append(idx.astype(np.int32))
        vals.append(data.astype(np.float32))
    if not rows:
        return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


def rp3beta(
    X: sp.csr_matrix,
    alpha: float = 1.0,
    beta: float = 0.5,
    n: int = 100,
    features: sp.csr_matrix | None = None,
    gamma: float = 0.0,
    block: int = 1024,
) -> sp.csr_matrix:
    """RP3beta (Paudel et al., "Updatable, accurate, diverse, and scalable recommendations for interactive
    applications", TiiS 2016; as in Dacrema et al., RecSys 2019): a three-step random walk item -> user ->
    item, ``W = P_iu^alpha P_ui^alpha``, each column divided by its item's popularity to the power ``beta``,
    with each row's ``n`` largest weights kept. Returns items x items float32 with at most ``n`` entries a
    row and a zero diagonal.

    With ``features`` (items x tokens) and ``gamma > 0``, each token is also a pseudo-user who visited every
    item that has it, its edges weighted ``gamma`` (issue 17's side information, as for SLIST). Rows are
    computed ``block`` at a time and pruned at once, so memory grows with the data and ``n``, not items².
    """
    X = sp.csr_matrix(X, dtype=np.float32)
    if features is not None and gamma > 0 and features.shape[1]:
        X = sp.vstack([X, gamma * sp.csr_matrix(features, dtype=np.float32).T]).tocsr()
    X.data[X.data < 0] = 0
    P_ui = _row_normalised(X)
    P_iu = _row_normalised(X.T.tocsr())
    if alpha != 1.0:
        P_ui.data **= alpha
        P_iu.data **= alpha
    popularity = np.asarray((X > 0).sum(axis=0)).ravel().astype(np.float64)
    penalty = np.divide(1.0, popularity**beta, out=np.zeros_like(popularity), where=popularity > 0)
    P_ui = (P_ui @ sp.diags(penalty.astype(np.float32))).tocsr()
    n_items = X.shape[1]
    parts = []
    for start in range(0, n_items, block):
        W = (P_iu[start : start + block] @ P_ui).tocsr()
        _zero_block_diagonal(W, start)
        parts.append(_block_top(W, n, start))
    rows, cols, vals = (np.concatenate(p) for p in zip(*parts, strict=True))
    out = sp.csr_matrix((vals, (rows, cols)), shape=(n_items, n_items), dtype=np.float32)
    out.eliminate_zeros()
    return out


def _zero_block_diagonal(W: sp.csr_matrix, offset: int) -> None:
    """Zero the entries (r, r + offset) of a block of rows: an item does not recommend itself."""
    rows = np.repeat(np.arange(W.shape[0]), np.diff(W.indptr))
    W.data[W.indices == rows + offset] = 0.0


def local_slist(
    X: sp.csr_matrix,
    S: sp.csr_matrix,
    T: sp.csr_matrix,
    alpha: float,
    lam: float,
    candidates: int = 100,
    n: int = 100,
    features: sp.csr_matrix | None = None,
    beta: float = 0.0,
    block: int = 256,
    progress: bool = False,
) -> sp.csr_matrix:
    """SLIST (``slist``) with each item's column restricted to its ``candidates`` strongest co-occurring
    items: a small ridge system per item instead of one items x items inverse.

    With ``A = alpha X'X + (1 - alpha) S'S + beta F F'`` and ``R = alpha X'X + (1 - alpha) S'T + beta F F'``
    (SLIST's Gram and target; ``F`` the catalog's tokens as pseudo-users, as in ``slist``), item ``j``'s column of
    ``B`` is ``(A[C, C] + lam I)^-1 R[C, j]`` on its candidate set ``C`` (the largest entries of
    ``A[:, j] + R[:, j]``, ``j`` left out: the zero diagonal becomes a constraint, as in EASE), zero
    elsewhere. The systems are solved ``block`` items at a time. Returns each item's ``n`` largest
    positive weights as a row (items x items float32): memory grows with the data and ``candidates``,
    not items².
    """
    n_items = X.shape[1]
    XX = (X.T @ X).tocsr()
    A = (alpha * XX + (1.0 - alpha) * (S.T @ S)).tocsr().astype(np.float32)
    R = (alpha * XX + (1.0 - alpha) * (S.T @ T)).tocsr().astype(np.float32)
    del XX
    F = None if features is None or beta <= 0 or not features.shape[1] else sp.csr_matrix(features)
    Ft = F.T.tocsc() if F is not None else None
    A_keys, A_vals = _sorted_keys(A)
    R_keys, R_vals = _sorted_keys(R)
    Rc = R.T.tocsr()  # row j: R[:, j]
    pick = (A + Rc).tocsr()  # symmetric A: row j of A is A[:, j]
    K = min(candidates, n_items - 1)
    cols_out, rows_out, vals_out = [], [], []
    for start in tqdm(range(0, n_items, block), desc="local SLIST", disable=not progress, leave=False):
        items = np.arange(start, min(n_items, start + block))
        score = pick[items]
        if F is not None:
            score = score + beta * (F[items] @ Ft)
        score = score.tocsr()
        C = np.empty((len(items), K), dtype=np.int64)
        valid = np.zeros((len(items), K), dtype=bool)
        for r, j in enumerate(items):
            s, e = score.indptr[r], score.indptr[r + 1]
            idx, data = score.indices[s:e], score.data[s:e]
            keep = (idx != j) & (data > 0)
            idx, data = idx[keep], data[keep]
            if len(idx) > K:
                idx = idx[np.argpartition(-data, K)[:K]]
            C[r, : len(idx)] = idx
            C[r, len(idx) :] = 0
            valid[r, : len(idx)] = True
        G = _gram_blocks(A_keys, A_vals, C, n_items)
        if F is not None:
            for r in range(len(items)):
                f = F[C[r]]
                G[r] += beta * (f @ f.T).toarray()
        mask = valid[:, :, None] & valid[:, None, :]
        G *= mask
        G[:, np.arange(K), np.arange(K)] += lam
        rhs = _lookup(R_keys, R_vals, C * n_items + items[:, None])
        if F is not None:  # the tokens are pseudo-users on both sides, as in ``slist``: beta F F'[C, j]
            for r, j in enumerate(items):
                rhs[r] += beta * (F[C[r]] @ F[j].T).toarray().ravel()
        rhs *= valid
        # float32: the systems are ridge-regularised (lam on the diagonal); against float64 the weights
        # differ by ~1e-7 relative on the 100,000-item simulator, and the solve takes 0.4 of the time.
        # One BLAS thread: OpenBLAS's threads on systems this small only wait on each other, and while
        # another process holds a core (streamrec train folds beside the fits) a block took 20x longer
        with threadpool_limits(1, "blas"):
            b = np.linalg.solve(G, rhs[:, :, None])[:, :, 0]
        keep = valid & (b > 0)
        rows_out.append(C[keep])
        cols_out.append(np.broadcast_to(items[:, None], C.shape)[keep])
        vals_out.append(b[keep].astype(np.float32))
    rows = np.concatenate(rows_out) if rows_out else np.zeros(0, np.int64)
    cols = np.concatenate(cols_out) if cols_out else np.zeros(0, np.int64)
    vals = np.concatenate(vals_out) if vals_out else np.zeros(0, np.float32)
    B = sp.csr_matrix((vals, (rows, cols)), shape=(n_items, n_items), dtype=np.float32)
    return top_neighbours(B, n)


def _sorted_keys(M: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """A canonical CSR matrix's entries as sorted ``row * columns + column`` keys and their values."""
    M = M.tocsr()
    M.sum_duplicates()
    M.sort_indices()
    rows = np.repeat(np.arange(M.shape[0], dtype=np.int64), np.diff(M.indptr))
    return rows * M.shape[1] + M.indices, M.data.astype(np.float32)


def _gram_blocks(keys: np.ndarray, values: np.ndarray, C: np.ndarray, n_cols: int) -> np.ndarray:
    """``M[C[r], C[r]]`` for each row ``r`` of ``C`` (blocks x K item ids), as blocks x K x K float32, from
    a symmetric ``M``'s sorted keys (``_sorted_keys``). Only the upper triangle is looked up and mirrored,
    and each distinct pair once, in key order (``_lookup_sorted``): candidate sets of one block share
    their popular items, and sorted queries walk the keys forward instead of jumping about them."""
    K = C.shape[1]
    a, b = np.triu_indices(K)  # a <= b
    upper = _lookup_sorted(keys, values, C[:, a] * n_cols + C[:, b])
    G = np.empty((C.shape[0], K, K), dtype=np.float32)
    G[:, a, b] = upper
    G[:, b, a] = upper
    return G


def _lookup_sorted(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``_lookup`` for a large ``query`` with repeats: each distinct key searched once, in ascending
    order (about 2.5 times faster on a block of local SLIST's candidate pairs)."""
    distinct, back = np.unique(query.ravel(), return_inverse=True)
    return _lookup(keys, values, distinct)[back].reshape(query.shape)


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """The values at ``query`` keys (0 where a key is absent), in ``query``'s shape, float32."""
    at = np.searchsorted(keys, query.ravel())
    at = np.minimum(at, len(keys) - 1)
    found = keys[at] == query.ravel()
    out = np.where(found, values[at], 0.0).astype(np.float32)
    return out.reshape(query.shape)
