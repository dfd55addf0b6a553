"""The worker's agents: take a batch, decode it, send dead letters, fold the rest into Redis.

A batch is acknowledged (and its offsets become committable) only after this body returns, so the body
never lets an exception out: a Redis outage is retried until it ends, and a message that cannot be
decoded goes to the dead-letter topic instead of stopping the worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import faust
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stream_processor.fold import RawMessage, dead_letter, decode_batch
from streamrec.contract import Rejection
from streamrec.keys import Keys
from streamrec.settings import Settings
from streamrec.state import ApplyResult, AsyncStateWriter
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
            log.warning("%s failed (%r); retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _raw(events: Sequence[Any]) -> list[RawMessage]:
    return [
        RawMessage(e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value)
        for e in events
    ]


def register(app: faust.App, settings: Settings) -> WorkerCounters:
    """Attach the events and catalog agents to ``app``."""
    topics = Topics(settings.topic_prefix)
    keys = Keys(settings.redis_prefix)
    client = redis.asyncio.Redis.from_url(settings.redis_url, socket_timeout=10, health_check_interval=10)
    writer = AsyncStateWriter(client, keys, settings.scoring)
    counters = WorkerCounters()
    events_topic = app.topic(topics.events, value_serializer="raw", key_serializer="raw")
    items_topic = app.topic(topics.items, value_serializer="raw", key_serializer="raw")
    dlq_topic = app.topic(topics.dlq, value_serializer="raw", key_serializer="raw")

    async def send_dead(raw: RawMessage, reason_bytes: bytes) -> None:
        async def send() -> None:
            fut = await dlq_topic.send(key=raw.key, value=reason_bytes, force=True)
            await fut

        await _retry("sending a dead letter", send, counters, (Exception,))

    async def handle(batch: Sequence[Any], kind: str) -> None:
        raw = _raw(batch)
        decoded = decode_batch(raw, kind)
        for msg, rejection in decoded.dead:
            log.warning(
                "dead letter from %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, rejection.reason
            )
            await send_dead(msg, dead_letter(msg, rejection))
        counters.dead_letters += len(decoded.dead)
        if kind == "item":
            counters.items += await _retry(
                "upserting items", lambda: writer.upsert_items(decoded.good), counters, REDIS_ERRORS
            )
        else:
            result = await apply_events(decoded.good, decoded.sources)
            counters.applied += result.applied
            counters.duplicates += result.duplicates
        counters.batches += 1

    async def apply_events(events: list[Any], sources: list[RawMessage]) -> ApplyResult:
        """Apply a batch; if the script refuses it, apply one by one and dead-letter the ones it refuses."""
        try:
            return await _retry("applying events", lambda: writer.apply(events), counters, REDIS_ERRORS)
        except ResponseError as exc:
            log.error("state script failed on a batch of %d (%s); applying one by one", len(events), exc)
        applied = duplicates = 0
        for event, raw in zip(events, sources, strict=True):
            try:
                one = await _retry(
                    "applying an event", lambda e=event: writer.apply([e]), counters, REDIS_ERRORS
                )
            except ResponseError as exc:
                counters.dead_letters += 1
                await send_dead(raw, dead_letter(raw, Rejection(f"state update failed: {exc}", [])))
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


def run(settings: Settings) -> None:
    """Run one worker process until SIGINT/SIGTERM."""
    from stream_processor.app import create_app

    app = create_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True)
    worker.execute_from_commandline()
