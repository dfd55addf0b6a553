"""The Flask application factory. Clients are built here and kept in ``app.extensions``; nothing at import."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis
from flask import Flask

from streamrec.contract import CatalogItem, Event
from streamrec.keys import Keys
from streamrec.modelstore import ModelStore
from streamrec.recommend import Recommender
from streamrec.settings import Settings
from streamrec.state import StateReader

MAX_BODY_BYTES = 4 * 1024 * 1024


class Publisher(Protocol):
    """Publishes and returns a delivery future whose ``get(timeout)`` raises if delivery failed."""

    def publish_event(self, event: Event) -> Any: ...
    def publish_item(self, item: CatalogItem) -> Any: ...
    def flush(self, timeout: float | None = None) -> None: ...


def kafka_publisher(settings: Settings) -> Publisher:
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
    def publisher(self) -> Publisher:
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


def services() -> Services:
    from flask import current_app

    svc: Services = current_app.extensions["streamrec"]
    return svc


def create_app(
    settings: Settings | None = None,
    *,
    redis_client: redis.Redis | None = None,
    publisher_factory: Callable[[Settings], Publisher] | None = None,
    test_config: dict[str, Any] | None = None,
) -> Flask:
    """Build the API. Tests pass their own settings, Redis client or publisher factory."""
    from api import errors, observability, views

    settings = settings or Settings()
    app = Flask(__name__, static_folder=None)
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, JSON_SORT_KEYS=False)
    if test_config:
        app.config.update(test_config)
    client = redis_client or redis.Redis.from_url(
        settings.redis_url, socket_timeout=2.0, socket_connect_timeout=1.0, health_check_interval=10
    )
    reader = observability.TimedReader(StateReader(client, Keys(settings.redis_prefix), settings.scoring))
    app.extensions["streamrec"] = Services(
        settings,
        client,
        Recommender(reader, settings.scoring, ModelStore(client, Keys(settings.redis_prefix))),
        publisher_factory or kafka_publisher,
    )
    errors.init_app(app)
    observability.init_app(app)
    app.register_blueprint(views.bp)
    from api import storefront  # the shop page

    storefront.init_app(app)
    from api import admin, openapi, security  # keys, rate limits, CORS; admin actions; the API's document

    security.init_app(app, settings)
    app.register_blueprint(admin.bp)
    openapi.init_app(app, settings)
    return app
