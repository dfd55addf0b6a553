"""The worker's Faust agents: take a batch off a topic and hand it to ``BatchHandler``.

The agents only translate Faust's events into ``RawMessage`` and publish dead letters; decoding, folding
and waiting out Redis conditions live in ``handler`` (tested without Faust).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import faust

from streamrec import metrics
from streamrec.contract import TimePolicy
from streamrec.experiment_store import ExperimentCredits
from streamrec.fold import AsyncStateWriter, async_redis_client
from streamrec.settings import Settings, keys_of
from streamrec.stream_processor.fold import RawMessage
from streamrec.stream_processor.handler import BatchHandler
from streamrec.topics import Topics

log = logging.getLogger("streamrec.worker")


def raw_messages(events: Sequence[Any]) -> list[RawMessage]:
    """Faust events as the handler's ``RawMessage`` (topic, partition, offset, key, value)."""
    return [
        RawMessage(e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value)
        for e in events
    ]


def register(app: faust.App, settings: Settings) -> BatchHandler:
    """Attach the events and catalog agents to ``app``; returns the handler they share (its counters,
    and the condition it waits out)."""
    topics = Topics(settings.topic_prefix)
    keys = keys_of(settings)
    client = async_redis_client(
        settings.redis_url, settings.redis_cluster, socket_timeout=10, health_check_interval=10
    )
    writer = AsyncStateWriter(
        client,
        keys,
        settings.scoring,
        cluster=settings.redis_cluster,
        max_future_skew_ms=settings.max_future_skew_ms,
    )
    events_topic = app.topic(topics.events, value_serializer="raw", key_serializer="raw")
    items_topic = app.topic(topics.items, value_serializer="raw", key_serializer="raw")
    dlq_topic = app.topic(topics.dlq, value_serializer="raw", key_serializer="raw")

    async def send_dead(raw: RawMessage, record: bytes) -> None:
        fut = await dlq_topic.send(key=raw.key, value=record, force=True)
        await fut

    policy = TimePolicy(max_future_skew_ms=settings.max_future_skew_ms)
    credits = ExperimentCredits(client, keys, settings.scoring.dedupe_window_s * 1000)
    handler = BatchHandler(writer, send_dead, metrics.worker(), policy=policy, credits=credits)

    @app.agent(events_topic, name="streamrec-events")
    async def fold_events(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(settings.worker_batch, within=settings.worker_batch_wait_s):
            await handler.handle(raw_messages(batch), "event")

    @app.agent(items_topic, name="streamrec-items")
    async def fold_items(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(settings.worker_batch, within=settings.worker_batch_wait_s):
            await handler.handle(raw_messages(batch), "item")

    @app.timer(interval=30.0)
    async def report() -> None:
        log.info("worker totals: %s", handler.counters)

    return handler
