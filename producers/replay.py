"""Replays a public dataset into Kafka, catalog first, so the whole pipeline can be fed real behaviour."""

from __future__ import annotations

from pathlib import Path

from streamrec.datasets import dataset_events
from streamrec.publisher import EventPublisher, PublishReport, publish_stream

ReplayReport = PublishReport
"""What a replay did: ``events`` and ``items`` published, in ``seconds``."""


def replay(
    publisher: EventPublisher,
    dataset: str | Path,
    limit: int | None = None,
    rate: float | None = None,
    progress: bool = True,
) -> ReplayReport:
    """Publish a dataset's catalog, then its events in time order at ``rate`` per second (None: flat out).

    Event ids are deterministic, so replaying the same dataset twice is deduplicated by the worker.
    """
    catalog, events = dataset_events(dataset, limit=limit)
    return publish_stream(publisher, catalog, events, rate, progress, total=limit, desc=f"replay {dataset}")
