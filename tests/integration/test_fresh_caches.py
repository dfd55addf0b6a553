"""What other shoppers do reaches every cached answer at once: the worker's change feed (issue 27).

A real Redis, the worker's own writer (``StateWriter``: the fold script publishes the items each call
changed) and the API built by its factory, which follows the feed. The caches keep their long bounds (60 s
for neighbour lists, 240 s for answers, the defaults), so without the feed every case here would show the
old answer for minutes. Each case reads the answer once *before* the change, as a live shop does, and
then waits for the change with the freshness contract's deadline, 1 s.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamrec.api.app import create_app
from streamrec.api.changes import FALLBACK_MS, ChangeLog, wait_subscribed
from streamrec.api.extensions import services
from streamrec.contract import CatalogItem, Event, now_ms
from streamrec.devtools.localstack import ManagedProcess
from streamrec.event_types import EventType
from streamrec.fold import StateWriter
from streamrec.keys import Keys
from streamrec.recommend import Recommender
from streamrec.settings import ScoringSettings, Settings
from streamrec.state import Reads, StateReader
from tests.conftest import wait_until

pytestmark = pytest.mark.redis

# the contract's 1 s: the feed's message within milliseconds, and a list or an answer looked at again
# within the general bound (500 ms)
WITHIN_S = 1.0


@dataclass
class Shop:
    writer: StateWriter
    client: object  # Flask's test client
    changes: ChangeLog
    ids: Iterator[int]

    def views(self, user: str, *items: str, ago_ms: int = 0) -> None:
        t = now_ms() - 60_000 - ago_ms
        self.writer.apply(
            [
                Event(event_id=f"e{next(self.ids)}", type=EventType.VIEW, user_id=user, item_id=i, ts=t + n)
                for n, i in enumerate(items)
            ]
        )

    def items(self, path: str) -> list[str]:
        resp = self.client.get(path)  # type: ignore[attr-defined]
        assert resp.status_code == 200, resp.get_json()
        return [i["item_id"] for i in resp.get_json()["data"]["items"]]


@pytest.fixture
def shop(redis_server: ManagedProcess, redis_client: redis.Redis) -> Iterator[Shop]:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{redis_server.port}/0",
        redis_prefix=prefix,
        # the defaults' long bounds, whatever the environment says: the feed, not a bound, keeps them fresh
        api_cache_neighbours_ttl_ms=60_000,
        api_cache_answers_ttl_ms=240_000,
        api_change_feed=True,
    )
    app = create_app(settings)
    changes = services(app).recommender.cache.changes  # type: ignore[attr-defined]
    assert changes is not None and wait_subscribed(changes, 10)
    keys = Keys(prefix)
    writer = StateWriter(redis_client, keys, ScoringSettings())
    t = now_ms() - 3_600_000
    writer.upsert_items(
        [
            CatalogItem(item_id=i, title=i, category="c", price=5.0, ts=t)
            for i in ("D", "E", "F", "X", "Y", "G")
        ]
    )
    shop = Shop(writer, app.test_client(), changes, count())
    # background: some shoppers view D with X and Y, so D has neighbours before the change
    for n in range(3):
        shop.views(f"bg{n}", "D", "X", ago_ms=600_000)
    shop.views("bg3", "D", "Y", ago_ms=600_000)
    yield shop
    for key in redis_client.scan_iter(match=keys.pattern(), count=1000):
        redis_client.delete(key)


def shows(shop: Shop, path: str, item: str, present: bool = True) -> float:
    """Seconds until ``path`` shows ``item`` (or stops showing it) in 4 reads in a row."""
    started = time.monotonic()
    streak = [0]

    def check() -> bool:
        streak[0] = streak[0] + 1 if (item in shop.items(path)) == present else 0
        return streak[0] >= 4

    wait_until(check, WITHIN_S, interval=0.005, what=f"{path} {'showing' if present else 'without'} {item}")
    return time.monotonic() - started


def test_other_shoppers_co_occurrence_reaches_similar_items_at_once(shop: Shop) -> None:
    before = shop.items("/v1/items/D/similar?k=5")
    assert "E" not in before and "X" in before
    for n in range(3):
        shop.views(f"new{n}", "D", "E")
    shows(shop, "/v1/items/D/similar?k=5", "E")


def test_other_shoppers_co_occurrence_reaches_a_personal_answer_read_before(shop: Shop) -> None:
    shop.views("me", "D", ago_ms=120_000)
    before = shop.items("/v1/users/me/recommendations?k=5")
    assert "F" not in before
    for n in range(3):
        shop.views(f"new{n}", "D", "F")
    shows(shop, "/v1/users/me/recommendations?k=5", "F")


def test_a_sale_stop_leaves_every_answer_at_once(shop: Shop) -> None:
    shop.views("me", "D", ago_ms=120_000)
    for n in range(5):
        shop.views(f"g{n}", "D", "G")
    paths = ["/v1/items/D/similar?k=5", "/v1/users/me/recommendations?k=5", "/v1/popular?k=6&category=c"]
    for path in paths:
        assert "G" in shop.items(path), path
    shop.writer.upsert_items(
        [CatalogItem(item_id="G", title="G", category="c", price=5.0, in_stock=False, ts=now_ms())]
    )
    for path in paths:
        shows(shop, path, "G", present=False)


def test_a_count_that_moved_comes_with_the_feed_and_the_list_is_normalised_again_without_a_read(
    shop: Shop, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = shop.client.application  # type: ignore[attr-defined]
    cache = services(app).recommender.cache
    keys = services(app).recommender.reader.keys  # type: ignore[attr-defined]
    lists_read: list[str] = []
    read = StateReader.read

    def spy(self: StateReader, reads: Reads, version_of: str | None = None) -> object:
        lists_read.extend(reads.neighbours)
        return read(self, reads, version_of)

    monkeypatch.setattr(StateReader, "read", spy)
    monkeypatch.setattr(services(app).recommender.reader, "_timed", {})  # the API's timed wrappers
    # every write of the fixture heard first (a list read before its last would be read again): a view
    # of an unrelated item after them, whose message comes after theirs
    shop.views("marker", "Q")
    wait_until(lambda: shop.changes.last("Q") > 0, 2, interval=0.001, what="the fixture on the feed")
    shop.items("/v1/items/D/similar?k=5")  # D's list read, normalised and kept
    assert "D" in lists_read
    lists_read.clear()
    seq = shop.changes.seq
    shop.views("solo", "X")  # X's count moves; no list does (the shopper has no history)
    wait_until(lambda: shop.changes.seq > seq, 2, interval=0.001, what="the feed")
    assert cache.get("counts", "X") == float(redis_client.hget(keys.activity("X"), "n"))  # from the message
    time.sleep(
        0.6
    )  # one general bound on: D's list is looked at again, and goes (a count it divides by moved)
    after = shop.items("/v1/items/D/similar?k=5")
    assert "D" not in lists_read  # normalised again from the list kept: not read again
    fresh = Recommender(StateReader(redis_client, keys, ScoringSettings()), ScoringSettings())
    assert after == [r.item_id for r in fresh.similar("D", 5).items]  # the same as computed from scratch


def test_without_the_feed_a_cached_value_is_kept_only_within_the_fallback_bound(shop: Shop) -> None:
    before = shop.items("/v1/items/D/similar?k=5")
    assert "E" not in before
    shop.changes.set_subscribed(False)  # as if the feed's connection were lost: messages may be missed
    read_at = time.monotonic()
    for n in range(3):
        shop.views(f"new{n}", "D", "E")
    # the answer read before the loss is not vouched for: served within FALLBACK_MS of its read at most
    wait_until(
        lambda: "E" in shop.items("/v1/items/D/similar?k=5"),
        FALLBACK_MS / 1000 + 0.5,
        interval=0.02,
        what="E within the fallback bound",
    )
    assert time.monotonic() - read_at <= FALLBACK_MS / 1000 + 0.5


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n_items=st.integers(min_value=4, max_value=12),
    k=st.integers(min_value=1, max_value=3),
    flips=st.lists(st.tuples(st.integers(min_value=0, max_value=11), st.booleans()), min_size=5, max_size=25),
)
def test_answers_under_concurrent_stock_changes_show_no_sold_out_item_and_stay_full(
    shop: Shop, n_items: int, k: int, flips: list[tuple[int, bool]]
) -> None:
    """While a writer flips items in and out of stock (never leaving fewer than k in stock), every answer
    read has k items, none of them sold out throughout the read (the feed had heard of the sale stop
    before the read began, and the item was not back in stock before it ended)."""
    run = uuid.uuid4().hex[:6]
    category = f"cat{run}"
    items = [f"{run}-{n}" for n in range(n_items)]
    t = now_ms()
    seq = shop.changes.seq
    shop.writer.upsert_items(
        [CatalogItem(item_id=i, title=i, category=category, price=1.0, ts=t) for i in items]
    )
    for n in range(3):
        shop.views(f"{run}-u{n}", *items)
    # the feed has heard of the setup's 4 calls: a later message naming an item is a stock change's
    wait_until(lambda: shop.changes.seq >= seq + 4, 2, interval=0.001, what="the setup on the feed")
    in_stock = dict.fromkeys(items, True)
    sold_out_at: dict[str, float] = {}  # item -> when the feed had heard of its sale stop
    lock = threading.Lock()
    done = threading.Event()
    path = f"/v1/popular?k={k}&category={category}"

    def writer() -> None:
        for n, (index, stock) in enumerate(flips):
            item = items[index % n_items]
            with lock:
                if not stock and sum(in_stock.values()) - in_stock[item] < k:
                    continue  # never fewer than k usable items
                in_stock[item] = stock
                if stock:
                    sold_out_at.pop(item, None)
            before = shop.changes.seq
            shop.writer.upsert_items(
                [
                    CatalogItem(
                        item_id=item, title=item, category=category, price=1.0, in_stock=stock, ts=t + n + 1
                    )
                ]
            )
            wait_until(lambda b=before, i=item: shop.changes.last(i) > b, 2, interval=0.001, what="the feed")
            if not stock:
                with lock:
                    if not in_stock[item]:
                        sold_out_at[item] = time.monotonic()
            time.sleep(0.005)
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while not done.is_set():
            started = time.monotonic()
            with lock:
                gone = {i: at for i, at in sold_out_at.items() if at < started}
            got = shop.items(path)
            with lock:  # sold out before the read began and still, with the same sale stop, after it
                gone_throughout = {i for i, at in gone.items() if sold_out_at.get(i) == at}
            assert len(got) == k, f"{path} gave {got}: {k} usable items existed throughout"
            assert not gone_throughout & set(got), (
                f"sold out throughout the read: {gone_throughout & set(got)}"
            )
    finally:
        thread.join()
