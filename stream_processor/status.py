"""The worker's HTTP port: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for orchestrators.

- ``/healthz``: 200 while the process runs. A blocked worker is alive: restarting it would not help, so
  liveness never fails on a condition it is waiting out (no crash loop).
- ``/readyz``: 200 when nothing blocks folding; 503 with what does: partitions waiting at a record batch
  the worker cannot decode (topic, partition, offset, condition, cause) and a Redis condition or the
  dead-letter topic being waited out.
- anything else: the process's metrics in Prometheus' text format.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import make_wsgi_app

from streamrec.stream_processor.batches import PartitionGuard

log = logging.getLogger("streamrec.worker")

Waiting = Callable[[], str | None]


def readiness(guard: PartitionGuard, waiting: Waiting) -> tuple[bool, dict[str, Any]]:
    """Whether the worker folds, and a JSON-ready description: ``status`` ("ready" or "blocked"),
    ``blocked_partitions`` (``Blocked.as_dict()`` each) and ``waiting_for`` (a Redis or dead-letter
    condition, or None)."""
    partitions = [b.as_dict() for b in guard.blocked()]
    condition = waiting()
    ready = not partitions and condition is None
    return ready, {
        "status": "ready" if ready else "blocked",
        "blocked_partitions": partitions,
        "waiting_for": condition,
    }


def status_app(guard: PartitionGuard, waiting: Waiting) -> Callable[..., Iterable[bytes]]:
    """The worker's WSGI app: ``/healthz``, ``/readyz``, and metrics on every other path."""
    metrics_app = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in ("/healthz", "/readyz"):
            return metrics_app(environ, start_response)
        if path == "/healthz":
            ok, body = True, {"status": "alive"}
        else:
            ok, body = readiness(guard, waiting)
        payload = orjson.dumps(body)
        headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
        start_response("200 OK" if ok else "503 Service Unavailable", headers)
        return [payload]

    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        """Scrapes and probes are not worth a log line each."""


def serve(host: str, port: int, guard: PartitionGuard, waiting: Waiting) -> None:
    """Serve the worker's port from a daemon thread (``port`` 0: not at all). A busy port is logged,
    not fatal: folding matters more than being scraped, and Prometheus reports the target down."""
    if not port:
        return
    try:
        server = make_server(host, port, status_app(guard, waiting), _Server, handler_class=_QuietHandler)
    except OSError as exc:
        log.error("the worker's /metrics could not listen on %s:%d: %s", host, port, exc)
        return
    threading.Thread(target=server.serve_forever, name="worker-status", daemon=True).start()
    log.info("worker metrics on http://%s:%d/metrics, readiness on /readyz", host, port)
