"""The state scripts and readers against a real Redis, and the recommender on top, with known answers.

Each test writes under its own random key prefix, so tests never see each other's state.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count

import pytest
import redis

from streamrec.contract import MIN_TS_MS, CatalogItem, Event
from streamrec.event_types import EventType
from streamrec.fold import StateWriter
from streamrec.keys import Keys
from streamrec.recommend import Answer, Recommender
from streamrec.scoring import normalised_neighbours
from streamrec.settings import DAY_MS, ScoringSettings
from streamrec.state import StateReader
from tests.state_snapshot import snapshot

pytestmark = pytest.mark.redis

T0 = int(time.time() * 1000) - 30 * DAY_MS  # old enough that every offset below stays in the past
_ids = count()


def ev(kind: str, user: str, item: str | None = None, ts: int = T0, query: str | None = None) -> Event:
    return Event(
        event_id=f"e{next(_ids)}-{uuid.uuid4().hex[:6]}",
        type=EventType(kind),
        user_id=user,
        item_id=item,
        query=query,
        ts=ts,
    )


@dataclass
class World:
    client: redis.Redis
    keys: Keys
    scoring: ScoringSettings
    writer: StateWriter
    reader: StateReader

    def apply(self, *events: Event) -> None:
        self.writer.apply(list(events))

    def views(self, user: str, *items: str, ts: int = T0, step: int = 1000) -> None:
        """``user`` views ``items`` in turn, ``step`` ms apart."""
        self.writer.apply([ev("view", user, item, ts + i * step) for i, item in enumerate(items)])

    def nbr(self, item: str) -> dict[str, float]:
        """The item's stored neighbours with their co-occurrence (decayed to T0: undecayed here, as the
        world's half-life is centuries)."""
        return self.reader.neighbours([item], 1000, T0)[item]

    def counts(self, *items: str) -> dict[str, float]:
        return self.reader.counts(list(items), T0)

    def recommender(self) -> Recommender:
        return Recommender(self.reader, self.scoring)


NO_DECAY = {"cooc_halflife_ms": 10**15}  # co-occurrence and counts that keep their values (exact weights)


def make_world(client: redis.Redis, scoring: ScoringSettings | None = None) -> World:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    # plain cosine (no shrinkage) unless a test says otherwise: the known answers below are its maths
    s = scoring or ScoringSettings(**NO_DECAY, neighbour_shrinkage=0.0)
    return World(client, keys, s, StateWriter(client, keys, s), StateReader(client, keys, s))


@pytest.fixture
def world(redis_client: redis.Redis) -> Iterator[World]:
    w = make_world(redis_client)
    yield w
    for key in redis_client.scan_iter(match=w.keys.pattern(), count=1000):
        redis_client.delete(key)


# --- co-occurrence ----------------------------------------------------------------------------------


def test_cooccurrence_of_a_sequence_is_order_and_distance_weighted(world: World) -> None:
    back = world.scoring.cooc_backward_weight  # the reverse direction's weight (0.3 by default)
    world.views("u", "a", "b", "c")
    assert world.nbr("a") == {"b": pytest.approx(1.0), "c": pytest.approx(0.7)}
    assert world.nbr("b") == {"a": pytest.approx(back), "c": pytest.approx(1.0)}
    assert world.nbr("c") == {"b": pytest.approx(back), "a": pytest.approx(back * 0.7)}
    assert world.counts("a", "b", "c", "zz") == pytest.approx({"a": 1.0, "b": 1.0, "c": 1.0})


def test_cooccurrence_window_pairs_only_the_last_actions(world: World) -> None:
    # the default window is 5 previous actions: the 7th item pairs with items 2..6, not item 1
    world.views("u", "i1", "i2", "i3", "i4", "i5", "i6", "i7")
    assert set(world.nbr("i7")) == {"i2", "i3", "i4", "i5", "i6"}
    assert world.nbr("i2")["i7"] == pytest.approx(0.7**4)


def test_a_consecutive_repeat_adds_no_pairs(world: World) -> None:
    world.views("u", "a", "b")
    before = (world.nbr("a"), world.nbr("b"))
    world.views("u", "b", ts=T0 + 5000)
    assert (world.nbr("a"), world.nbr("b")) == before
    assert world.counts("b") == pytest.approx({"b": 2.0})


