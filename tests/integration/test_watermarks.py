"""``streamrec state offsets``, ``forget-offsets`` and ``rewind-offsets`` against a real Redis (and Tansu):
after a topic is recreated, its offsets restart below the watermarks and its events are skipped as folded
ones until the watermarks are forgotten; after Redis is restored from a backup, the workers' group is
moved back to the restored watermarks and what Redis lost is folded again, once."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections import Counter

import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.coordinator.assignors.range import RangePartitionAssignor

from streamrec.contract import Event
from streamrec.devtools.localstack import ManagedProcess
from streamrec.event_types import EventType
from streamrec.fold import APPLIED, DUPLICATE, Source, StateWriter
from streamrec.keys import Keys
from streamrec.settings import ScoringSettings
from streamrec.state import applied_events
from streamrec.topics import Topics, ensure_topics
from streamrec.watermarks import forget_offsets, read_watermarks, rewind_targets
from tests.conftest import Namespace, wait_until
from tests.state_snapshot import item_occurrences

pytestmark = [pytest.mark.redis, pytest.mark.broker]


def view(user: str, item: str) -> Event:
    return Event(
        event_id=uuid.uuid4().hex, type=EventType.VIEW, user_id=user, item_id=item, ts=int(time.time() * 1000)
    )


def test_a_recreated_topic_folds_again_once_its_offsets_are_forgotten(
    namespace: Namespace, redis_server: ManagedProcess
) -> None:
    redis_client, keys = namespace.redis, namespace.keys
    writer = StateWriter(redis_client, keys, ScoringSettings())
    old = [view("u", f"i{n}") for n in range(10)]
    assert writer.apply(old, [Source(0, n) for n in range(10)]).outcomes == [APPLIED] * 10
    assert writer.apply([view("v", "x")], [Source(1, 4)]).outcomes == [APPLIED]
    assert read_watermarks(redis_client, keys).offsets == {"ev:0": 9, "ev:1": 4}

    # the topic is deleted and created again: a new event arrives at offset 3 of partition 0
    fresh = view("w", "new")
    assert writer.apply([fresh], [Source(0, 3)]).outcomes == [DUPLICATE]  # taken for a folded one

    env = {
        "PATH": "/usr/bin:/bin",
        "STREAMREC_REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0",
        "STREAMREC_REDIS_PREFIX": keys.prefix,
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streamrec.cli", "state", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    shown = cli("offsets")
    assert shown.returncode == 0, shown.stderr
    assert "ev:0\t9" in shown.stdout and "ev:1\t4" in shown.stdout
    asked = cli("forget-offsets")
    assert asked.returncode == 0 and "would forget 2 watermarks" in asked.stdout and "--yes" in asked.stdout
    assert read_watermarks(redis_client, keys).offsets  # nothing happened without --yes
    done = cli("forget-offsets", "--yes")
    assert done.returncode == 0, done.stderr
    assert "forgot 2 watermarks (ev:0=9, ev:1=4)" in done.stdout
    assert read_watermarks(redis_client, keys).offsets == {}

    assert writer.apply([fresh], [Source(0, 3)]).outcomes == [APPLIED]
    # a client's retry of an event folded before is still caught by its claim, within the window
    assert writer.apply([old[0]], [Source(0, 4)]).outcomes == [DUPLICATE]
    assert read_watermarks(redis_client, keys).offsets == {"ev:0": 4}


def test_forgetting_clears_the_per_slot_watermarks_and_the_stats_marks(namespace: Namespace) -> None:
    redis_client, keys = namespace.redis, namespace.keys
    # what the cluster schedule leaves (written by hand here: one Redis has no slots to spread them over)
    slots = [keys.slot_watermark(s) for s in (0, 777, 16383)]
    for n, name in enumerate(slots):
        redis_client.hset(name, mapping={"u:0": 10 + n, "i:0": 5, "guard": 1})
    redis_client.hset(keys.stats("ev", 0), mapping={"applied:view": 7, "wm:0": 12})
    found = read_watermarks(redis_client, keys)
    assert found.offsets == {"u:0": 12, "i:0": 5} and sorted(found.keys) == sorted(slots)
    assert found.stats_fields == 1
    forget_offsets(redis_client, keys)
    assert not any(redis_client.exists(name) for name in slots)
    assert redis_client.hgetall(keys.stats("ev", 0)) == {b"applied:view": b"7"}  # counters stay


def test_only_partitions_committed_past_their_watermark_move_back() -> None:
    committed = {0: 41, 1: 10, 2: None, 3: 7}
    assert rewind_targets(committed, {0: 30, 1: 9, 3: 12}) == {0: 31}
    assert rewind_targets({0: 5}, {}) == {0: 0}  # nothing of it in Redis: from the start


def _backup(client: redis.Redis, keys: Keys) -> list[tuple[bytes, int, bytes]]:
    """Every key of the namespace as (name, ttl ms or 0, DUMP): what a backup or an AOF holds."""
    out = []
    for name in client.scan_iter(match=keys.pattern(), count=1000):
        ttl = client.pttl(name)
        out.append((name, max(ttl, 0), client.dump(name)))
    return out


def _restore(client: redis.Redis, keys: Keys, backup: list[tuple[bytes, int, bytes]]) -> None:
    for name in client.scan_iter(match=keys.pattern(), count=1000):
        client.delete(name)
    for name, ttl, value in backup:
        client.restore(name, ttl, value)


class _AsFaust(RangePartitionAssignor):
    name = "faust"  # the group's protocol is the worker's; a range assignment under its name joins it


def _leave_once(bootstrap: str, group: str, topic: str) -> None:
    """Join ``group`` with a kafka-python consumer that commits nothing, and leave it: the join's rebalance
    drops a member Tansu still lists after a Faust worker stopped (its session expired), and kafka-python's
    close leaves the group, which is then empty."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        session_timeout_ms=6000,
        partition_assignment_strategy=[_AsFaust],
    )
    try:
        wait_until(lambda: bool(consumer.poll(200) is not None and consumer.assignment()), 60, what="joined")
    finally:
        consumer.close(autocommit=False)


