"""Shoppers who react to answers: deterministic for a seed, drawn from their hidden tastes, bounded and
documented probabilities, well-formed events; tastes a personal strategy can learn from the warm-up; the
runner with a fake API and a fake publisher."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from streamrec.contract import CatalogItem, Event, ItemDeletion, UserErasure
from streamrec.event_types import EventType
from streamrec.keys import Keys
from streamrec.producers.react import (
    NO_VARIANT,
    P_CART_TOP,
    P_VIEW_TOP,
    PRICE_FLOOR,
    FoldWatch,
    PriceBook,
    ReactError,
    RecommendationsApi,
    Shown,
    ShownItem,
    Tally,
    affinity,
    buy_probability,
    cart_probability,
    category_affinity,
    price_factor,
    react,
    read_answer,
    run_reactions,
    view_probability,
)
from streamrec.producers.simulate import CATEGORIES, Shopper, make_catalog, make_shoppers, simulate_events

START = 1_700_000_000_000
BOOKS_FAN = Shopper("fan", {"books": 1.0}, price_sensitivity=0.0, buy_propensity=0.5)


def items_of(catalog: list[CatalogItem], category: str, n: int = 10) -> tuple[ShownItem, ...]:
    return tuple(
        ShownItem(i.item_id, i.category, i.price, i.in_stock) for i in catalog if i.category == category
    )[:n]


@pytest.fixture(scope="module")
def catalog() -> list[CatalogItem]:
    return make_catalog(400, seed=3, ts_ms=START)


@pytest.fixture(scope="module")
def book(catalog: list[CatalogItem]) -> PriceBook:
    return PriceBook.of(catalog)


def test_reactions_are_deterministic_for_a_seed(catalog: list[CatalogItem], book: PriceBook) -> None:
    shown = Shown("personal.abc", items_of(catalog, "books"))
    runs = [react(BOOKS_FAN, shown, random.Random(s), START, "p", book) for s in (1, 1, 2)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_an_answer_without_items_gives_no_events() -> None:
    assert react(BOOKS_FAN, Shown("popular.x", ()), random.Random(0), START, "p") == []


def test_a_shopper_reacts_far_more_to_the_categories_they_like(
    catalog: list[CatalogItem], book: PriceBook
) -> None:
    liked, other = Shown("r", items_of(catalog, "books")), Shown("r", items_of(catalog, "toys"))
    counts = {"liked": Counter[str](), "other": Counter[str]()}
    for n in range(500):
        for name, shown in (("liked", liked), ("other", other)):
            counts[name].update(
                e.type.value for e in react(BOOKS_FAN, shown, random.Random(n), START, "p", book)
            )
    assert counts["liked"]["view"] > 10 * counts["other"]["view"] > 0
    assert counts["liked"]["add_to_cart"] > counts["liked"]["purchase"] > counts["other"]["purchase"]
    assert category_affinity(BOOKS_FAN, "books") == 1.0
    assert category_affinity(BOOKS_FAN, "toys") == pytest.approx(0.1 / len(CATEGORIES) / (0.9 + 0.1 / 8))
    assert category_affinity(BOOKS_FAN, None) == category_affinity(BOOKS_FAN, "toys")


def test_probabilities_are_bounded_and_fall_with_position(
    catalog: list[CatalogItem], book: PriceBook
) -> None:
    shoppers = make_shoppers(200, seed=5)
    for shopper in shoppers:
        assert 0.0 <= buy_probability(shopper) <= 1.0
        assert max(category_affinity(shopper, c) for c in CATEGORIES) == pytest.approx(1.0)
        for item in catalog[:40]:
            shown = ShownItem(item.item_id, item.category, item.price, item.in_stock)
            a = affinity(shopper, shown, book)
            assert 0.0 < a <= 1.0
            views = [view_probability(shopper, shown, p, book) for p in range(10)]
            assert all(0.0 < v <= P_VIEW_TOP for v in views)
            assert views == sorted(views, reverse=True)
            assert 0.0 <= cart_probability(shopper, shown, book) <= P_CART_TOP
    with pytest.raises(ValueError, match="position"):
        view_probability(BOOKS_FAN, ShownItem("x"), -1, book)


def test_price_counts_for_price_sensitive_shoppers_only() -> None:
    thrifty = Shopper("t", {"books": 1.0}, price_sensitivity=1.5, buy_propensity=0.5)
    assert price_factor(BOOKS_FAN, 5.0) == 1.0
    assert price_factor(thrifty, 2.0) == pytest.approx(2.0**-1.5)
    assert price_factor(thrifty, 0.5) == 1.0  # cheap is never more appealing than liked
    assert price_factor(thrifty, 1000.0) == PRICE_FLOOR
    assert price_factor(thrifty, None) == 1.0
    book = PriceBook.of(
        [
            CatalogItem(item_id=i, category="books", price=p, ts=START)
            for i, p in (("a", 5), ("b", 10), ("c", 40))
        ]
    )
    assert book.ratio == {"a": 0.5, "b": 1.0, "c": 4.0} and book.price["c"] == 40.0


def test_nothing_is_carted_without_stock_or_a_price() -> None:
    assert cart_probability(BOOKS_FAN, ShownItem("x", "books", 9.0, in_stock=False), PriceBook()) == 0.0
    assert cart_probability(BOOKS_FAN, ShownItem("x", "books", None), PriceBook()) == 0.0
    assert cart_probability(BOOKS_FAN, ShownItem("x", "books", None), PriceBook({"x": 9.0}, {})) > 0.0


def test_every_event_cites_the_answer_and_purchases_carry_price_and_quantity(
    catalog: list[CatalogItem], book: PriceBook
) -> None:
    shoppers = make_shoppers(60, seed=9)
    answer = Shown(
        "personal.0123", tuple(ShownItem(i.item_id, i.category, i.price, i.in_stock) for i in catalog[:12])
    )
    seen: Counter[str] = Counter()
    for n, shopper in enumerate(shoppers * 10):
        events = react(shopper, answer, random.Random(n), START, f"rx-{n}", book)
        seen.update(e.type.value for e in events)
        assert len({e.event_id for e in events}) == len(events)
        assert [e.ts for e in events] == list(range(START, START + len(events)))
        carts = {}
        for e in events:
            assert e.recommendation_id == "personal.0123" and e.user_id == shopper.user_id
            assert e.session_id == f"rx-{n}" and e.event_id.startswith(f"rx-{n}-")
            if e.type is EventType.VIEW:
                assert e.quantity is None and e.price is None
            elif e.type is EventType.ADD_TO_CART:
                carts[e.item_id] = (e.quantity, e.price)
            else:
                assert e.type is EventType.PURCHASE
                assert carts[e.item_id] == (e.quantity, e.price)  # bought what was carted, as carted
                assert e.quantity in (1.0, 2.0) and e.price == book.price[e.item_id or ""] > 0
    assert seen["view"] > seen["add_to_cart"] > seen["purchase"] > 0


def test_the_answer_is_read_with_its_variant() -> None:
    data: dict[str, Any] = {
        "recommendation_id": "personal.1",
        "strategy": "personal",
        "items": [
            {"item_id": "a", "category": "books", "price": 9.5, "in_stock": True, "score": 1.0},
            {"item_id": "b", "category": None, "price": None, "in_stock": False},
        ],
        "placement": "home",
    }
    plain = read_answer({"code": 0, "msg": "ok", "data": data})
    assert plain == Shown(
        "personal.1",
        (ShownItem("a", "books", 9.5), ShownItem("b", None, None, False)),
        NO_VARIANT,
        "personal",
    )
    split = read_answer({"data": {**data, "experiment": {"name": "home-ab", "variant": "popular"}}})
    assert split.variant == "popular"
    for bad in ({}, {"data": []}, {"data": {"items": []}}, {"data": {"recommendation_id": "r"}}):
        with pytest.raises(ValueError):
            read_answer(bad)
    with pytest.raises(ValueError, match="item_id"):
        read_answer({"data": {"recommendation_id": "r", "items": [{"price": 1}]}})


def test_the_tally_counts_answers_events_and_revenue_per_variant() -> None:
    tally = Tally()
    a, b = (
        Shown("r1", (ShownItem("x"),), "personal"),
        Shown("r2", (ShownItem("x"), ShownItem("y")), "popular"),
    )
    bought = Event(event_id="e3", type="purchase", user_id="u1", item_id="x", quantity=2, price=7.5, ts=START)
    viewed = Event(event_id="e1", type="view", user_id="u1", item_id="x", ts=START)
    tally.add("u1", a, [viewed, bought])
    tally.add("u1", a, [])
    tally.add("u2", b, [viewed.model_copy(update={"user_id": "u2"})])
    personal, popular = tally.variants["personal"], tally.variants["popular"]
    assert (len(personal.shoppers), personal.answers, personal.shown, personal.revenue) == (1, 2, 2, 15.0)
    assert (len(popular.shoppers), popular.answers, popular.shown, popular.revenue) == (1, 1, 2, 0.0)
    assert tally.events() == Counter({"view": 2, "purchase": 1}) and tally.revenue() == 15.0
    assert tally.crossed() == 0
    lines = tally.lines()
    assert lines[0].split() == [
        "variant",
        "shoppers",
        "answers",
        "views",
        "carts",
        "purchases",
        "revenue",
        "rev/answer",
    ]
    assert lines[1].split() == ["personal", "1", "2", "1", "0", "1", "15.00", "7.50"]
    tally.add("u1", b, [])
    assert (
        tally.crossed() == 1 and tally.lines()[-1] == "1 shoppers were answered under more than one variant"
    )


@pytest.mark.parametrize("url", ["localhost:8000", "ftp://127.0.0.1", "http://"])
def test_an_api_address_that_is_not_one_is_said_so(url: str) -> None:
    with pytest.raises(ReactError, match="is not an API address"):
        RecommendationsApi(url).check()


class FakeRedis:
    """The watermark hash of the one-Redis schedule, moved by ``fold`` each time the watch sleeps."""

    def __init__(self, keys: Keys, fold: Callable[[dict[str, str]], None]) -> None:
        self.name, self.hash, self.fold = keys.watermark(), {}, fold

    def exists(self, name: str) -> int:
        return int(name == self.name and bool(self.hash))

    def scan_iter(self, match: str, count: int) -> list[str]:
        return []

    def hgetall(self, name: str) -> dict[str, str]:
        return dict(self.hash) if name == self.name else {}


class Clock:
    def __init__(self, redis: FakeRedis) -> None:
        self.now, self.redis = 0.0, redis

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.redis.fold(self.redis.hash)


def watch(fold: Callable[[dict[str, str]], None], **kwargs: float) -> tuple[FoldWatch, Clock]:
    keys = Keys("t")
    redis = FakeRedis(keys, fold)
    clock = Clock(redis)
    return FoldWatch(redis, keys, clock=lambda: clock.now, sleep=clock.sleep, **kwargs), clock


def test_the_fold_watch_waits_for_the_offsets_published() -> None:
    def fold(marks: dict[str, str]) -> None:  # one record of each partition per step
        for p in ("0", "1"):
            marks[f"ev:{p}"] = str(int(marks.get(f"ev:{p}", "-1")) + 1)

    w, clock = watch(fold, timeout_s=120, stall_s=5, interval_s=1)
    assert w.behind({0: 9, 1: 4}) == 15
    assert w({0: 9, 1: 4}) == 0 and clock.now == 10  # offsets 0..9 of partition 0 took ten steps
    assert w({0: 9, 1: 4}) == 0 and clock.now == 10  # already folded: no wait


def test_the_fold_watch_gives_up_when_nothing_is_folded_or_time_is_up() -> None:
    w, clock = watch(lambda marks: None, timeout_s=120, stall_s=5, interval_s=1)
    assert w({0: 9}) == 10 and clock.now == 5  # no worker: gives up after the stall, not the timeout

    def slow(marks: dict[str, str]) -> None:
        marks["ev:0"] = str(int(marks.get("ev:0", "-1")) + 1)

    w, clock = watch(slow, timeout_s=30, stall_s=5, interval_s=1)
    assert w({0: 99}) == 70 and clock.now == 30  # folding, but slower than the timeout


def expected_views(shopper: Shopper, items: list[CatalogItem], book: PriceBook) -> float:
    shown = [ShownItem(i.item_id, i.category, i.price, i.in_stock) for i in items]
    return sum(view_probability(shopper, s, p, book) for p, s in enumerate(shown))


def test_tastes_are_learnable_from_the_warm_up_history(catalog: list[CatalogItem], book: PriceBook) -> None:
    """A personal strategy as simple as 'the shopper's most viewed categories, most popular items first'
    learned from the warm-up (the shoppers' own sessions) is viewed far more than popular only."""
    n_users = 100
    history = list(simulate_events(catalog, n_users, 6_000, seed=3, start_ts_ms=START))
    by_id = {i.item_id: i for i in catalog}
    popularity = Counter(e.item_id for e in history if e.item_id)
    ranked = sorted(catalog, key=lambda i: -popularity[i.item_id])
    categories: dict[str, Counter[str]] = {}
    for e in history:
        if e.item_id:
            categories.setdefault(e.user_id, Counter())[by_id[e.item_id].category] += 1
    personal, popular = [], []
    for shopper in make_shoppers(n_users, seed=3):
        liked = [c for c, _ in categories.get(shopper.user_id, Counter()).most_common(2)]
        mine = [i for i in ranked if i.category in liked][:10]
        personal.append(expected_views(shopper, mine, book))
        popular.append(expected_views(shopper, ranked[:10], book))
    assert sum(personal) > 2 * sum(popular)
    assert sum(p > q for p, q in zip(personal, popular, strict=True)) > 0.9 * n_users


class Acked:
    """A delivery future the broker already acknowledged: callbacks run at once."""

    def __init__(self, metadata: SimpleNamespace) -> None:
        self.metadata = metadata

    def add_callback(self, fn: Callable[[SimpleNamespace], None]) -> None:
        fn(self.metadata)


class FakePublisher:
    """Collects what would go to Kafka."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.items: list[CatalogItem] = []
        self.ends: Counter[int] = Counter()
        self.failed = 0
        self.flushes = 0

    def publish_event(self, event: Event) -> Acked:
        self.events.append(event)
        partition = len(self.events) % 2
        self.ends[partition] += 1
        return Acked(SimpleNamespace(partition=partition, offset=self.ends[partition] - 1))

    def publish_item(self, item: CatalogItem) -> None:
        self.items.append(item)

    def publish_deletion(self, deletion: ItemDeletion) -> None:
        raise AssertionError("not expected")

    def publish_erasure(self, erasure: UserErasure) -> None:
        raise AssertionError("not expected")

    def flush(self, timeout: float | None = None) -> None:
        self.flushes += 1


class FakeApi:
    """Answers like an experiment on a placement: shoppers split by id, 'personal' shows their favourite
    category, 'popular' the first items of the catalog."""

    def __init__(self, catalog: list[CatalogItem], shoppers: list[Shopper]) -> None:
        self.catalog = catalog
        self.tastes = {s.user_id: s.taste for s in shoppers}
        self.asked: Counter[str] = Counter()
        self.fail_for: str | None = None

    def __call__(self, user_id: str) -> Shown:
        if user_id == self.fail_for:
            raise ReactError("the API answered 503")
        self.asked[user_id] += 1
        variant = "personal" if int(user_id[-1]) % 2 else "popular"
        if variant == "personal":
            favourite = max(self.tastes[user_id], key=self.tastes[user_id].__getitem__)
            items = [i for i in self.catalog if i.category == favourite][:10]
        else:
            items = self.catalog[:10]
        shown = tuple(ShownItem(i.item_id, i.category, i.price, i.in_stock) for i in items)
        return Shown(f"{variant}.{self.asked[user_id]}", shown, variant, variant)


def test_the_runner_warms_up_then_asks_reacts_and_publishes_in_rounds() -> None:
    n_users, n_items = 40, 120
    shoppers = make_shoppers(n_users, seed=4)
    api = FakeApi(make_catalog(n_items, seed=4, ts_ms=START), shoppers)
    publisher, lines = FakePublisher(), []
    waits: list[tuple[dict[int, int], int]] = []
    report = run_reactions(
        publisher,  # type: ignore[arg-type]
        api,
        n_users=n_users,
        n_items=n_items,
        n_events=800,
        seed=4,
        rounds=3,
        wait_folded=lambda offsets: waits.append((dict(offsets), len(publisher.events))) or 0,
        concurrency=4,
        progress=False,
        say=lines.append,
    )
    assert report.warmup.events == 800 and report.warmup.items == n_items and len(publisher.items) == n_items
    # after the warm-up and after each round, for every event published so far
    assert len(waits) == 4 and waits[0] == ({0: 399, 1: 399}, 800)
    assert all(sum(last + 1 for last in offsets.values()) == sent for offsets, sent in waits)
    assert waits[-1][1] == len(publisher.events) > 800
    assert api.asked == Counter({s.user_id: 3 for s in shoppers})
    reactions = publisher.events[800:]
    assert all(e.recommendation_id for e in reactions) and not any(
        e.recommendation_id for e in publisher.events[:800]
    )
    tally = report.tally
    assert sum(v.answers for v in tally.variants.values()) == 3 * n_users
    assert {n: len(v.shoppers) for n, v in tally.variants.items()} == {"personal": 20, "popular": 20}
    assert tally.events() == Counter(e.type.value for e in reactions)
    bought = [(e.price or 0.0) * (e.quantity or 0.0) for e in reactions if e.type is EventType.PURCHASE]
    assert bought and tally.revenue() == pytest.approx(sum(bought))
    assert tally.variants["personal"].events["view"] > 2 * tally.variants["popular"].events["view"]
    assert [line.split(":")[0] for line in lines] == ["round 1/3", "round 2/3", "round 3/3"]
    assert report.failed == 0 and report.behind == 0


def test_the_runner_stops_at_the_first_api_error() -> None:
    shoppers = make_shoppers(10, seed=1)
    api = FakeApi(make_catalog(50, seed=1, ts_ms=START), shoppers)
    api.fail_for = shoppers[3].user_id
    publisher = FakePublisher()
    with pytest.raises(ReactError, match="503"):
        run_reactions(publisher, api, 10, 50, 100, seed=1, rounds=2, progress=False, say=lambda _: None)  # type: ignore[arg-type]
    assert all(e.user_id in {s.user_id for s in shoppers[:3]} for e in publisher.events[100:])
