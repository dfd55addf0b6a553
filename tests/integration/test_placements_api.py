"""The placement admin endpoints through Flask's test client on a real Redis (and the store on a real
Redis Cluster): keys, 404s, 400s with the JSON path, the round trip, the bounds, and the per-process
compiled copy that follows a change within its check interval."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from streamrec.api.app import create_app
from streamrec.api.placements import placements_of
from streamrec.devtools.localstack import LocalCluster, ManagedProcess
from streamrec.fold import redis_client as client_for
from streamrec.keys import Keys, slot
from streamrec.placement_store import (
    CHECK_EVERY_S,
    MAX_DOCUMENT_BYTES,
    PlacementCache,
    PlacementsFull,
    PlacementStore,
)
from streamrec.placements import parse_placement
from streamrec.settings import Settings
from tests.conftest import wait_until

pytestmark = pytest.mark.redis

ADMIN = "ak-" + uuid.uuid4().hex
WRITER = "sk-" + uuid.uuid4().hex
AS_ADMIN = {"X-API-Key": ADMIN}
UNDER_20 = {
    "strategy": "popular",
    "filter": {"price": {"$lte": 20}, "attributes.brand": {"$nin": ["Rival"]}},
    "boost": [{"if": {"category": "socks"}, "multiply": 1.5}],
    "pin": [{"item_id": "sku-1", "position": 1}],
    "promote": {"if": {"attributes.brand": "House"}, "share": 0.2},
    "diversity": {"field": "category", "max_per_value": 2},
}


@pytest.fixture
def settings(redis_server: ManagedProcess, prefix: str) -> Settings:
    return Settings(
        redis_prefix=prefix,
        redis_url=f"redis://127.0.0.1:{redis_server.port}/0",
        api_keys=f"ops={ADMIN}:admin,backend={WRITER}",
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[FlaskClient]:
    app = create_app(settings)
    yield app.test_client()
    app.extensions["streamrec"].redis.close()


def test_every_placement_endpoint_needs_an_admin_key(client: FlaskClient) -> None:
    calls = [
        ("put", "/v1/admin/placements/shelf"),
        ("get", "/v1/admin/placements/shelf"),
        ("delete", "/v1/admin/placements/shelf"),
        ("get", "/v1/admin/placements"),
    ]
    for method, path in calls:
        none = getattr(client, method)(path, json={})
        assert none.status_code == 401, (method, path)
        assert "needs an API key" in none.json["msg"]
        wrong = getattr(client, method)(path, json={}, headers={"X-API-Key": ADMIN + "x"})
        assert wrong.status_code == 401
        writer = getattr(client, method)(path, json={}, headers={"Authorization": f"Bearer {WRITER}"})
        assert writer.status_code == 403 and "needs admin" in writer.json["msg"]
    assert client.get("/v1/admin/placements/shelf", headers=AS_ADMIN).status_code == 404  # nothing was made
    # an Authorization header that is not a bearer token is refused, not passed over for X-API-Key
    for other in ("Basic dXNlcjpwYXNz", "0", "Bearer"):
        mixed = client.get("/v1/admin/placements", headers={**AS_ADMIN, "Authorization": other})
        assert mixed.status_code == 401, other
    assert client.get("/v1/admin/placements", headers={"Authorization": f"bearer {ADMIN}"}).status_code == 200


def test_an_unknown_placement_is_404(client: FlaskClient) -> None:
    got = client.get("/v1/admin/placements/nope", headers=AS_ADMIN)
    assert got.status_code == 404 and "no placement 'nope'" in got.json["msg"]
    assert client.delete("/v1/admin/placements/nope", headers=AS_ADMIN).status_code == 404


def test_a_bad_document_is_400_with_the_path_and_the_operator(
    client: FlaskClient, settings: Settings
) -> None:
    bad = {**UNDER_20, "filter": {"price": {"$regex": "^1"}}}
    resp = client.put("/v1/admin/placements/shelf", json=bad, headers=AS_ADMIN)
    assert resp.status_code == 400
    assert resp.json["code"] == 1007
    assert resp.json["msg"].startswith("$.filter.price.$regex: unknown operator $regex")
    details = resp.json["details"]
    assert details["path"] == "$.filter.price.$regex"
    assert resp.json["msg"] == f"$.filter.price.$regex: {details['problem']}"
    deep = client.put("/v1/admin/placements/shelf", json={"boost": [{"if": {"x": 1}}]}, headers=AS_ADMIN)
    assert deep.status_code == 400 and deep.json["details"]["path"] == "$.boost[0]"
    assert client.put("/v1/admin/placements/bad%20name", json={}, headers=AS_ADMIN).status_code == 400
    not_json = client.put(
        "/v1/admin/placements/shelf", data="{", headers=AS_ADMIN, content_type="application/json"
    )
    assert not_json.status_code == 400
    assert client.put("/v1/admin/placements/shelf", data="{}", headers=AS_ADMIN).status_code == 415
    # nothing was stored by any of them
    assert client.get("/v1/admin/placements", headers=AS_ADMIN).json["data"] == {"placements": []}


def test_put_get_list_delete_round_trip(client: FlaskClient) -> None:
    created = client.put("/v1/admin/placements/under-20", json=UNDER_20, headers=AS_ADMIN)
    assert created.status_code == 201
    assert created.json["data"]["placement"] == UNDER_20 and created.json["data"]["name"] == "under-20"
    first = created.json["data"]["version"]
    got = client.get("/v1/admin/placements/under-20", headers=AS_ADMIN)
    assert got.status_code == 200 and got.json["data"] == {"name": "under-20", "placement": UNDER_20}

    replaced = client.put("/v1/admin/placements/under-20", json={"strategy": "trending"}, headers=AS_ADMIN)
    assert replaced.status_code == 200 and replaced.json["data"]["version"] == first + 1
    client.put("/v1/admin/placements/a-shelf", json={}, headers=AS_ADMIN)
    listed = client.get("/v1/admin/placements", headers=AS_ADMIN).json["data"]["placements"]
    assert listed == [
        {"name": "a-shelf", "placement": {}},
        {"name": "under-20", "placement": {"strategy": "trending"}},
    ]

    deleted = client.delete("/v1/admin/placements/under-20", headers=AS_ADMIN)
    assert deleted.status_code == 200 and deleted.json["data"] == {"name": "under-20", "deleted": True}
    assert client.get("/v1/admin/placements/under-20", headers=AS_ADMIN).status_code == 404
    assert [
        p["name"] for p in client.get("/v1/admin/placements", headers=AS_ADMIN).json["data"]["placements"]
    ] == ["a-shelf"]


def test_placements_are_bounded_in_number_and_size(client: FlaskClient) -> None:
    store = placements_of(client.application).store
    store.max_placements = 2
    for name in ("one", "two"):
        assert client.put(f"/v1/admin/placements/{name}", json={}, headers=AS_ADMIN).status_code == 201
    full = client.put("/v1/admin/placements/three", json={}, headers=AS_ADMIN)
    assert full.status_code == 409 and "delete one first" in full.json["msg"]
    assert (
        client.put("/v1/admin/placements/two", json={"strategy": "popular"}, headers=AS_ADMIN).status_code
        == 200
    )
    big = {"filter": {"$or": [{"title": "x" * 1000} for _ in range(MAX_DOCUMENT_BYTES // 1000 + 1)]}}
    too_large = client.put("/v1/admin/placements/two", json=big, headers=AS_ADMIN)
    assert too_large.status_code == 413 and too_large.json["details"] == {"path": "$"}
    with pytest.raises(PlacementsFull):
        store.put(parse_placement("three", {}))


def test_each_process_compiles_a_change_within_its_check_interval(
    settings: Settings, redis_server: ManagedProcess, prefix: str
) -> None:
    # two API processes: each its own connection and its own compiled copy
    writer = PlacementStore(redis.Redis(port=redis_server.port), Keys(prefix))
    now = [100.0]
    clients = [redis.Redis(port=redis_server.port) for _ in range(2)]
    caches = [PlacementCache(PlacementStore(c, Keys(prefix)), clock=lambda: now[0]) for c in clients]
    assert [c.get("shelf") for c in caches] == [None, None]
    writer.put(parse_placement("shelf", {"filter": {"price": {"$lte": 20}}}))
    assert [c.get("shelf") for c in caches] == [None, None]  # read under 250 ms ago: not read again
    now[0] += CHECK_EVERY_S
    compiled = [c.get("shelf") for c in caches]
    assert all(p is not None and p.filter and p.filter.matches({"price": "19.5"}) for p in compiled)
    assert caches[0].get("shelf") is compiled[0]  # compiled once, not per request
    writer.delete("shelf")
    now[0] += CHECK_EVERY_S
    assert [c.get("shelf") for c in caches] == [None, None]
    for c in [*clients, writer.client]:
        c.close()


def test_a_change_reaches_another_process_within_one_second(client: FlaskClient, settings: Settings) -> None:
    other = create_app(settings)  # a second API process, on the real clock
    try:
        placements_of(other).get("shelf")  # it has read the placements once
        client.put("/v1/admin/placements/shelf", json={"strategy": "trending"}, headers=AS_ADMIN)
        start = time.monotonic()
        wait_until(
            lambda: (p := placements_of(other).get("shelf")) is not None and p.strategy == "trending",
            timeout=1.0,
            interval=0.01,
            what="the placement in the other process",
        )
        assert time.monotonic() - start <= CHECK_EVERY_S + 0.2
    finally:
        other.extensions["streamrec"].redis.close()


def test_the_store_runs_on_a_redis_cluster(redis_cluster: LocalCluster) -> None:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    assert slot(keys.placements()) == slot(keys.placements_version())  # one script touches both
    client: Any = client_for(redis_cluster.url, cluster=True)
    try:
        store = PlacementStore(client, keys)
        assert store.put(parse_placement("shelf", UNDER_20)) == (True, 1)
        assert store.put(parse_placement("shelf", {})) == (False, 2)
        assert store.get("shelf") == {} and store.all() == {"shelf": {}} and store.version() == 2
        assert store.delete("shelf") and not store.delete("shelf") and store.version() == 3
    finally:
        for key in (keys.placements(), keys.placements_version()):
            client.delete(key)
        client.close()
