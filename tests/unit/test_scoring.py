"""The scoring maths (``streamrec.scoring``) on inputs whose right answer is worked out by hand."""

from __future__ import annotations

import math

import pytest

from streamrec.scoring import (
    LN2,
    Candidate,
    HistoryEntry,
    decayed_value,
    history_seeds,
    log_add,
    log_weight,
    normalised_log_neighbours,
    normalised_neighbours,
    rank,
    score_personal,
    search_terms,
    trending_score,
)
from streamrec.settings import DAY_MS, HOUR_MS, ScoringSettings

NOW = 1_700_000_000_000  # epoch ms, the size of a real event time
FAST_HL = HOUR_MS
SLOW_HL = 7 * DAY_MS


# --- log space --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b"), [(0.0, 0.0), (1.0, 2.0), (2.0, 1.0), (-3.5, 4.25), (10.0, -10.0)])
def test_log_add_equals_log_of_sum_of_exponentials(a: float, b: float) -> None:
    assert log_add(a, b) == pytest.approx(math.log(math.exp(a) + math.exp(b)), rel=1e-12)


def test_log_add_with_an_empty_total_is_the_new_term() -> None:
    assert log_add(None, 3.25) == 3.25


def test_log_add_does_not_overflow_at_real_event_times() -> None:
    # an event now, in log space with a one-hour half-life: about 327,000, far past exp()'s range
    x = log_weight(1.0, NOW, FAST_HL)
    assert x > 300_000
    with pytest.raises(OverflowError):
        math.exp(x)
    assert log_add(x, x) == pytest.approx(x + LN2, abs=1e-9)
    y = log_weight(3.0, NOW, FAST_HL)
    assert log_add(x, y) == pytest.approx(x + math.log(4.0), abs=1e-9)
    assert log_add(x, x - 1000.0) == x  # a negligible term changes nothing and raises nothing
    assert math.isfinite(log_add(log_weight(5.0, NOW + 10 * DAY_MS, FAST_HL), x))


def test_log_weight_is_log_of_weight_times_two_to_the_time_over_halflife() -> None:
    assert log_weight(3.0, 2 * HOUR_MS, HOUR_MS) == pytest.approx(math.log(3.0 * 4.0))


def test_decayed_value_halves_after_one_halflife() -> None:
    x = log_weight(8.0, NOW, SLOW_HL)
    assert decayed_value(x, NOW, SLOW_HL) == pytest.approx(8.0, rel=1e-9)
    assert decayed_value(x, NOW + SLOW_HL, SLOW_HL) == pytest.approx(4.0, rel=1e-9)
    assert decayed_value(x, NOW + 3 * SLOW_HL, SLOW_HL) == pytest.approx(1.0, rel=1e-9)


def test_decayed_totals_add_up_across_times() -> None:
    # 2 at NOW, 4 one half-life later: at the later time the total is 2/2 + 4 = 5
    total = log_add(log_weight(2.0, NOW, SLOW_HL), log_weight(4.0, NOW + SLOW_HL, SLOW_HL))
    assert decayed_value(total, NOW + SLOW_HL, SLOW_HL) == pytest.approx(5.0, rel=1e-9)


# --- trending ---------------------------------------------------------------------------------------


def _steady_log(rate_per_hour: float, now: int, halflife: float, span_ms: float) -> float:
    """Log-space total of evenly spaced unit events at ``rate_per_hour`` over ``span_ms`` up to ``now``.

    The geometric sum is closed-form, so a long history costs nothing to build.
    """
    dt = HOUR_MS / rate_per_hour
    n = int(span_ms / dt)
    q = 2.0 ** (-dt / halflife)
    total_at_now = (1.0 - q**n) / (1.0 - q)
    return math.log(total_at_now) + now * LN2 / halflife


def _events_log(times: list[int], halflife: float) -> float:
    total: float | None = None
    for t in times:
        total = log_add(total, log_weight(1.0, t, halflife))
    assert total is not None
    return total


