"""The synthetic shop: deterministic, complete, and its shoppers' hidden tastes show in what they do."""

from __future__ import annotations

from collections import Counter

import pytest

from streamrec.contract import CatalogItem, Event
from streamrec.event_types import EventType
from streamrec.producers.simulate import CATEGORIES, make_catalog, make_shoppers, simulate_events

START = 1_700_000_000_000
HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def catalog() -> list[CatalogItem]:
    return make_catalog(400, seed=3, ts_ms=START)


@pytest.fixture(scope="module")
def events(catalog: list[CatalogItem]) -> list[Event]:
    return list(simulate_events(catalog, n_users=120, n_events=8_000, seed=3, start_ts_ms=START))


def test_catalog_is_deterministic_and_covers_every_category() -> None:
    first, again = make_catalog(100, seed=1, ts_ms=START), make_catalog(100, seed=1, ts_ms=START)
    assert first == again
    assert first != make_catalog(100, seed=2, ts_ms=START)
    assert {item.category for item in first} == set(CATEGORIES)
    assert len({item.item_id for item in first}) == 100
    assert all(item.price is not None and item.price > 0 for item in first)
    assert all(item.image_url == f"/static/img/{item.item_id}.svg" for item in first)
    assert sum(item.in_stock for item in first) > 80
    for item in first:
        assert item.attributes["kind"] in CATEGORIES[item.category].kinds
        assert item.attributes["kind"] in item.title.lower()


def test_events_are_deterministic_for_a_seed(catalog: list[CatalogItem]) -> None:
    run = list(simulate_events(catalog, n_users=30, n_events=500, seed=7, start_ts_ms=START))
    assert run == list(simulate_events(catalog, n_users=30, n_events=500, seed=7, start_ts_ms=START))
    assert run != list(simulate_events(catalog, n_users=30, n_events=500, seed=8, start_ts_ms=START))


def test_exact_count_time_order_and_unique_ids(events: list[Event]) -> None:
    assert len(events) == 8_000
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    assert len({e.event_id for e in events}) == len(events)
    assert events[0].ts >= START
    # Sized to fill about a day by default.
    assert 12 * HOUR_MS < events[-1].ts - events[0].ts < 36 * HOUR_MS


def test_every_event_type_appears_and_searches_use_catalog_words(events: list[Event]) -> None:
    counts = Counter(e.type for e in events)
    assert set(counts) == set(EventType)
    assert counts[EventType.VIEW] > counts[EventType.ADD_TO_CART] > counts[EventType.PURCHASE]
    vocabulary = {w for words in CATEGORIES.values() for w in (*words.kinds, *words.adjectives)}
    searches = [e for e in events if e.type is EventType.SEARCH]
    assert all(e.query and e.item_id is None for e in searches)
    assert all(set(e.query.split()) <= vocabulary for e in searches if e.query)


def test_a_search_is_followed_by_items_matching_it(catalog: list[CatalogItem], events: list[Event]) -> None:
    kind_of = {item.item_id: item.attributes["kind"] for item in catalog}
    by_session: dict[str | None, list[Event]] = {}
    for e in events:
        by_session.setdefault(e.session_id, []).append(e)
    matched = total = 0
    for session in by_session.values():
        if session[0].type is EventType.SEARCH and len(session) > 1 and session[0].query:
            total += 1
            matched += kind_of[session[1].item_id or ""] == session[0].query.split()[-1]
    assert total > 50
    assert matched == total


def test_carts_and_purchases_carry_price(catalog: list[CatalogItem], events: list[Event]) -> None:
    price = {item.item_id: item.price for item in catalog}
    for e in events:
        if e.type in (EventType.ADD_TO_CART, EventType.PURCHASE):
            assert e.quantity == 1.0
            assert e.price == price[e.item_id or ""]


def test_views_concentrate_in_liked_categories(catalog: list[CatalogItem], events: list[Event]) -> None:
    """About nine views in ten fall in liked categories, against roughly a quarter by chance."""
    category = {item.item_id: item.category for item in catalog}
    taste = {s.user_id: s.taste for s in make_shoppers(120, seed=3)}
    views = [e for e in events if e.type is EventType.VIEW]
    liked = sum(category[e.item_id or ""] in taste[e.user_id] for e in views)
    chance = sum(len(taste[e.user_id]) / len(CATEGORIES) for e in views)
    assert liked / len(views) > 0.8
    assert chance / len(views) < 0.4
    # And each shopper's most-viewed category is one they like.
    per_user: dict[str, Counter[str]] = {}
    for e in views:
        per_user.setdefault(e.user_id, Counter())[category[e.item_id or ""]] += 1
    hits = sum(counts.most_common(1)[0][0] in taste[user] for user, counts in per_user.items())
    assert hits / len(per_user) > 0.9


def test_price_sensitive_shoppers_view_cheaper_items(catalog: list[CatalogItem], events: list[Event]) -> None:
    price = {item.item_id: item.price or 0.0 for item in catalog}
    median = {}
    for cat in CATEGORIES:
        prices = sorted(item.price or 0.0 for item in catalog if item.category == cat)
        median[cat] = prices[len(prices) // 2]
    category = {item.item_id: item.category for item in catalog}
    sensitivity = {s.user_id: s.price_sensitivity for s in make_shoppers(120, seed=3)}

    def share_below_median(sensitive: bool) -> float:
        views = [
            e
            for e in events
            if e.type is EventType.VIEW and (sensitivity[e.user_id] >= 1.0) == sensitive and e.item_id
        ]
        cheap = sum(price[e.item_id] < median[category[e.item_id]] for e in views if e.item_id)
        return cheap / len(views)

    assert share_below_median(True) > share_below_median(False) + 0.1


class _RefusingPublisher:
    """Counts records the way EventPublisher does, with the broker refusing every third event."""

    def __init__(self) -> None:
        self.failed = 0
        self.events = 0

    def publish_item(self, item: object) -> None:
        pass

    def publish_event(self, event: object) -> None:
        self.events += 1
        if self.events % 3 == 0:
            self.failed += 1

    def flush(self, timeout: float | None = None) -> None:
        pass


def test_publish_stream_reports_records_the_broker_refused() -> None:
    from streamrec.publisher import publish_stream

    catalog = make_catalog(5, seed=1, ts_ms=1_700_000_000_000)
    events = list(simulate_events(catalog, n_users=3, n_events=9, seed=1, start_ts_ms=1_700_000_000_000))
    publisher = _RefusingPublisher()
    publisher.failed = 4  # failures from before this publish are not this report's
    report = publish_stream(publisher, catalog, events, progress=False)  # type: ignore[arg-type]
    assert (report.events, report.items, report.failed) == (9, 5, 3)
