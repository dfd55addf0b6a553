"""Run one worker process: the Faust app with its agents, and the worker's ``/metrics`` and ``/readyz``."""

from __future__ import annotations

import faust

from streamrec import logs
from streamrec.settings import Settings
from streamrec.stream_processor import status
from streamrec.stream_processor.app import create_app


def run(settings: Settings) -> None:
    """Run one worker process until SIGINT/SIGTERM."""
    built = create_app(settings)
    status.serve(
        settings.metrics_host, settings.worker_metrics_port, built.guard, lambda: built.handler.waiting
    )
    worker = faust.Worker(
        built.app,
        loglevel=settings.log_level.lower(),
        quiet=True,
        # text keeps Faust's own format (its partition tables); json replaces it with ours
        logging_config=logs.dict_config(settings.log_level, "json")
        if settings.log_format == "json"
        else None,
    )
    worker.execute_from_commandline()