def test_an_item_seen_twice_in_the_window_pairs_once_with_the_nearest(world: World) -> None:
    world.views("u", "a", "b", "a")
    # third event (a) pairs with b at distance 1 only; the older a is itself
    back = world.scoring.cooc_backward_weight
    assert world.nbr("b") == {"a": pytest.approx(1.0 + back)}
    assert world.nbr("a") == {"b": pytest.approx(1.0 + back)}


def test_actions_further_apart_than_the_max_gap_are_not_paired(world: World) -> None:
    gap = world.scoring.cooc_max_gap_ms
    world.apply(ev("view", "u", "a", T0), ev("view", "u", "b", T0 + gap + 1))
    assert world.nbr("a") == {} and world.nbr("b") == {}
    world.apply(ev("view", "v", "a", T0), ev("view", "v", "c", T0 + gap))
    assert world.nbr("a") == {"c": pytest.approx(1.0)}


@pytest.mark.parametrize("shrinkage", [0.0, 100.0])
def test_neighbour_lists_stay_bounded_and_keep_the_best_normalised(
    redis_client: redis.Redis, shrinkage: float
) -> None:
    scoring = ScoringSettings(neighbours_max=5, neighbours_slack=2, neighbour_shrinkage=shrinkage, **NO_DECAY)
    w = make_world(redis_client, scoring)
    try:
        # 'pop' co-occurs with the hub twice (the largest raw weight) but is viewed by everyone
        w.apply(*[ev("view", "fan", "pop", T0 + i) for i in range(100)])  # consecutive repeats: counts only
        # a1..a7 co-occur once each; a_k has k - 1 extra views, so its normalised weight falls with k
        for k in range(1, 8):
            w.apply(*[ev("view", f"fan{k}", f"a{k}", T0 + i) for i in range(k - 1)])
        w.views("p1", "hub", "pop", ts=T0 + 10_000)
        w.views("p2", "hub", "pop", ts=T0 + 20_000)
        for k in range(1, 7):
            w.views(f"v{k}", "hub", f"a{k}", ts=T0 + 30_000 + k * 10_000)
        assert len(w.nbr("hub")) == 7  # at the bound plus slack: no trim yet
        w.views("v7", "hub", "a7", ts=T0 + 200_000)  # the 8th neighbour triggers a trim down to 5
        kept = w.nbr("hub")
        # the order the API ranks in (scoring.normalised_neighbours) decides who stays
        counts = w.reader.counts(sorted({"hub", "pop", *(f"a{k}" for k in range(1, 8))}), T0 + 200_000)
        raw = {"pop": 2.0, **{f"a{k}": 1.0 for k in range(1, 8)}}
        ranked = normalised_neighbours(raw, counts, counts["hub"], scoring.popularity_alpha, shrinkage)
        best = sorted(ranked, key=lambda m: (-ranked[m], m))[:5]
        assert set(kept) == set(best)
        if shrinkage == 0:  # plain cosine: a single co-occurrence with a rarely seen item beats the hub's 2
            assert set(kept) == {"a1", "a2", "a3", "a4", "a5"}
        else:  # shrunk: two co-occurrences with a popular item beat a single one with a rare item
            assert "pop" in kept and "a5" not in kept
        assert all(v == pytest.approx(raw[m]) for m, v in kept.items())

        for j in range(30):
            w.views(f"x{j}", "hub", f"b{j:02d}", ts=T0 + 300_000 + j * 10_000)
            assert 5 <= len(w.nbr("hub")) <= 7
    finally:
        for key in redis_client.scan_iter(match=w.keys.pattern(), count=1000):
            redis_client.delete(key)


# --- idempotence and bookkeeping --------------------------------------------------------------------


