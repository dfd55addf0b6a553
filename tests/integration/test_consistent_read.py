"""One consistent read per answer, and at most 2 Redis round trips for a warm user (issue 15).

A real Redis and the worker's writer (``StateWriter``). The recommender reads through ``CountingRedis``, a
client that counts round trips (a pipeline's ``execute`` or one plain command) and can run a hook right
after a given trip: there the test folds one of the shopper's events with the real writer, deterministically
between two reads of one answer, and checks that the answer equals the one computed with no fold or the one
computed after it — never a mix.

The storefront's case is the shop below: the shopper searched "camera" and looked at a lens; other shoppers
who searched "camera" went on to cam1..cam3. Then the shopper views cam1. Read before that view, cam1 is
offered "matches your search 'camera'"; read after it, cam1 is seen and left out. Read half before (the
history) and half after (the search term's items, which the view credited cam1 to), it was offered although
just viewed — the answer that must never come back.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import count
from typing import Any

import orjson
import pytest
import redis

from streamrec.api.app import create_app
from streamrec.api.cache import ProcessCache
from streamrec.contract import CatalogItem, Event, ItemDeletion, UserErasure, now_ms
from streamrec.devtools.localstack import ManagedProcess
from streamrec.event_types import EventType
from streamrec.fold import StateWriter
from streamrec.keys import Keys
from streamrec.modelstore import ModelStore
from streamrec.recommend import Answer, Recommender
from streamrec.settings import ScoringSettings, Settings
from streamrec.state import StateReader

pytestmark = pytest.mark.redis

T_NOW = now_ms()  # every answer is ranked at this instant, so that answers compare exactly
SHOPPER = "me"


class CountingPipeline:
    """A pipeline whose ``execute`` counts as one round trip of its client."""

    def __init__(self, pipe: Any, owner: CountingRedis) -> None:
        self._pipe, self._owner = pipe, owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._pipe.execute(*args, **kwargs)
        finally:
            self._owner.trip()


class CountingRedis(redis.Redis):
    """A ``redis.Redis`` that counts round trips and runs ``hooks[n]`` right after its ``n``-th trip."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trips = 0
        self.hooks: dict[int, Callable[[], None]] = {}

    def trip(self) -> None:
        self.trips += 1
        hook = self.hooks.pop(self.trips, None)
        if hook is not None:
            hook()

    def execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            return super().execute_command(*args, **options)
        finally:
            self.trip()

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        return CountingPipeline(super().pipeline(transaction, shard_hint), self)

    def count(self, call: Callable[[], Any]) -> tuple[Any, int]:
        """``call()`` and the round trips it took."""
        self.trips = 0
        return call(), self.trips


@dataclass
class Shop:
    keys: Keys
    plain: redis.Redis
    counting: CountingRedis
    writer: StateWriter
    event: Callable[..., Event]

    def recommender(self, cache: Any = None, models: ModelStore | None = None) -> Recommender:
        scoring = ScoringSettings()
        reader = StateReader(self.counting, self.keys, scoring)
        return Recommender(reader, scoring, models, clock=lambda: T_NOW, cache=cache)


@pytest.fixture
def shop(redis_server: ManagedProcess, redis_client: redis.Redis) -> Iterator[Shop]:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}", shards=3)
    writer = StateWriter(redis_client, keys, ScoringSettings())
    t = T_NOW - 600_000
    ids = count()

    def event(kind: str, user: str, item: str | None = None, query: str | None = None) -> Event:
        n = next(ids)
        return Event(
            event_id=f"e{n}", type=EventType(kind), user_id=user, item_id=item, query=query, ts=t + n * 1000
        )

    items = {"cam1": "photo", "cam2": "photo", "cam3": "photo", "lens": "photo", "bag": "bags", "hat": "hats"}
    writer.upsert_items(
        [CatalogItem(item_id=i, title=f"Item {i}", category=c, price=9.5, ts=t) for i, c in items.items()]
    )
    events = []
    for n, viewed in enumerate([["cam1", "cam2"], ["cam2", "cam3"], ["cam1", "lens", "bag"]]):
        events.append(event("search", f"s{n}", query="camera"))
        events += [event("view", f"s{n}", item) for item in viewed]
    events += [event("view", "s3", "lens"), event("view", "s3", "hat"), event("view", "s4", "hat")]
    events += [event("search", SHOPPER, query="camera"), event("view", SHOPPER, "lens")]
    writer.apply(events)
    counting = CountingRedis(host="127.0.0.1", port=redis_server.port)
    yield Shop(keys, redis_client, counting, writer, event)
    counting.close()
    for key in redis_client.scan_iter(match=keys.pattern(), count=1000):
        redis_client.delete(key)


