"""Read the event log back from Kafka, from the beginning, as each user's actions in time order."""

from __future__ import annotations

import time
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition

from streamrec.contract import Rejection, UserErasure, decode_event
from streamrec.event_types import EventType
from streamrec.trainer.splits import Action

IDLE_S = 2.0  # the log is read to its end once this long passes with no record (Tansu's end offsets lag)


def read_actions(
    bootstrap: str, topic: str, on_batch: Callable[[int], None] | None = None, idle_s: float = IDLE_S
) -> tuple[dict[str, list[Action]], int]:
    """Every valid event on ``topic`` as ``user -> [(type, item, ts)]`` (searches left out), and the reject count.

    Duplicates (the same ``event_id`` delivered twice) count once, as in the live state. An erased user's
    events up to the erasure's time are left out, wherever they stand in the log.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=int(idle_s * 1000),
        max_poll_records=5000,
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            raise ValueError(f"topic {topic!r} does not exist or has no partitions")
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        rows: list[tuple[int, str, EventType, str]] = []
        seen: set[str] = set()
        erased: dict[str, int] = {}
        rejected = 0
        last = time.monotonic()
        for message in consumer:
            decoded = decode_event(message.value)
            if isinstance(decoded, Rejection):
                rejected += 1
                continue
            if isinstance(decoded, UserErasure):
                erased[decoded.erase_user] = max(decoded.ts, erased.get(decoded.erase_user, 0))
                continue
            if decoded.event_id in seen or decoded.type is EventType.SEARCH or decoded.item_id is None:
                continue
            seen.add(decoded.event_id)
            rows.append((decoded.ts, decoded.user_id, decoded.type, decoded.item_id))
            if on_batch and time.monotonic() - last > 0.5:
                on_batch(len(rows))
                last = time.monotonic()
    finally:
        consumer.close()
    if on_batch:
        on_batch(len(rows))  # the last count, whatever the throttle held back
    rows.sort(key=lambda r: r[0])
    users: dict[str, list[Action]] = {}
    for ts, user, etype, item in rows:
        if ts <= erased.get(user, -1):
            continue
        users.setdefault(user, []).append((etype, item, ts))
    return users, rejected
