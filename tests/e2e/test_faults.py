"""Redis faults under a running worker, and a poison message: nothing is lost, nothing is counted twice.

Each test runs its own Redis (so that CONFIG SET and REPLICAOF touch no other test) and a real worker
child process with its own /metrics port, and publishes with a plain kafka-python producer, as a shop
backend would. What every Redis fault must give: 0 dead letters, the worker's
``streamrec_worker_blocked{condition}`` at 1 while it waits, and after recovery every event folded
exactly once (the stats' applied count and each item's occurrence count ``c``). A Redis restart
mid-stream is in ``test_restarts.py``; a dead-letter replay in ``tests/integration/test_dlq.py``.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import redis
import requests
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamrec.devtools.localstack import ManagedProcess, free_port, start_redis
from streamrec.producers.dlq import DeadLetter, parse_record
from streamrec.state import applied_events
from streamrec.topics import Topics, ensure_topics
from tests.conftest import Namespace, wait_until
from tests.state_snapshot import item_occurrences

pytestmark = [pytest.mark.e2e, pytest.mark.broker, pytest.mark.redis]

_BLOCKED = re.compile(r'^streamrec_worker_blocked\{condition="([^"]+)"\} (\S+)$')


@dataclass
class Rig:
    """One test's Redis, worker and producer."""

    ns: Namespace
    server: ManagedProcess
    client: redis.Redis
    topics: Topics
    metrics_url: str
    worker: ManagedProcess
    producer: KafkaProducer
    tag: str

    def applied(self) -> int:
        try:
            return applied_events(self.client, self.ns.keys)
        except redis.RedisError:
            return -1

    def blocked(self) -> dict[str, float]:
        """The worker's ``streamrec_worker_blocked`` gauge by condition ({} if /metrics does not answer)."""
        try:
            text = requests.get(self.metrics_url, timeout=2).text
        except requests.RequestException:
            return {}
        return {m[1]: float(m[2]) for line in text.splitlines() if (m := _BLOCKED.match(line))}

    def event(self, n: int, user: str | None = None, item: str | None = None) -> dict:
        return {
            "event_id": f"{self.tag}-{n}",
            "type": "purchase" if n % 7 == 0 else "view",
            "user_id": user or f"u{n % 13}",
            "item_id": item or f"i{(n * 31) % 17}",
            "ts": int(time.time() * 1000) - 60_000 + n,
        }

    def send(self, event: dict) -> None:
        self.producer.send(self.topics.events, key=event["user_id"].encode(), value=orjson.dumps(event))


def dlq_raw(ns: Namespace) -> list[bytes]:
    """Every record of the dead-letter topic, read from the beginning until 1 s passes with none."""
    topic = Topics(ns.settings.topic_prefix).dlq
    consumer = KafkaConsumer(
        bootstrap_servers=ns.settings.kafka_bootstrap, group_id=None, consumer_timeout_ms=1000
    )
    try:
        consumer.assign(
            [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        )
        consumer.seek_to_beginning()
        return [m.value for m in consumer]
    finally:
        consumer.close()


@pytest.fixture
def rig(namespace: Namespace, tmp_path: Path) -> Iterator[Rig]:
    ns = namespace
    server = start_redis(free_port(), tmp_path / "redis", ns.log_dir / "own-redis.log")
    ns.procs.append(server)
    ns.env["STREAMREC_REDIS_URL"] = f"redis://127.0.0.1:{server.port}/0"
    metrics_port = free_port()
    ns.env["STREAMREC_WORKER_METRICS_PORT"] = str(metrics_port)
    client = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5)
    topics = Topics(ns.settings.topic_prefix)
    ensure_topics(ns.settings.kafka_bootstrap, topics, 2)
    worker = ns.start("worker", "worker")
    producer = KafkaProducer(bootstrap_servers=ns.settings.kafka_bootstrap, acks="all")
    r = Rig(
        ns,
        server,
        client,
        topics,
        f"http://127.0.0.1:{metrics_port}/metrics",
        worker,
        producer,
        uuid.uuid4().hex[:8],
    )
    # the worker has joined its group and folds: one event through
    r.send(r.event(-1, "warm", "warm"))
    r.producer.flush()
    wait_until(lambda: r.applied() == 1, 60, what="the first event folded")
    yield r
    producer.close()
    client.close()


def _exactly_once(r: Rig, events: list[dict]) -> None:
    wait_until(lambda: r.applied() == len(events) + 1, 60, interval=0.1, what="every event folded")
    want = Counter(e["item_id"] for e in events) + Counter({"warm": 1})
    assert item_occurrences(r.client, r.ns.keys) == dict(want)
    assert dlq_raw(r.ns) == []
    assert set(r.blocked().values()) == {0.0}


