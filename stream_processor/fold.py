"""What the agents do with a batch of raw messages, apart from Kafka: decode, split off the bad ones."""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

from streamrec.contract import (
    DEFAULT_TIME_POLICY,
    CatalogItem,
    Event,
    ItemDeletion,
    Rejection,
    TimePolicy,
    UserErasure,
    decode_event,
    decode_item,
)


@dataclass(frozen=True)
class RawMessage:
    """A message as it came off the topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class Decoded:
    """A batch split into good records and dead letters."""

    good: list = field(default_factory=list)
    sources: list[RawMessage] = field(default_factory=list)
    dead: list[tuple[RawMessage, Rejection]] = field(default_factory=list)


def dead_letter(msg: RawMessage, rejection: Rejection) -> bytes:
    """The dead-letter record: the reason, where the message came from, and its original bytes."""
    value = msg.value or b""
    try:
        text: str | None = value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return orjson.dumps(
        {
            "reason": rejection.reason,
            "errors": rejection.errors,
            "source": {"topic": msg.topic, "partition": msg.partition, "offset": msg.offset},
            "key": msg.key.decode("utf-8", "replace") if msg.key else None,
            "original": text,
            "original_b64": base64.b64encode(value).decode(),
            "rejected_at": int(time.time() * 1000),
        }
    )


def decode_batch(
    messages: Sequence[RawMessage], kind: str, policy: TimePolicy = DEFAULT_TIME_POLICY
) -> Decoded:
    """Validate each message as an events-topic record (``kind`` "event": an ``Event`` or a
    ``UserErasure``) or an items-topic record ("item": a ``CatalogItem`` or an ``ItemDeletion``).

    ``policy`` is the receiver's time rule; build it from the settings with
    ``TimePolicy(max_future_skew_ms=settings.max_future_skew_ms)``. ``good`` keeps the topic's order.
    """
    out = Decoded()
    for msg in messages:
        if msg.value is None:
            out.dead.append((msg, Rejection("empty message (no value)", [])))
            continue
        result = decode_event(msg.value, policy) if kind == "event" else decode_item(msg.value, policy)
        if isinstance(result, Rejection):
            out.dead.append((msg, result))
        else:
            assert isinstance(result, Event | UserErasure | CatalogItem | ItemDeletion)
            out.good.append(result)
            out.sources.append(msg)
    return out