def test_a_restored_redis_gets_back_what_it_lost_once_the_group_is_rewound(namespace: Namespace) -> None:
    ns = namespace
    topics = Topics(ns.settings.topic_prefix)
    ensure_topics(ns.settings.kafka_bootstrap, topics, 2)
    worker = ns.start("worker", "worker")
    admin = KafkaAdminClient(bootstrap_servers=ns.settings.kafka_bootstrap)
    group = ns.settings.worker_group

    def committed() -> int:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
        return sum(m.offset for tp, m in offsets.items() if tp.topic == topics.events and m.offset > 0)

    producer = KafkaProducer(bootstrap_servers=ns.settings.kafka_bootstrap, acks="all")
    events = [view(f"u{n % 5}", f"i{n % 7}") for n in range(40)]

    def publish(part: list[Event]) -> None:
        for e in part:
            producer.send(topics.events, key=e.user_id.encode(), value=e.to_json())
        producer.flush()

    publish(events[:20])
    wait_until(lambda: applied_events(ns.redis, ns.keys) == 20, 60, what="the first half folded")
    wait_until(lambda: committed() == 20, 30, interval=0.2, what="the first half committed")
    backup = _backup(ns.redis, ns.keys)  # a backup (or the AOF's last fsync) taken here
    publish(events[20:])
    wait_until(lambda: applied_events(ns.redis, ns.keys) == 40, 60, what="the second half folded")
    wait_until(lambda: committed() == 40, 30, interval=0.2, what="the second half committed")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streamrec.cli", "state", *args],
            env=ns.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    busy = cli("rewind-offsets", "--yes")
    assert busy.returncode == 1 and "stop the workers first" in busy.stderr, busy.stderr
    worker.stop()
    _restore(ns.redis, ns.keys, backup)  # Redis comes back without the second half
    assert applied_events(ns.redis, ns.keys) == 20
    # Tansu keeps the stopped Faust worker listed as a member of a stable group, and refuses the rewind
    kept = cli("rewind-offsets")
    assert kept.returncode == 1 and "stop the workers first" in kept.stderr, kept.stdout + kept.stderr
    _leave_once(ns.settings.kafka_bootstrap, group, topics.events)  # a rebalance drops the ghost member
    asked = cli("rewind-offsets")
    assert asked.returncode == 0 and " -> " in asked.stdout and "would move" in asked.stdout, (
        asked.stdout + asked.stderr
    )
    assert committed() == 40
    done = cli("rewind-offsets", "--yes")
    assert done.returncode == 0 and re.search(r"moved [12] partitions", done.stdout), (
        done.stdout + done.stderr
    )
    assert committed() == 20

    ns.start("worker-again", "worker")
    wait_until(lambda: applied_events(ns.redis, ns.keys) == 40, 60, what="what Redis lost, folded again")
    assert item_occurrences(ns.redis, ns.keys) == dict(Counter(e.item_id for e in events))
    producer.close()
    admin.close()