@pytest.mark.slow
def test_a_full_redis_blocks_the_worker_for_8_seconds_and_every_event_folds_once_after(rig: Rig) -> None:
    r = rig
    r.client.config_set("maxmemory-policy", "noeviction")
    r.client.config_set("maxmemory", "1")
    full_since = time.monotonic()
    events = [r.event(n) for n in range(50)]
    for e in events:
        r.send(e)
    r.producer.flush()
    seen = wait_until(
        lambda: r.blocked().get("oom") == 1.0, 20, what='streamrec_worker_blocked{condition="oom"} 1'
    )
    assert seen
    # the case: Redis stays full for 8 s while the events wait; nothing is folded past the limit
    wait_until(lambda: time.monotonic() - full_since >= 8, 10, interval=0.2, what="8 s of a full Redis")
    assert r.applied() == 1 and r.blocked().get("oom") == 1.0
    r.client.config_set("maxmemory", "0")
    _exactly_once(r, events)
    log = (r.ns.log_dir / "worker.log").read_text()
    assert "folding events blocked: oom" in log


@pytest.mark.slow
def test_a_failover_that_leaves_the_workers_redis_a_replica_for_a_while_loses_nothing(
    rig: Rig, tmp_path: Path
) -> None:
    r = rig
    a = r.client
    # a replica of the worker's Redis, in sync: the failover's other half
    replica = start_redis(
        free_port(),
        tmp_path / "replica",
        r.ns.log_dir / "replica-redis.log",
        extra=("--replicaof", "127.0.0.1", str(r.server.port)),
    )
    r.ns.procs.append(replica)
    b = redis.Redis(host="127.0.0.1", port=replica.port, socket_timeout=5)
    wait_until(
        lambda: b.info("replication").get("master_link_status") == "up", 30, what="the replica in sync"
    )

    events = [r.event(n) for n in range(1500)]
    stop = threading.Event()

    def publish() -> None:
        for e in events:  # about 300 events a second
            if stop.is_set():
                return
            r.send(e)
            time.sleep(1 / 300)
        r.producer.flush()

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    try:
        wait_until(lambda: r.applied() >= 300, 30, what="a first part folded")
        # a manual failover: writes paused, the replica caught up and promoted, the old master its replica
        a.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
        wait_until(
            lambda: b.info("replication")["master_repl_offset"]
            >= a.info("replication")["master_repl_offset"],
            10,
            what="the replica to catch up",
        )
        b.execute_command("REPLICAOF", "NO", "ONE")
        a.execute_command("REPLICAOF", "127.0.0.1", str(replica.port))
        a.execute_command("CLIENT", "UNPAUSE")
        readonly_since = time.monotonic()
        wait_until(
            lambda: r.blocked().get("readonly") == 1.0,
            20,
            what='streamrec_worker_blocked{condition="readonly"} 1',
        )
        folded = r.applied()
        wait_until(lambda: time.monotonic() - readonly_since >= 4, 10, interval=0.2, what="4 s read-only")
        assert r.applied() == folded  # nothing folded while its Redis is a replica
        wait_until(
            lambda: a.info("replication").get("master_link_status") == "up", 20, what="the old master synced"
        )
        # and back: the worker's Redis is a master again (with everything, nothing written elsewhere)
        a.execute_command("REPLICAOF", "NO", "ONE")
    except BaseException:
        stop.set()  # a failed test stops publishing
        raise
    finally:
        thread.join(60)
    assert not thread.is_alive()
    _exactly_once(r, events)
    assert r.worker.alive()
    b.close()


def test_an_oversized_poison_message_is_dead_lettered_bounded_and_the_next_event_folds(rig: Rig) -> None:
    r = rig
    poison = b"{" + b"\xff" * 899_999  # 900 KB of invalid JSON (and invalid UTF-8)
    big = KafkaProducer(bootstrap_servers=r.ns.settings.kafka_bootstrap, acks="all", max_request_size=2**21)
    sent = big.send(r.topics.events, key=b"same-user", value=poison).get(15)
    good = r.event(1, user="same-user", item="after-poison")
    follow = big.send(r.topics.events, key=b"same-user", value=orjson.dumps(good)).get(15)
    big.close()
    assert follow.partition == sent.partition and follow.offset > sent.offset  # the same partition, after it
    wait_until(lambda: r.applied() == 2, 60, interval=0.1, what="the good event after the poison")
    assert item_occurrences(r.client, r.ns.keys) == {"warm": 1, "after-poison": 1}

    [raw] = wait_until(lambda: dlq_raw(r.ns), 30, what="the dead letter")
    assert len(raw) < 4096  # bounded: far below the producer's 1 MiB request limit
    letter = parse_record(0, 0, None, raw, 0)
    assert isinstance(letter, DeadLetter) and letter.truncated
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        r.topics.events,
        sent.partition,
        sent.offset,
    )
    assert letter.length == len(poison) and letter.sha256 == hashlib.sha256(poison).hexdigest()
    assert letter.prefix == poison[:1024] and "JSON" in letter.reason
