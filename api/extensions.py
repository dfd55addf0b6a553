"""What the API's blueprints share: the clients built by the factory, kept in ``app.extensions``.

Blueprints import this module, never ``app``, so the factory can import every blueprint without a cycle
(the Flask tutorial's ``extensions`` pattern).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis
from flask import Flask, current_app

from streamrec.contract import CatalogItem, Event, ItemDeletion, TimePolicy, UserErasure
from streamrec.experiment_store import ExperimentCache, Exposures
from streamrec.placement_store import PlacementCache
from streamrec.recommend import Recommender
from streamrec.settings import Settings

EXTENSION = "streamrec"


class Publisher(Protocol):
    """Publishes and returns a delivery future whose ``get(timeout)`` raises if delivery failed."""

    def publish_event(self, event: Event) -> Any:
        """Send ``event`` to the events topic, keyed by its user."""

    def publish_item(self, item: CatalogItem) -> Any:
        """Send a catalog record to the items topic, keyed by its item."""

    def publish_deletion(self, deletion: ItemDeletion) -> Any:
        """Send an item deletion to the items topic, keyed by its item."""

    def publish_erasure(self, erasure: UserErasure) -> Any:
        """Send a user's erasure to the events topic, keyed by the user (after all their events)."""

    def flush(self, timeout: float | None = None) -> None:
        """Block until every record sent is delivered or failed, at most ``timeout`` seconds."""


def kafka_publisher(settings: Settings) -> Publisher:
    """The production publisher: kafka-python to ``settings.kafka_bootstrap``, on the prefix's topics."""
    from streamrec.publisher import EventPublisher
    from streamrec.topics import Topics

    return EventPublisher(settings.kafka_bootstrap, Topics(settings.topic_prefix))


@dataclass
class Services:
    """What the views need: settings, Redis, the recommender and (lazily, after fork) a Kafka publisher."""

    settings: Settings
    redis: redis.Redis
    recommender: Recommender
    publisher_factory: Callable[[Settings], Publisher]
    _publisher: Publisher | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def time_policy(self) -> TimePolicy:
        """The time rule every ``ts`` this API receives follows (``STREAMREC_MAX_FUTURE_SKEW_MS``)."""
        return TimePolicy(max_future_skew_ms=self.settings.max_future_skew_ms)

    @property
    def publisher(self) -> Publisher:
        """The Kafka publisher, made on first use (in the gunicorn worker, after the fork)."""
        with self._lock:
            if self._publisher is None:
                self._publisher = self.publisher_factory(self.settings)
            return self._publisher

    def discard_publisher(self, broken: Publisher) -> None:
        """Drop a publisher whose delivery failed; the next write builds a new one.

        A producer's fatal error does not heal (an idempotent producer whose broker lost its state, as
        Tansu's memory storage does on restart, stays failed), and records it still holds were answered
        503, so their senders retry: nothing acknowledged is dropped with it.
        """
        with self._lock:
            if self._publisher is broken:
                self._publisher = None
        close = getattr(broken, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):  # it failed already; closing must not fail the request
                close(timeout=0)


def services(app: Flask | None = None) -> Services:
    """The ``Services`` of ``app``, or of the app handling the current request."""
    svc: Services = (app or current_app).extensions[EXTENSION]
    return svc


PLACEMENTS = "streamrec.placements"


def placements_of(app: Flask | None = None) -> PlacementCache:
    """The compiled placements of ``app`` (or of the app handling the current request): its per-process
    ``PlacementCache``, given by ``api.placements.init_app``."""
    cache: PlacementCache = (app or current_app).extensions[PLACEMENTS]
    return cache


EXPERIMENTS = "streamrec.experiments"
EXPOSURES = "streamrec.exposures"


def experiments_of(app: Flask | None = None) -> ExperimentCache:
    """The compiled experiments of ``app`` (or of the current request's app): its per-process
    ``ExperimentCache``, given by ``api.experiments.init_app``."""
    cache: ExperimentCache = (app or current_app).extensions[EXPERIMENTS]
    return cache


def exposures_of(app: Flask | None = None) -> Exposures:
    """The per-process exposure writer of ``app`` (or of the current request's app)."""
    exposures: Exposures = (app or current_app).extensions[EXPOSURES]
    return exposures