def ids(answer: Answer) -> list[str]:
    return [r.item_id for r in answer.items]


def frozen_cache(ttl_ms: int = 60_000) -> ProcessCache:
    """The API's cache on a clock that stands still, so nothing expires during a test."""
    return ProcessCache(ttl_ms, 1000, 100, clock=lambda: 0.0)


@pytest.mark.parametrize("fold_after", [1, 2, 3, 4])
def test_an_event_folded_between_the_reads_of_an_answer_is_entirely_in_it_or_not(
    shop: Shop, fold_after: int
) -> None:
    """No cache: the view of cam1 folded after trip 1, 2, 3 or 4 of one answer."""
    rec = shop.recommender()
    rec.for_user(SHOPPER, 10)  # the user-read script is loaded into Redis (its first call takes more trips)
    before, trips = shop.counting.count(lambda: rec.for_user(SHOPPER, 10))
    cam1 = next(r for r in before.items if r.item_id == "cam1")
    assert cam1.reason == "matches your search 'camera'"
    assert trips >= 3  # a cold answer: the user, then what that needs, then what those need
    view = shop.event("view", SHOPPER, "cam1")
    shop.counting.hooks[fold_after] = lambda: shop.writer.apply([view])
    torn, torn_trips = shop.counting.count(lambda: rec.for_user(SHOPPER, 10))
    assert not shop.counting.hooks, "the event was not folded"
    after = rec.for_user(SHOPPER, 10)
    assert "cam1" not in ids(after) and after != before
    if fold_after < trips:
        assert torn == after, (ids(torn), ids(after))
        assert torn_trips > trips  # the moved snapshot was dropped and the answer read again
    else:
        assert torn == before  # folded once every read was done
    assert "cam1" not in ids(torn) or torn == before


def test_the_storefront_case_with_the_api_cache_warm(shop: Shop) -> None:
    """The API's cache (warm, standing still): history read before the view of cam1, the search term's
    items after it. The answer is the after-answer, and cam1 is not offered as matching 'camera'."""
    rec = shop.recommender(frozen_cache())
    before = rec.for_user(SHOPPER, 10)
    assert "cam1" in ids(before)
    warm, trips = shop.counting.count(lambda: rec.for_user(SHOPPER, 10))
    assert warm == before and trips == 2  # the user's group, then the search term's items + version
    shop.counting.hooks[1] = lambda: shop.writer.apply([shop.event("view", SHOPPER, "cam1")])
    torn, torn_trips = shop.counting.count(lambda: rec.for_user(SHOPPER, 10))
    assert not shop.counting.hooks
    assert "cam1" not in ids(torn), [(r.item_id, r.reason) for r in torn.items]
    assert torn_trips > 2  # trip 2 saw the version move; a second snapshot was read
    assert torn == rec.for_user(SHOPPER, 10)


def test_the_old_way_of_reading_does_tear(shop: Shop) -> None:
    """The same fold between the history read and the term read of the pre-snapshot reader methods offers
    the just-viewed item: what the snapshot prevents is real, and this test's fold does reach it."""
    reader = StateReader(shop.counting, shop.keys, ScoringSettings())
    shop.counting.trips = 0
    shop.counting.hooks[1] = lambda: shop.writer.apply([shop.event("view", SHOPPER, "cam1")])
    user = reader.user(SHOPPER, T_NOW)
    terms = reader.term_items(["camera"], 50)
    assert "cam1" not in {h.item_id for h in user.history} and "cam1" in terms["camera"]


