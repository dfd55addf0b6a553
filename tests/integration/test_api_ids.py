"""Property test: every id the contract accepts is addressable byte for byte on every endpoint, and every
string it refuses is a 400 on every endpoint, reads and writes alike (Flask's test client, which, like
gunicorn, hands the app a percent-decoded path and the raw request target; a real Redis; a fake publisher).
The real-gunicorn check of the same paths is in test_hostile_input.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streamrec.contract import CatalogItem, id_problem, now_ms
from streamrec.devtools.localstack import ManagedProcess
from streamrec.fold import StateWriter
from streamrec.keys import Keys
from streamrec.settings import Settings
from tests.integration.test_api import Api, build

pytestmark = pytest.mark.redis

# The contract's id alphabet is every character but the control ones; the characters its rule and URLs
# treat specially are drawn often.
SPECIAL = " \t\n\x00\x1f\x7f\x85\xa0\u2028\u3000\ufeff/%+?#&=;.é商😀"
id_like = st.text(st.characters(codec="utf-8") | st.sampled_from(SPECIAL), min_size=1, max_size=130)


def segment(value: str) -> str:
    """One path segment holding ``value``: percent-encoded, and '.' / '..' spelled %2E, which HTTP
    clients would otherwise remove as dot segments (RFC 3986 5.2.4)."""
    if value in (".", ".."):
        return "%2E" * len(value)
    return quote(value, safe="")


@pytest.fixture(scope="module")
def shop(redis_server: ManagedProcess) -> Iterator[Api]:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    # hundreds of writes in a few seconds: the write rate limit is not what this module checks
    config = Settings(
        redis_prefix=prefix, redis_url=f"redis://127.0.0.1:{redis_server.port}/0", write_rate_per_s=0
    )
    app, pub = build(config)
    yield Api(app, pub, Keys(prefix), config)
    client: redis.Redis = app.extensions["streamrec"].redis
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.delete(key)
    client.close()


def _data(resp: Any, status: int) -> Any:
    payload = orjson.loads(resp.get_data())
    assert resp.status_code == status, payload
    return payload["data"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=id_like)
@example(value="SKU-1/XL")
@example(value="acct/1")
@example(value="100%2F")
@example(value="a+b c")
@example(value=".")
@example(value="..")
@example(value="/")
@example(value=" padded ")
@example(value="x" * 129)
def test_every_endpoint_takes_every_contract_id_byte_for_byte(shop: Api, value: str) -> None:
    pub = shop.publisher
    for sent in (pub.events, pub.items, pub.deletions, pub.erasures):
        sent.clear()
    client, seg = shop.client, segment(value)
    if id_problem(value) is not None:
        for method, url in [
            ("GET", f"/v1/users/{seg}/recommendations"),
            ("GET", f"/v1/items/{seg}/similar"),
            ("GET", f"/v1/items/a/similar?user_id={seg}"),
            ("GET", f"/v1/items/{seg}"),
            ("PUT", f"/v1/items/{seg}"),
            ("DELETE", f"/v1/items/{seg}"),
            ("DELETE", f"/v1/users/{seg}"),
        ]:
            resp = client.open(url, method=method, json={} if method == "PUT" else None)
            assert orjson.loads(resp.get_data())["code"] == 1004 and resp.status_code == 400, (method, url)
        row = {"event_id": "e", "type": "view", "user_id": value, "item_id": value}
        assert client.post("/v1/events", json=row).status_code == 400
        assert (pub.events, pub.items, pub.deletions, pub.erasures) == ([], [], [], [])
        return

    assert _data(client.get(f"/v1/users/{seg}/recommendations?k=1"), 200)["user_id"] == value
    assert _data(client.get(f"/v1/items/{seg}/similar?k=1&user_id={seg}"), 200)["item_id"] == value
    unknown = orjson.loads(client.get(f"/v1/items/{seg}").get_data())
    if unknown["code"] != 0:  # an earlier example may have stored it
        assert unknown["msg"] == f"no item {value!r} in the catalog (unknown, or deleted)"
    StateWriter(shop.app.extensions["streamrec"].redis, shop.keys, shop.settings.scoring).upsert_items(
        [CatalogItem(item_id=value, title="t", ts=now_ms())]
    )
    assert _data(client.get(f"/v1/items/{seg}"), 200)["item_id"] == value
    assert _data(client.put(f"/v1/items/{seg}", json={"title": "t"}), 202) == {"accepted": 1}
    assert _data(client.delete(f"/v1/items/{seg}"), 202)["item_id"] == value
    assert _data(client.delete(f"/v1/users/{seg}"), 202)["user_id"] == value
    row = {"event_id": "e", "type": "view", "user_id": value, "item_id": value}
    assert _data(client.post("/v1/events", json=row), 202)["accepted"] == 1
    assert [i.item_id for i in pub.items] == [value]
    assert [d.item_id for d in pub.deletions] == [value]
    assert [e.erase_user for e in pub.erasures] == [value]
    assert [(e.user_id, e.item_id) for e in pub.events] == [(value, value)]
