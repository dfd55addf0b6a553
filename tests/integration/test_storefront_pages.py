"""The storefront's pages and catalog search through Flask's test client, on a real Redis with state folded
in by the real scripts. (The pages publish nothing: the browser posts events, see tests/e2e/test_storefront.py.)"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from flask import Flask

from streamrec.api.app import create_app
from streamrec.api.catalog_search import CatalogSearch
from streamrec.api.extensions import placements_of
from streamrec.contract import MIN_TS_MS, CatalogItem, Event
from streamrec.devtools.localstack import ManagedProcess
from streamrec.event_types import EventType
from streamrec.fold import StateWriter
from streamrec.keys import Keys
from streamrec.placements import parse_placement
from streamrec.settings import DAY_MS, Settings
from tests.conftest import wait_until

pytestmark = pytest.mark.redis

T0 = int(time.time() * 1000) - DAY_MS


@pytest.fixture
def shop(redis_server: ManagedProcess, redis_client: redis.Redis) -> Iterator[tuple[Flask, StateWriter]]:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_prefix=prefix, redis_url=f"redis://127.0.0.1:{redis_server.port}/0")
    app = create_app(settings)
    writer = StateWriter(redis_client, Keys(prefix), settings.scoring)
    writer.upsert_items(
        [
            CatalogItem(
                item_id="red-shoe", title="Red running shoe", category="shoes", price=80.0, ts=MIN_TS_MS
            ),
            CatalogItem(item_id="blue-shoe", title="Blue Shoe", category="shoes", price=70.0, ts=MIN_TS_MS),
            CatalogItem(item_id="red-hat", title="Red hat", category="hats", price=15.0, ts=MIN_TS_MS),
            CatalogItem(
                item_id="remote",
                title="Remote image",
                category="misc",
                image_url="https://example.com/x.jpg",
                ts=MIN_TS_MS,
            ),
        ]
    )
    views = [("u1", "red-shoe"), ("u2", "red-shoe"), ("u3", "red-shoe"), ("u4", "blue-shoe")]
    writer.apply(
        [
            Event(event_id=f"v{n}", type=EventType.VIEW, user_id=u, item_id=i, ts=T0 + n)
            for n, (u, i) in enumerate(views)
        ]
        # shoppers who search "footwear" go on to the red hat (no title says footwear)
        + [Event(event_id="s1", type=EventType.SEARCH, user_id="u5", query="footwear", ts=T0 + 10)]
        + [Event(event_id="s2", type=EventType.VIEW, user_id="u5", item_id="red-hat", ts=T0 + 11)]
    )
    yield app, writer
    app.extensions["streamrec"].redis.close()
    for key in redis_client.scan_iter(match=f"{prefix}:*", count=1000):
        redis_client.delete(key)


def _search(app: Flask, query: str) -> list[tuple[str, str]]:
    search: CatalogSearch = app.extensions["storefront"]
    with app.app_context():
        return [(p.item_id, p.note) for p in search.search(query, 10)]


def test_search_matches_every_word_in_titles_ranked_by_popularity_then_what_searchers_chose(
    shop: tuple[Flask, StateWriter],
) -> None:
    app, _ = shop
    assert _search(app, "SHOE") == [("red-shoe", ""), ("blue-shoe", "")]
    assert _search(app, "red shoe") == [("red-shoe", "")]
    assert _search(app, "hats") == [("red-hat", "")]  # the category matches too
    assert _search(app, "footwear") == [("red-hat", "shoppers who searched this chose it")]
    assert _search(app, "  ") == [] and _search(app, "nothing like it") == []


def test_a_new_catalog_record_is_searchable_at_once_and_the_index_is_bounded(
    shop: tuple[Flask, StateWriter], redis_client: redis.Redis
) -> None:
    app, writer = shop
    assert _search(app, "boot") == []
    writer.upsert_items([CatalogItem(item_id="boot", title="Trail boot", category="shoes", ts=MIN_TS_MS)])
    assert _search(app, "boot") == [("boot", "")]  # the catalog grew, so the index was rebuilt
    svc = app.extensions["streamrec"]
    small = CatalogSearch(redis_client, svc.recommender.reader.keys, svc.recommender, max_items=2)
    page, size = small.listing(0, 10)
    assert size == 2 and len(page) == 2


def test_pages_render_the_catalog_with_local_images_and_a_self_only_policy(
    shop: tuple[Flask, StateWriter],
) -> None:
    app, _ = shop
    client = app.test_client()
    front = client.get("/shop/")
    html = front.get_data(as_text=True)
    assert front.status_code == 200 and front.mimetype == "text/html"
    assert "default-src 'self'" in front.headers["Content-Security-Policy"]
    assert html.index('data-item-id="red-shoe"') < html.index(
        'data-item-id="blue-shoe"'
    )  # most popular first
    assert "example.com" not in html and "/static/img/remote.svg" in html
    assert 'data-row="shelf"' not in html  # no shelf until its placement exists
    placements_of(app).store.put(parse_placement("shop-shelf", {"filter": {"price": {"$lte": 20}}}))
    wait_until(lambda: placements_of(app).get("shop-shelf") is not None, 1.0, what="the shelf's placement")
    shelved = client.get("/shop/").get_data(as_text=True)
    assert 'data-row="shelf" data-placement="shop-shelf"' in shelved  # the merchandiser's shelf
    results = client.get("/shop/?q=red").get_data(as_text=True)
    assert 'data-item-id="red-shoe"' in results and 'data-item-id="blue-shoe"' not in results
    product = client.get("/shop/p/red-shoe")
    assert product.status_code == 200 and "<h1>Red running shoe</h1>" in product.get_data(as_text=True)
    missing = client.get("/shop/p/no-such-item")
    assert missing.status_code == 404 and "No product" in missing.get_data(as_text=True)
    script = client.get("/shop/static/shop.js")
    assert script.status_code == 200 and "/v1/events" in script.get_data(as_text=True)
    assert "placement=${placement}" in script.get_data(as_text=True)
    script.close()
