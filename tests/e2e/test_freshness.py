"""HTTP in, HTTP out: events published to Kafka change what the API (under gunicorn) answers, fast."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest
import requests
from kafka import KafkaProducer

from streamrec.state import applied_events
from streamrec.topics import Topics, ensure_topics
from tests.conftest import Namespace, needs_dataset, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.broker, pytest.mark.redis]


def _recs(api: str, user: str) -> dict:
    resp = requests.get(
        f"{api}/v1/users/{user}/recommendations", params={"k": 5, "explain": "true"}, timeout=5
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def _start_worker_and_api(ns: Namespace) -> str:
    """Topics, a worker and the API under gunicorn for this test; returns the API's base URL."""
    ensure_topics(ns.settings.kafka_bootstrap, Topics(ns.settings.topic_prefix), 2)
    ns.start("worker", "worker")
    ns.start("api", "api")
    api = f"http://127.0.0.1:{ns.settings.api_port}"
    wait_until(lambda: _ok(f"{api}/readyz"), 30, what="the API to be ready")
    return api


def _view_until_personal(
    producer: KafkaProducer, topics: Topics, api: str, user: str, item: str
) -> tuple[dict, float]:
    """Publish one view with plain kafka-python; return the first personalised answer and how long it took."""
    producer.send(
        topics.events,
        key=user.encode(),
        value=orjson.dumps({"event_id": f"v-{user}", "type": "view", "user_id": user, "item_id": item}),
    )
    producer.flush()
    sent = time.monotonic()
    after = wait_until(
        lambda: (r := _recs(api, user))["strategy"] == "personalized" and r,
        5,
        interval=0.01,
        what="personalised recommendations",
    )
    return after, time.monotonic() - sent


def _applied(ns: Namespace) -> int:
    return applied_events(ns.redis, ns.keys)


def test_a_view_from_a_plain_kafka_producer_changes_recommendations_within_a_second(
    namespace: Namespace,
) -> None:
    ns, topics, api = namespace, Topics(namespace.settings.topic_prefix), _start_worker_and_api(namespace)

    # history: shoppers who look at the camera go on to the lens and the tripod; others buy socks
    producer = KafkaProducer(bootstrap_servers=ns.settings.kafka_bootstrap, acks="all", linger_ms=0)
    ts0 = int(time.time() * 1000) - 3_600_000
    n = 0
    for u in range(40):
        path = ["camera", "lens", "tripod"] if u % 2 else ["socks", "shoes"]
        for j, item in enumerate(path):
            n += 1
            producer.send(
                topics.events,
                key=f"u{u}".encode(),
                value=orjson.dumps(
                    {
                        "event_id": f"h{n}",
                        "type": "view",
                        "user_id": f"u{u}",
                        "item_id": item,
                        "ts": ts0 + u * 100 + j,
                    }
                ),
            )
    producer.flush()
    wait_until(lambda: _applied(ns) == n, 30, what="history folded in")

    user = f"new-{uuid.uuid4().hex[:6]}"
    before = _recs(api, user)
    assert before["strategy"] == "popular"

    after, elapsed = _view_until_personal(producer, topics, api, user, "camera")
    (ns.log_dir / "freshness.txt").write_text(f"view -> changed recommendations: {elapsed * 1000:.0f} ms\n")
    assert elapsed < 1.0, f"the view took {elapsed:.3f}s to show"
    ids = [row["item_id"] for row in after["items"]]
    assert ids[:2] == ["lens", "tripod"] and "camera" not in ids
    assert after["items"][0]["reason"] == "viewed together with camera"
    assert after["recommendation_id"] != before["recommendation_id"]
    producer.close()


def test_events_posted_to_the_api_reach_the_state(namespace: Namespace) -> None:
    api = _start_worker_and_api(namespace)

    resp = requests.put(
        f"{api}/v1/items/sku-1", json={"title": "Trail shoe", "category": "shoes", "price": 89.5}, timeout=10
    )
    assert resp.status_code == 202, resp.text
    batch = [
        {"event_id": f"api-{i}", "type": "view", "user_id": f"w{i % 3}", "item_id": "sku-1"} for i in range(6)
    ]
    resp = requests.post(f"{api}/v1/events", json=batch, timeout=10)
    assert resp.status_code == 202 and resp.json()["data"]["accepted"] == 6
    # the catalog and the events travel on different topics, so either may land first: wait for both
    popular = wait_until(
        lambda: (d := requests.get(f"{api}/v1/popular", timeout=5).json()["data"])["items"]
        and d["items"][0]["title"]
        and d,
        15,
        what="the posted events and the catalog record to show in popular",
    )
    top = popular["items"][0]
    assert (top["item_id"], top["title"], top["price"], top["category"]) == (
        "sku-1",
        "Trail shoe",
        89.5,
        "shoes",
    )

    bad = requests.post(
        f"{api}/v1/events", json=[{"event_id": "x", "type": "view", "user_id": "u"}], timeout=5
    )
    assert bad.status_code == 400
    assert bad.json()["code"] == 1002 and "item_id" in bad.json()["msg"]


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


@needs_dataset("movielens-100k")
def test_a_view_on_an_item_from_replayed_real_data_changes_recommendations_within_a_second(
    namespace: Namespace,
) -> None:
    ns, topics = namespace, Topics(namespace.settings.topic_prefix)
    api = _start_worker_and_api(ns)
    replay = ns.start("replay", "replay", "movielens-100k", "--limit", "5000", "--no-ensure-topics")
    assert replay.proc.wait(120) == 0
    wait_until(lambda: _applied(ns) >= 5000 * 0.9, 60, what="the replay folded in")
    item = requests.get(f"{api}/v1/popular", params={"k": 1}, timeout=5).json()["data"]["items"][0]["item_id"]
    similar = requests.get(f"{api}/v1/items/{item}/similar", params={"k": 5}, timeout=5).json()["data"]
    assert similar["strategy"] == "item_to_item"

    user = f"new-{uuid.uuid4().hex[:6]}"
    assert _recs(api, user)["strategy"] == "popular"
    producer = KafkaProducer(bootstrap_servers=ns.settings.kafka_bootstrap, acks="all", linger_ms=0)
    after, elapsed = _view_until_personal(producer, topics, api, user, item)
    producer.close()
    (ns.log_dir / "freshness.txt").write_text(
        f"view on replayed item {item} -> changed: {elapsed * 1000:.0f} ms\n"
    )
    assert elapsed < 1.0, f"the view took {elapsed:.3f}s to show"
    assert after["items"][0]["reason"] == f"viewed together with {item}"
    assert item not in [row["item_id"] for row in after["items"]]
