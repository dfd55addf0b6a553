"""Offline evaluation's pure parts with known answers: file formats, splits, metrics, models, selection."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from streamrec.event_types import EventType
from streamrec.scoring import Candidate, add_repeats, blend, normalised_neighbours, rank
from streamrec.settings import ScoringSettings
from streamrec.trainer import features, models
from streamrec.trainer.models import Matrix
from streamrec.trainer.ranking_metrics import hit_and_gain, score_lists, table, tail_share
from streamrec.trainer.splits import Split, leave_last_out, load_split
from streamrec.trainer.train import (
    BLEND_GRID,
    DEFAULT_CONFIGS,
    GIB,
    MAX_BLEND,
    NEIGHBOURS,
    Config,
    blend_results,
    choose_blend,
    fit,
    fit_key,
    preference_matrix,
    sampled,
    seed_matrix,
    select,
    served_lists,
    with_features,
    with_type_weights,
    within_budget,
)

P, V, C = EventType.PURCHASE, EventType.VIEW, EventType.ADD_TO_CART


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------- formats and splits


def test_seq_holds_out_each_users_last_item_and_excludes_the_rest(tmp_path: Path) -> None:
    split = load_split(write(tmp_path / "s.txt", "u1 a b c\nu2 b c\nu3 a\n"), "seq")
    assert split.targets == {"u1": ["c"], "u2": ["c"]}
    assert [i for _, i, _ in split.train["u1"]] == ["a", "b"]
    assert split.train["u3"][0][:2] == (P, "a")  # too short to evaluate, still trains
    assert split.exclude["u1"] == {"a", "b"}
    times = [ts for _, _, ts in split.train["u1"]]
    assert times == sorted(times) and len(set(times)) == 2
    assert set(split.items) == {"a", "b", "c"}


def test_movielens_orders_by_time_and_maps_ratings_to_types(tmp_path: Path) -> None:
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    inter += "1\t10\t5\t300\n1\t11\t2\t100\n1\t12\t4\t200\n"
    split = load_split(write(tmp_path / "m.inter", inter), "movielens")
    assert split.train["1"] == [(V, "11", 100_000), (P, "12", 200_000)]
    assert split.targets == {"1": ["10"]}


def test_session_format_reads_sessions_as_users(tmp_path: Path) -> None:
    text = "SessionId\tItemId\tTime\n7\t1\t20.0\n7\t2\t10.0\n8\t3\t5.0\n8\t1\t6.0\n"
    split = load_split(write(tmp_path / "c.txt", text), "session")
    assert split.targets == {"7": ["1"], "8": ["1"]}
    assert split.train["7"] == [(V, "2", 10_000)]


def test_multi_holds_out_test_purchases_and_excludes_only_training_purchases(tmp_path: Path) -> None:
    write(tmp_path / "train.txt", "u1 a b\nu2 c\n")
    write(tmp_path / "cart.txt", "u1 d e\nu3 a\n")
    write(tmp_path / "test.txt", "u1 d\nu2 a\n")
    split = load_split(tmp_path, "multi")
    assert split.targets == {"u1": ["d"], "u2": ["a"]}
    assert split.exclude["u1"] == {"a", "b"}  # the carted 'd' stays rankable
    assert [(t, i) for t, i, _ in split.train["u1"]] == [(C, "d"), (C, "e"), (P, "a"), (P, "b")]
    valid = split.validation()
    assert valid.targets["u1"] == ["b"] and valid.exclude["u1"] == {"a"}
    assert load_split(tmp_path / "train.txt", "multi").targets == split.targets


def test_validation_is_carved_from_training_only(tmp_path: Path) -> None:
    split = load_split(write(tmp_path / "s.txt", "u1 a b c d\nu2 x y\n"), "seq")
    valid = split.validation()
    assert valid.targets == {"u1": ["c"]}  # u2 has one training action left: nothing to hold out
    assert [i for _, i, _ in valid.train["u1"]] == ["a", "b"]
    assert all(t != ["d"] for t in valid.targets.values())
    everything = split.everything()
    assert [i for _, i, _ in everything.train["u1"]] == ["a", "b", "c", "d"]


@pytest.mark.parametrize(("fmt", "message"), [("csv", "unknown format 'csv'"), ("seq", "does not exist")])
def test_bad_arguments_are_explained(tmp_path: Path, fmt: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_split(tmp_path / "missing.txt", fmt)


# ---------------------------------------------------------------- metrics


def test_hit_and_gain_known_answers() -> None:
    assert hit_and_gain(["x", "a"], ["x"], 10) == (1.0, 1.0)
    assert hit_and_gain(["a", "b", "x"], ["x"], 10) == (1.0, 0.5)
    assert hit_and_gain(["a", "b", "x"], ["x"], 2) == (0.0, 0.0)


def test_score_lists_counts_missing_users_as_misses_and_coverage() -> None:
    result = score_lists(
        "m", {"u1": ["a", "b"], "u2": ["b"]}, {"u1": ["b"], "u2": ["c"], "u3": ["a"]}, 4, 1.0
    )
    assert result.hr_at_10 == pytest.approx(1 / 3)
    assert result.ndcg_at_10 == pytest.approx((1 / math.log2(3)) / 3)
    assert result.coverage == 0.5 and result.users == 3
    assert table([result]).splitlines()[2].startswith("| m | 0.3333 |")


# ---------------------------------------------------------------- models


def test_ease_matches_the_closed_form() -> None:
    rng = np.random.default_rng(0)
    X = sp.csr_matrix((rng.random((40, 6)) < 0.4).astype(np.float32))
    lam = 2.0
    G = (X.T @ X).toarray().astype(np.float64) + lam * np.eye(6)
    P_ = np.linalg.inv(G)
    expected = -P_ / np.diag(P_)
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(models.ease(X, lam), expected, rtol=1e-3, atol=1e-5)


def test_top_neighbours_keeps_the_largest_positive_weights() -> None:
    W = np.array([[0, 3, -1, 2], [1, 0, 5, 4], [0, 0, 0, 0], [2, 1, 0, 0]], dtype=np.float32)
    T = models.top_neighbours(W, 2).toarray()
    assert T[0].tolist() == [0, 3, 0, 2] and T[1].tolist() == [0, 0, 5, 4] and not T[2].any()
    Ts = models.top_neighbours(sp.csr_matrix(W), 2).toarray()
    np.testing.assert_array_equal(T, Ts)


def chain_split(users: int = 60, items: int = 12) -> Split:
    """Every shopper walks the same chain a -> b -> c ... from some start: the next item is always known."""
    logs = []
    for u in range(users):
        start = u % (items - 4)
        logs.append((f"u{u}", [(P, f"i{start + k}", 1_000 * k) for k in range(4)]))
    return leave_last_out("chain", logs)


def test_top_k_lists_rank_scores_and_respect_exclusions() -> None:
    split = chain_split()
    m = Matrix.from_split(split)
    pop = models.popularity_scores(m)
    users = list(split.targets)
    lists = models.top_k_lists(
        lambda rows: np.broadcast_to(pop, (len(rows), len(pop))), users, m, split.exclude, 3
    )
    for user in users:
        assert not set(lists[user]) & split.exclude[user]
        scores = [pop[m.item_index[i]] for i in lists[user]]
        assert scores == sorted(scores, reverse=True)


EASE = Config("ease", (("lambda", 50.0),))


@pytest.mark.parametrize("config", [*DEFAULT_CONFIGS, EASE], ids=lambda c: c.name)
def test_every_family_learns_a_chain(config: Config) -> None:
    split = chain_split()
    m = Matrix.from_split(split)
    lists = served_lists(m, split, fit(m, config), ScoringSettings())
    result = score_lists(config.name, lists, split.targets, len(split.items), 0.0)
    assert result.hr_at_10 == 1.0, config.name


def test_selection_happens_on_validation_and_ranks_the_families() -> None:
    ranked, results, skipped = select(chain_split(), ScoringSettings())
    assert sorted(ranked, key=str) == sorted(DEFAULT_CONFIGS, key=str) and not skipped
    assert len(results) == len(DEFAULT_CONFIGS)
    assert all(r.users == 60 for r in results)  # validation users, not test users
    by_name = {r.model: r for r in results}
    figures = [(by_name[c.name].hr_at_10, by_name[c.name].ndcg_at_10) for c in ranked]
    assert figures == sorted(figures, reverse=True)


def test_the_family_and_the_share_are_chosen_together_on_the_served_blend() -> None:
    """A family that scores higher alone can add less to the live state than one that scores lower:
    each finalist's blend is scored, and the best blend wins, not the best family alone."""
    split = chain_split()  # validation: seeds i{s}, i{s+1}; the target is i{s+2}, for s = 0..7
    valid = sampled(split.validation())
    m = Matrix.from_split(valid)
    n = len(m.items)

    def knows(anchors: range | list[int]) -> sp.csr_matrix:
        """A table that knows the next item after each of ``anchors``."""
        t = np.zeros((n, n), dtype=np.float32)
        for a in anchors:
            t[m.item_index[f"i{a}"], m.item_index[f"i{a + 1}"]] = 1.0
        return sp.csr_matrix(t)

    live = knows(range(1, 6))  # the live state knows the shoppers whose last seed is i1 .. i5
    alone = Config("ease", (("lambda", 1.0),))  # knows what live knows, and i6: better alone
    adds = Config("ease", (("lambda", 2.0),))  # knows i6 .. i8 only: worse alone, but what live lacks
    tables = {alone: knows(range(1, 7)), adds: knows(range(6, 9))}
    cache = {fit_key(m, c, valid, NEIGHBOURS): t for c, t in tables.items()}
    scoring = ScoringSettings()
    by_itself = {c: blend_results(m, valid, t, live, scoring, shares=(1.0,))[0][1] for c, t in tables.items()}
    assert by_itself[alone] > by_itself[adds]
    config, share, rows = choose_blend(split, [alone, adds], scoring, live, cache=cache)
    assert config == adds and 0 < share < 1
    assert max(r["hr_at_10"] for r in rows) == pytest.approx(1.0)  # together they know every shopper
    assert [r["share"] for r in rows] == [s for s in BLEND_GRID if s <= MAX_BLEND]


