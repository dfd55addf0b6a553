"""Every answer says how it may be cached (``Cache-Control``), so no browser or CDN guesses.

- **Errors** (4xx, 5xx): ``no-store``. An error says something about one moment (Redis down, a rate limit,
  a bad request) and must not be served to anyone again.
- **Shared reads**: the catalog record (``GET /v1/items/{item_id}``), the OpenAPI document and its page:
  ``public, no-cache`` with a strong ``ETag`` (a hash of the exact body). A cache may keep them but must
  ask again every time, and ``If-None-Match`` gets a 304 when nothing changed: the freshness contract
  (a catalog change shows everywhere within 1 s) holds by construction, not by a staleness bound.
- **Everything else**: ``private, no-store``. That is every recommendation answer, personal or not:
  each carries a ``recommendation_id`` made for that one response (events citing it are credited to its
  strategy and experiment variant, and each answer served counts one impression), so an answer served
  again from a cache, even ``popular`` to another shopper, would credit one answer for many. Writes,
  ``/metrics``, ``/healthz`` and ``/readyz`` are answers of one moment. The storefront's pages too.
- A view that set its own policy keeps it when it succeeds (the placeholder images, the storefront's
  static files).
"""

from __future__ import annotations

from flask import Flask, Response, request

NO_STORE = "no-store"
PRIVATE = "private, no-store"
REVALIDATE = "public, no-cache"
# Flask endpoints whose successful answers are the same for everyone and carry no per-response id
SHARED = frozenset({"v1.get_item", "docs.openapi_json", "docs.docs_page"})


def policy(endpoint: str | None, status: int) -> str:
    """The ``Cache-Control`` of an answer of ``endpoint`` (a Flask endpoint name) with ``status``."""
    if status >= 400:
        return NO_STORE
    return REVALIDATE if endpoint in SHARED else PRIVATE


def _cache_control(resp: Response) -> Response:
    status = resp.status_code
    if status < 400 and "Cache-Control" in resp.headers:
        return resp  # the view's own policy (static files, images)
    resp.headers["Cache-Control"] = policy(request.endpoint, status)
    if status == 200 and request.endpoint in SHARED and request.method in ("GET", "HEAD"):
        resp.add_etag()
        resp.make_conditional(request)
    return resp


def init_app(app: Flask) -> None:
    """Register the hook that states every answer's caching policy."""
    app.after_request(_cache_control)
