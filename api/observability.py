"""The API's operations side: ``GET /metrics``, request ids, per-request metrics and access logs.

Requests are labelled by their Flask URL rule (``/v1/users/<user_id>/recommendations``), never by the
raw path, so a million users make one series, not a million.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, g, request

from streamrec import logs, metrics
from streamrec.api.extensions import experiments_of, services
from streamrec.experiment_stats import VariantCounts
from streamrec.experiment_store import ExperimentStore
from streamrec.experiments import Experiment

bp = Blueprint("observability", __name__)
log = logging.getLogger("streamrec.api.access")

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
REQUEST_ID_HEADER = "X-Request-ID"
UNMATCHED = "unmatched"


def _experiment_counts(store: ExperimentStore) -> Iterator[tuple[Experiment, list[VariantCounts]]]:
    """Every experiment that exists now (``ExperimentStore.experiments``), with its counts: one Redis
    read for the list, then one pipelined round trip per experiment."""
    for experiment in store.experiments():
        yield experiment, store.counts(experiment)


@bp.get("/metrics")
def metrics_endpoint():  # type: ignore[no-untyped-def]
    """Prometheus metrics of every gunicorn worker of this API, combined, and the trainer's and experiments' from Redis."""
    store = services().recommender.models
    experiments = experiments_of().store
    extra: list[Any] = [metrics.TrainerCollector(store.versions)] if store is not None else []
    extra.append(metrics.ExperimentCollector(lambda: _experiment_counts(experiments)))
    # content_type is sent as given; a mimetype would get Flask's "; charset=utf-8" a second time
    return Response(metrics.exposition(*extra), content_type="text/plain; version=0.0.4; charset=utf-8")


def _request_id() -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    # a caller's id is kept when it is a plain token; anything else is replaced, not logged as it came
    if 0 < len(given) <= 64 and given.replace("-", "").replace("_", "").isalnum():
        return given
    return uuid.uuid4().hex


def _before() -> None:
    g.started = time.perf_counter()
    g.request_id = _request_id()
    g.log_context = logs.bind(request_id=g.request_id)


def _after(response: Response) -> Response:
    elapsed = time.perf_counter() - g.get("started", time.perf_counter())
    endpoint = request.url_rule.rule if request.url_rule is not None else UNMATCHED
    method = metrics.bounded(request.method, METHODS)
    status = str(response.status_code)
    m = metrics.api()
    m.requests.labels(endpoint, method, status).inc()
    m.request_duration.labels(endpoint, method, status).observe(elapsed)
    response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
    if endpoint != "/metrics":
        log.info(
            "%s %s %s %.1fms",
            request.method,
            request.path,
            status,
            elapsed * 1000,
            extra={
                "endpoint": endpoint,
                "status": response.status_code,
                "duration_ms": round(elapsed * 1000, 3),
            },
        )
    return response


def _teardown(_exc: BaseException | None) -> None:
    token = g.pop("log_context", None)
    if token is not None:
        logs.unbind(token)


def count_answer(strategy: str, n_items: int) -> None:
    """Count one recommendation answer (an impression of its strategy) and the items it showed."""
    endpoint = metrics.bounded(
        request.endpoint.rsplit(".", 1)[-1] if request.endpoint else None, metrics.RECOMMENDATION_ENDPOINTS
    )
    strategy = metrics.bounded(strategy, metrics.STRATEGIES)
    m = metrics.api()
    m.recommendations.labels(endpoint, strategy).inc()
    m.recommended_items.labels(strategy).inc(n_items)
    if n_items == 0:
        m.empty_answers.labels(endpoint).inc()


class TimedReader:
    """Wraps the state reader: each public method is one pipelined Redis round trip, and is timed
    (``streamrec_api_redis_duration_seconds{operation}``). Wrappers are built once per method name."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader
        self._timed: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        timed = self._timed.get(name)
        if timed is not None:
            return timed
        attr = getattr(self._reader, name)
        if name.startswith("_") or not callable(attr):
            return attr
        histogram = metrics.api().redis_duration.labels(name)

        @functools.wraps(attr)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                histogram.observe(time.perf_counter() - started)

        self._timed[name] = timed
        return timed


def init_app(app: Flask) -> None:
    """Register /metrics and the request hooks (they run for every blueprint's requests)."""
    metrics.api()
    app.before_request(_before)
    app.after_request(_after)
    app.teardown_request(_teardown)
    app.register_blueprint(bp)