def test_applying_the_same_batch_twice_changes_nothing(world: World) -> None:
    batch = [
        ev("search", "u", query="Red Shoes", ts=T0),
        ev("view", "u", "a", T0 + 1000),
        ev("add_to_cart", "u", "b", T0 + 2000),
        ev("remove_from_cart", "u", "b", T0 + 3000),
        ev("purchase", "u", "a", T0 + 4000),
        ev("view", "v", "b", T0 + 5000),
    ]
    first = world.writer.apply(batch)
    assert (first.applied, first.duplicates) == (6, 0)
    state = snapshot(world.client, world.keys.pattern())
    again = world.writer.apply(batch)
    assert (again.applied, again.duplicates) == (0, 6)
    assert snapshot(world.client, world.keys.pattern()) == state


def test_a_duplicate_inside_one_batch_is_applied_once(world: World) -> None:
    e = ev("view", "u", "a")
    result = world.writer.apply([e, e])
    assert (result.applied, result.duplicates) == (1, 1)
    assert world.counts("a") == pytest.approx({"a": 1.0})
    assert world.reader.stats() == {"applied:view": 1}


def test_purchases_land_in_bought(world: World) -> None:
    world.apply(
        ev("view", "u", "a", T0), ev("purchase", "u", "b", T0 + 1000), ev("add_to_cart", "u", "c", T0 + 2000)
    )
    user = world.reader.user("u", T0 + 2000)
    assert user.bought == {"b"}
    assert world.client.zscore(world.keys.bought("u"), "b") == T0 + 1000
    assert [(h.item_id, h.type) for h in user.history] == [
        ("c", "add_to_cart"),
        ("b", "purchase"),
        ("a", "view"),
    ]


def test_preferences_are_type_weighted(world: World) -> None:
    world.apply(ev("view", "u", "a"), ev("add_to_cart", "u", "b"), ev("purchase", "u", "c"))
    prefs = world.reader.user("u", T0).preferences
    assert prefs == {"a": pytest.approx(1.0), "b": pytest.approx(3.0), "c": pytest.approx(5.0)}


def test_remove_from_cart_lowers_preference(world: World) -> None:
    world.apply(ev("add_to_cart", "u", "a", T0), ev("remove_from_cart", "u", "a", T0))
    assert world.reader.user("u", T0).preferences == {"a": pytest.approx(2.0)}
    # removing what is left takes the item out entirely
    world.apply(ev("remove_from_cart", "u", "a", T0), ev("remove_from_cart", "u", "a", T0))
    assert world.reader.user("u", T0).preferences == {}


def test_remove_from_cart_is_no_cooccurrence_and_no_popularity(world: World) -> None:
    world.apply(ev("view", "u", "a", T0), ev("remove_from_cart", "u", "b", T0 + 1000))
    assert world.nbr("a") == {} and world.nbr("b") == {}
    assert [i for i, _ in world.reader.popular(10, T0)] == ["a"]
    assert world.counts("b") == {}
    assert [h.item_id for h in world.reader.user("u", T0).history] == ["a"]


def test_search_then_action_within_the_window_credits_the_terms(world: World) -> None:
    window = world.scoring.search_window_ms
    world.apply(ev("search", "u", query="Red Shoes!", ts=T0), ev("view", "u", "x", T0 + window))
    world.apply(ev("search", "v", query="Red Shoes", ts=T0), ev("purchase", "v", "y", T0 + 60_000))
    world.apply(ev("search", "w", query="blue hat", ts=T0), ev("view", "w", "z", T0 + window + 1))
    assert world.reader.term_items(["red shoes", "red", "shoes", "blue hat", "blue", "hat"], 10) == {
        "red shoes": {"y": 5.0, "x": 1.0},
        "red": {"y": 5.0, "x": 1.0},
        "shoes": {"y": 5.0, "x": 1.0},
    }
    assert world.reader.user("u", T0).searches == [(T0, ["red shoes", "red", "shoes"])]


def test_an_action_before_the_search_is_not_credited(world: World) -> None:
    world.apply(ev("view", "u", "x", T0), ev("search", "u", query="hat", ts=T0 + 1000))
    assert world.reader.term_items(["hat"], 10) == {}


def test_popularity_halves_per_halflife(world: World) -> None:
    hl = world.scoring.popularity_halflife_ms
    world.apply(ev("view", "u", "old", T0 - hl), ev("view", "v", "new", T0))
    assert dict(world.reader.popular(10, T0)) == {"new": pytest.approx(1.0), "old": pytest.approx(0.5)}