def test_trending_of_a_single_event_now_with_no_history_is_the_fast_rate() -> None:
    # one event of weight 1 now, one-hour half-life: rate = ln2 per hour; no slow total: divided by sqrt(1)
    fast = log_weight(1.0, NOW, FAST_HL)
    assert trending_score(fast, None, NOW, FAST_HL, SLOW_HL) == pytest.approx(LN2, rel=1e-9)


def test_steady_item_trends_near_zero_and_a_burst_outranks_it() -> None:
    span = 100 * SLOW_HL  # long enough that both averages have settled
    steady = trending_score(
        _steady_log(500, NOW, FAST_HL, span), _steady_log(500, NOW, SLOW_HL, span), NOW, FAST_HL, SLOW_HL
    )
    assert abs(steady) < 0.1

    burst_times = [NOW - k * 12 * 60_000 for k in range(5)]  # 0 before, then 5 in the last hour
    burst = trending_score(
        _events_log(burst_times, FAST_HL), _events_log(burst_times, SLOW_HL), NOW, FAST_HL, SLOW_HL
    )
    assert burst > 2.0
    assert burst > steady + 2.0


def test_a_small_drift_on_a_big_item_scores_less_than_a_burst_from_nothing() -> None:
    span = 100 * SLOW_HL
    # 500/h for ever, then 505/h: the fast average sees 505, the slow one about 500
    drift = trending_score(
        _steady_log(505, NOW, FAST_HL, span), _steady_log(500, NOW, SLOW_HL, span), NOW, FAST_HL, SLOW_HL
    )
    assert 0.0 < drift < 0.5
    burst_times = [NOW - k * 12 * 60_000 for k in range(5)]
    burst = trending_score(
        _events_log(burst_times, FAST_HL), _events_log(burst_times, SLOW_HL), NOW, FAST_HL, SLOW_HL
    )
    assert burst > drift


def test_a_fading_item_trends_negative() -> None:
    times = [NOW - 10 * HOUR_MS - k * 60_000 for k in range(20)]
    assert trending_score(_events_log(times, FAST_HL), _events_log(times, SLOW_HL), NOW, FAST_HL, SLOW_HL) < 0


# --- search terms -----------------------------------------------------------------------------------


def test_search_terms_whole_query_first_then_words() -> None:
    assert search_terms("Red Shoes") == ["red shoes", "red", "shoes"]


def test_search_terms_case_and_unicode_are_normalised() -> None:
    # full-width letters and an ideographic space (NFKC), and casefold (ß -> ss)
    assert search_terms("ＲＥＤ\u3000Ｓｈｏｅｓ") == ["red shoes", "red", "shoes"]
    assert search_terms("STRASSE") == search_terms("Straße") == ["strasse"]


def test_search_terms_split_on_punctuation() -> None:
    assert search_terms("  red-shoes, size 42!  ") == ["red shoes size 42", "red", "shoes", "size", "42"]


def test_search_terms_drop_repeats_and_one_letter_words() -> None:
    assert search_terms("shoes SHOES shoes") == ["shoes shoes shoes", "shoes"]
    assert search_terms("shoes") == ["shoes"]  # the whole query and its one word are the same term
    assert search_terms("a b cd") == ["a b cd", "cd"]


def test_search_terms_max_terms_and_length() -> None:
    assert search_terms("one two three four five six seven", max_terms=3) == [
        "one two three four five six seven",
        "one",
        "two",
    ]
    assert len(search_terms("one two three four five six seven eight")) == 6
    assert search_terms("x" * 100 + " yy", max_len=10) == ["x" * 10, "yy"]


def test_search_terms_of_punctuation_only_is_empty() -> None:
    assert search_terms("!!! ... ???") == []
    assert search_terms("") == []


# --- neighbours -------------------------------------------------------------------------------------


def test_normalised_neighbours_alpha_half_is_cosine() -> None:
    raw = {"b": 6.0, "c": 2.0}
    counts = {"b": 4.0, "c": 16.0}
    out = normalised_neighbours(raw, counts, anchor_count=9.0, alpha=0.5)
    assert out["b"] == pytest.approx(6.0 / math.sqrt(9.0 * 4.0))
    assert out["c"] == pytest.approx(2.0 / math.sqrt(9.0 * 16.0))


