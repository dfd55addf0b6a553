"""Ids in URL paths, byte for byte: a path segment may hold ``/`` (sent as ``%2F``), ``%``, ``+``, spaces
and any unicode.

A WSGI server hands the application ``PATH_INFO`` already percent-decoded: gunicorn (like werkzeug's own
server and test client) turns ``/v1/items/SKU-1%2FXL/similar`` into ``/v1/items/SKU-1/XL/similar``, which
no route matches. ``RawPath`` rebuilds ``PATH_INFO`` from the undecoded request target the server also
passes (``RAW_URI``, or ``REQUEST_URI``), decoding every escape except ``%2F`` and ``%25``, so routing
still splits on the real slashes only. The converters that replace Flask's ``string`` and ``path`` undo
those two escapes, so a view receives the id exactly as it was sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, unquote, unquote_to_bytes, urlsplit

from flask import Flask
from werkzeug.routing import PathConverter, UnicodeConverter


def _escape(segment: bytes) -> str:
    """A decoded path segment as a WSGI string in which only '%' and '/' stay escaped."""
    return segment.replace(b"%", b"%25").replace(b"/", b"%2F").decode("latin-1")


def escaped_path_info(environ: dict[str, Any]) -> str:
    """``PATH_INFO`` with the slashes and percent signs inside segments escaped as ``%2F`` and ``%25``.

    Taken from the raw request target when the server passed one that agrees with ``SCRIPT_NAME`` +
    ``PATH_INFO``; otherwise (no raw target, or a proxy rewrote the path) from ``PATH_INFO``, whose encoded
    slashes are lost already, with its percent signs escaped.
    """
    path_info: str = environ.get("PATH_INFO", "")
    script: str = environ.get("SCRIPT_NAME", "")
    raw: str = environ.get("RAW_URI") or environ.get("REQUEST_URI") or ""
    if raw.startswith(("http://", "https://")):
        raw = urlsplit(raw).path
    raw_path = raw.partition("?")[0].partition("#")[0]
    if raw_path.startswith("/"):
        full = "/".join(_escape(unquote_to_bytes(seg)) for seg in raw_path.split("/"))
        prefix = "/".join(_escape(seg) for seg in script.encode("latin-1").split(b"/"))
        rest = full[len(prefix) :]
        if full.startswith(prefix) and _unescape(rest) == path_info:
            return rest
    return path_info.replace("%", "%25")


def _unescape(wsgi_path: str) -> str:
    return wsgi_path.replace("%2F", "/").replace("%25", "%")


class RawPath:
    """WSGI middleware: sets ``PATH_INFO`` from ``escaped_path_info`` before Flask routes the request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """WSGI entry: route on the still-escaped path, then call the wrapped app."""
        environ["PATH_INFO"] = escaped_path_info(environ)
        return self.app(environ, start_response)  # type: ignore[no-any-return]


class IdConverter(UnicodeConverter):
    """One path segment, the id exactly as sent: ``%2F`` is '/', ``%25`` is '%'."""

    def to_python(self, value: str) -> str:
        """The id as sent: the raw segment with its percent-escapes undone."""
        return unquote(value)

    def to_url(self, value: Any) -> str:
        """The segment for ``value``, every reserved character escaped (``/`` too)."""
        return quote(str(value), safe="")


class IdPathConverter(PathConverter):
    """The rest of the path (segments joined by their real slashes), with the escapes undone."""

    def to_python(self, value: str) -> str:
        """The id as sent: the raw segment with its percent-escapes undone."""
        return unquote(value)


def init_app(app: Flask) -> None:
    """Install the middleware and make these the ``string`` (default) and ``path`` converters; call it
    before any blueprint is registered, since a rule takes its converter when it is added."""
    if any(True for _ in app.url_map.iter_rules()):
        raise RuntimeError("paths.init_app must run before any route is added")
    app.url_map.converters.update({"default": IdConverter, "string": IdConverter, "path": IdPathConverter})
    app.wsgi_app = RawPath(app.wsgi_app)  # type: ignore[method-assign]