def test_blend_scales_each_side_and_keeps_the_stronger_reason() -> None:
    live = {
        "a": Candidate("a", 4.0, "viewed with x", "item_to_item"),
        "b": Candidate("b", 2.0, "r", "search"),
    }
    batch = {"b": Candidate("b", 10.0, "bought with x", "item_to_item"), "c": Candidate("c", 5.0, "m", "x")}
    out = blend(live, batch, 0.5)
    assert out["a"].score == pytest.approx(0.5) and out["a"].source == "item_to_item"
    assert out["b"].score == pytest.approx(0.25 + 0.5) and out["b"].reason == "bought with x"
    assert out["b"].source == "model"
    assert out["c"].score == pytest.approx(0.25)
    assert {k: c.score for k, c in blend(live, batch, 0.0).items() if c.score} == {"a": 1.0, "b": 0.5}


def test_repeats_offer_the_users_own_items_scaled_to_the_best_candidate() -> None:
    from streamrec.scoring import add_repeats

    cands = {"x": Candidate("x", 2.0, "viewed with a", "item_to_item")}
    out = add_repeats(cands, {"cart": 3.0, "seen": 1.0, "gone": -1.0}, {"cart": "add_to_cart"}, 1.0)
    assert out["cart"].score == pytest.approx(2.0) and out["cart"].reason == "still in your cart"
    assert out["seen"].score == pytest.approx(2.0 / 3) and out["seen"].reason == "you looked at this"
    assert "gone" not in out
    assert add_repeats({}, {"a": 1.0}, {}, 0.0) == {}


