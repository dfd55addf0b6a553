"""The key layout of docs/STATE.md against a real Redis: bounded exactly-once, Redis conditions, derived
lists that follow the catalog, deletion and erasure, decay, and the time policy."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from itertools import count

import pytest
import redis

from streamrec.contract import CatalogItem, Event, ItemDeletion, UserErasure
from streamrec.event_types import EventType
from streamrec.fold import APPLIED, DUPLICATE, ERASED, Refused, Source, StateWriter
from streamrec.keys import Keys
from streamrec.recommend import Recommender
from streamrec.redis_conditions import condition
from streamrec.settings import DAY_MS, ScoringSettings
from streamrec.state import StateReader, read_stats
from tests.conftest import wait_until
from tests.state_snapshot import snapshot

pytestmark = pytest.mark.redis

_ids = count()


def now_ms() -> int:
    return int(time.time() * 1000)


def view(user: str, item: str, ts: int, kind: str = "view") -> Event:
    return Event(
        event_id=f"e{next(_ids)}-{uuid.uuid4().hex[:6]}",
        type=EventType(kind),
        user_id=user,
        item_id=item,
        ts=ts,
    )


class World:
    def __init__(self, client: redis.Redis, **scoring: object) -> None:
        self.client = client
        self.keys = Keys(f"t{uuid.uuid4().hex[:8]}", shards=3)
        self.scoring = ScoringSettings(**scoring)  # type: ignore[arg-type]
        self.writer = StateWriter(client, self.keys, self.scoring)
        self.reader = StateReader(client, self.keys, self.scoring)
        self.rec = Recommender(self.reader, self.scoring)

    def popular(self, category: str | None = None) -> list[str]:
        return [r.item_id for r in self.rec.popular(20, category).items]

    def trending(self, category: str | None = None) -> list[str]:
        return [item for item, _ in self.reader.trending(20, now_ms(), category)]

    def items(self, **fields: str) -> None:
        self.writer.upsert_items([CatalogItem(item_id=i, category=c, ts=now_ms()) for i, c in fields.items()])


@pytest.fixture
def world(redis_client: redis.Redis) -> Iterator[World]:
    w = World(redis_client)
    yield w
    for key in redis_client.scan_iter(match=w.keys.pattern(), count=1000):
        redis_client.delete(key)


# --- exactly once, bounded ------------------------------------------------------------------------


def test_a_redelivered_offset_is_a_duplicate_and_changes_nothing(world: World) -> None:
    t = now_ms() - 60_000
    batch = [view("u", "a", t), view("u", "b", t + 1), view("v", "a", t + 2)]
    sources = [Source(3, 10), Source(3, 11), Source(3, 12)]
    assert world.writer.apply(batch, sources).outcomes == [APPLIED] * 3
    state = snapshot(world.client, world.keys.pattern())
    # the broker redelivers from an older committed offset, with a different batch boundary
    again = world.writer.apply(batch[1:], sources[1:])
    assert again.outcomes == [DUPLICATE, DUPLICATE]
    assert snapshot(world.client, world.keys.pattern()) == state
    assert world.client.hget(world.keys.watermark(), "ev:3") == b"12"


def test_a_client_retry_with_a_new_offset_is_a_duplicate_within_the_window(world: World) -> None:
    e = view("u", "a", now_ms())
    assert world.writer.apply([e], [Source(0, 1)]).outcomes == [APPLIED]
    assert world.writer.apply([e], [Source(0, 2)]).outcomes == [DUPLICATE]  # the client posted it again
    assert read_stats(world.client, world.keys) == {"applied:view": 1}


def test_event_id_claims_stay_within_the_dedupe_window(redis_client: redis.Redis) -> None:
    w = World(redis_client, dedupe_window_s=1)
    try:
        e = view("u", "a", now_ms())
        assert w.writer.apply([e]).outcomes == [APPLIED]
        claims = w.keys.claims("u")
        assert redis_client.zcard(claims) == 1
        assert 0 < redis_client.ttl(claims) <= 1  # the claims leave with the window
        # after the window the claim is gone: memory is one window of traffic, not days of it
        wait_until(lambda: redis_client.exists(claims) == 0, timeout=5, what="the claims to expire")
        assert w.writer.apply([view("u", "b", now_ms())]).outcomes == [APPLIED]
        assert redis_client.zcard(claims) == 1
    finally:
        for key in redis_client.scan_iter(match=w.keys.pattern(), count=1000):
            redis_client.delete(key)


# --- Redis conditions and refusals ----------------------------------------------------------------


def test_a_full_redis_refuses_the_whole_call_as_a_condition_and_writes_nothing(world: World) -> None:
    before = snapshot(world.client, world.keys.pattern())
    policy = world.client.config_get("maxmemory-policy")["maxmemory-policy"]
    world.client.config_set("maxmemory-policy", "noeviction")
    world.client.config_set("maxmemory", "1")
    try:
        with pytest.raises(redis.exceptions.RedisError) as raised:
            world.writer.apply(
                [view("u", "a", now_ms()), view("u", "b", now_ms())], [Source(0, 1), Source(0, 2)]
            )
        assert condition(raised.value) == "oom"
    finally:
        world.client.config_set("maxmemory", "0")
        world.client.config_set("maxmemory-policy", policy)
    assert snapshot(world.client, world.keys.pattern()) == before
    # once Redis has room the same events fold, exactly once
    result = world.writer.apply(
        [view("u", "a", now_ms()), view("u", "b", now_ms())], [Source(0, 1), Source(0, 2)]
    )
    assert result.outcomes == [APPLIED, APPLIED]


def test_an_event_the_script_refuses_is_refused_alone(world: World) -> None:
    world.client.set(world.keys.prefs("broken"), "not a sorted set")  # WRONGTYPE for this user's state
    t = now_ms()
    result = world.writer.apply([view("ok", "a", t), view("broken", "a", t), view("ok", "b", t + 1)])
    assert result.outcomes[0] == APPLIED and result.outcomes[2] == APPLIED
    refused = result.outcomes[1]
    assert isinstance(refused, Refused) and "WRONGTYPE" in refused.reason
    assert result.refused() == {1: refused.reason}


# --- derived lists follow the catalog ------------------------------------------------------------


def test_category_lists_follow_the_current_category_in_any_arrival_order(world: World) -> None:
    t = now_ms()
    # events before the catalog record: the item is in no category yet
    world.writer.apply([view(f"u{i}", "m", t + i) for i in range(3)] + [view("w", "n", t)])
    assert world.popular("A") == []
    world.items(m="A", n="A")
    assert world.popular("A") == ["m", "n"]
    assert world.trending("A") == ["m", "n"]
    # re-categorised: it leaves A's lists and joins B's at once, with its history
    world.writer.upsert_items([CatalogItem(item_id="m", title="M", category="B", ts=now_ms() + 1)])
    assert world.popular("A") == ["n"] and world.trending("A") == ["n"]
    assert world.popular("B") == ["m"] and world.trending("B") == ["m"]
    # later events file it under B only
    world.writer.apply([view("z", "m", now_ms())])
    assert world.popular("A") == ["n"] and world.popular("B") == ["m"]


def test_a_deleted_item_leaves_every_list_and_late_events_do_not_bring_it_back(world: World) -> None:
    t = now_ms()
    world.items(a="c", b="c")
    world.writer.apply([view("u", "a", t), view("u", "b", t + 1), view("v", "a", t + 2)])
    assert set(world.popular()) == {"a", "b"}
    world.writer.upsert_items([ItemDeletion(item_id="b", deleted=True, ts=now_ms())])
    assert world.popular() == ["a"] and world.popular("c") == ["a"] and world.trending() == ["a"]
    assert not world.client.exists(world.keys.activity("b"), world.keys.neighbours("b"))
    assert [r.item_id for r in world.rec.similar("a", 5).items] == []  # b is gone from a's neighbours
    world.writer.apply([view("w", "b", now_ms())])  # a late event for the deleted item
    assert world.popular() == ["a"]
    assert not world.client.exists(world.keys.activity("b"))
    # a record newer than the deletion brings the item back
    world.writer.upsert_items([CatalogItem(item_id="b", category="c", ts=now_ms() + 10)])
    world.writer.apply([view("x", "b", now_ms())])
    assert set(world.popular()) == {"a", "b"}


def test_a_stored_catalog_time_from_the_future_does_not_block_later_updates(world: World) -> None:
    micro = now_ms() * 1000  # a record once written with a microsecond ts
    world.client.hset(world.keys.catalog("p"), mapping={"item_id": "p", "in_stock": "1", "ts": str(micro)})
    assert world.writer.upsert_items([CatalogItem(item_id="p", in_stock=False, ts=now_ms())]) == 1
    assert world.reader.catalog(["p"])["p"]["in_stock"] == "0"


# --- erasure ---------------------------------------------------------------------------------------


def test_an_erased_user_loses_every_trace_and_older_events_do_not_return(world: World) -> None:
    t = now_ms() - 10_000
    old = [view("gone", "a", t), view("gone", "b", t + 1, "purchase")]
    world.writer.apply(old, [Source(0, 1), Source(0, 2)])
    erasure = UserErasure(erase_user="gone", erasure_id=uuid.uuid4().hex, ts=now_ms())
    assert world.writer.apply([erasure], [Source(0, 3)]).outcomes == [APPLIED]
    assert [k for k in world.keys.user_keys("gone") if world.client.exists(k)] == [world.keys.erased("gone")]
    # the same events replayed (new offsets, after the dedupe claims went with the user) are refused
    late = [view("gone", "a", t, "view"), view("gone", "c", t + 2)]
    assert world.writer.apply(late, [Source(0, 4), Source(0, 5)]).outcomes == [ERASED, ERASED]
    assert world.reader.user("gone", now_ms()).history == []
    # a new action after the erasure is a new start
    assert world.writer.apply([view("gone", "d", now_ms() + 1)]).outcomes == [APPLIED]
    assert [h.item_id for h in world.reader.user("gone", now_ms()).history] == ["d"]


# --- decay and time --------------------------------------------------------------------------------


def test_cooccurrence_fades_with_its_halflife(redis_client: redis.Redis) -> None:
    w = World(redis_client, cooc_halflife_ms=DAY_MS)
    try:
        t = now_ms()
        w.writer.apply([view("old", "a", t - DAY_MS), view("old", "b", t - DAY_MS + 1)])
        w.writer.apply([view("new", "a", t), view("new", "c", t + 1)])
        nbrs = w.reader.neighbours(["a"], 10, t)["a"]
        assert nbrs["c"] == pytest.approx(2 * nbrs["b"], rel=1e-3)
        counts = w.reader.counts(["a", "b", "c"], t)
        assert counts["a"] == pytest.approx(1.5, rel=1e-3)  # one view a day ago (0.5) and one now
    finally:
        for key in redis_client.scan_iter(match=w.keys.pattern(), count=1000):
            redis_client.delete(key)


def test_items_whose_weight_decayed_below_the_floor_leave_popular_and_trending(world: World) -> None:
    hour = 3_600_000
    t = now_ms()
    shard = world.keys.shard("stale")
    fresh = next(f"f{n}" for n in range(100) if world.keys.shard(f"f{n}") == shard)
    world.writer.apply([view("u", "stale", t - 10 * hour)])  # trending halves per hour: 2^-10 < 0.01
    world.writer.apply([view("v", fresh, t)])  # a new member of the same shard prunes what decayed away
    assert world.trending() == [fresh]
    assert world.client.zscore(world.keys.trending(shard), "stale") is None
    assert set(world.popular()) == {"stale", fresh}  # a week's half-life keeps it popular


def test_popular_is_exact_across_shards(world: World) -> None:
    t = now_ms()
    events = [view(f"u{n}-{i}", f"i{n}", t) for n in range(12) for i in range(n + 1)]
    world.writer.apply(events)
    assert {world.keys.shard(f"i{n}") for n in range(12)} == {0, 1, 2}
    assert world.popular()[:12] == [f"i{n}" for n in reversed(range(12))]
    assert [i for i, _ in world.reader.popular(3, t, offset=2)] == ["i9", "i8", "i7"]
