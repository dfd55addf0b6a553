"""Offline evaluation's pure parts with known answers: file formats, splits, metrics, models, selection."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from streamrec.event_types import EventType
from streamrec.scoring import Candidate, blend
from streamrec.settings import ScoringSettings
from streamrec.trainer import models
from streamrec.trainer.models import Matrix
from streamrec.trainer.ranking_metrics import hit_and_gain, score_lists, table
from streamrec.trainer.splits import Split, leave_last_out, load_split
from streamrec.trainer.train import DEFAULT_CONFIGS, Config, fit, select, served_lists

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


@pytest.mark.parametrize("config", DEFAULT_CONFIGS, ids=lambda c: c.name)
def test_every_family_learns_a_chain(config: Config) -> None:
    split = chain_split()
    m = Matrix.from_split(split)
    lists = served_lists(m, split, fit(m, config), ScoringSettings())
    result = score_lists(config.name, lists, split.targets, len(split.items), 0.0)
    assert result.hr_at_10 == 1.0, config.name


def test_selection_happens_on_validation_and_picks_a_family() -> None:
    config, results, skipped = select(chain_split(), ScoringSettings())
    assert config in DEFAULT_CONFIGS and len(results) == len(DEFAULT_CONFIGS) and not skipped
    assert all(r.users == 60 for r in results)  # validation users, not test users


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