def test_popularity_is_type_weighted_and_per_category(world: World) -> None:
    world.writer.upsert_items(
        [
            CatalogItem(item_id="h1", category="hats", ts=MIN_TS_MS),
            CatalogItem(item_id="s1", category="shoes", ts=MIN_TS_MS),
        ]
    )
    world.apply(ev("view", "u", "h1", T0), ev("purchase", "v", "s1", T0), ev("view", "w", "nocat", T0))
    assert dict(world.reader.popular(10, T0)) == {
        "s1": pytest.approx(5.0),
        "h1": pytest.approx(1.0),
        "nocat": pytest.approx(1.0),
    }
    assert dict(world.reader.popular(10, T0, "hats")) == {"h1": pytest.approx(1.0)}
    assert world.reader.popular(10, T0, "toys") == []


def test_trending_prefers_a_fresh_burst_over_old_steady_interest(world: World) -> None:
    hour = 3_600_000
    world.apply(*[ev("view", f"o{i}", "steady", T0 - 6 * DAY_MS + i * hour) for i in range(144)])
    world.apply(*[ev("view", f"n{i}", "burst", T0 - i * 60_000) for i in range(6)])
    ranked = world.reader.trending(10, T0)
    assert [item for item, _ in ranked] == ["burst", "steady"]
    assert ranked[0][1] > 10 * ranked[1][1]


def test_catalog_upsert_ignores_an_older_record(world: World) -> None:
    new = CatalogItem(item_id="a", title="new", category="shoes", price=10.0, ts=MIN_TS_MS + 2000)
    old = CatalogItem(
        item_id="a", title="old", category="hats", price=1.0, in_stock=False, ts=MIN_TS_MS + 1000
    )
    assert world.writer.upsert_items([new]) == 1
    assert world.writer.upsert_items([old]) == 0
    record = world.reader.catalog(["a", "missing"])
    assert list(record) == ["a"]
    assert (record["a"]["title"], record["a"]["category"], record["a"]["price"], record["a"]["in_stock"]) == (
        "new",
        "shoes",
        "10.0",
        "1",
    )
    newer = CatalogItem(
        item_id="a", title="newer", in_stock=False, attributes={"size": 42}, ts=MIN_TS_MS + 3000
    )
    assert world.writer.upsert_items([newer]) == 1
    record = world.reader.catalog(["a"])["a"]
    assert (record["title"], record["in_stock"], record["attributes"], record["price"]) == (
        "newer",
        "0",
        '{"size":42}',
        "",
    )
    assert world.reader.stats() == {"items": 1}


def test_user_keys_expire(world: World) -> None:
    world.apply(
        ev("search", "u", query="hat", ts=T0), ev("purchase", "u", "a", T0 + 1), ev("view", "u", "b", T0 + 2)
    )
    ttl = world.scoring.user_ttl_s
    k = world.keys
    for key in (k.history("u"), k.prefs("u"), k.bought("u"), k.searches("u")):
        assert 0 < world.client.ttl(key) <= ttl, key
    assert 0 < world.client.ttl(k.term("hat")) <= world.scoring.term_ttl_s
    # an item's activity and neighbours leave once it has had no event for item_ttl
    for key in (k.activity("a"), k.activity("b"), k.neighbours("a")):
        assert 0 < world.client.ttl(key) <= world.scoring.item_ttl_s, key
    assert world.client.ttl(k.catalog("a")) == -2  # no record: a catalog record never expires on its own


def test_an_event_from_the_future_weighs_as_if_it_happened_now(world: World) -> None:
    """The state's clock never runs ahead of the wall clock: decay uses min(ts, wall clock at fold)."""
    now = int(time.time() * 1000)
    hour = 3_600_000
    world.apply(ev("view", "early", "ahead", now + 10 * hour), ev("view", "ok", "normal", now))
    trend = dict(world.reader.trending(10, now + 1000))
    assert trend["ahead"] == pytest.approx(trend["normal"], rel=1e-3)
    pop = dict(world.reader.popular(10, now + 1000))
    assert pop["ahead"] == pytest.approx(pop["normal"], rel=1e-3)


