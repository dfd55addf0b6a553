"""What the API's writes put on the real topics (Tansu, the API under gunicorn, no worker): deletions and
erasures in the wire formats the worker consumes, keyed so that they are ordered after the records they
follow; and the trainer's log reader leaves an erased user out."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
import pytest
import requests
from kafka import KafkaConsumer

from streamrec.contract import ItemDeletion, UserErasure, decode_event, decode_item
from streamrec.topics import Topics, ensure_topics
from streamrec.trainer.eventlog import read_actions
from tests.conftest import Namespace, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.redis]


def _start_api(ns: Namespace) -> str:
    ensure_topics(ns.settings.kafka_bootstrap, Topics(ns.settings.topic_prefix), 2)
    ns.start("api", "api")
    api = f"http://127.0.0.1:{ns.settings.api_port}"
    wait_until(lambda: _ready(api), 30, what="the API")
    return api


def _ready(api: str) -> bool:
    try:
        return requests.get(f"{api}/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _read(ns: Namespace, topic: str, count: int) -> list[Any]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=ns.settings.kafka_bootstrap,
        group_id=f"test-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=2000,
    )
    records: list[Any] = []
    try:
        deadline = time.monotonic() + 30
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    assert len(records) == count, f"expected {count} records on {topic}, got {len(records)}"
    return sorted(records, key=lambda r: (r.partition, r.offset))


def test_deletions_and_erasures_reach_their_topics_in_the_worker_formats(namespace: Namespace) -> None:
    ns = namespace
    api = _start_api(ns)
    topics = Topics(ns.settings.topic_prefix)
    before = int(time.time() * 1000)
    assert requests.put(f"{api}/v1/items/SKU-1%2FXL", json={"title": "Shirt"}, timeout=30).status_code == 202
    assert requests.delete(f"{api}/v1/items/SKU-1%2FXL", timeout=30).status_code == 202
    view = {"event_id": "v1", "type": "view", "user_id": "acct/1", "item_id": "SKU-1/XL", "ts": before}
    assert requests.post(f"{api}/v1/events", json=view, timeout=30).status_code == 202
    erased = requests.delete(f"{api}/v1/users/acct%2F1", timeout=30)
    assert erased.status_code == 202
    erasure_id = erased.json()["data"]["erasure_id"]

    upsert, deletion = _read(ns, topics.items, 2)
    assert (upsert.key, deletion.key) == (b"SKU-1/XL", b"SKU-1/XL")
    assert upsert.partition == deletion.partition and upsert.offset < deletion.offset
    body = orjson.loads(deletion.value)
    assert body == {"item_id": "SKU-1/XL", "deleted": True, "ts": body["ts"]}
    assert before <= body["ts"] <= int(time.time() * 1000)
    assert isinstance(decode_item(deletion.value), ItemDeletion)

    event, erasure = _read(ns, topics.events, 2)
    assert (event.key, erasure.key) == (b"acct/1", b"acct/1")
    assert event.partition == erasure.partition and event.offset < erasure.offset  # after the user's events
    body = orjson.loads(erasure.value)
    assert body == {"erase_user": "acct/1", "erasure_id": erasure_id, "ts": body["ts"]}
    decoded = decode_event(erasure.value)
    assert isinstance(decoded, UserErasure) and decoded.erasure_id == erasure_id


def test_the_trainer_leaves_an_erased_user_out_of_the_log(namespace: Namespace) -> None:
    ns = namespace
    api = _start_api(ns)
    now = int(time.time() * 1000)
    events = [
        {
            "event_id": f"{user}-{n}",
            "type": "view",
            "user_id": user,
            "item_id": f"i{n}",
            "ts": now - 60_000 + n,
        }
        for user in ("gone/1", "kept")
        for n in range(3)
    ]
    assert requests.post(f"{api}/v1/events", json=events, timeout=30).status_code == 202
    assert requests.delete(f"{api}/v1/users/gone%2F1", timeout=30).status_code == 202
    _read(ns, Topics(ns.settings.topic_prefix).events, 7)  # every record is on the log
    users, rejected = read_actions(ns.settings.kafka_bootstrap, Topics(ns.settings.topic_prefix).events)
    assert rejected == 0
    assert set(users) == {"kept"} and len(users["kept"]) == 3
