"""``recommend.comparable``: scores of ranked candidates and popularity fill-ins made comparable before a
placement's boosts re-sort them (a new user's find: a boost put fill-ins above a shopper's own
recommendations, their decayed popularity being hundreds of times a co-occurrence score)."""

from __future__ import annotations

from streamrec.recommend import Ranked, comparable


def test_fill_ins_are_scaled_below_the_ranked_candidates_keeping_every_order_and_ratio() -> None:
    items = [
        Ranked("a", 0.25, "viewed together with x", "item_to_item"),
        Ranked("b", 0.20, "searched", "search"),
        Ranked("c", 60.0, "popular in books", "category_popular"),
        Ranked("d", 30.0, "popular in books", "category_popular"),
        Ranked("e", 90.0, "popular right now", "popular"),
    ]
    out = comparable(items)
    assert [i.item_id for i in out] == ["a", "b", "c", "d", "e"]
    scores = [i.score for i in out]
    assert scores[:2] == [0.25, 0.20]  # the ranked ones as they were
    assert scores == sorted(scores, reverse=True)  # each run below the one before
    assert abs(scores[2] - 0.20 * 0.99) < 1e-12 and abs(scores[3] / scores[2] - 0.5) < 1e-12  # ratios kept
    assert scores[4] < scores[3]
    # a boost ×1.5 on a fill-in no longer lifts it over every candidate: 1.5 × 0.198 > 0.25 is false
    assert 1.5 * scores[3] < scores[0]


def test_scores_already_in_order_and_a_single_source_are_left_as_they_are() -> None:
    popular = [
        Ranked("a", 9.0, "popular right now", "popular"),
        Ranked("b", 3.0, "popular right now", "popular"),
    ]
    assert comparable(popular) == popular
    mixed = [
        Ranked("a", 5.0, "viewed together with x", "item_to_item"),
        Ranked("b", 1.0, "popular in c", "category_popular"),
    ]
    assert comparable(mixed) == mixed