@pytest.mark.parametrize("answers_ttl_ms", [0, 60_000])
def test_a_warm_user_costs_at_most_two_round_trips(shop: Shop, answers_ttl_ms: int) -> None:
    """Through the API (its cache from settings): a warm answer is 1 trip, or 2 for a user who searched
    when answers are computed each time (answers not cached); a cached answer is 1 trip either way (for
    similar items without a user, the trip that reads its stamp); popular and trending are served from the
    cache; a new user's action shows at once."""
    url = f"redis://127.0.0.1:{shop.counting.connection_pool.connection_kwargs['port']}/0"
    settings = Settings(
        redis_prefix=shop.keys.prefix,
        redis_shards=3,
        redis_url=url,
        api_cache_ttl_ms=60_000,
        api_cache_answers_ttl_ms=answers_ttl_ms,
    )
    store = ModelStore(shop.plain, shop.keys)
    store.publish("v1", {"lens": (["hat"], [1.0]), "cam1": (["bag"], [1.0])}, {"family": "ease"})
    store.activate("v1")
    client = create_app(settings, redis_client=shop.counting).test_client()

    def get(path: str) -> tuple[dict[str, Any], int]:
        resp, trips = shop.counting.count(lambda: client.get(path))
        assert resp.status_code == 200, resp.data
        return orjson.loads(resp.data)["data"], trips

    paths = {
        "searched": f"/v1/users/{SHOPPER}/recommendations?k=5",
        "no searches": "/v1/users/s3/recommendations?k=5",
        "similar": "/v1/items/lens/similar?k=5",
        "similar for a user": "/v1/items/lens/similar?k=5&user_id=s3",
        "popular": "/v1/popular?k=5",
        "popular in a category": "/v1/popular?k=5&category=photo",
        "trending": "/v1/trending?k=5",
    }
    cold = {name: get(path) for name, path in paths.items()}
    warm = {name: get(path) for name, path in paths.items()}
    assert {name: trips for name, (_, trips) in warm.items()} == {
        "searched": 1 if answers_ttl_ms else 2,
        "no searches": 1,
        "similar": 1 if answers_ttl_ms else 0,  # a cached answer's stamp is read (2 GETs) before it is served
        "similar for a user": 1,
        "popular": 0,
        "popular in a category": 0,
        "trending": 0,
    }, {name: trips for name, (_, trips) in cold.items()}
    for name in paths:
        assert [r["item_id"] for r in warm[name][0]["items"]] == [
            r["item_id"] for r in cold[name][0]["items"]
        ]
    assert warm["searched"][0]["model_version"] == "v1"
    # the user's own new action shows at once, cache or not
    shop.writer.apply([shop.event("view", "newcomer", "lens")])
    fresh, trips = get("/v1/users/newcomer/recommendations?k=5")
    assert fresh["strategy"] == "personalized" and "lens" not in [r["item_id"] for r in fresh["items"]]
    assert trips == 1  # lens's neighbours, their catalog fields and the model's rows were cached


def test_a_neighbour_list_is_never_staler_than_the_neighbours_bound(shop: Shop) -> None:
    """A normalised neighbour list computed from counts the cache already held is as old as the oldest of
    them: it leaves the cache when they do (10 s here), not 10 s after it was computed. Before, a list
    computed at 4 s from counts read at 0 s was served until 14 s, missing what was folded meanwhile."""
    now = [0.0]
    cache = ProcessCache(10_000, 1000, 100, clock=lambda: now[0], neighbours_ttl_ms=10_000, seed=1)
    rec = shop.recommender(cache)
    rec.similar("cam1", 10)  # t = 0: cam1's list, and the counts of cam1 and its neighbours (cam2 among them)
    now[0] = 4.0  # within half the bound: counts read at 0 s are still used to derive a list
    before = rec.similar("cam2", 10)  # cam2's list: its raw list read now, cam1's count from t = 0
    assert "hat" not in [r.item_id for r in before.items if r.source == "item_to_item"]
    shop.writer.apply([shop.event("view", "s9", "cam2"), shop.event("view", "s9", "hat")])
    now[0] = 10.5  # past 10 s from the oldest input, not from the list's computation
    after = rec.similar("cam2", 10)
    assert "hat" in [r.item_id for r in after.items if r.source == "item_to_item"], [
        (r.item_id, r.source) for r in after.items
    ]


