"""The worker's agents: take a batch, decode it, send dead letters, fold the rest into Redis.

A batch is acknowledged (and its offsets become committable) only after this body returns, so the body
never lets an exception out: a Redis outage is retried until it ends, and a message that cannot be
decoded goes to the dead-letter topic instead of stopping the worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import faust
import orjson
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamrec import metrics
from streamrec.contract import Event, Rejection
from streamrec.event_types import ATTRIBUTED_TYPES
from streamrec.keys import Keys
from streamrec.settings import Settings
from streamrec.state import ApplyResult, AsyncStateWriter
from streamrec.stream_processor.fold import RawMessage, dead_letter, decode_batch
from streamrec.topics import Topics

log = logging.getLogger("streamrec.worker")
T = TypeVar("T")


@dataclass
class WorkerCounters:
    """Running totals of what this worker did, for logs now and metrics later."""

    batches: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    items: int = 0
    retries: int = 0


REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


async def _retry(
    what: str,
    action: Callable[[], Awaitable[T]],
    counters: WorkerCounters,
    errors: tuple[type[BaseException], ...],
    operation: str,
) -> T:
    """Run ``action`` until it succeeds, backing off to 5 s between tries.

    The batch is acknowledged when the agent's body returns, whatever happened, so giving up on a
    write would lose events: blocking the partition until the dependency is back is the safe side.
    """
    delay = 0.1
    while True:
        try:
            return await action()
        except errors as exc:
            counters.retries += 1
            metrics.worker().retries.labels(operation).inc()
            log.warning("%s failed (%r); retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _raw(events: Sequence[Any]) -> list[RawMessage]:
    return [
        RawMessage(e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value)
        for e in events
    ]


def _declared_type(raw: RawMessage) -> str:
    """The type a rejected message claimed to be, if any (for the events-by-type metric)."""
    try:
        value = orjson.loads(raw.value or b"")
    except orjson.JSONDecodeError:
        return metrics.OTHER
    return metrics.bounded(value.get("type") if isinstance(value, dict) else None, metrics.EVENT_TYPES)


def _event_id(raw: RawMessage) -> str | None:
    try:
        value = orjson.loads(raw.value or b"")
    except orjson.JSONDecodeError:
        return None
    event_id = value.get("event_id") if isinstance(value, dict) else None
    return event_id[:64] if isinstance(event_id, str) else None


def observe_events(m: metrics.WorkerMetrics, events: Sequence[Event], now_ms: int) -> None:
    """Count folded events by type and their event-time lag; the gauge gets the newest event's lag."""
    newest = None
    for e in events:
        m.events.labels(e.type.value, "folded").inc()
        m.event_lag.observe(max(now_ms - e.ts, 0) / 1000)
        newest = e.ts if newest is None else max(newest, e.ts)
    if newest is not None:
        m.batch_lag.set(max(now_ms - newest, 0) / 1000)


def attributable(events: Sequence[Event]) -> list[Event]:
    """Events that act on a recommended item: they carry a recommendation_id and count for quality."""
    return [e for e in events if e.recommendation_id and e.type.value in ATTRIBUTED_TYPES]


