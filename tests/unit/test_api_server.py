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
