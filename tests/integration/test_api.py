"""The HTTP API through Flask's test client, on a real Redis, with a fake publisher in place of Kafka."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from streamrec.api.app import create_app
from streamrec.contract import CatalogItem, Event, ItemDeletion, UserErasure, now_ms
from streamrec.devtools.localstack import ManagedProcess, free_port
from streamrec.event_types import EventType
from streamrec.fold import StateWriter
from streamrec.keys import Keys
from streamrec.settings import DAY_MS, Settings

pytestmark = pytest.mark.redis

T0 = int(time.time() * 1000) - DAY_MS


class Delivery:
    """A delivery future as kafka-python hands back: ``get`` returns, or raises what went wrong."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    def get(self, timeout: float | None = None) -> None:
        if self.error:
            raise self.error


class FakePublisher:
    """Collects what the API would send to Kafka."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.items: list[CatalogItem] = []
        self.deletions: list[ItemDeletion] = []
        self.erasures: list[UserErasure] = []
        self.flushes = 0

    def publish_event(self, event: Event) -> Delivery:
        self.events.append(event)
        return Delivery()

    def publish_item(self, item: CatalogItem) -> Delivery:
        self.items.append(item)
        return Delivery()

    def publish_deletion(self, deletion: ItemDeletion) -> Delivery:
        self.deletions.append(deletion)
        return Delivery()

    def publish_erasure(self, erasure: UserErasure) -> Delivery:
        self.erasures.append(erasure)
        return Delivery()

    def flush(self, timeout: float | None = None) -> None:
        self.flushes += 1


class BrokenPublisher(FakePublisher):
    """A publisher whose broker never acknowledges."""

    def flush(self, timeout: float | None = None) -> None:
        raise TimeoutError("no broker acknowledged within the timeout")


class UndeliveredPublisher(FakePublisher):
    """Flushes fine, but the broker refused the records (flush does not raise for that)."""

    def publish_event(self, event: Event) -> Delivery:
        super().publish_event(event)
        return Delivery(RuntimeError("NotEnoughReplicas"))


class Api:
    def __init__(self, app: Flask, publisher: FakePublisher, keys: Keys, settings: Settings) -> None:
        self.app, self.publisher, self.keys, self.settings = app, publisher, keys, settings
        self.client: FlaskClient = app.test_client()


def build(settings: Settings, publisher: FakePublisher | None = None) -> tuple[Flask, FakePublisher]:
    pub = publisher or FakePublisher()
    return create_app(settings, publisher_factory=lambda s: pub), pub


@pytest.fixture
def api(redis_server: ManagedProcess, redis_client: redis.Redis) -> Iterator[Api]:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_prefix=prefix, redis_url=f"redis://127.0.0.1:{redis_server.port}/0")
    app, pub = build(settings)
    yield Api(app, pub, Keys(prefix), settings)
    app.extensions["streamrec"].redis.close()
    for key in redis_client.scan_iter(match=f"{prefix}:*", count=1000):
        redis_client.delete(key)


def seed_shop(api: Api, redis_client: redis.Redis) -> None:
    """Shoppers view 'a' then one of b, c, d; 'd' is out of stock; 'me' viewed 'a'."""
    writer = StateWriter(redis_client, api.keys, api.settings.scoring)
    writer.upsert_items(
        [
            CatalogItem(
                item_id=i,
                title=f"Item {i}",
                category="shoes",
                price=12.5,
                image_url=f"/static/img/{i}.svg",
                in_stock=i != "d",
                ts=T0,
            )
            for i in "abcd"
        ]
    )
    events = []
    for n, item in enumerate("bcd"):
        for j, it in enumerate(("a", item)):
            events.append(
                Event(
                    event_id=f"{n}-{j}",
                    type=EventType.VIEW,
                    user_id=f"u{n}",
                    item_id=it,
                    ts=T0 + n * 1000 + j,
                )
            )
    events.append(Event(event_id="me-1", type=EventType.VIEW, user_id="me", item_id="a", ts=T0 + 10_000))
    writer.apply(events)


def body(resp: Any) -> dict[str, Any]:
    assert resp.mimetype == "application/json", resp.get_data(as_text=True)[:200]
    data: dict[str, Any] = orjson.loads(resp.get_data())
    return data


def assert_error(resp: Any, status: int, code: int, *words: str) -> dict[str, Any]:
    payload = body(resp)
    assert resp.status_code == status, payload
    assert payload["code"] == code
    assert isinstance(payload["msg"], str) and payload["msg"]
    assert "Traceback" not in resp.get_data(as_text=True)
    for word in words:
        assert word in payload["msg"], payload["msg"]
    return payload


def event_row(**over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"event_id": uuid.uuid4().hex, "type": "view", "user_id": "u1", "item_id": "i1"}
    row.update(over)
    return row


# --- recommendations --------------------------------------------------------------------------------


def test_recommendations_envelope_and_enriched_items(api: Api, redis_client: redis.Redis) -> None:
    seed_shop(api, redis_client)
    resp = api.client.get("/v1/users/me/recommendations?k=2")
    payload = body(resp)
    assert resp.status_code == 200
    assert set(payload) == {"code", "msg", "data"}
    assert (payload["code"], payload["msg"]) == (0, "ok")
    data = payload["data"]
    strategy, _, token = data["recommendation_id"].partition(".")  # names its strategy, for attribution
    assert strategy == data["strategy"] and len(token) == 32
    assert data["strategy"] == "personalized"
    assert "model_version" in data
    assert data["user_id"] == "me"
    # a seen, d out of stock; c after b, as its pair with a is newer (decay)
    assert [i["item_id"] for i in data["items"]] == ["c", "b"]
    first = data["items"][1]
    assert first["title"] == "Item b"
    assert first["price"] == 12.5
    assert first["image_url"] == "/static/img/b.svg"
    assert first["category"] == "shoes"
    assert first["in_stock"] is True
    assert first["score"] > 0
    assert "reason" not in first


def test_each_answer_gets_a_fresh_recommendation_id(api: Api) -> None:
    one = body(api.client.get("/v1/users/x/recommendations"))["data"]["recommendation_id"]
    two = body(api.client.get("/v1/users/x/recommendations"))["data"]["recommendation_id"]
    assert one != two


def test_explain_adds_the_reason(api: Api, redis_client: redis.Redis) -> None:
    seed_shop(api, redis_client)
    items = body(api.client.get("/v1/users/me/recommendations?k=2&explain=true"))["data"]["items"]
    assert [(i["reason"], i["source"]) for i in items] == [("viewed together with a", "item_to_item")] * 2


def test_unknown_user_gets_popular(api: Api, redis_client: redis.Redis) -> None:
    seed_shop(api, redis_client)
    data = body(api.client.get("/v1/users/stranger/recommendations?k=3"))["data"]
    assert data["strategy"] == "popular"
    assert [i["item_id"] for i in data["items"]] == [
        "a",
        "c",
        "b",
    ]  # a: 4 views; then the newest single views


def test_category_and_exclude_parameters(api: Api, redis_client: redis.Redis) -> None:
    seed_shop(api, redis_client)
    data = body(api.client.get("/v1/users/me/recommendations?k=5&exclude=b"))["data"]
    assert [i["item_id"] for i in data["items"]] == ["c"]
    data = body(api.client.get("/v1/users/me/recommendations?k=5&category=hats"))["data"]
    assert data["items"] == []


def test_similar_popular_and_trending(api: Api, redis_client: redis.Redis) -> None:
    seed_shop(api, redis_client)
    similar = body(api.client.get("/v1/items/a/similar?k=5&explain=true"))["data"]
    assert similar["item_id"] == "a"
    assert [i["item_id"] for i in similar["items"]] == ["c", "b"]  # the newer pair first (decay)
    assert similar["items"][0]["reason"] == "customers also viewed"
    popular = body(api.client.get("/v1/popular?k=2&category=shoes"))["data"]
    assert (popular["category"], [i["item_id"] for i in popular["items"]]) == ("shoes", ["a", "c"])
    trending = api.client.get("/v1/trending")
    assert trending.status_code == 200
    assert body(trending)["data"]["strategy"] in {"trending", "empty"}


@pytest.mark.parametrize("k", ["0", "101", "abc", "-1", "1.5", ""])
def test_k_out_of_bounds_is_a_400_naming_k(api: Api, k: str) -> None:
    for url in (f"/v1/users/me/recommendations?k={k}", f"/v1/items/a/similar?k={k}", f"/v1/popular?k={k}"):
        assert_error(api.client.get(url), 400, 1004, "'k'")


def test_k_at_its_bounds_is_accepted(api: Api) -> None:
    assert api.client.get("/v1/users/me/recommendations?k=1").status_code == 200
    assert api.client.get("/v1/users/me/recommendations?k=100").status_code == 200


@pytest.mark.parametrize("value", ["maybe", "", "1", "0", "True", "yes", " true"])
def test_explain_is_exactly_true_or_false(api: Api, value: str) -> None:
    for url in ("/v1/users/me/recommendations", "/v1/items/a/similar", "/v1/popular", "/v1/trending"):
        resp = api.client.get(url, query_string={"explain": value})
        assert_error(resp, 400, 1004, "'explain' must be true or false", repr(value))


def test_explain_false_and_absent_leave_the_reason_out(api: Api, redis_client: redis.Redis) -> None:
    seed_shop(api, redis_client)
    for url in ("/v1/users/me/recommendations?explain=false", "/v1/users/me/recommendations"):
        items = body(api.client.get(url))["data"]["items"]
        assert items and all("reason" not in i for i in items)


def test_an_answer_served_again_shows_its_items_as_each_request_asks(
    api: Api, redis_client: redis.Redis
) -> None:
    # the second and third requests are served the first one's cached answer, whose items are encoded
    # once per way of showing them (with and without reasons)
    seed_shop(api, redis_client)
    url = "/v1/users/me/recommendations?k=2"
    explained = body(api.client.get(url + "&explain=true"))["data"]
    plain = body(api.client.get(url))["data"]
    again = body(api.client.get(url + "&explain=true"))["data"]
    assert [(i["reason"], i["source"]) for i in again["items"]] == [
        ("viewed together with a", "item_to_item")
    ] * 2
    assert again["items"] == explained["items"]
    assert plain["items"] == [
        {f: v for f, v in i.items() if f not in ("reason", "source")} for i in explained["items"]
    ]
    assert len({explained["recommendation_id"], plain["recommendation_id"], again["recommendation_id"]}) == 3


# --- errors in general ------------------------------------------------------------------------------


def test_unknown_endpoint_is_a_json_404(api: Api) -> None:
    payload = assert_error(api.client.get("/v1/nope"), 404, 1404)
    assert payload["details"] is None


def test_wrong_method_is_a_json_405(api: Api) -> None:
    resp = api.client.delete("/v1/events")
    assert_error(resp, 405, 1405, "POST")
    assert_error(api.client.post("/v1/popular"), 405, 1405, "GET")


@pytest.mark.parametrize("method", ["TRACE", "PATCH", "POST"])
def test_every_405_carries_allow_listing_the_resource_methods(api: Api, method: str) -> None:
    # RFC 9110 15.5.6: a 405 must say which methods the resource supports
    expected = {
        "/v1/popular": "GET, HEAD, OPTIONS",
        "/v1/users/u%2F1/recommendations": "GET, HEAD, OPTIONS",
        "/v1/items/a%2Fb": "DELETE, GET, HEAD, OPTIONS, PUT",
        "/v1/users/a%2Fb": "DELETE, OPTIONS",
        "/v1/events": "OPTIONS, POST",
    }
    for url, allow in expected.items():
        resp = api.client.open(url, method=method)
        if method == "POST" and "POST" in allow:
            continue
        assert_error(resp, 405, 1405, allow)
        assert resp.headers["Allow"] == allow, url


# --- POST /v1/events --------------------------------------------------------------------------------


def test_events_need_a_json_content_type(api: Api) -> None:
    resp = api.client.post("/v1/events", data=orjson.dumps(event_row()), content_type="text/plain")
    assert_error(resp, 415, 1415, "Content-Type: application/json")
    assert api.publisher.events == []


def test_events_invalid_json_is_a_400(api: Api) -> None:
    assert_error(
        api.client.post("/v1/events", data=b"{not json", content_type="application/json"),
        400,
        1001,
        "not valid JSON",
    )


def test_invalid_event_is_a_400_with_index_and_reason(api: Api) -> None:
    rows = [event_row(), event_row(type="teleport"), event_row(ts=1_700_000_000), event_row()]
    payload = assert_error(api.client.post("/v1/events", json=rows), 400, 1002, "2 of 4", "#1")
    details = payload["details"]
    assert [d["index"] for d in details] == [1, 2]
    assert details[0]["reason"].startswith("type:")
    assert "milliseconds" in details[1]["reason"]
    assert api.publisher.events == []  # nothing of a bad batch is published


@pytest.mark.parametrize(
    ("ts", "says"),
    [
        (1_700_000_000, "looks like epoch seconds"),
        (1_700_000_000_000_000, "looks like epoch microseconds"),
        (0, "before 1995"),
    ],
)
def test_events_and_catalog_records_follow_one_time_policy(api: Api, ts: Any, says: str) -> None:
    value = ts() if callable(ts) else ts
    event = api.client.post("/v1/events", json=event_row(ts=value))
    assert assert_error(event, 400, 1002, says)["details"][0]["errors"][0]["field"] == "ts"
    item = api.client.put("/v1/items/P", json={"in_stock": False, "ts": value})
    assert assert_error(item, 400, 1005, says)["details"][0]["errors"][0]["field"] == "ts"
    bulk = api.client.post("/v1/items", json=[{"item_id": "P", "ts": value}])
    assert_error(bulk, 400, 1005, says)
    assert (api.publisher.events, api.publisher.items) == ([], [])


def test_a_ts_too_far_ahead_of_the_clock_becomes_the_receive_time(api: Api) -> None:
    ahead = now_ms() + 10 * 3_600_000
    before = now_ms()
    event = api.client.post("/v1/events", json=[event_row(), event_row(ts=ahead)])
    assert event.status_code == 202 and event.get_json()["data"]["ts_set_to_receive_time"] == [1]
    item = api.client.put("/v1/items/P", json={"in_stock": False, "ts": ahead})
    assert item.status_code == 202 and item.get_json()["data"]["ts_set_to_receive_time"] == [0]
    assert all(before <= r.ts <= now_ms() for r in [api.publisher.events[1], *api.publisher.items])


def test_the_future_skew_is_a_setting(redis_server: ManagedProcess) -> None:
    settings = Settings(
        redis_prefix=f"t{uuid.uuid4().hex[:8]}",
        redis_url=f"redis://127.0.0.1:{redis_server.port}/0",
        max_future_skew_ms=11 * 3_600_000,
    )
    app, pub = build(settings)
    ahead = now_ms() + 10 * 3_600_000
    assert app.test_client().post("/v1/events", json=event_row(ts=ahead)).status_code == 202
    assert app.test_client().put("/v1/items/P", json={"ts": ahead}).status_code == 202
    assert [e.ts for e in pub.events] == [ahead] and [i.ts for i in pub.items] == [ahead]


def test_a_catalog_update_within_the_policy_is_published_with_its_ts(api: Api) -> None:
    ts = now_ms() - 1000
    assert api.client.put("/v1/items/P", json={"in_stock": False, "ts": ts}).status_code == 202
    assert [(i.item_id, i.in_stock, i.ts) for i in api.publisher.items] == [("P", False, ts)]


def test_an_erasure_is_not_an_event(api: Api) -> None:
    row = {"erase_user": "u1", "erasure_id": uuid.uuid4().hex, "ts": now_ms()}
    payload = assert_error(api.client.post("/v1/events", json=row), 400, 1002, "DELETE /v1/users/")
    assert payload["details"][0]["errors"] == [
        {"field": "erase_user", "problem": payload["details"][0]["errors"][0]["problem"]}
    ]
    assert_error(api.client.post("/v1/events", json=[event_row(), row]), 400, 1002, "#1", "erase_user")
    assert (api.publisher.events, api.publisher.erasures) == ([], [])


def test_a_deletion_is_not_a_catalog_record(api: Api) -> None:
    assert_error(api.client.put("/v1/items/a", json={"deleted": True}), 400, 1005, "DELETE /v1/items/")
    assert_error(api.client.post("/v1/items", json=[{"item_id": "a", "deleted": True}]), 400, 1005, "deleted")
    assert (api.publisher.items, api.publisher.deletions) == ([], [])


def test_non_object_in_a_batch_is_a_400(api: Api) -> None:
    payload = assert_error(api.client.post("/v1/events", json=[event_row(), 5]), 400, 1002)
    assert payload["details"][0] == {"index": 1, "reason": "expected a JSON object, got int", "errors": []}


def test_empty_batch_is_a_400(api: Api) -> None:
    assert_error(api.client.post("/v1/events", json=[]), 400, 1002, "empty")


def test_batch_over_the_limit_is_a_400(api: Api) -> None:
    rows = [event_row(event_id=f"e{i}") for i in range(1001)]
    assert_error(api.client.post("/v1/events", json=rows), 400, 1003, "1000", "1001")
    assert api.publisher.events == []


def test_valid_batch_is_published_with_ts_set(api: Api) -> None:
    rows = [event_row(event_id=f"e{i}") for i in range(1000)]
    rows[0] = event_row(event_id="s0", type="search", item_id=None, query="red shoes", ts=T0)
    before = now_ms()
    resp = api.client.post("/v1/events", json=rows)
    payload = body(resp)
    assert resp.status_code == 202, payload
    assert payload["code"] == 0
    assert payload["data"]["accepted"] == 1000
    assert payload["data"]["event_ids"][:2] == ["s0", "e1"]
    published = api.publisher.events
    assert [e.event_id for e in published] == [r["event_id"] for r in rows]
    assert published[0].ts == T0 and published[0].query == "red shoes"
    assert all(before <= e.ts <= now_ms() for e in published[1:])
    assert api.publisher.flushes >= 1


def test_single_event_object_is_accepted(api: Api) -> None:
    resp = api.client.post("/v1/events", json=event_row(event_id="only", type="purchase", price=3.5))
    assert resp.status_code == 202
    assert [(e.event_id, e.type, e.price) for e in api.publisher.events] == [
        ("only", EventType.PURCHASE, 3.5)
    ]


def test_publisher_failure_is_a_503(redis_server: ManagedProcess) -> None:
    settings = Settings(
        redis_prefix=f"t{uuid.uuid4().hex[:8]}", redis_url=f"redis://127.0.0.1:{redis_server.port}/0"
    )
    app, _ = build(settings, BrokenPublisher())
    assert_error(app.test_client().post("/v1/events", json=event_row()), 503, 1503, "Kafka")


def test_a_refused_delivery_is_a_503_not_a_202(redis_server: ManagedProcess) -> None:
    settings = Settings(
        redis_prefix=f"t{uuid.uuid4().hex[:8]}", redis_url=f"redis://127.0.0.1:{redis_server.port}/0"
    )
    app, _ = build(settings, UndeliveredPublisher())
    assert_error(app.test_client().post("/v1/events", json=event_row()), 503, 1503, "Kafka")


def test_body_over_4_mib_is_a_json_413(api: Api) -> None:
    data = b"[" + b" " * (4 * 1024 * 1024) + b"]"
    assert_error(api.client.post("/v1/events", data=data, content_type="application/json"), 413, 1413)
    assert api.publisher.events == []


# --- catalog ----------------------------------------------------------------------------------------


def test_put_item_is_published(api: Api) -> None:
    resp = api.client.put("/v1/items/sku-1", json={"title": "Red shoes", "category": "shoes", "price": 10})
    assert resp.status_code == 202, body(resp)
    [item] = api.publisher.items
    assert (item.item_id, item.title, item.category, item.price) == ("sku-1", "Red shoes", "shoes", 10.0)


def test_put_item_with_a_different_item_id_is_a_400(api: Api) -> None:
    resp = api.client.put("/v1/items/sku-1", json={"item_id": "sku-2", "title": "x"})
    assert_error(resp, 400, 1005, "sku-2", "sku-1")
    assert api.publisher.items == []


def test_put_invalid_item_is_a_400(api: Api) -> None:
    payload = assert_error(api.client.put("/v1/items/sku-1", json={"price": -1}), 400, 1005)
    assert payload["details"][0]["reason"].startswith("price:")
    assert_error(api.client.put("/v1/items/sku-1", json=[1]), 400, 1005)


def test_post_items_in_bulk(api: Api) -> None:
    resp = api.client.post("/v1/items", json=[{"item_id": "a"}, {"item_id": "b", "in_stock": False}])
    assert resp.status_code == 202
    assert [(i.item_id, i.in_stock) for i in api.publisher.items] == [("a", True), ("b", False)]


def test_get_item_returns_the_stored_record(api: Api, redis_client: redis.Redis) -> None:
    writer = StateWriter(redis_client, api.keys, api.settings.scoring)
    record = CatalogItem(
        item_id="SKU-1/XL",
        title="Shirt",
        description="Blue",
        category="shirts",
        price=19.5,
        image_url="/static/img/x.svg",
        in_stock=False,
        attributes={"size": "XL", "colours": ["blue"]},
        ts=T0,
    )
    writer.upsert_items([record])
    resp = api.client.get("/v1/items/SKU-1%2FXL")
    assert resp.status_code == 200, body(resp)
    assert body(resp)["data"] == orjson.loads(record.to_json())


def test_get_unknown_item_is_a_404_that_names_it(api: Api) -> None:
    payload = assert_error(api.client.get("/v1/items/nope%2F1"), 404, 1404, "no item 'nope/1' in the catalog")
    assert "endpoint" not in payload["msg"]


def test_get_item_while_redis_is_unreachable_is_a_503(redis_down_app: Flask) -> None:
    assert_error(redis_down_app.test_client().get("/v1/items/a"), 503, 1503, "Redis")


def test_delete_item_publishes_a_deletion(api: Api) -> None:
    before = now_ms()
    resp = api.client.delete("/v1/items/SKU-1%2FXL")
    assert resp.status_code == 202, body(resp)
    assert body(resp)["data"] == {"accepted": 1, "item_id": "SKU-1/XL"}
    [deletion] = api.publisher.deletions
    assert (deletion.item_id, deletion.deleted) == ("SKU-1/XL", True)
    assert before <= deletion.ts <= now_ms()
    assert api.publisher.flushes >= 1


def test_delete_user_publishes_an_erasure(api: Api) -> None:
    resp = api.client.delete("/v1/users/acct%2F1")
    assert resp.status_code == 202, body(resp)
    data = body(resp)["data"]
    [erasure] = api.publisher.erasures
    assert data == {"accepted": 1, "user_id": "acct/1", "erasure_id": erasure.erasure_id}
    assert erasure.erase_user == "acct/1" and len(erasure.erasure_id) == 32
    api.client.delete("/v1/users/acct%2F1")
    assert len({e.erasure_id for e in api.publisher.erasures}) == 2  # each erasure is its own record


def test_deletes_that_kafka_refuses_are_a_503(redis_server: ManagedProcess) -> None:
    settings = Settings(
        redis_prefix=f"t{uuid.uuid4().hex[:8]}", redis_url=f"redis://127.0.0.1:{redis_server.port}/0"
    )
    app, _ = build(settings, BrokenPublisher())
    assert_error(app.test_client().delete("/v1/items/a"), 503, 1503, "Kafka")
    assert_error(app.test_client().delete("/v1/users/a"), 503, 1503, "Kafka")


# --- ids in paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["acct/1", "SKU-1/XL", "/lead", "trail/", "a//b", "100%", "%2F", "a+b c", "é/😀"]
)
def test_ids_holding_slashes_reach_every_endpoint(api: Api, value: str) -> None:
    path = quote(value, safe="")
    recs = api.client.get(f"/v1/users/{path}/recommendations")
    assert recs.status_code == 200 and body(recs)["data"]["user_id"] == value
    similar = api.client.get(f"/v1/items/{path}/similar?user_id={path}")
    assert similar.status_code == 200 and body(similar)["data"]["item_id"] == value
    assert_error(api.client.get(f"/v1/items/{path}"), 404, 1404, f"no item {value!r}")
    assert api.client.put(f"/v1/items/{path}", json={"title": "x"}).status_code == 202
    assert api.client.delete(f"/v1/items/{path}").status_code == 202
    assert api.client.delete(f"/v1/users/{path}").status_code == 202
    assert [i.item_id for i in api.publisher.items] == [value]
    assert [d.item_id for d in api.publisher.deletions] == [value]
    assert [e.erase_user for e in api.publisher.erasures] == [value]


@pytest.mark.parametrize("value", [" a", "a ", "a\tb", "\u3000", "x" * 129])
def test_ids_the_contract_refuses_are_a_400_on_read_and_on_write(api: Api, value: str) -> None:
    path = quote(value, safe="")
    for method, url in [
        ("GET", f"/v1/users/{path}/recommendations"),
        ("GET", f"/v1/items/{path}/similar"),
        ("GET", f"/v1/items/a/similar?user_id={path}"),
        ("GET", f"/v1/items/{path}"),
        ("PUT", f"/v1/items/{path}"),
        ("DELETE", f"/v1/items/{path}"),
        ("DELETE", f"/v1/users/{path}"),
    ]:
        resp = api.client.open(url, method=method, json={"title": "x"} if method == "PUT" else None)
        assert_error(resp, 400, 1004, "_id")
    event = api.client.post("/v1/events", json=event_row(user_id=value))
    assert_error(event, 400, 1002, "user_id")
    assert (api.publisher.events, api.publisher.items, api.publisher.deletions) == ([], [], [])


# --- operations -------------------------------------------------------------------------------------


def test_healthz(api: Api) -> None:
    resp = api.client.get("/healthz")
    assert resp.status_code == 200
    assert body(resp) == {"code": 0, "msg": "ok", "data": {"status": "alive"}}


def test_readyz_reports_kafka_unavailable(
    redis_server: ManagedProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMREC_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    settings = Settings(
        redis_prefix=f"t{uuid.uuid4().hex[:8]}", redis_url=f"redis://127.0.0.1:{redis_server.port}/0"
    )
    app, _ = build(settings)
    payload = assert_error(app.test_client().get("/readyz"), 503, 1503, "kafka unavailable")
    assert payload["details"] == {"redis": "ok", "kafka": "unavailable"}


def test_readyz_ready_when_both_answer(redis_server: ManagedProcess) -> None:
    # Redis's own port stands in for a listening Kafka bootstrap server: readiness only checks it accepts
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    app, _ = build(Settings(redis_url=url, kafka_bootstrap=f"127.0.0.1:{redis_server.port}"))
    resp = app.test_client().get("/readyz")
    assert resp.status_code == 200
    assert body(resp)["data"] == {"status": "ready", "checks": {"redis": "ok", "kafka": "ok"}}


@pytest.fixture
def redis_down_app() -> Flask:
    settings = Settings(
        redis_prefix="tdown",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
    )
    app, _ = build(settings)
    return app


@pytest.mark.parametrize(
    "url", ["/v1/users/me/recommendations", "/v1/items/a/similar", "/v1/popular", "/v1/trending"]
)
def test_redis_unreachable_is_a_503_with_a_message(redis_down_app: Flask, url: str) -> None:
    assert_error(redis_down_app.test_client().get(url), 503, 1503, "Redis")


def test_readyz_reports_redis_unavailable(redis_down_app: Flask) -> None:
    payload = assert_error(redis_down_app.test_client().get("/readyz"), 503, 1503, "redis unavailable")
    assert payload["details"]["redis"].startswith("unavailable")


def test_placeholder_image_is_svg(api: Api, redis_client: redis.Redis) -> None:
    seed_shop(api, redis_client)
    resp = api.client.get("/static/img/b.svg")
    assert resp.status_code == 200
    assert resp.mimetype == "image/svg+xml"
    text = resp.get_data(as_text=True)
    assert text.startswith("<svg") and text.endswith("</svg>")
    assert "shoes" in text and "Item b" in text
    unknown = api.client.get("/static/img/%3Cscript%3E.svg")
    assert unknown.status_code == 200
    assert "<script>" not in unknown.get_data(as_text=True)


def test_placeholder_image_while_redis_is_unreachable_is_not_a_500(redis_down_app: Flask) -> None:
    resp = redis_down_app.test_client().get("/static/img/b.svg")
    assert resp.status_code == 200 and resp.mimetype == "image/svg+xml"
    assert b">b</text>" in resp.data  # drawn from the id alone
