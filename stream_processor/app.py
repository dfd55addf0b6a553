"""Build the Faust app from settings. Nothing here runs at import."""

from __future__ import annotations

from pathlib import Path

import faust

from streamrec.settings import Settings
from streamrec.stream_processor.agents import register
from streamrec.stream_processor.transport import ConsumerThread


def create_app(settings: Settings) -> faust.App:
    """The worker app: one consumer group, raw values (the contract decodes them), no web server.

    Redis is the single source of truth, so the app keeps no Faust tables; offsets are committed only
    after a batch is in Redis (at-least-once), and the event_id dedupe makes replays harmless.
    """
    Path(settings.worker_data_dir).mkdir(parents=True, exist_ok=True)
    ConsumerThread.fetch_max_wait_ms = settings.worker_fetch_wait_ms
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
    register(app, settings)
    return app
