"""The sparse item-item families (SLIST restricted to candidates, RP3beta) on data whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from streamrec.trainer import models, train
from streamrec.trainer.models import Matrix
from streamrec.trainer.splits import Split


def matrix(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [i for items in rows for i in items]
    return sp.csr_matrix((np.ones(len(c), np.float32), (r, c)), shape=(len(rows), n_items))


def neighbours(table: sp.csr_matrix, item: int) -> dict[int, float]:
    row = table.getrow(item)
    return dict(zip(row.indices.tolist(), row.data.tolist(), strict=True))


def two_groups(copies: int = 3) -> tuple[sp.csr_matrix, list[list[int]]]:
    """Shoppers buy 0 then 1, or 2 then 3: two groups that never meet."""
    seqs = [[0, 1]] * copies + [[2, 3]] * copies
    return matrix(seqs, 4), seqs


@pytest.mark.parametrize("family", ["rp3beta", "slist-local"])
def test_neighbours_stay_within_their_group(family: str) -> None:
    X, seqs = two_groups()
    if family == "rp3beta":
        table = models.rp3beta(X, 1.0, 0.5, n=10)
    else:
        S, T = models.session_matrices(seqs, 4)
        table = models.local_slist(X, S, T, 0.5, 1.0, candidates=10, n=10)
    assert set(neighbours(table, 0)) == {1}
    assert set(neighbours(table, 2)) == {3}
    assert table.diagonal().max() == 0  # an item does not recommend itself
    assert (table.data > 0).all()


def test_rp3beta_penalises_popular_items() -> None:
    # item 0 meets 1 (bought by three shoppers) and 2 (by one) once each: a tie without the penalty
    X = matrix([[0, 1], [0, 2], [1], [1]], 3)
    plain = neighbours(models.rp3beta(X, 1.0, 0.0), 0)
    assert plain[1] == pytest.approx(plain[2])
    penalised = neighbours(models.rp3beta(X, 1.0, 0.5), 0)
    assert penalised[2] > penalised[1]
    assert penalised[2] == pytest.approx(0.25)  # 0 -> shopper 1 (1/2) -> item 2 (1/2), popularity 1


def test_catalog_tokens_relate_items_no_shopper_has_joined() -> None:
    X, seqs = two_groups()
    F = sp.csr_matrix(np.array([[1], [0], [1], [0]], dtype=np.float32))  # 0 and 2 share a brand
    assert 2 not in neighbours(models.rp3beta(X, 1.0, 0.5), 0)
    assert 2 in neighbours(models.rp3beta(X, 1.0, 0.5, features=F, gamma=1.0), 0)
    S, T = models.session_matrices(seqs, 4)
    assert 2 not in neighbours(models.local_slist(X, S, T, 0.5, 1.0), 0)
    with_tokens = models.local_slist(X, S, T, 0.5, 1.0, features=F, beta=1.0)
    assert 2 in neighbours(with_tokens, 0)


def test_local_slist_with_every_candidate_is_constrained_ridge_regression() -> None:
    """With room for every item, column j is the ridge solution on all other items (EASE's constraint)."""
    rng = np.random.default_rng(3)
    dense = (rng.random((60, 8)) < 0.35).astype(np.float32)
    X = sp.csr_matrix(dense)
    seqs = [list(np.flatnonzero(row)) for row in dense]
    S, T = models.session_matrices(seqs, 8)
    alpha, lam = 0.5, 2.0
    A = (alpha * X.T @ X + (1 - alpha) * S.T @ S).toarray()
    R = (alpha * X.T @ X + (1 - alpha) * S.T @ T).toarray()
    expected = np.zeros((8, 8))
    for j in range(8):
        C = [i for i in range(8) if i != j and A[i, j] + R[i, j] > 0]
        expected[C, j] = np.linalg.solve(A[np.ix_(C, C)] + lam * np.eye(len(C)), R[C, j])
    expected[expected < 0] = 0
    got = models.local_slist(X, S, T, alpha, lam, candidates=8, n=8).toarray()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["rp3beta", "slist-local"])
def test_rows_are_bounded_and_memory_grows_with_the_data(family: str) -> None:
    rng = np.random.default_rng(5)
    n_items, users = 400, 300
    seqs = [list(rng.choice(n_items, size=int(rng.integers(2, 40)), replace=False)) for _ in range(users)]
    X = matrix(seqs, n_items)
    if family == "rp3beta":
        table = models.rp3beta(X, 0.8, 0.3, n=7, block=64)
    else:
        S, T = models.session_matrices(seqs, n_items)
        table = models.local_slist(X, S, T, 0.5, 10.0, candidates=20, n=7, block=64)
    assert np.diff(table.indptr).max() == 7
    config = train.Config(family)
    # the estimate is linear in the data: twice the interactions and items, about twice the bytes
    small = train.memory_needed(config, 10_000, 100_000, 1_000_000)
    large = train.memory_needed(config, 20_000, 200_000, 2_000_000)
    fixed = models.sparse_item_bytes(0, 0, 0)
    assert (large - fixed) == pytest.approx(2 * (small - fixed))
    assert train.memory_needed(config, 1_000_000, 10_000_000, 200_000_000) < 24 << 30


def test_the_trainer_fits_them_and_tries_them_only_where_no_dense_family_fits() -> None:
    X, seqs = two_groups()
    items = ["a", "b", "c", "d"]
    users = [f"u{n}" for n in range(6)]
    m = Matrix(
        users, items, X, {i: n for n, i in enumerate(items)}, {u: n for n, u in enumerate(users)}, seqs
    )
    for config in train.SCALABLE_CONFIGS:
        assert set(neighbours(train.fit(m, config), 0)) == {1}
    split = Split(
        "s",
        {u: [("purchase", items[j], t) for t, j in enumerate(seqs[n])] for n, u in enumerate(users)},
        {},
        {},
        None,
        items,
    )
    kept, skipped = train.within_budget_or_scalable(train.DEFAULT_CONFIGS, split, m, 4 << 30)
    assert kept == list(train.DEFAULT_CONFIGS) and not skipped
    # the same shoppers in a catalog of 10,000 items: a dense SLIST needs 1.5 GiB, the sparse ones < 0.4
    wide = Matrix(
        m.users,
        [f"i{n}" for n in range(10_000)],
        sp.csr_matrix((X.data, X.indices, X.indptr), shape=(6, 10_000)),
        m.item_index,
        m.user_index,
        seqs,
    )
    kept, skipped = train.within_budget_or_scalable(train.DEFAULT_CONFIGS, split, wide, 400 << 20)
    assert [c.family for c in kept] == ["slist-local", "rp3beta", "bm25", "cosine"]
    assert len(skipped) == 1 and skipped[0].startswith("slist(")


def test_features_variants_are_tried_for_rp3beta_and_not_for_local_slist() -> None:
    """Local SLIST lost with the catalog on every validation split measured (train.FEATURE_WEIGHTS)."""
    split = Split("s", {"u": [("purchase", "a", 1)]}, {}, {}, "purchase", ["a"], {"a": ("brand=x",)})
    names = [c.name for c in train.with_features(train.SCALABLE_CONFIGS, split)]
    assert names == [
        "slist-local(alpha=0.5,lambda=400,candidates=100)",
        "rp3beta(alpha=0.8,beta=0.3)",
        "rp3beta(alpha=0.8,beta=0.3,features=3)",
    ]