def register(app: faust.App, settings: Settings) -> WorkerCounters:
    """Attach the events and catalog agents to ``app``."""
    topics = Topics(settings.topic_prefix)
    keys = Keys(settings.redis_prefix)
    client = redis.asyncio.Redis.from_url(settings.redis_url, socket_timeout=10, health_check_interval=10)
    writer = AsyncStateWriter(client, keys, settings.scoring)
    counters = WorkerCounters()
    m = metrics.worker()
    events_topic = app.topic(topics.events, value_serializer="raw", key_serializer="raw")
    items_topic = app.topic(topics.items, value_serializer="raw", key_serializer="raw")
    dlq_topic = app.topic(topics.dlq, value_serializer="raw", key_serializer="raw")

    async def send_dead(raw: RawMessage, reason_bytes: bytes, kind: str, cause: str) -> None:
        async def send() -> None:
            fut = await dlq_topic.send(key=raw.key, value=reason_bytes, force=True)
            await fut

        await _retry("sending a dead letter", send, counters, (Exception,), "dead_letter")
        topic = "items" if kind == "item" else "events"
        m.dead_letters.labels(topic, cause).inc()
        if kind == "item":
            m.catalog_records.labels("dead_letter").inc()
        else:
            m.events.labels(_declared_type(raw), "dead_letter").inc()

    async def already_applied(events: list[Event]) -> set[str]:
        """Of these events, the ids Redis already holds a claim for (so they will be duplicates)."""
        if not events:
            return set()

        async def read() -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for e in events:
                pipe.exists(keys.dedupe(e.event_id))
            return list(await pipe.execute())

        found = await _retry("reading event claims", read, counters, REDIS_ERRORS, "apply_events")
        return {e.event_id for e, hit in zip(events, found, strict=True) if hit}

    async def handle(batch: Sequence[Any], kind: str) -> None:
        started = time.perf_counter()
        topic = "items" if kind == "item" else "events"
        raw = _raw(batch)
        decoded = decode_batch(raw, kind)
        for msg, rejection in decoded.dead:
            log.warning(
                "dead letter from %s[%d]@%d: %s",
                msg.topic,
                msg.partition,
                msg.offset,
                rejection.reason,
                extra={"event_id": _event_id(msg), "reason": rejection.reason},
            )
            await send_dead(msg, dead_letter(msg, rejection), kind, "invalid")
        counters.dead_letters += len(decoded.dead)
        if kind == "item":
            upserted = await _retry(
                "upserting items",
                lambda: writer.upsert_items(decoded.good),
                counters,
                REDIS_ERRORS,
                "upsert_items",
            )
            counters.items += upserted
            m.catalog_records.labels("upserted").inc(upserted)
            m.catalog_records.labels("stale").inc(len(decoded.good) - upserted)
        else:
            # claims are read before the batch is applied: only a first delivery counts for quality
            cited = attributable(decoded.good)
            seen = await already_applied(cited)
            refused: set[str] = set()
            result = await apply_events(decoded.good, decoded.sources, refused)
            counters.applied += result.applied
            counters.duplicates += result.duplicates
            m.dedupe_hits.inc(result.duplicates)
            folded = [e for e in decoded.good if e.event_id not in refused]
            observe_events(m, folded, int(time.time() * 1000))
            for e in cited:
                if e.event_id not in seen and e.event_id not in refused:
                    seen.add(e.event_id)  # the same id twice in one batch is applied once
                    m.attributed.labels(metrics.strategy_of(e.recommendation_id), e.type.value).inc()
        counters.batches += 1
        m.batch_size.labels(topic).observe(len(raw))
        m.batch_duration.labels(topic).observe(time.perf_counter() - started)

    async def apply_events(events: list[Any], sources: list[RawMessage], refused: set[str]) -> ApplyResult:
        """Apply a batch; if the script refuses it, apply one by one and dead-letter the ones it refuses
        (their ids are added to ``refused``)."""
        try:
            return await _retry(
                "applying events", lambda: writer.apply(events), counters, REDIS_ERRORS, "apply_events"
            )
        except ResponseError as exc:
            log.error("state script failed on a batch of %d (%s); applying one by one", len(events), exc)
        applied = duplicates = 0
        for event, raw in zip(events, sources, strict=True):
            try:
                one = await _retry(
                    "applying an event",
                    lambda e=event: writer.apply([e]),
                    counters,
                    REDIS_ERRORS,
                    "apply_events",
                )
            except ResponseError as exc:
                counters.dead_letters += 1
                refused.add(event.event_id)
                await send_dead(
                    raw, dead_letter(raw, Rejection(f"state update failed: {exc}", [])), "event", "refused"
                )
                continue
            applied += one.applied
            duplicates += one.duplicates
        return ApplyResult(applied, duplicates)

    @app.agent(events_topic, name="streamrec-events")
    async def fold_events(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(settings.worker_batch, within=settings.worker_batch_wait_s):
            await handle(batch, "event")

    @app.agent(items_topic, name="streamrec-items")
    async def fold_items(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(settings.worker_batch, within=settings.worker_batch_wait_s):
            await handle(batch, "item")

    @app.timer(interval=30.0)
    async def report() -> None:
        log.info("worker totals: %s", counters)

    return counters