def test_a_neighbour_list_is_derived_from_counts_young_enough_to_keep_it(shop: Shop) -> None:
    """A list is as stale as its oldest count, so one derived from counts near the end of their bound would
    leave the cache at once. Counts older than half the bound (``state.DERIVE_WITHIN``) are read again
    when a list is derived from them, and the list then stays for at least the other half."""
    now = [0.0]
    cache = ProcessCache(10_000, 1000, 100, clock=lambda: now[0], neighbours_ttl_ms=10_000, seed=1)
    rec = shop.recommender(cache)
    rec.similar("cam1", 10)  # t = 0: the counts of cam1 and its neighbours, cam2 among them
    now[0] = 6.0
    rec.similar("cam2", 10)  # counts read at 0 s are past half the bound: read again, so the list is from 6 s
    before = cache.stats()["neighbours"]
    now[0] = 12.0  # 12 s after the first counts, 6 s after the list's own
    rec.similar("cam2", 10)
    after = cache.stats()["neighbours"]
    assert after["misses"] == before["misses"] and after["hits"] > before["hits"]  # not derived again


# --- cached answers (STREAMREC_API_CACHE_ANSWERS_TTL_MS) ----------------------------------------------------


def answers_cache(now: list[float], neighbours_ttl_ms: int = 10_000, seed: int = 1) -> ProcessCache:
    """The API's cache with whole answers kept (30 s), on a clock the test moves."""
    return ProcessCache(
        60_000,
        1000,
        100,
        clock=lambda: now[0],
        neighbours_ttl_ms=neighbours_ttl_ms,
        answers_ttl_ms=30_000,
        answers=100,
        seed=seed,
    )


def test_a_cached_answer_is_served_until_the_user_the_catalog_or_the_model_moves(shop: Shop) -> None:
    """An answer is served again in 1 trip while the user's version, the catalog generation and the active
    model are as they were; each of them moving is seen by the very next answer."""
    now = [0.0]
    store = ModelStore(shop.plain, shop.keys)
    rec = shop.recommender(answers_cache(now), models=store)
    first, trips = shop.counting.count(lambda: rec.for_user(SHOPPER, 5))
    assert trips >= 3  # the user, then lists and term items, then counts, catalog fields…
    again, trips = shop.counting.count(lambda: rec.for_user(SHOPPER, 5))
    assert again is first and trips == 1
    assert rec.for_user(SHOPPER, 4) is not first  # another request shape is another answer
    # the user's own action
    shop.writer.apply([shop.event("view", SHOPPER, "cam1")])
    mine = rec.for_user(SHOPPER, 5)
    assert "cam1" in ids(first) and "cam1" not in ids(mine)
    assert rec.for_user(SHOPPER, 5) is mine
    # the catalog: the answer's first item sells out
    top = mine.items[0].item_id
    shop.writer.upsert_items(
        [CatalogItem(item_id=top, title="gone", category="photo", in_stock=False, ts=T_NOW)]
    )
    sold_out, trips = shop.counting.count(lambda: rec.for_user(SHOPPER, 5))
    assert top not in ids(sold_out) and trips > 1
    # the model: one is switched on
    store.publish("v1", {"lens": (["hat"], [1.0])}, {"family": "ease"})
    store.activate("v1")
    modelled = rec.for_user(SHOPPER, 5)
    assert modelled.model_version == "v1" and sold_out.model_version is None
    assert rec.for_user(SHOPPER, 5) is modelled