def test_normalised_neighbours_alpha_one_divides_by_the_neighbours_count_only() -> None:
    out = normalised_neighbours({"b": 6.0}, {"b": 4.0}, anchor_count=9.0, alpha=1.0)
    assert out["b"] == pytest.approx(1.5)


def test_normalised_neighbours_missing_or_small_counts_count_as_one() -> None:
    out = normalised_neighbours({"b": 3.0, "c": 3.0}, {"c": 0.25}, anchor_count=0.0, alpha=0.5)
    assert out == {"b": pytest.approx(3.0), "c": pytest.approx(3.0)}


@pytest.mark.parametrize("shrinkage", [0.0, 2.0])
@pytest.mark.parametrize("anchor_log", [None, math.log(9.0)])
def test_normalised_log_neighbours_is_decay_then_normalise_to_the_last_bit(
    shrinkage: float, anchor_log: float | None
) -> None:
    hl = 3 * DAY_MS
    rate = LN2 / hl
    raw = {"b": math.log(6.0) + NOW * rate, "c": math.log(2.0) + (NOW - DAY_MS) * rate, "gone": 1.0}
    counts = {"a": anchor_log, "b": math.log(4.0) + NOW * rate, "c": math.log(0.5) + NOW * rate, "gone": None}
    out = normalised_log_neighbours(raw, counts, "a", NOW + HOUR_MS, hl, 0.7, shrinkage)
    live = {i: decayed_value(w, NOW + HOUR_MS, hl) for i, w in raw.items() if counts[i] is not None}
    decayed = {i: decayed_value(c, NOW + HOUR_MS, hl) for i, c in counts.items() if c is not None}
    assert out == normalised_neighbours(live, decayed, decayed.get("a", 1.0), 0.7, shrinkage)  # exactly
    assert set(out) == {"b", "c"}  # a neighbour with no activity left is left out


# --- personal scoring -------------------------------------------------------------------------------


def test_history_seeds_weigh_by_position_and_type_and_ignore_removals() -> None:
    weights = ScoringSettings().type_weights()  # view 1, cart 3, remove -1, purchase 5
    history = [  # newest first
        HistoryEntry("x", 4, "view"),
        HistoryEntry("y", 3, "purchase"),
        HistoryEntry("z", 2, "remove_from_cart"),
        HistoryEntry("x", 1, "add_to_cart"),
    ]
    seeds = history_seeds(history, used=10, position_decay=0.5, type_weights=weights)
    assert seeds == {"x": pytest.approx(1.0 + 3.0 * 0.125), "y": pytest.approx(5.0 * 0.5)}


def test_history_seeds_use_only_the_newest_entries() -> None:
    history = [HistoryEntry("x", 3, "view"), HistoryEntry("y", 2, "view"), HistoryEntry("z", 1, "purchase")]
    assert history_seeds(
        history, used=2, position_decay=0.5, type_weights={"view": 1.0, "purchase": 5.0}
    ) == {
        "x": pytest.approx(1.0),
        "y": pytest.approx(0.5),
    }


def test_history_seeds_follow_event_time_not_list_order() -> None:
    # issue 26: x1 viewed a minute ago, then a view of x0 stamped 20 h ago arrived (listed first)
    now = 100 * DAY_MS
    late_first = [HistoryEntry("x0", now - 20 * HOUR_MS, "view"), HistoryEntry("x1", now - 60_000, "view")]
    seeds = history_seeds(late_first, 10, 0.7, {"view": 1.0})
    assert list(seeds) == ["x1", "x0"] and seeds == {"x1": pytest.approx(1.0), "x0": pytest.approx(0.7)}
    aged = history_seeds(late_first, 10, 0.7, {"view": 1.0}, now, 20 * HOUR_MS)
    assert aged["x1"] == pytest.approx(0.5 ** (60_000 / (20 * HOUR_MS)))
    assert aged["x0"] == pytest.approx(0.7 * 0.5)  # one step back in event time, one half-life old
    # only the newest by event time are used, whatever the order they are listed in
    many = [HistoryEntry(f"old{n}", now - DAY_MS - n, "view") for n in range(10)]
    assert set(history_seeds([*many, HistoryEntry("new", now, "view")], 2, 0.5, {})) == {"new", "old0"}