def test_item_ids_with_separators_survive_history(world: World) -> None:
    world.views("u", "a|b|1", "plain")
    assert [h.item_id for h in world.reader.user("u", T0).history] == ["plain", "a|b|1"]
    assert world.nbr("a|b|1") == {"plain": pytest.approx(1.0)}


# --- the recommender --------------------------------------------------------------------------------


def shop(w: World) -> None:
    """A small shop whose answers are known.

    shoes: a, b, c, d, e (e out of stock); hats: f, g. Five shoppers each view a and then one of b..f;
    b has three more views (so it is more popular, and normalises lower); g is viewed after a 'wool hat' search.
    """
    w.writer.upsert_items(
        [
            CatalogItem(item_id=i, title=f"Item {i}", category="shoes", price=10.0, ts=MIN_TS_MS)
            for i in "abcd"
        ]
        + [CatalogItem(item_id="e", title="Item e", category="shoes", in_stock=False, ts=MIN_TS_MS)]
        + [CatalogItem(item_id=i, title=f"Item {i}", category="hats", price=5.0, ts=MIN_TS_MS) for i in "fg"]
    )
    for n, item in enumerate("bcdef"):
        w.views(f"u{n}", "a", item, ts=T0 + n * 10_000)
    w.apply(*[ev("view", "bfan", "b", T0 + 100_000 + i) for i in range(3)])
    w.apply(ev("search", "t", query="Wool hat", ts=T0 + 200_000), ev("view", "t", "g", T0 + 201_000))


def ids(answer: Answer) -> list[str]:
    return [r.item_id for r in answer.items]


def test_personal_recommendations_rank_neighbours_and_exclude_seen(world: World) -> None:
    shop(world)
    world.views("me", "a", ts=T0 + 300_000)
    answer = world.recommender().for_user("me", 4)
    # c, d, f co-occur with a once each (the newest pair weighs a hair more: forward decay); b as often but
    # three times as popular; e is out of stock
    assert ids(answer) == ["f", "d", "c", "b"]
    assert answer.strategy == "personalized"
    assert {r.source for r in answer.items} == {"item_to_item"}
    assert answer.items[0].reason == "viewed together with a"
    n_a = world.counts("a")["a"]
    # the seed's weight: one view, halved per preference half-life of its age (a month here)
    age = time.time() * 1000 - (T0 + 300_000)
    seed = 0.5 ** (age / world.scoring.preference_halflife_ms)
    assert answer.items[0].score == pytest.approx(seed / math.sqrt(n_a))
    assert answer.items[3].score == pytest.approx(seed / math.sqrt(n_a * 4.0))
    assert answer.catalog["c"]["title"] == "Item c"


def test_personal_recommendations_respect_category_and_exclude(world: World) -> None:
    shop(world)
    world.views("me", "a", ts=T0 + 300_000)
    rec = world.recommender()
    assert ids(rec.for_user("me", 3, exclude=["c", "f"])) == ["d", "b", "g"]
    hats = rec.for_user("me", 3, category="hats")
    assert ids(hats) == ["f", "g"]  # f from a's neighbours, then g, popular in hats; nothing else is a hat
    assert [r.source for r in hats.items] == ["item_to_item", "category_popular"]


def test_personal_recommendations_exclude_purchases_even_when_seen_items_are_allowed(
    redis_client: redis.Redis,
) -> None:
    w = make_world(redis_client, ScoringSettings(exclude_seen=False))
    try:
        shop(w)
        w.apply(ev("view", "me", "a", T0 + 300_000), ev("purchase", "me", "c", T0 + 301_000))
        got = ids(w.recommender().for_user("me", 10))
        assert "c" not in got  # bought
        assert "a" in got  # seen, neighbour of c, and allowed with exclude_seen off
        assert "e" not in got  # out of stock
    finally:
        for key in redis_client.scan_iter(match=w.keys.pattern(), count=1000):
            redis_client.delete(key)


def test_personal_recommendations_exclude_purchases_and_seen_by_default(world: World) -> None:
    shop(world)
    world.apply(ev("view", "me", "a", T0 + 300_000), ev("purchase", "me", "c", T0 + 301_000))
    got = ids(world.recommender().for_user("me", 10))
    assert not {"a", "c", "e"} & set(got)
    assert set(got) == {"b", "d", "f", "g"}


