"""What the API returns for what a catalog record leaves out (docs/concepts/strategies.md documents it), and the headers
of /metrics, through Flask's test client on a real Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import orjson
import pytest
import redis
from flask.testing import FlaskClient

from streamrec.api.app import create_app
from streamrec.contract import CatalogItem, Event
from streamrec.devtools.localstack import ManagedProcess
from streamrec.event_types import EventType
from streamrec.fold import StateWriter
from streamrec.keys import Keys
from streamrec.settings import Settings

pytestmark = pytest.mark.redis


class NoPublisher:
    """These tests only read; nothing may be published."""

    def __getattr__(self, name: str) -> None:
        raise AssertionError(f"unexpected publish call: {name}")


@pytest.fixture
def shop(
    redis_server: ManagedProcess, redis_client: redis.Redis
) -> Iterator[tuple[FlaskClient, StateWriter]]:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_prefix=prefix, redis_url=f"redis://127.0.0.1:{redis_server.port}/0")
    app = create_app(settings, publisher_factory=lambda s: NoPublisher())
    yield app.test_client(), StateWriter(redis_client, Keys(prefix), settings.scoring)
    app.extensions["streamrec"].redis.close()
    for key in redis_client.scan_iter(match=f"{prefix}:*", count=1000):
        redis_client.delete(key)


def test_fields_a_catalog_record_leaves_out_come_back_as_placeholder_image_and_nulls(
    shop: tuple[FlaskClient, StateWriter],
) -> None:
    client, writer = shop
    now = int(time.time() * 1000)
    writer.upsert_items(
        [
            CatalogItem(item_id="bare", ts=now - 5000),  # only an id, as `POST /v1/items` allows
            CatalogItem(
                item_id="full",
                title="Boot",
                category="shoes",
                price=20,
                image_url="/i/boot.png",
                ts=now - 5000,
            ),
        ]
    )
    writer.apply(
        [
            Event(event_id=f"e{n}", type=EventType.VIEW, user_id=f"u{n}", item_id=item, ts=now - 1000 + n)
            for n, item in enumerate(["bare", "full", "bare", "ghost"])  # ghost: no catalog record at all
        ]
    )
    resp = client.get("/v1/popular?k=10")
    assert resp.status_code == 200
    items = {row["item_id"]: row for row in orjson.loads(resp.get_data())["data"]["items"]}
    assert set(items) == {"bare", "full", "ghost"}
    for item_id in ("bare", "ghost"):
        row = items[item_id]
        assert row["image_url"] == f"/static/img/{item_id}.svg"
        assert (row["title"], row["category"], row["price"], row["in_stock"]) == (None, None, None, True)
    full = items["full"]
    assert (full["title"], full["category"], full["price"], full["image_url"]) == (
        "Boot",
        "shoes",
        20.0,
        "/i/boot.png",
    )
    assert client.get(items["bare"]["image_url"]).mimetype == "image/svg+xml"  # the placeholder is served


def test_a_placeholder_url_escapes_the_item_id(shop: tuple[FlaskClient, StateWriter]) -> None:
    client, writer = shop
    writer.apply(
        [Event(event_id="odd", type=EventType.VIEW, user_id="u", item_id="a b/c", ts=int(time.time() * 1000))]
    )
    rows = orjson.loads(client.get("/v1/popular").get_data())["data"]["items"]
    assert [r["image_url"] for r in rows] == ["/static/img/a%20b%2Fc.svg"]


def test_metrics_says_its_charset_once(shop: tuple[FlaskClient, StateWriter]) -> None:
    client, _ = shop
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