def test_history_seeds_count_a_future_ts_as_now() -> None:
    seeds = history_seeds([HistoryEntry("x", 2 * DAY_MS, "view")], 10, 0.5, {}, DAY_MS, HOUR_MS)
    assert seeds == {"x": pytest.approx(1.0)}


def test_history_seeds_unknown_type_weighs_one() -> None:
    assert history_seeds([HistoryEntry("x", 1, "wishlist")], 10, 0.5, {}) == {"x": pytest.approx(1.0)}


def test_score_personal_blends_neighbours_and_searches_with_reasons() -> None:
    out = score_personal(
        seeds={"a": 2.0},
        seed_types={"a": "purchase"},
        neighbours={"a": {"x": 0.5, "y": 0.25}},
        term_items={"shoes": {"x": 3.0, "z": 1.0}, "red": {"z": 10.0}},
        search_blend=0.5,
    )
    assert set(out) == {"x", "y", "z"}
    # x: 2 * 0.5 from the neighbour, 0.5 * 3/4 from 'shoes'; the neighbour is the stronger reason
    assert out["x"].score == pytest.approx(1.0 + 0.375)
    assert (out["x"].reason, out["x"].source) == ("bought together with a", "item_to_item")
    assert out["y"].score == pytest.approx(0.5)
    # z: 0.5 * 1/4 from 'shoes' and 0.5 * 10/10 from 'red': each term sums to one, so 'red' is worth more
    assert out["z"].score == pytest.approx(0.125 + 0.5)
    assert (out["z"].reason, out["z"].source) == ("matches your search 'red'", "search")


def test_score_personal_reason_follows_the_seed_type() -> None:
    neighbours = {"a": {"x": 1.0}, "b": {"y": 1.0}, "c": {"z": 1.0}}
    out = score_personal(
        {"a": 1.0, "b": 1.0, "c": 1.0}, {"a": "view", "b": "add_to_cart"}, neighbours, {}, 0.5
    )
    assert out["x"].reason == "viewed together with a"
    assert out["y"].reason == "often added to cart with b"
    assert out["z"].reason == "viewed together with c"  # unknown seed type reads as a view


def test_score_personal_skips_terms_and_items_without_positive_weight() -> None:
    out = score_personal({}, {}, {}, {"zero": {"x": 0.0}, "mixed": {"y": 2.0, "z": -1.0}}, search_blend=1.0)
    assert set(out) == {"y"}
    assert out["y"].score == pytest.approx(1.0)


def test_score_personal_a_seed_without_neighbours_gives_nothing() -> None:
    assert score_personal({"a": 1.0}, {"a": "view"}, {}, {}, 0.5) == {}


# --- ranking ----------------------------------------------------------------------------------------


def _cands(**scores: float) -> list[Candidate]:
    return [Candidate(item, score) for item, score in scores.items()]


def test_rank_orders_by_score_then_id() -> None:
    ranked = rank(_cands(d=1.0, b=2.0, c=2.0, a=1.0), k=10, exclude=set())
    assert [c.item_id for c in ranked] == ["b", "c", "a", "d"]


def test_rank_takes_k_and_drops_excluded_disallowed_and_non_positive() -> None:
    cands = _cands(a=5.0, b=4.0, c=3.0, d=2.0, e=0.0, f=-1.0)
    assert [c.item_id for c in rank(cands, k=2, exclude=set())] == ["a", "b"]
    assert [c.item_id for c in rank(cands, k=10, exclude={"a", "c"})] == ["b", "d"]
    assert [c.item_id for c in rank(cands, k=10, exclude={"a"}, allowed={"a", "c", "e"})] == ["c"]
    assert rank(cands, k=10, exclude=set(), allowed=set()) == []