def test_a_cached_answer_ages_from_the_oldest_neighbour_list_it_was_ranked_from(shop: Shop) -> None:
    """An answer's staleness bound (30 s here) counts from when the oldest neighbour list it was ranked from
    was read, not from when it was computed: no cached answer serves co-occurrence older than it."""
    now = [0.0]
    # seed 3: when entries leave within the last half of the answers' bound (here after 20 s)
    rec = shop.recommender(answers_cache(now, neighbours_ttl_ms=60_000, seed=3))
    rec.similar("lens", 10)
    rec.similar("hat", 10)  # t = 0: the lists of s3's two seeds
    now[0] = 15.0
    first = rec.for_user("s3", 10)  # ranked from lists read at 0 s
    now[0] = 20.0
    assert rec.for_user("s3", 10) is first
    now[0] = 30.5  # 15.5 s after it was computed, 30.5 s after its lists were read
    again, trips = shop.counting.count(lambda: rec.for_user("s3", 10))
    assert again is not first and again == first and trips == 1  # computed again, from the same lists


def test_an_erased_user_who_comes_back_to_the_same_version_is_not_served_the_old_answer(shop: Shop) -> None:
    """The version counts events since the user's keys were made: erased (or expired) and refolded up to the
    same count, it starts again, but when it started (``v.s``) differs, so the old answer is not served."""
    now = [0.0]
    rec = shop.recommender(answers_cache(now))
    before = rec.for_user(SHOPPER, 5)
    assert any(r.reason == "matches your search 'camera'" for r in before.items)
    version = StateReader(shop.plain, shop.keys, ScoringSettings()).user_reply(SHOPPER).version
    erase_at = shop.event("view", "nobody", "hat").ts
    time.sleep(0.002)  # a new ``v.s`` (wall ms), as any later batch has
    shop.writer.apply([UserErasure(erase_user=SHOPPER, erasure_id=uuid.uuid4().hex, ts=erase_at)])
    reader = StateReader(shop.plain, shop.keys, ScoringSettings())
    while reader.user_reply(SHOPPER).version < version:
        shop.writer.apply([shop.event("view", SHOPPER, "hat")])
    assert reader.user_reply(SHOPPER).version == version
    after = rec.for_user(SHOPPER, 5)
    assert after is not before
    assert not any(r.reason == "matches your search 'camera'" for r in after.items), after.items


def test_the_catalog_generation_moves_after_each_batch_of_records(shop: Shop) -> None:
    """``catalog_generation`` moves once per folded batch that wrote a record, not for one that lost."""
    generation = shop.keys.catalog_generation()
    start = int(shop.plain.get(generation) or 0)
    assert start >= 1  # the shop's catalog
    shop.writer.upsert_items([CatalogItem(item_id="new", title="New", category="hats", ts=T_NOW)])
    assert int(shop.plain.get(generation)) == start + 1
    shop.writer.upsert_items([CatalogItem(item_id="new", title="Older", category="hats", ts=T_NOW - 1)])
    assert int(shop.plain.get(generation)) == start + 1  # older than the stored record: nothing written
    shop.writer.upsert_items([ItemDeletion(item_id="new", deleted=True, ts=T_NOW + 1)])
    assert int(shop.plain.get(generation)) == start + 2


def test_cached_similar_items_follow_the_catalog_and_the_model(shop: Shop) -> None:
    """Similar items are cached under (catalog generation, active model), or with the user's stamp when
    asked for a user: a sold-out item and a model switch show in the very next answer."""
    now = [0.0]
    store = ModelStore(shop.plain, shop.keys)
    rec = shop.recommender(answers_cache(now), models=store)
    first = rec.similar("cam1", 5)
    again, trips = shop.counting.count(lambda: rec.similar("cam1", 5))
    assert again is first and trips == 1
    top = first.items[0].item_id
    shop.writer.upsert_items(
        [CatalogItem(item_id=top, title="gone", category="photo", in_stock=False, ts=T_NOW)]
    )
    assert top not in ids(rec.similar("cam1", 5))
    store.publish("v1", {"cam1": (["hat"], [1.0])}, {"family": "ease"})
    store.activate("v1")
    modelled = rec.similar("cam1", 5)
    assert modelled.model_version == "v1" and "hat" in ids(modelled)
    for_me = rec.similar("cam1", 5, user_id=SHOPPER)
    assert rec.similar("cam1", 5, user_id=SHOPPER) is for_me
    bought = ids(for_me)[-1]
    shop.writer.apply([shop.event("purchase", SHOPPER, bought)])
    assert bought not in ids(rec.similar("cam1", 5, user_id=SHOPPER))  # bought: left out at once