# ---------------------------------------------------------------- SLIST, budget, cache, long tail


def test_session_matrices_pair_each_position_with_its_past_and_future() -> None:
    S, T = models.session_matrices([[0, 1, 2]], 3, window=10, delta=1.0)
    e = math.exp(-1.0)
    np.testing.assert_allclose(S.toarray(), [[1, 0, 0], [e, 1, 0]], rtol=1e-6)
    np.testing.assert_allclose(T.toarray(), [[0, 1, e], [0, 0, 1]], rtol=1e-6)
    S, T = models.session_matrices([[0, 1, 2]], 3, window=1)
    np.testing.assert_array_equal(S.toarray(), [[1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(T.toarray(), [[0, 1, 0], [0, 0, 1]])


@pytest.mark.parametrize("alpha", [0.2, 0.5, 1.0])
def test_slist_matches_the_closed_form(alpha: float) -> None:
    """B = (a X'X + (1-a) S'S + lam I)^-1 (a X'X + (1-a) S'T), diagonal zeroed (Choi et al. 2021, eq. 9)."""
    rng = np.random.default_rng(1)
    X = sp.csr_matrix((rng.random((50, 12)) < 0.3).astype(np.float32))
    seqs = [list(rng.integers(0, 12, size=rng.integers(2, 7))) for _ in range(40)]
    S, T = models.session_matrices(seqs, 12, 10, 1.0)
    lam = 3.0
    G, SS, ST = ((A.T @ B).toarray().astype(np.float64) for A, B in ((X, X), (S, S), (S, T)))
    expected = np.linalg.solve(alpha * G + (1 - alpha) * SS + lam * np.eye(12), alpha * G + (1 - alpha) * ST)
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(models.slist(X, S, T, alpha, lam), expected, rtol=1e-3, atol=1e-5)


def test_slist_with_features_is_slist_with_each_token_as_a_pseudo_user() -> None:
    """beta ||F' - F'B||^2 joins the objective (Jeunen et al. 2020): the same fit as SLIST on X with a row
    sqrt(beta / alpha) F' per token appended."""
    rng = np.random.default_rng(2)
    X = sp.csr_matrix((rng.random((40, 10)) < 0.3).astype(np.float32))
    F = sp.csr_matrix((rng.random((10, 4)) < 0.4).astype(np.float32))
    seqs = [list(rng.integers(0, 10, size=rng.integers(2, 6))) for _ in range(30)]
    S, T = models.session_matrices(seqs, 10, 10, 1.0)
    alpha, lam, beta = 0.5, 2.0, 3.0
    stacked = sp.vstack([X, math.sqrt(beta / alpha) * F.T]).tocsr()
    np.testing.assert_allclose(
        models.slist(X, S, T, alpha, lam, features=F, beta=beta),
        models.slist(stacked, S, T, alpha, lam),
        rtol=1e-3,
        atol=1e-5,
    )


def test_slist_fits_of_several_feature_weights_match_one_fit_each() -> None:
    """The Woodbury steps from one factorisation give each beta's own closed form."""
    rng = np.random.default_rng(3)
    X = sp.csr_matrix((rng.random((60, 14)) < 0.3).astype(np.float32))
    F = sp.csr_matrix((rng.random((14, 5)) < 0.4).astype(np.float32))
    seqs = [list(rng.integers(0, 14, size=rng.integers(2, 6))) for _ in range(40)]
    S, T = models.session_matrices(seqs, 14, 10, 1.0)
    betas = (0.0, 1.0, 4.0)
    for beta, B in models.slist_fits(X, S, T, 0.5, 2.0, F, betas):
        alone = models.slist(X, S, T, 0.5, 2.0, features=F, beta=beta)
        np.testing.assert_allclose(B, alone, rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError, match="ascending"):
        next(models.slist_fits(X, S, T, 0.5, 2.0, F, (1.0, 0.0)))


def test_catalog_features_relate_items_that_were_never_bought_together() -> None:
    """a and c share a brand but no shopper: only the features variant links them."""
    split = Split("f", {"u1": [(P, "a", 1), (P, "b", 2)], "u2": [(P, "c", 3), (P, "d", 4)]}, {}, {})
    split.features = {"a": ("brand=x",), "c": ("brand=x",), "b": ("brand=y",), "d": ("brand=z",)}
    m = Matrix.from_split(split)
    plain, with_catalog = DEFAULT_CONFIGS[0], with_features(DEFAULT_CONFIGS[:1], split)[1]
    assert dict(with_catalog.params)["features"] > 0
    a, c = m.item_index["a"], m.item_index["c"]
    assert fit(m, plain, n=3, split=split)[a, c] == 0
    assert fit(m, with_catalog, n=3, split=split)[a, c] > 0
    with pytest.raises(ValueError, match="needs the split"):
        fit(m, with_catalog)


def test_feature_tokens_and_their_matrix() -> None:
    assert features.tokens("shoes", {"brand": "Acme", "sizes": [40, 41], "note": "", "x": None}) == (
        "brand=Acme",
        "category=shoes",
        "sizes=40",
        "sizes=41",
    )
    found = features.from_records([("a", "shoes", {"brand": "Acme"}), ("b", "shoes", {}), ("c", "", {})])
    assert found == {"a": ("brand=Acme", "category=shoes"), "b": ("category=shoes",)}
    F = features.feature_matrix(found, ["a", "b", "c"])
    assert F.shape == (3, 1)  # brand=Acme is a's alone: it relates a to nothing
    assert F.toarray().ravel().tolist() == [1.0, 1.0, 0.0]
    assert features.digest(found) == features.digest(dict(reversed(found.items())))


def test_catalog_variants_only_where_the_data_has_features() -> None:
    split = chain_split()
    assert with_features(DEFAULT_CONFIGS, split) == list(DEFAULT_CONFIGS)
    split.features = {"i0": ("category=c",), "i1": ("category=c",)}
    variants = with_features(DEFAULT_CONFIGS, split)
    assert [c.name for c in variants[:2]] == [
        "slist(alpha=0.5,lambda=50)",
        "slist(alpha=0.5,lambda=50,features=1)",
    ]
    assert variants[2:] == list(DEFAULT_CONFIGS[1:])
    assert split.validation().features == split.features == split.everything().features


def test_a_known_datasets_catalog_gives_the_split_its_features(tmp_path: Path) -> None:
    """A file in a known dataset's folder gets that dataset's catalog, as a replay would publish it."""
    folder = tmp_path / "amazon-beauty"
    folder.mkdir()
    write(folder / "Beauty.txt", "u1 1 2 3\nu2 2 3\n")
    write(folder / "Beauty_item2attributes.json", '{"1": [7, 8], "2": [7], "3": []}')
    split = load_split(folder / "Beauty.txt", "seq")
    assert split.features == {
        "1": ("attribute_ids=7", "attribute_ids=8", "category=attr-7"),
        "2": ("attribute_ids=7", "category=attr-7"),
    }
    elsewhere = tmp_path / "mine"
    elsewhere.mkdir()
    assert load_split(write(elsewhere / "Beauty.txt", "u1 1 2 3\n"), "seq").features == {}


def test_slist_learns_the_order_that_ease_cannot_see() -> None:
    """Everyone buys a then b: EASE's similarity is symmetric, SLIST's transitions point forward."""
    split = leave_last_out(
        "ab", [(f"u{n}", [(P, "a", 1), (P, "b", 2), (P, f"x{n % 7}", 3)]) for n in range(30)]
    )
    m = Matrix.from_split(split)
    S, T = models.session_matrices(m.sequences, len(m.items), 10)
    B = models.slist(m.X, S, T, 0.2, 1.0)
    a, b = m.item_index["a"], m.item_index["b"]
    assert B[a, b] > 1.1 * B[b, a] > 0
    E = models.ease(m.X, 1.0)
    assert E[a, b] == pytest.approx(E[b, a], rel=1e-3)


def test_dense_families_are_left_out_when_they_do_not_fit_the_budget() -> None:
    configs = [*DEFAULT_CONFIGS, EASE]
    kept, skipped = within_budget(configs, 12_000, 200_000, 4 * GIB)
    assert kept == configs and not skipped  # Beauty: 12k items, 2.3 GB for a dense fit
    kept, skipped = within_budget(configs, 100_000, 1_000_000, 4 * GIB)
    assert [c.family for c in kept] == ["bm25", "cosine"]
    assert len(skipped) == 2 and "needs 149.0 GiB > budget 4.0 GiB" in skipped[0]
    assert models.dense_bytes(100_000) == 16 * 10**10
    assert within_budget(configs, 100_000, 1_000_000, 1)[0] == []


def test_ease_has_its_own_measured_copy_count() -> None:
    """EASE inverts in place (two items² copies at its peak), SLIST holds four: at Yelp's 20,033 items
    only EASE fits the 4 GiB budget."""
    kept, skipped = within_budget([*DEFAULT_CONFIGS, EASE], 20_033, 300_000, 4 * GIB)
    assert [c.family for c in kept] == ["bm25", "cosine", "ease"]
    assert len(skipped) == 1 and skipped[0].startswith("slist(") and "needs 6.0 GiB" in skipped[0]
    assert models.dense_bytes(10_000, models.EASE_COPIES) == 8 * 10**8


def test_selection_refuses_when_nothing_fits() -> None:
    with pytest.raises(ValueError, match="no model family fits the memory budget"):
        select(chain_split(), ScoringSettings(), budget_bytes=1)


def test_the_fit_cache_keys_on_content_not_object_identity() -> None:
    """id() of a freed matrix may be reused by the next one; a content digest never mixes two datasets."""
    cache: dict = {}
    first = fit(Matrix.from_split(chain_split()), EASE, cache=cache)
    again = Matrix.from_split(chain_split())
    assert fit(again, EASE, cache=cache) is first  # same content: reused
    other = Matrix.from_split(chain_split(users=30, items=10))
    assert other.fingerprint != again.fingerprint
    table_other = fit(other, EASE, cache=cache)
    assert table_other is not first and len(cache) == 2
    reordered = Matrix.from_split(
        leave_last_out(
            "r", [(u, a[::-1]) for u, a in [(u, chain_split().train[u]) for u in chain_split().train]]
        )
    )
    assert reordered.fingerprint != again.fingerprint  # same pairs, other order: SLIST would differ


def test_type_weighted_matrix_keeps_the_strongest_action() -> None:
    split = Split("t", {"u": [(C, "a", 1), (P, "a", 2), (V, "b", 3)]}, {}, {})
    m = Matrix.from_split(split, {"purchase": 1.0, "add_to_cart": 0.25, "view": 0.1})
    row = m.X.toarray()[0]
    assert row[m.item_index["a"]] == 1.0 and row[m.item_index["b"]] == pytest.approx(0.1)
    assert Matrix.from_split(split).X.toarray()[0].tolist() == [1.0, 1.0]


def test_type_weight_variants_only_where_the_data_has_several_types() -> None:
    assert with_type_weights(DEFAULT_CONFIGS, chain_split()) == list(DEFAULT_CONFIGS)
    mixed = Split("m", {"u": [(C, "a", 1), (P, "b", 2)]}, {}, {})
    variants = with_type_weights(DEFAULT_CONFIGS[:1], mixed)
    assert [c.type_weights() for c in variants] == [{"purchase": 1.0, "add_to_cart": w} for w in (0.25, 1.0)]


def test_shrinkage_keeps_one_off_items_below_well_supported_neighbours() -> None:
    """The MovieLens demo's complaint: an item seen once, co-occurring once, tied a strong neighbour."""
    raw = {"one-off": 1.0, "solid": 10.0}
    counts = {"one-off": 1.0, "solid": 100.0}
    plain = normalised_neighbours(raw, counts, 100.0, 0.5)
    assert plain["one-off"] == pytest.approx(plain["solid"])  # 1/sqrt(1) == 10/sqrt(100)
    shrunk = normalised_neighbours(raw, counts, 100.0, 0.5, shrinkage=20.0)
    assert shrunk["solid"] > 2 * shrunk["one-off"]
    assert shrunk["solid"] == pytest.approx(10.0 / (100**0.5 * 120**0.5))
    assert normalised_neighbours(raw, counts, 100.0, 0.5, 0.0) == plain


def test_tail_share_counts_shown_items_with_little_support() -> None:
    support = {"a": 1, "b": 4, "c": 5, "d": 50}
    result = score_lists(
        "m", {"u1": ["a", "c"], "u2": ["d", "b"]}, {"u1": ["c"], "u2": ["x"]}, 4, 0.0, 10, support
    )
    assert result.tail_share == pytest.approx(2 / 4)
    assert tail_share({"u1": ["c"], "u2": ["x"]}, support) == pytest.approx(1 / 2)  # unseen x: 0 < 5


def test_blend_choice_ranks_with_the_apis_maths() -> None:
    """``blend_results`` must agree with ``scoring.blend`` + ``add_repeats`` + ``rank`` for every share."""
    rng = np.random.default_rng(3)
    items = [f"i{n}" for n in range(15)]
    logs = [
        (f"u{u}", [(C if rng.random() < 0.3 else P, str(rng.choice(items)), 1_000 * k) for k in range(5)])
        for u in range(25)
    ]
    split = leave_last_out("b", logs)
    split.items[:] = items + [i for i in split.items if i not in items]
    m = Matrix.from_split(split)
    n = len(m.items)
    live = sp.csr_matrix(rng.random((n, n)) * (rng.random((n, n)) < 0.3), dtype=np.float32)
    batch = sp.csr_matrix(rng.random((n, n)) * (rng.random((n, n)) < 0.3), dtype=np.float32)
    for exclude_seen in (True, False):
        scoring = ScoringSettings(exclude_seen=exclude_seen, repeat_blend=2.0)
        Q = seed_matrix(m, split, scoring).toarray()
        prefs = preference_matrix(m, split, scoring).toarray()
        for share, hr, ndcg in blend_results(m, split, batch, live, scoring, shares=(0.0, 0.3, 1.0), k=3):
            hits = gains = 0.0
            for user, wanted in split.targets.items():
                u = m.user_index[user]
                side = [
                    {
                        m.items[j]: Candidate(m.items[j], float(v))
                        for j, v in enumerate(Q[u] @ t.toarray())
                        if v > 0
                    }
                    for t in (live, batch)
                ]
                cands = blend(side[0], side[1], share)
                banned = set(split.exclude.get(user, ()))
                if exclude_seen:
                    banned |= {i for _, i, _ in split.train[user]}
                else:
                    pref = {m.items[j]: float(v) for j, v in enumerate(prefs[u]) if v > 0}
                    cands = add_repeats(cands, pref, {}, scoring.repeat_blend)
                ranked = [c.item_id for c in rank(cands.values(), 3, banned)]
                h, g = hit_and_gain(ranked, wanted, 3)
                hits, gains = hits + h, gains + g
            assert hr == pytest.approx(hits / len(split.targets)), (exclude_seen, share)
            assert ndcg == pytest.approx(gains / len(split.targets)), (exclude_seen, share)


def test_tune_grids_event_type_weights_only_where_the_data_has_those_types() -> None:
    from streamrec.trainer.tune import GRID, grid_for

    assert grid_for(chain_split()) == GRID  # purchases only
    mixed = Split("m", {"u": [(C, "a", 1), (P, "b", 2)]}, {}, {})
    assert grid_for(mixed) == {**GRID, "weight_add_to_cart": (3.0, 1.0)}
