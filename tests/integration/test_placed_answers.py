"""Placements in the recommendation endpoints (issue 28), through Flask's test client on a real Redis
with state folded by the worker's own writer (``StateWriter``): each rule's effect on a small known
catalog, the request's ``filter=``, full answers when 1 item in 500 matches, ``explain``, a placement's
strategy, and the errors (404 unknown placement, 400 for ``$regex`` naming it)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from itertools import count
from typing import Any
from urllib.parse import quote

import pytest
import redis
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamrec.api.app import create_app
from streamrec.api.extensions import placements_of
from streamrec.contract import CatalogItem, Event, now_ms
from streamrec.devtools.localstack import ManagedProcess
from streamrec.event_types import EventType
from streamrec.fold import StateWriter
from streamrec.keys import Keys
from streamrec.settings import ScoringSettings, Settings
from tests.conftest import wait_until
from tests.unit.test_placements import filter_documents, items, ref_match

pytestmark = pytest.mark.redis

ADMIN = "ak-" + uuid.uuid4().hex
AS_ADMIN = {"X-API-Key": ADMIN}
# a small known catalog: price, category and brand; popularity falls with the number (a0 most viewed)
CATALOG = [
    ("a0", 30.0, "shoes", "Rival"),
    ("a1", 12.0, "socks", "Acme"),
    ("a2", 25.0, "shoes", "Acme"),
    ("a3", 8.0, "socks", "House"),
    ("a4", 15.0, "hats", "Acme"),
    ("a5", 18.0, "socks", "Acme"),
    ("a6", 40.0, "hats", "House"),
    ("a7", 9.0, "shoes", "Acme"),
]


class Shop:
    def __init__(self, client: FlaskClient, writer: StateWriter, settings: Settings) -> None:
        self.client, self.writer, self.ids, self.settings = client, writer, count(), settings

    def items(self, path: str, **params: Any) -> list[dict[str, Any]]:
        query = "&".join(f"{k}={quote(str(v))}" for k, v in params.items())
        resp = self.client.get(f"{path}?{query}")
        assert resp.status_code == 200, resp.get_json()
        return resp.get_json()["data"]["items"]  # type: ignore[no-any-return]

    def ids_of(self, path: str, **params: Any) -> list[str]:
        return [i["item_id"] for i in self.items(path, **params)]

    def place(self, name: str, document: dict[str, Any]) -> None:
        """Create or replace a placement, and wait until this process uses it (within 1 s)."""
        resp = self.client.put(f"/v1/admin/placements/{name}", json=document, headers=AS_ADMIN)
        assert resp.status_code in (200, 201), resp.get_json()
        wait_until(
            lambda: (p := placements_of(self.client.application).get(name)) is not None
            and p.document == document,
            1.0,
            interval=0.01,
            what=f"placement {name} in effect",
        )

    def views(self, user: str, *items: str) -> None:
        t = now_ms() - 60_000
        self.writer.apply(
            [
                Event(event_id=f"e{next(self.ids)}", type=EventType.VIEW, user_id=user, item_id=i, ts=t + n)
                for n, i in enumerate(items)
            ]
        )


@pytest.fixture
def shop(redis_server: ManagedProcess, redis_client: redis.Redis) -> Iterator[Shop]:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{redis_server.port}/0",
        redis_prefix=prefix,
        api_keys=f"ops={ADMIN}:admin",
    )
    app = create_app(settings)
    keys = Keys(prefix)
    writer = StateWriter(redis_client, keys, ScoringSettings())
    t = now_ms() - 3_600_000
    writer.upsert_items(
        [
            CatalogItem(item_id=i, title=i, category=c, price=p, attributes={"brand": b}, ts=t)
            for i, p, c, b in CATALOG
        ]
    )
    shop = Shop(app.test_client(), writer, settings)
    for n, (item, *_) in enumerate(CATALOG):  # a0 viewed by 16 shoppers, a1 by 14, ...
        for u in range(16 - 2 * n):
            shop.views(f"bg{u}", item)
    yield shop
    for key in redis_client.scan_iter(match=keys.pattern(), count=1000):
        redis_client.delete(key)


def test_without_a_placement_popular_is_by_popularity(shop: Shop) -> None:
    assert shop.ids_of("/v1/popular", k=4) == ["a0", "a1", "a2", "a3"]


def test_a_price_filter_keeps_only_matching_items_and_fills_k(shop: Shop) -> None:
    shop.place("under20", {"filter": {"price": {"$lte": 20}}})
    assert shop.ids_of("/v1/popular", k=4, placement="under20") == ["a1", "a3", "a4", "a5"]


def test_a_request_filter_is_anded_with_the_placements(shop: Shop) -> None:
    shop.place("under20", {"filter": {"price": {"$lte": 20}}})
    not_acme = json.dumps({"attributes.brand": {"$ne": "Acme"}})
    assert shop.ids_of("/v1/popular", k=4, placement="under20", filter=not_acme) == ["a3"]
    assert shop.ids_of("/v1/popular", k=2, filter=not_acme) == ["a0", "a3"]


def test_a_promoted_share_takes_the_best_matching_items(shop: Shop) -> None:
    shop.place("house", {"promote": {"if": {"attributes.brand": "House"}, "share": 0.5}})
    got = shop.items("/v1/popular", k=4, placement="house", explain="true")
    # two of four slots go to House items (a3 already placed by rank; a6 is promoted over a2)
    assert [i["item_id"] for i in got] == ["a0", "a1", "a3", "a6"]
    assert "promoted" in got[3]["rules"]


def test_a_diversity_cap_holds_each_value_to_its_maximum(shop: Shop) -> None:
    shop.place("diverse", {"diversity": {"field": "category", "max_per_value": 1}})
    assert shop.ids_of("/v1/popular", k=3, placement="diverse") == ["a0", "a1", "a4"]


def test_a_pin_at_position_1_comes_first_whatever_the_filter(shop: Shop) -> None:
    shop.place("campaign", {"filter": {"price": {"$lte": 20}}, "pin": [{"item_id": "a6", "position": 1}]})
    got = shop.items("/v1/popular", k=3, placement="campaign", explain="true")
    assert [i["item_id"] for i in got] == ["a6", "a1", "a3"]
    assert got[0]["rules"] == ["pinned"]
    assert got[1]["rules"] == ["filtered in by placement campaign"]


def test_a_boost_reorders(shop: Shop) -> None:
    shop.place("hats", {"boost": [{"if": {"category": "hats"}, "multiply": 100}]})
    got = shop.items("/v1/popular", k=3, placement="hats", explain="true")
    assert [i["item_id"] for i in got][:2] == ["a4", "a6"]
    assert got[0]["rules"] == ["boosted ×100"]


def test_a_placement_applies_to_personal_and_similar_answers(shop: Shop) -> None:
    for u in range(4):
        shop.views(f"co{u}", "a0", "a2", "a4", "a7")
    shop.views("me", "a0")
    shop.place("cheap", {"filter": {"price": {"$lt": 20}}})
    price = {i: p for i, p, *_ in CATALOG}
    similar = shop.ids_of("/v1/items/a0/similar", k=3, placement="cheap")
    assert len(similar) == 3 and all(price[x] < 20 for x in similar), similar
    assert "a2" in shop.ids_of("/v1/items/a0/similar", k=3)  # without the placement, a dearer neighbour
    mine = shop.ids_of("/v1/users/me/recommendations", k=3, placement="cheap")
    assert len(mine) == 3 and all(price[x] < 20 for x in mine), mine
    # the placement's strategy decides what the slot shows
    shop.place("cheap-trending", {"strategy": "trending", "filter": {"price": {"$lt": 20}}})
    resp = shop.client.get("/v1/users/me/recommendations?k=3&placement=cheap-trending")
    assert resp.get_json()["data"]["strategy"] == "trending"
    assert resp.get_json()["data"]["placement"] == "cheap-trending"


def test_answers_stay_full_when_only_1_item_in_500_matches(shop: Shop) -> None:
    t = now_ms() - 3_600_000
    many = [
        CatalogItem(
            item_id=f"m{n}", title="m", category="bulk", price=5.0, attributes={"rare": n % 500 == 0}, ts=t
        )
        for n in range(5000)
    ]
    shop.writer.upsert_items(many)
    users = count()
    batch = []
    for n in range(5000):  # every bulk item viewed once, so popularity holds all 5,000
        batch.append(
            Event(
                event_id=f"m{n}",
                type=EventType.VIEW,
                user_id=f"b{next(users) % 300}",
                item_id=f"m{n}",
                ts=t + n,
            )
        )
    shop.writer.apply(batch)
    rare = json.dumps({"attributes.rare": True})
    for path in ("/v1/popular", "/v1/trending", "/v1/users/nobody/recommendations"):
        got = shop.ids_of(path, k=10, filter=rare)
        assert len(got) == 10, (path, got)
        assert all(int(i[1:]) % 500 == 0 for i in got), (path, got)


def test_unknown_placements_and_bad_filters_are_named(shop: Shop) -> None:
    resp = shop.client.get("/v1/popular?placement=nope")
    assert resp.status_code == 404 and "nope" in resp.get_json()["msg"]
    resp = shop.client.get("/v1/popular?filter=" + quote(json.dumps({"title": {"$regex": "^a"}})))
    assert resp.status_code == 400
    body = resp.get_json()
    assert "$regex" in body["msg"] and body["details"]["path"] == "$.title.$regex"
    resp = shop.client.get("/v1/popular?filter=" + quote("{not json"))
    assert resp.status_code == 400 and "filter" in resp.get_json()["msg"]
    resp = shop.client.get("/v1/popular?placement=x", headers={})
    assert resp.status_code == 404


def test_a_change_is_in_effect_in_another_api_process_within_1_s(shop: Shop) -> None:
    other = create_app(shop.settings).test_client()  # another process's app: its own placement cache
    shop.place("shelf", {"filter": {"price": {"$lte": 20}}})
    wait_until(
        lambda: other.get("/v1/popular?k=2&placement=shelf").status_code == 200, 1.0, what="the new placement"
    )
    assert [
        i["item_id"] for i in other.get("/v1/popular?k=2&placement=shelf").get_json()["data"]["items"]
    ] == [
        "a1",
        "a3",
    ]
    started = time.monotonic()
    resp = shop.client.put(
        "/v1/admin/placements/shelf", json={"filter": {"price": {"$gte": 20}}}, headers=AS_ADMIN
    )
    assert resp.status_code == 200

    def changed() -> bool:
        got = other.get("/v1/popular?k=2&placement=shelf").get_json()["data"]["items"]
        return [i["item_id"] for i in got] == ["a0", "a2"]

    wait_until(changed, 1.0, interval=0.01, what="the change in the other process")
    assert time.monotonic() - started <= 1.0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    catalog=st.lists(items, min_size=5, max_size=25),
    documents=st.lists(filter_documents, min_size=3, max_size=3),
)
def test_filtered_answers_agree_with_the_reference_evaluator_on_the_real_stack(
    shop: Shop, catalog: list[dict[str, Any]], documents: list[dict[str, Any]]
) -> None:
    # each example its own deployment (a prefix of its own, no change feed thread to leave behind)
    settings = shop.settings.model_copy(
        update={"redis_prefix": f"h{uuid.uuid4().hex[:8]}", "api_change_feed": False}
    )
    client = create_app(settings).test_client()
    writer = StateWriter(shop.writer.client, Keys(settings.redis_prefix), ScoringSettings())
    t = now_ms() - 3_600_000
    writer.upsert_items([CatalogItem(item_id=f"i{n}", ts=t, **item) for n, item in enumerate(catalog)])
    writer.apply(
        [
            Event(event_id=f"v{n}", type=EventType.VIEW, user_id="u", item_id=f"i{n}", ts=t + n)
            for n in range(len(catalog))
        ]
    )
    try:
        for document in documents:
            resp = client.get("/v1/popular?k=100&filter=" + quote(json.dumps(document)))
            assert resp.status_code == 200, resp.get_json()
            got = {i["item_id"] for i in resp.get_json()["data"]["items"]}
            expected = {
                f"i{n}" for n, item in enumerate(catalog) if item["in_stock"] and ref_match(item, document)
            }
            assert got == expected, document
    finally:
        for key in shop.writer.client.scan_iter(match=f"{settings.redis_prefix}:*", count=1000):
            shop.writer.client.delete(key)


def test_a_boost_on_a_personal_placement_keeps_the_shoppers_own_recommendations_first(shop: Shop) -> None:
    # a new user's find: fill-ins from popularity (hundreds of times a co-occurrence score) jumped above
    # the shopper's own recommendations once a boost re-sorted the pool
    for u in range(4):
        shop.views(f"co{u}", "a6", "a2")
    shop.views("me", "a6")
    plain = shop.items("/v1/users/me/recommendations", k=5, explain="true")
    assert plain[0]["item_id"] == "a2" and plain[0]["source"] == "item_to_item"
    shop.place("boosted", {"strategy": "personal", "boost": [{"if": {"category": "socks"}, "multiply": 1.5}]})
    got = shop.items("/v1/users/me/recommendations", k=5, explain="true", placement="boosted")
    assert got[0]["item_id"] == "a2" and got[0]["source"] == "item_to_item", got
    resp = shop.client.get("/v1/users/me/recommendations?k=5&placement=boosted")
    assert resp.get_json()["data"]["strategy"] == "personalized"
