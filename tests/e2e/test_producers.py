"""What real producers send reaches the state, through a real worker on Tansu and Redis.

Real client libraries other than kafka-python publish the events: confluent-kafka (librdkafka, as the
Java, Go, Node and .NET clients behave) and aiokafka, each with every compression codec, idempotent and
with headers; confluent-kafka also in transactions, whose commit markers are control records. A plain
kafka-python event behind them on the same partition is folded too, and the worker is still running.

A batch the worker cannot decode (here: a codec whose library is hidden from the worker, as on a machine
where it was never installed) blocks only its own partition: the worker keeps running and folding the
other partition, reports itself blocked (``streamrec_worker_blocked{condition="codec_unavailable"}``,
``/readyz`` 503 naming the codec, a log line), and goes on by itself once the library is there.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import confluent_kafka
import orjson
import pytest
import requests
from aiokafka import AIOKafkaProducer
from kafka import KafkaProducer

from streamrec.devtools.localstack import ManagedProcess, free_port
from streamrec.state import applied_events
from streamrec.topics import Topics, ensure_topics
from streamrec.trainer.eventlog import read_actions
from tests.conftest import Namespace, wait_until
from tests.e2e.test_faults import dlq_raw

pytestmark = [pytest.mark.e2e, pytest.mark.broker, pytest.mark.redis]

CODECS = ("gzip", "snappy", "lz4", "zstd")
_BLOCKED = re.compile(r'^streamrec_worker_blocked\{condition="([^"]+)"\} (\S+)$')


@dataclass
class Rig:
    """One test's worker, its status port and the events topic."""

    ns: Namespace
    worker: ManagedProcess
    status: str  # http://127.0.0.1:<worker metrics port>
    topics: Topics
    tag: str

    @property
    def bootstrap(self) -> str:
        return self.ns.settings.kafka_bootstrap

    def applied(self) -> int:
        return applied_events(self.ns.redis, self.ns.keys)

    def blocked(self) -> dict[str, float]:
        text = requests.get(f"{self.status}/metrics", timeout=2).text
        return {m[1]: float(m[2]) for line in text.splitlines() if (m := _BLOCKED.match(line))}

    def event(self, label: str, n: int, user: str) -> dict:
        return {
            "event_id": f"{self.tag}-{label}-{n}",
            "type": "view",
            "user_id": user,
            "item_id": f"{label}-{n % 3}",
            "ts": int(time.time() * 1000) - 1000,
        }


def start_rig(ns: Namespace, **env: str) -> Rig:
    port = free_port()
    ns.env["STREAMREC_WORKER_METRICS_PORT"] = str(port)
    ns.env.update(env)
    topics = Topics(ns.settings.topic_prefix)
    ensure_topics(ns.settings.kafka_bootstrap, topics, 2)
    worker = ns.start("worker", "worker")
    return Rig(ns, worker, f"http://127.0.0.1:{port}", topics, uuid.uuid4().hex[:8])


def plain_producer(r: Rig) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=r.bootstrap, acks="all")


def send_confluent(r: Rig, events: list[dict], codec: str, partition: int = -1) -> None:
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": r.bootstrap,
            "compression.type": codec,
            "enable.idempotence": True,
            "linger.ms": 20,
            "broker.address.family": "v4",
        }
    )
    for e in events:
        kwargs = {"partition": partition} if partition >= 0 else {}
        producer.produce(
            r.topics.events,
            key=e["user_id"].encode(),
            value=orjson.dumps(e),
            headers=[("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")],
            **kwargs,
        )
    assert producer.flush(30) == 0


