"""The Flask application factory. Clients are built here and kept in ``app.extensions``; nothing at import."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import redis
from flask import Flask, Response
from flask.json.provider import DefaultJSONProvider

from streamrec import metrics
from streamrec.api import (
    admin,
    errors,
    experiments,
    http_cache,
    observability,
    openapi,
    paths,
    placements,
    security,
    storefront,
    views,
)
from streamrec.api.cache import ProcessCache
from streamrec.api.changes import ChangeFeed, ChangeLog
from streamrec.api.content_coding import DecodingRequest
from streamrec.api.extensions import EXTENSION, Publisher, Services, kafka_publisher
from streamrec.fold import redis_client as redis_client_for
from streamrec.modelstore import ModelStore
from streamrec.recommend import Recommender
from streamrec.settings import Settings, keys_of
from streamrec.state import StateReader

MAX_BODY_BYTES = 4 * 1024 * 1024
_ORJSON = orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE


class OrjsonProvider(DefaultJSONProvider):
    """``jsonify`` and ``app.json`` through orjson: keys in insertion order (``{"code", "msg", "data"}``),
    compact, one trailing newline; what orjson cannot encode goes through Flask's own ``default``.

    Measured in ``streamrec bench --serving``: see docs/quality/serving.md.
    """

    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        """``obj`` as compact JSON text (orjson); ``kwargs`` (json.dumps options) are not used."""
        return orjson.dumps(obj, default=self.default, option=orjson.OPT_NON_STR_KEYS).decode()

    def response(self, *args: Any, **kwargs: Any) -> Response:
        """A JSON response of ``args``/``kwargs`` as ``flask.jsonify`` takes them, encoded by orjson."""
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(
            orjson.dumps(obj, default=self.default, option=_ORJSON), mimetype=self.mimetype
        )


def start_change_feed(settings: Settings, channel: str, changes: ChangeLog, cache: ProcessCache) -> None:
    """Follow the worker's change feed from this process (a daemon thread, its own Redis connection),
    keeping ``changes`` and handing the counts it carries to ``cache``. Called in each gunicorn worker,
    after the fork."""
    m = metrics.api()
    m.change_feed.set(0)

    def connect() -> Any:
        return redis_client_for(
            settings.redis_url,
            settings.redis_cluster,
            socket_timeout=10.0,
            socket_connect_timeout=1.0,
            health_check_interval=10,
        )

    ChangeFeed(
        connect,
        channel,
        changes,
        on_message=m.changed_items.inc,
        on_state=lambda up: m.change_feed.set(1 if up else 0),
        on_counts=cache.heard,
    ).start()


def create_app(
    settings: Settings | None = None,
    *,
    redis_client: redis.Redis | None = None,
    publisher_factory: Callable[[Settings], Publisher] | None = None,
    test_config: dict[str, Any] | None = None,
) -> Flask:
    """Build the API. Tests pass their own settings, Redis client or publisher factory."""
    settings = settings or Settings()
    app = Flask(__name__, static_folder=None)
    app.json = OrjsonProvider(app)
    app.request_class = DecodingRequest  # bodies are decoded from their Content-Encoding, bounded
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, JSON_SORT_KEYS=False)
    if test_config:
        app.config.update(test_config)
    client = redis_client or redis_client_for(
        settings.redis_url,
        settings.redis_cluster,
        socket_timeout=2.0,
        socket_connect_timeout=1.0,
        health_check_interval=10,
    )
    keys = keys_of(settings)
    reader = observability.TimedReader(StateReader(client, keys, settings.scoring))
    changes = ChangeLog() if settings.api_change_feed else None
    cache = ProcessCache.from_settings(settings, changes=changes)
    if changes is not None:
        start_change_feed(settings, keys.changes(), changes, cache)
    app.extensions[EXTENSION] = Services(
        settings,
        client,
        Recommender(reader, settings.scoring, ModelStore(client, keys), cache=cache),
        publisher_factory or kafka_publisher,
    )
    paths.init_app(app)  # first: the id converters must be in place before any route is added
    errors.init_app(app)
    observability.init_app(app)
    app.register_blueprint(views.bp)
    storefront.init_app(app)
    security.init_app(app, settings)
    app.register_blueprint(admin.bp)
    placements.init_app(app, keys)
    experiments.init_app(app, keys)
    openapi.init_app(app, settings)
    http_cache.init_app(app)  # last: its hook runs first, so the others see the final status (a 304)
    return app
