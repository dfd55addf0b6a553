"""Property test: whenever at least k usable items exist (in stock, in the asked category, not excluded),
popular, trending, recommendations and similar answer with k items, each of them usable.

A real Redis, the worker's writer (``StateWriter``, the same script and schedule the worker runs) and the
recommender the API calls. The shop's activity is folded once; each example then writes a random stock and
category mask as catalog records (a re-categorisation moves an item's copies between category lists) and
asks with a random category, exclusion set, k, shopper and anchor item.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streamrec.contract import CatalogItem, Event
from streamrec.devtools.localstack import ManagedProcess
from streamrec.event_types import EventType
from streamrec.fold import StateWriter
from streamrec.keys import Keys
from streamrec.recommend import Answer, Recommender
from streamrec.settings import ScoringSettings
from streamrec.state import StateReader

pytestmark = pytest.mark.redis

ITEMS = [f"i{n}" for n in range(14)]
CATEGORIES = ["A", "B", ""]  # "" is an item filed under no category
# what each shopper did: (type, item) in order; "new" has done nothing
SHOPPERS = {
    "u0": [("view", "i0"), ("view", "i1"), ("add_to_cart", "i2")],
    "u1": [("view", "i3"), ("view", "i4"), ("purchase", "i5")],
    "u2": [("view", f"i{n}") for n in range(6, 14)] + [("purchase", "i0")],
    "u3": [("view", "i1"), ("view", "i7"), ("view", "i13")],
    "new": [],
}


@dataclass
class Shop:
    keys: Keys
    writer: StateWriter
    rec: Recommender
    seen: dict[str, set[str]]
    bought: dict[str, set[str]]
    clock: Iterator[int]


def _now() -> int:
    return int(time.time() * 1000)


@pytest.fixture(scope="module")
def shop(redis_server: ManagedProcess) -> Iterator[Shop]:
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    keys = Keys(f"t{uuid.uuid4().hex[:8]}", shards=3)  # three shards: every read merges shards
    scoring = ScoringSettings()
    writer = StateWriter(client, keys, scoring)
    t = _now() - 60_000
    ids = count()

    def event(kind: str, user: str, item: str) -> Event:
        n = next(ids)
        return Event(event_id=f"e{n}", type=EventType(kind), user_id=user, item_id=item, ts=t + n)

    # every item has activity, each a different amount (n % 5 + 1 views from its own viewers)
    events = [event("view", f"v{n}-{v}", item) for n, item in enumerate(ITEMS) for v in range(n % 5 + 1)]
    events += [event(kind, user, item) for user, actions in SHOPPERS.items() for kind, item in actions]
    writer.apply(events)
    seen = {u: {item for _, item in actions} for u, actions in SHOPPERS.items()}
    bought = {u: {item for kind, item in actions if kind == "purchase"} for u, actions in SHOPPERS.items()}
    rec = Recommender(StateReader(client, keys, scoring), scoring)
    yield Shop(keys, writer, rec, seen, bought, count(_now()))
    for key in client.scan_iter(match=keys.pattern(), count=1000):
        client.delete(key)
    client.close()


def _check(answer: Answer, k: int, usable: set[str], what: str) -> None:
    got = [r.item_id for r in answer.items]
    assert len(got) == len(set(got)), (what, got)
    assert set(got) <= usable, (what, sorted(set(got) - usable))
    # the guarantee: k items whenever k usable ones exist (and every usable one when fewer do)
    assert len(got) == min(k, len(usable)), (what, got, sorted(usable))


masks = st.tuples(
    st.lists(st.booleans(), min_size=len(ITEMS), max_size=len(ITEMS)),
    st.lists(st.sampled_from(CATEGORIES), min_size=len(ITEMS), max_size=len(ITEMS)),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mask=masks,
    category=st.sampled_from([None, "A", "B"]),
    exclude=st.sets(st.sampled_from(ITEMS), max_size=8),
    k=st.integers(1, 12),
    user=st.sampled_from(sorted(SHOPPERS)),
    anchor=st.sampled_from(ITEMS),
)
# the first input in small: the best-sellers of one category sold out, one cold item left
@example(
    mask=([n == 0 for n in range(len(ITEMS))], ["A"] * len(ITEMS)),
    category="A",
    exclude=set(),
    k=1,
    user="new",
    anchor="i4",
)
def test_every_answer_is_full_whenever_enough_usable_items_exist(
    shop: Shop,
    mask: tuple[list[bool], list[str]],
    category: str | None,
    exclude: set[str],
    k: int,
    user: str,
    anchor: str,
) -> None:
    stock, cats = mask
    ts = next(shop.clock)  # each example's records are newer than the last ones
    shop.writer.upsert_items(
        [
            CatalogItem(item_id=item, title=item, category=cat, in_stock=ok, ts=ts)
            for item, ok, cat in zip(ITEMS, stock, cats, strict=True)
        ]
    )
    in_stock = {item for item, ok in zip(ITEMS, stock, strict=True) if ok}
    in_category = {item for item, cat in zip(ITEMS, cats, strict=True) if category is None or cat == category}
    usable = in_stock & in_category
    rec = shop.rec
    _check(rec.popular(k, category), k, usable, "popular")
    _check(rec.trending(k, category), k, usable, "trending")
    excluded = exclude | shop.seen[user] | shop.bought[user]
    answer = rec.for_user(user, k, category=category, exclude=exclude)
    _check(answer, k, usable - excluded, "recommendations")
    _check(rec.similar(anchor, k, user_id=user), k, in_stock - {anchor} - shop.bought[user], "similar")


def test_trending_finds_the_risers_behind_a_wall_of_falling_best_sellers(redis_client: redis.Redis) -> None:
    # 130 best-sellers bought 8 h ago still lead the fast-decayed lists (6 purchases weighing 50 each,
    # / 2^8, outweigh one view now), but their interest is falling (score < 0): the rising items are
    # behind more than the first pool
    keys = Keys(f"t{uuid.uuid4().hex[:8]}", shards=3)
    scoring = ScoringSettings(weight_purchase=50.0)
    writer = StateWriter(redis_client, keys, scoring)
    try:
        now = _now()
        old = now - 8 * 3_600_000
        wall = [f"old{n}" for n in range(130)]
        risers = [f"new{n}" for n in range(5)]
        writer.upsert_items([CatalogItem(item_id=i, category="A", ts=now) for i in wall + risers])
        bought = [
            Event(event_id=f"b{n}-{v}", type=EventType.PURCHASE, user_id=f"b{n}-{v}", item_id=item, ts=old)
            for n, item in enumerate(wall)
            for v in range(6)
        ]
        for start in range(0, len(bought), 2000):
            writer.apply(bought[start : start + 2000])
        writer.apply(
            [
                Event(event_id=f"r{n}", type=EventType.VIEW, user_id=f"r{n}", item_id=i, ts=now)
                for n, i in enumerate(risers)
            ]
        )
        # three of the five risers are sold out: the answer pages past them too
        writer.upsert_items(
            [CatalogItem(item_id=i, category="A", in_stock=False, ts=now + 1) for i in risers[:3]]
        )
        rec = Recommender(StateReader(redis_client, keys, scoring), scoring)
        for category in (None, "A"):
            for k in (1, 2, 5):
                got = [r.item_id for r in rec.trending(k, category).items]
                assert len(got) == min(k, 2) and set(got) <= set(risers[3:]), (category, k, got)
    finally:
        for key in redis_client.scan_iter(match=keys.pattern(), count=1000):
            redis_client.delete(key)