def send_aiokafka(r: Rig, events: list[dict], codec: str) -> None:
    async def run() -> None:
        # not idempotent: Tansu answers aiokafka's InitProducerId with an unknown error (confluent-kafka's
        # idempotent producer above gets its producer id)
        producer = AIOKafkaProducer(bootstrap_servers=r.bootstrap, compression_type=codec, linger_ms=20)
        await producer.start()
        try:
            futures = [
                await producer.send(
                    r.topics.events,
                    orjson.dumps(e),
                    key=e["user_id"].encode(),
                    headers=[("source", b"aiokafka")],
                )
                for e in events
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(run())


@pytest.fixture
def rig(namespace: Namespace) -> Iterator[Rig]:
    yield start_rig(namespace)


def test_every_codec_of_confluent_kafka_and_aiokafka_and_transactions_are_folded(rig: Rig) -> None:
    r = rig
    sent: list[dict] = []
    for codec in CODECS:
        batch = [r.event(f"ck-{codec}", n, f"user-{n % 4}") for n in range(20)]
        send_confluent(r, batch, codec)
        sent += batch
        batch = [r.event(f"aio-{codec}", n, f"user-{n % 4}") for n in range(20)]
        send_aiokafka(r, batch, codec)
        sent += batch
    # a transactional producer: two committed transactions; their commit markers are control records
    tx = confluent_kafka.Producer(
        {
            "bootstrap.servers": r.bootstrap,
            "transactional.id": f"tx-{r.tag}",
            "compression.type": "zstd",
            "broker.address.family": "v4",
        }
    )
    tx.init_transactions(30)
    for t in range(2):
        tx.begin_transaction()
        batch = [r.event(f"tx{t}", n, f"user-{n % 4}") for n in range(10)]
        for e in batch:
            tx.produce(r.topics.events, key=e["user_id"].encode(), value=orjson.dumps(e))
        tx.commit_transaction(30)
        sent += batch
    # a plain event behind them all, on the partitions they used
    plain = plain_producer(r)
    behind = [r.event("plain", n, f"user-{n % 4}") for n in range(4)]
    for e in behind:
        plain.send(r.topics.events, key=e["user_id"].encode(), value=orjson.dumps(e))
    plain.flush()
    plain.close()
    sent += behind
    wait_until(lambda: r.applied() == len(sent), 90, interval=0.2, what=f"{len(sent)} events folded")
    assert r.worker.proc.poll() is None, "the worker is still running"
    assert dlq_raw(r.ns) == [], "control records and headers are not dead letters"
    assert set(r.blocked().values()) == {0.0}
    ready = requests.get(f"{r.status}/readyz", timeout=2)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    # the trainer reads the same log with kafka-python: every codec decodes there too
    users, rejected = read_actions(r.bootstrap, r.topics.events, idle_s=1.0)
    assert rejected == 0
    assert sum(len(actions) for actions in users.values()) == len(sent)


def test_a_batch_whose_codec_library_is_missing_blocks_only_its_partition_and_goes_on_once_installed(
    namespace: Namespace, tmp_path: Path
) -> None:
    # the worker cannot import cramjam (aiokafka's snappy, lz4 and zstd), as if it were not installed
    hidden = tmp_path / "hide-cramjam"
    hidden.mkdir()
    (hidden / "cramjam.py").write_text("raise ImportError('hidden by the test: not installed')\n")
    r = start_rig(namespace, PYTHONPATH=str(hidden), STREAMREC_WORKER_BLOCKED_RETRY_S="0.5")
    plain = plain_producer(r)
    warm = r.event("warm", 0, "warm-user")
    plain.send(r.topics.events, key=b"warm-user", value=orjson.dumps(warm), partition=1)
    plain.flush()
    wait_until(lambda: r.applied() == 1, 60, what="the worker folds")

    snappy = [r.event("snappy", n, f"user-{n}") for n in range(10)]
    send_confluent(r, snappy, "snappy", partition=0)
    behind = r.event("behind", 0, "user-0")  # on the blocked partition, after the snappy batch
    plain.send(r.topics.events, key=b"user-0", value=orjson.dumps(behind), partition=0)
    plain.flush()
    wait_until(
        lambda: r.blocked().get("codec_unavailable") == 1.0,
        30,
        what='blocked{condition="codec_unavailable"} 1',
    )
    ready = requests.get(f"{r.status}/readyz", timeout=2)
    assert ready.status_code == 503
    (part,) = ready.json()["blocked_partitions"]
    assert (part["topic"], part["partition"], part["condition"]) == (r.topics.events, 0, "codec_unavailable")
    assert "snappy" in part["cause"]
    assert requests.get(f"{r.status}/healthz", timeout=2).status_code == 200

    # the other partition keeps folding while partition 0 waits
    others = [r.event("other", n, "other-user") for n in range(5)]
    for e in others:
        plain.send(r.topics.events, key=b"other-user", value=orjson.dumps(e), partition=1)
    plain.flush()
    wait_until(lambda: r.applied() == 1 + len(others), 30, what="partition 1 folds while 0 is blocked")
    time.sleep(3)  # several retries fail; the worker does not crash and folds nothing of partition 0
    assert r.worker.proc.poll() is None
    assert r.applied() == 1 + len(others)
    log = (r.ns.log_dir / "worker.log").read_text()
    assert re.search(r"blocked at offset \d+: the snappy compression codec's library is not installed", log)

    # the library is installed: the next retry goes on, nothing lost, nothing dead-lettered
    (hidden / "cramjam.py").unlink()
    wait_until(
        lambda: r.applied() == 1 + len(others) + len(snappy) + 1, 30, interval=0.2, what="partition 0 resumes"
    )
    wait_until(lambda: r.blocked().get("codec_unavailable") == 0.0, 10, what="unblocked")
    assert requests.get(f"{r.status}/readyz", timeout=2).status_code == 200
    assert dlq_raw(r.ns) == []
    assert r.worker.proc.poll() is None
    plain.close()
