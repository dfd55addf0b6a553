"""Batch models in a real Redis: publish, atomic switch, rollback, and the API blending them in."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import orjson
import pytest
import redis

from streamrec.api.app import create_app
from streamrec.contract import CatalogItem, Event, ItemDeletion, now_ms
from streamrec.devtools.localstack import ManagedProcess
from streamrec.event_types import EventType
from streamrec.fold import StateWriter
from streamrec.keys import Keys
from streamrec.modelstore import KEEP_VERSIONS, ModelError, ModelStore
from streamrec.settings import ScoringSettings, Settings
from streamrec.trainer import features

pytestmark = pytest.mark.redis


@pytest.fixture
def keys(redis_client: redis.Redis) -> Iterator[Keys]:
    k = Keys(f"t{uuid.uuid4().hex[:8]}")
    yield k
    for key in redis_client.scan_iter(match=k.pattern(), count=1000):
        redis_client.delete(key)


def publish(store: ModelStore, version: str, table: dict[str, dict[str, float]]) -> None:
    rows = {item: (list(nbrs), list(nbrs.values())) for item, nbrs in table.items()}
    store.publish(version, rows, {"family": "ease", "params": {"lambda": 50}})


def seed_live_state(client: redis.Redis, keys: Keys) -> None:
    """The live state learns a -> b (shopper s1); shopper "me" has just viewed a."""
    t = now_ms() - 60_000
    StateWriter(client, keys, ScoringSettings()).apply(
        [
            Event(event_id=f"{keys.prefix}-{n}", type=EventType.VIEW, user_id=u, item_id=i, ts=t + n)
            for n, (u, i) in enumerate([("s1", "a"), ("s1", "b"), ("me", "a")])
        ]
    )


def test_publish_activate_and_rollback(redis_client: redis.Redis, keys: Keys) -> None:
    store = ModelStore(redis_client, keys)
    publish(store, "v1", {"a": {"b": 2.0, "c": 1.0}})
    assert store.active() is None and store.neighbours(["a"]) == (None, {})  # published is not yet served
    store.activate("v1")
    assert store.neighbours(["a", "zz"]) == ("v1", {"a": {"b": 2.0, "c": 1.0}})
    publish(store, "v2", {"a": {"d": 1.0}})
    store.activate("v2")
    assert store.neighbours(["a"]) == ("v2", {"a": {"d": 1.0}})
    assert store.rollback() == "v1"
    assert store.neighbours(["a"])[0] == "v1"
    with pytest.raises(ModelError, match="no earlier model version"):
        store.rollback()
    infos = store.versions()
    assert [i.version for i in infos] == ["v2", "v1"] and [i.active for i in infos] == [False, True]
    assert infos[0].meta == {"family": "ease", "params": {"lambda": 50}, "items": 1}
    with pytest.raises(ModelError, match="no published model version 'nope'"):
        store.activate("nope")
    with pytest.raises(ModelError, match="already exists"):
        publish(store, "v1", {})
    store.deactivate()
    assert store.neighbours(["a"]) == (None, {})


def test_old_versions_are_pruned_but_never_the_active_one(redis_client: redis.Redis, keys: Keys) -> None:
    store = ModelStore(redis_client, keys)
    publish(store, "v00", {"a": {"b": 1.0}})
    store.activate("v00")
    for n in range(1, KEEP_VERSIONS + 3):
        publish(store, f"v{n:02d}", {"a": {"b": 1.0}})
    versions = [i.version for i in store.versions()]
    assert "v00" in versions and store.active() == "v00"
    assert "v01" not in versions and len(versions) == KEEP_VERSIONS + 1
    assert not redis_client.exists(*keys.model_row_keys("v01"), keys.model_meta("v01"))


def test_the_api_blends_the_active_model_and_reports_its_version(
    redis_server: ManagedProcess, redis_client: redis.Redis, keys: Keys
) -> None:
    """Live state says a -> b; the batch model says a -> m. The blend weight decides, the answer names the model."""
    seed_live_state(redis_client, keys)
    store = ModelStore(redis_client, keys)
    publish(store, "v7", {"a": {"m": 3.0, "b": 0.5}})
    url = f"redis://127.0.0.1:{redis_server.port}/0"

    def answer(blend: float, path: str) -> dict:
        settings = Settings(
            redis_prefix=keys.prefix, redis_url=url, scoring=ScoringSettings(model_blend=blend)
        )
        resp = create_app(settings).test_client().get(path)
        assert resp.status_code == 200, resp.data
        return orjson.loads(resp.data)["data"]

    live = answer(0.5, "/v1/users/me/recommendations?k=2&explain=true")
    assert live["model_version"] is None and live["items"][0]["item_id"] == "b"  # no active model yet
    store.activate("v7")
    blended = answer(0.7, "/v1/users/me/recommendations?k=2&explain=true")
    assert blended["model_version"] == "v7"
    assert [r["item_id"] for r in blended["items"]] == ["m", "b"]
    assert blended["items"][0]["source"] == "model" and blended["strategy"] == "personalized"
    assert answer(0.0, "/v1/users/me/recommendations?k=1")["model_version"] is None
    similar = answer(0.7, "/v1/items/a/similar?k=2")
    assert similar["model_version"] == "v7" and similar["items"][0]["item_id"] == "m"
    store.deactivate()
    assert answer(0.7, "/v1/users/me/recommendations?k=2")["model_version"] is None


def test_the_api_exports_the_trainers_figures_from_the_active_model(
    redis_server: ManagedProcess, redis_client: redis.Redis, keys: Keys
) -> None:
    store = ModelStore(redis_client, keys)
    settings = Settings(redis_prefix=keys.prefix, redis_url=f"redis://127.0.0.1:{redis_server.port}/0")
    client = create_app(settings).test_client()
    assert b"streamrec_trainer_models_published 0.0" in client.get("/metrics").data
    meta = {"family": "ease", "test": {"hr_at_10": 0.1, "ndcg_at_10": 0.06}, "train_seconds": 42.5}
    store.publish("v1", {"a": (["b"], [1.0])}, meta)
    store.activate("v1")
    text = client.get("/metrics").data.decode()
    assert 'streamrec_trainer_active_model_info{family="ease",version="v1"} 1.0' in text
    assert 'streamrec_trainer_offline_metric_ratio{metric="hr_at_10"} 0.1' in text
    assert "streamrec_trainer_run_duration_seconds 42.5" in text
    assert "streamrec_trainer_last_run_timestamp_seconds" in text


def test_the_api_uses_the_blend_share_recorded_in_the_models_metadata(
    redis_server: ManagedProcess, redis_client: redis.Redis, keys: Keys
) -> None:
    """The trainer's share (chosen on validation) wins over STREAMREC_SCORING_MODEL_BLEND; without one, the global."""
    seed_live_state(redis_client, keys)
    store = ModelStore(redis_client, keys)
    rows = {"a": (["m"], [3.0])}
    store.publish("live-only", rows, {"family": "slist", "blend": 0.0})
    store.publish("model-only", rows, {"family": "slist", "blend": 1.0})
    store.publish("no-share", rows, {"family": "slist"})
    with pytest.raises(ModelError, match="blend share must be within 0..1"):
        store.publish("bad", rows, {"blend": 1.5})
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    client = create_app(
        # no API cache: each activation must show in the next answer, not after the cache's staleness
        Settings(
            redis_prefix=keys.prefix,
            redis_url=url,
            api_cache_ttl_ms=0,
            scoring=ScoringSettings(model_blend=0.5),
        )
    ).test_client()

    def first(version: str) -> tuple[list[str], str | None]:
        store.activate(version)
        data = orjson.loads(client.get("/v1/users/me/recommendations?k=2&explain=true").data)["data"]
        return [r["item_id"] for r in data["items"] if r["source"] in ("model", "item_to_item")], data[
            "model_version"
        ]

    assert first("live-only") == (["b"], None)  # share 0: the model is not blended in at all
    assert first("model-only") == (["m"], "model-only")  # share 1: the live neighbour b scores 0
    # no share recorded: the global 0.5 scores both 0.5 and the tie goes to the smaller id
    assert first("no-share") == (["b", "m"], "no-share")
    assert store.blend_share("model-only") == 1.0 and store.blend_share("no-share") is None


def test_the_trainer_reads_the_catalogs_features_from_redis(redis_client: redis.Redis, keys: Keys) -> None:
    """Category and attributes of every live catalog record become feature tokens; deleted and unknown
    items have none."""
    t = now_ms()
    writer = StateWriter(redis_client, keys, ScoringSettings())
    writer.upsert_items(
        [
            CatalogItem(item_id="a", category="shoes", attributes={"brand": "Acme", "sizes": [40, 41]}, ts=t),
            CatalogItem(item_id="b", category="shoes", ts=t),
            CatalogItem(item_id="c", category="hats", ts=t),
        ]
    )
    writer.upsert_items([ItemDeletion(item_id="c", deleted=True, ts=t + 1)])
    found = features.read_catalog_features(redis_client, keys, ["a", "b", "c", "zz"])
    assert found == {
        "a": ("brand=Acme", "category=shoes", "sizes=40", "sizes=41"),
        "b": ("category=shoes",),
    }
