"""The API's gunicorn configuration (``api/server.py``), without starting gunicorn."""

from __future__ import annotations

import gc

from streamrec.api.server import GunicornServer
from streamrec.settings import Settings


def test_each_worker_freezes_what_it_built_before_serving() -> None:
    """A full garbage collection in a worker walks only what serving made, not the imports and the app."""
    server = GunicornServer(Settings())
    hook = server.cfg.post_worker_init
    assert gc.get_freeze_count() == 0
    try:
        hook(None)
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()


def test_the_default_server_is_two_sync_workers_and_gthread_takes_its_threads() -> None:
    """Sync workers by default (measured in ``streamrec bench --serving``; docs/quality/serving-history.md): gunicorn would
    turn a sync worker given threads into a gthread one, so threads go only to gthread."""
    cfg = GunicornServer(Settings()).cfg
    assert (cfg.worker_class_str, cfg.workers, cfg.threads) == ("sync", 2, 1)
    cfg = GunicornServer(Settings(api_worker_class="gthread", api_threads=4)).cfg
    assert (cfg.worker_class_str, cfg.workers, cfg.threads) == ("gthread", 2, 4)
