"""Kafka topic names, owned here so that producers, the API, the worker and the tests agree on them.

``Topics`` derives every name from one configurable prefix (``Settings.topic_prefix``), and
``ensure_topics`` creates them where the broker does not auto-create, so a fresh stack starts with the
partition count the worker pool is sized for.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from kafka.admin import KafkaAdminClient
from kafka.errors import TopicAlreadyExistsError


@dataclass(frozen=True)
class Topics:
    """The three topic names of one deployment, derived from its prefix."""

    prefix: str

    @property
    def events(self) -> str:
        """Shopper events, keyed by user_id so that one user's events stay in order on one partition."""
        return f"{self.prefix}.events"

    @property
    def items(self) -> str:
        """Catalog records, keyed by item_id."""
        return f"{self.prefix}.items"

    @property
    def dlq(self) -> str:
        """Events that failed validation, with the reason and the original bytes."""
        return f"{self.prefix}.events.dlq"

    def all(self) -> tuple[str, str, str]:
        """Every topic name, for subscriptions and clean-up."""
        return (self.events, self.items, self.dlq)


def topic_partitions(topics: Topics, partitions: int) -> dict[str, int]:
    """Partitions per topic: events scale out with the workers; items and the DLQ are low-volume."""
    return {topics.events: partitions, topics.items: 1, topics.dlq: 1}


def ensure_topics(bootstrap: str, topics: Topics, partitions: int, replication_factor: int = 1) -> None:
    """Create whichever of the three topics are missing; existing topics are left exactly as they are."""
    wanted = topic_partitions(topics, partitions)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="streamrec-admin")
    try:
        existing = set(admin.list_topics())
        missing = {
            name: {"num_partitions": n, "replication_factor": replication_factor}
            for name, n in wanted.items()
            if name not in existing
        }
        if not missing:
            return
        # Another process may create them between our listing and our request: the outcome we wanted.
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics(missing, wait_for_metadata=True)
    finally:
        admin.close()
