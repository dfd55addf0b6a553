"""What the agents do with a batch of raw messages, apart from Kafka: decode, split off the bad ones, and
write the dead-letter record (bounded in size, so that no message can stall its partition)."""

from __future__ import annotations

import base64
import hashlib
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


MAX_ORIGINAL_BYTES = 64 * 1024
PREFIX_BYTES = 1024
MAX_FIELD_ERRORS = 20


def dead_letter(msg: RawMessage, rejection: Rejection, max_original: int = MAX_ORIGINAL_BYTES) -> bytes:
    """The dead-letter record (JSON): the reason, where the message came from, and its original bytes.

    The original is kept once, as UTF-8 text (``original``) or, when it is not text, as base64
    (``original_b64``), if it fits in ``max_original`` bytes. A larger one keeps only its length, sha256
    and first ``PREFIX_BYTES`` (``original_prefix_b64``): the record stays far below the producer's 1 MiB
    request limit, and the source topic, partition and offset still find the whole message.
    """
    value = msg.value or b""
    record: dict[str, object] = {
        "reason": rejection.reason[:2000],
        "errors": rejection.errors[:MAX_FIELD_ERRORS],
        "source": {"topic": msg.topic, "partition": msg.partition, "offset": msg.offset},
        "key": msg.key[:PREFIX_BYTES].decode("utf-8", "replace") if msg.key else None,
        "original_length": len(value),
        "original_sha256": hashlib.sha256(value).hexdigest(),
        "rejected_at": int(time.time() * 1000),
    }
    if len(value) <= max_original:
        try:
            record["original"] = value.decode("utf-8")
        except UnicodeDecodeError:
            record["original_b64"] = base64.b64encode(value).decode()
    else:
        record["truncated"] = True
        record["original_prefix_b64"] = base64.b64encode(value[:PREFIX_BYTES]).decode()
    return orjson.dumps(record)


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