def test_search_only_user_gets_items_that_followed_the_search_then_category_popular(world: World) -> None:
    shop(world)
    world.apply(ev("search", "s", query="WOOL  hat", ts=T0 + 400_000))
    answer = world.recommender().for_user("s", 3)
    assert ids(answer) == ["g", "f", "a"]
    assert answer.strategy == "personalized"
    assert [r.source for r in answer.items] == ["search", "category_popular", "popular"]
    assert answer.items[0].reason == "matches your search 'wool hat'"
    assert answer.items[1].reason == "popular in hats"


def test_unknown_user_gets_popular(world: World) -> None:
    shop(world)
    answer = world.recommender().for_user("nobody", 3)
    assert answer.strategy == "popular"
    assert ids(answer) == ["a", "b", "g"]  # a viewed 5 times, b 4, then the single views, the newest first
    assert {r.reason for r in answer.items} == {"popular right now"}


def test_empty_state_answers_empty(world: World) -> None:
    answer = world.recommender().for_user("nobody", 3)
    assert (answer.strategy, answer.items) == ("empty", [])


def test_similar_normalises_by_popularity_and_excludes_the_item(world: World) -> None:
    shop(world)
    answer = world.recommender().similar("a", 4)
    assert ids(answer) == ["f", "d", "c", "b"]
    n_a = world.counts("a")["a"]
    assert [r.score for r in answer.items] == pytest.approx(
        [1 / math.sqrt(n_a)] * 3 + [1 / math.sqrt(n_a * 4)]
    )
    assert "a" not in ids(world.recommender().similar("a", 20))


def test_similar_with_a_user_excludes_what_they_bought(world: World) -> None:
    shop(world)
    world.apply(ev("purchase", "buyer", "d", T0 + 500_000))
    assert ids(world.recommender().similar("a", 3, user_id="buyer")) == ["f", "c", "b"]


def test_popular_in_a_category_skips_out_of_stock(world: World) -> None:
    shop(world)
    rec = world.recommender()
    # a: 5 views, b: 4, then single views, the newest first (decay favours recent ones); e is out of stock
    assert ids(rec.popular(10, "shoes")) == ["a", "b", "d", "c"]
    assert ids(rec.popular(10, "hats")) == ["g", "f"]
    assert ids(rec.popular(3)) == ["a", "b", "g"]
    assert rec.popular(3).strategy == "popular"
    assert rec.popular(3, "shoes").strategy == "category_popular"


def test_a_late_event_far_older_than_the_history_is_not_paired(world: World) -> None:
    gap = world.scoring.cooc_max_gap_ms
    world.apply(ev("view", "u", "b", T0 + gap + 60_000))
    world.apply(ev("view", "u", "a", T0))  # delivered late: happened more than max_gap before b
    assert world.nbr("a") == {} and world.nbr("b") == {}


def test_similar_finds_the_best_normalised_neighbours_beyond_the_raw_top_50(world: World) -> None:
    # 55 popular items co-occur with 'a' twice each (raw 2, seen 16 times: normalised 2/4 = 0.5 per sqrt(n_a));
    # 5 rare items co-occur once (raw 1, seen once: normalised 1 per sqrt(n_a)), so they should lead
    events = []
    for j in range(55):
        events += [ev("view", f"fan{j}", f"p{j:02d}", T0 + i) for i in range(14)]
        for rep in range(2):
            events += [
                ev("view", f"u{j}-{rep}", "a", T0 + 1000),
                ev("view", f"u{j}-{rep}", f"p{j:02d}", T0 + 2000),
            ]
    for j in range(5):
        events += [ev("view", f"r{j}", "a", T0 + 1000), ev("view", f"r{j}", f"rare{j}", T0 + 2000)]
    world.writer.apply(events)
    assert len(world.nbr("a")) == 60
    assert world.counts("p00", "rare0") == pytest.approx({"p00": 16.0, "rare0": 1.0})
    assert sorted(ids(world.recommender().similar("a", 5))) == [f"rare{j}" for j in range(5)]
