"""Events -> Tansu -> worker (a real child process) -> Redis, with dead letters and redelivery."""

from __future__ import annotations

import re
import time

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamrec.state import StateReader
from streamrec.topics import Topics, ensure_topics
from tests.conftest import Namespace, wait_until
from tests.state_snapshot import item_occurrences, snapshot, state_only

pytestmark = [pytest.mark.broker, pytest.mark.redis]


def _events(n_users: int, ts0: int) -> list[dict]:
    """Users who view a, b, c in turn (some buy c): a known co-occurrence pattern."""
    rows = []
    for u in range(n_users):
        for j, item in enumerate(["a", "b", "c"]):
            rows.append(
                {
                    "event_id": f"e-{u}-{j}",
                    "type": "view",
                    "user_id": f"u{u}",
                    "item_id": item,
                    "ts": ts0 + u * 1000 + j,
                }
            )
        if u % 3 == 0:
            rows.append(
                {
                    "event_id": f"p-{u}",
                    "type": "purchase",
                    "user_id": f"u{u}",
                    "item_id": "c",
                    "ts": ts0 + u * 1000 + 5,
                }
            )
    rows.append({"event_id": "s-1", "type": "search", "user_id": "searcher", "query": "Red Shoes", "ts": ts0})
    return rows


def _applied(ns: Namespace) -> int:
    return sum(
        v
        for k, v in StateReader(ns.redis, ns.keys, ns.settings.scoring).stats().items()
        if k.startswith("applied:")
    )


def _dlq_records(ns: Namespace, want: int, timeout: float) -> list[dict]:
    """The dead-letter topic from its beginning until ``want`` records or ``timeout`` s. Partitions are
    assigned, not joined as a group: a group join on Tansu can take half a session timeout, or stall."""
    topic = Topics(ns.settings.topic_prefix).dlq
    consumer = KafkaConsumer(
        bootstrap_servers=ns.settings.kafka_bootstrap, group_id=None, consumer_timeout_ms=500
    )
    found: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        partitions: set[int] = set()
        while not partitions and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic) or set()
            if not partitions:
                time.sleep(0.2)
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        while len(found) < want and time.monotonic() < deadline:
            for msg in consumer:
                found.append(orjson.loads(msg.value))
    finally:
        consumer.close()
    return found


def test_worker_folds_events_dead_letters_bad_ones_and_ignores_redelivery(namespace: Namespace) -> None:
    ns, topics = namespace, Topics(namespace.settings.topic_prefix)
    ensure_topics(ns.settings.kafka_bootstrap, topics, 2)
    ns.start("worker", "worker")
    producer = KafkaProducer(bootstrap_servers=ns.settings.kafka_bootstrap, acks="all")
    rows = _events(30, int(time.time() * 1000) - 60_000)

    def publish_all() -> None:
        for row in rows:
            producer.send(topics.events, key=row["user_id"].encode(), value=orjson.dumps(row))
        producer.flush()

    publish_all()
    wait_until(lambda: _applied(ns) == len(rows), 30, what=f"{len(rows)} events applied")
    first = state_only(snapshot(ns.redis, ns.keys.pattern()), ns.keys)
    reader = StateReader(ns.redis, ns.keys, ns.settings.scoring)
    # every user viewed b right after a
    assert reader.neighbours(["a"], 10, int(time.time() * 1000))["a"]["b"] == pytest.approx(30.0, rel=1e-3)

    # malformed messages, one per partition, then every event again (same event_ids), then one good event
    bad = [b"{not json", orjson.dumps({"event_id": "x1", "type": "teleport", "user_id": "u"})]
    for partition, value in enumerate(bad):
        producer.send(topics.events, key=b"bad", value=value, partition=partition)
    publish_all()
    for partition, value in enumerate(bad):
        producer.send(topics.events, key=b"bad", value=value, partition=partition)
    producer.flush()

    dead = _dlq_records(ns, 4, timeout=30)
    assert len(dead) == 4
    reasons = " | ".join(d["reason"] for d in dead)
    assert "not valid JSON" in reasons and "type" in reasons
    assert {d.get("original") for d in dead} >= {"{not json"}
    # the dead letters behind the replayed events mean the worker has read the replay: nothing changed
    assert state_only(snapshot(ns.redis, ns.keys.pattern()), ns.keys) == first

    # and the worker is still alive and folding
    producer.send(
        topics.events,
        key=b"late",
        value=orjson.dumps({"event_id": "late-1", "type": "view", "user_id": "late", "item_id": "a"}),
    )
    producer.flush()
    wait_until(lambda: _applied(ns) == len(rows) + 1, 15, what="the event after the dead letters")
    assert ns.procs[0].alive()
    producer.close()


def test_two_workers_share_the_partitions_and_apply_each_event_once(namespace: Namespace) -> None:
    ns, topics = namespace, Topics(namespace.settings.topic_prefix)
    ensure_topics(ns.settings.kafka_bootstrap, topics, 2)
    ns.start("worker-a", "worker")
    ns.start("worker-b", "worker")
    producer = KafkaProducer(bootstrap_servers=ns.settings.kafka_bootstrap, acks="all")
    ts0 = int(time.time() * 1000) - 600_000
    n_users, per_user = 200, 5
    for u in range(n_users):
        for j in range(per_user):
            row = {
                "event_id": f"m-{u}-{j}",
                "type": "view",
                "user_id": f"user-{u}",
                "item_id": f"i{(u + j) % 17}",
                "ts": ts0 + j,
            }
            producer.send(topics.events, key=row["user_id"].encode(), value=orjson.dumps(row))
    producer.flush()
    producer.close()
    total = n_users * per_user
    wait_until(lambda: _applied(ns) == total, 60, what=f"{total} events applied by two workers")
    counts = item_occurrences(ns.redis, ns.keys)
    expected: dict[str, int] = {}
    for u in range(n_users):
        for j in range(per_user):
            expected[f"i{(u + j) % 17}"] = expected.get(f"i{(u + j) % 17}", 0) + 1
    assert counts == expected
    # each user's history is complete and in order, whichever worker owned the user's partition
    history = ns.redis.lrange(ns.keys.history("user-7"), 0, -1)
    assert [h.decode().split("|")[0] for h in history] == [
        f"i{(7 + j) % 17}" for j in reversed(range(per_user))
    ]
    # both workers joined the group and were each assigned a partition of the events topic
    owned = re.compile(rf"\| {re.escape(topics.events)}\s+\| \{{\d")
    logs = [(ns.log_dir / f"worker-{x}.log").read_text() for x in "ab"]
    assert all(owned.search(log) for log in logs)
    assert all(ns.procs[i].alive() for i in range(2))