def test_catalog_records_outlive_the_general_bound_only_under_a_generation(shop: Shop) -> None:
    """With answers kept, a catalog record is kept for twice their bound: an answer computed again under the
    same catalog generation reads no record again, however old. A reader without a stamp (popular) checks
    no generation, so it takes only records read within the general bound (1 s here): a title changed after
    that shows once it passed."""
    now = [0.0]
    cache = ProcessCache(
        1_000, 1000, 100, clock=lambda: now[0], neighbours_ttl_ms=60_000, answers_ttl_ms=30_000, answers=100
    )
    rec = shop.recommender(cache)
    first = rec.for_user(SHOPPER, 5)
    misses = cache.stats()["catalog"]["misses"]
    now[0] = 5.0  # past the general bound, within the answers'
    again = rec.for_user(SHOPPER, 4)  # another request shape: computed again
    assert ids(again) == ids(first)[:4]
    assert cache.stats()["catalog"]["misses"] == misses  # every record it shows was kept
    shown = rec.popular(3)
    top = shown.items[0].item_id
    shop.writer.upsert_items([CatalogItem(item_id=top, title="Renamed", category="photo", ts=T_NOW)])
    assert rec.popular(3).catalog[top]["title"] == shown.catalog[top]["title"]  # within its 1 s
    now[0] = 6.5
    assert rec.popular(3).catalog[top]["title"] == "Renamed"
    mine = again.items[0].item_id  # a stamped answer sees a renamed item at once: the generation moved
    category = again.catalog[mine]["category"]
    shop.writer.upsert_items([CatalogItem(item_id=mine, title="Mine", category=category, ts=T_NOW + 1)])
    assert rec.for_user(SHOPPER, 4).catalog[mine]["title"] == "Mine"


def test_a_list_read_again_comes_with_its_last_neighbours_counts(shop: Shop) -> None:
    """A neighbour list that left the cache is read again together with the counts of the neighbours it
    had (what normalising it needs), so an answer computed again takes the stamp's trip and one more,
    not a third for the counts. A neighbour that came since is read in one more trip, and counted."""
    now = [0.0]
    rec = shop.recommender(answers_cache(now))  # neighbour lists and counts: 10 s
    first = rec.similar("cam1", 5)
    now[0] = 12.0  # the list and the counts left; the catalog records did not
    again, trips = shop.counting.count(lambda: rec.similar("cam1", 4))
    assert ids(again) == ids(first)[:4] and trips == 2
    shop.writer.apply([shop.event("view", "s9", "cam1"), shop.event("view", "s9", "new")])
    shop.writer.upsert_items([CatalogItem(item_id="new", title="New", category="photo", ts=T_NOW)])
    now[0] = 24.0
    fresh, trips = shop.counting.count(lambda: rec.similar("cam1", 4))
    assert "new" in ids(fresh) and trips == 4  # the stamp; the list; the new neighbour's count; its record


def test_an_answer_computed_again_reads_its_last_items_records_with_its_lists(shop: Shop) -> None:
    """An answer computed again (here: the catalog moved, and its list left the cache) reads the catalog
    records of the answer it replaces in the same trip as the list, not in one more after ranking."""
    now = [0.0]
    rec = shop.recommender(answers_cache(now))  # neighbour lists and counts: 10 s
    first = rec.similar("cam1", 3)  # neighbours only: no fallback reads the anchor's category
    assert [r.source for r in first.items] == ["item_to_item"] * 3
    now[0] = 12.0
    shop.writer.upsert_items([CatalogItem(item_id="other", title="Other", category="hats", ts=T_NOW)])
    again, trips = shop.counting.count(lambda: rec.similar("cam1", 3))
    assert again is not first and again == first and trips == 2
