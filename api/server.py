"""Serve the API under gunicorn, configured from settings rather than a config file."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from streamrec.settings import Settings


class GunicornServer(BaseApplication):  # type: ignore[misc]
    """Gunicorn with the app built by the factory in each worker (after fork, so no shared sockets)."""

    def __init__(self, settings: Settings, options: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.options = {
            "bind": f"{settings.api_host}:{settings.api_port}",
            "workers": settings.api_workers,
            "worker_class": "gthread",
            "threads": 4,
            "timeout": 30,
            "graceful_timeout": 10,
            "keepalive": 5,
            "loglevel": settings.log_level.lower(),
            "accesslog": None,
            **(options or {}),
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self):  # type: ignore[no-untyped-def]
        from api.app import create_app

        return create_app(self.settings)


def serve(settings: Settings) -> None:
    """Run gunicorn in the foreground until SIGINT/SIGTERM."""
    GunicornServer(settings).run()
