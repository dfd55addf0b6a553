"""Build the Faust app from settings. Nothing here runs at import."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faust

from streamrec import metrics
from streamrec.settings import Settings
from streamrec.stream_processor.agents import register
from streamrec.stream_processor.batches import PartitionGuard
from streamrec.stream_processor.handler import BatchHandler
from streamrec.stream_processor.transport import ConsumerThread


@dataclass(frozen=True)
class WorkerApp:
    """The Faust app, the guard of partitions blocked at batches it cannot decode, and the batch
    handler (what the worker's ``/readyz`` reports)."""

    app: faust.App
    guard: PartitionGuard
    handler: BatchHandler


def create_app(settings: Settings) -> WorkerApp:
    """The worker app: one consumer group, raw values (the contract decodes them), no web server.

    Redis is the single source of truth, so the app keeps no Faust tables; offsets are committed only
    after a batch is in Redis (at-least-once), and the event_id dedupe makes replays harmless.
    """
    Path(settings.worker_data_dir).mkdir(parents=True, exist_ok=True)
    blocked = metrics.worker().blocked
    guard = PartitionGuard(
        lambda condition, n: blocked.labels(condition).set(n), settings.worker_blocked_retry_s
    )
    ConsumerThread.fetch_max_wait_ms = settings.worker_fetch_wait_ms
    ConsumerThread.guard = guard
    app = faust.App(
        settings.worker_group,
        broker=[f"streamrec-kafka://{hp.strip()}" for hp in settings.kafka_bootstrap.split(",")],
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        web_enabled=False,
        datadir=settings.worker_data_dir,
        broker_session_timeout=settings.worker_session_timeout_s,
        broker_heartbeat_interval=max(settings.worker_session_timeout_s / 3, 1.0),
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,
        topic_disable_leader=True,
        broker_commit_every=500,
        broker_commit_interval=1.0,
    )
    return WorkerApp(app, guard, register(app, settings))
