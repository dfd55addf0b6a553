"""The placement admin endpoints: ``PUT/GET/DELETE /v1/admin/placements/{name}`` and
``GET /v1/admin/placements`` (an admin key is required, as for the model switch: ``api.security`` checks
it for every endpoint of this blueprint).

``init_app`` also gives the app its per-process ``PlacementCache`` (``placements_of``), which the
recommendation endpoints read; a change made here is in effect in every API process within 250 ms plus
one Redis round trip (``streamrec.placement_store``).
"""

from __future__ import annotations

from flask import Blueprint, Flask

from streamrec.api.errors import (
    BODY_TOO_LARGE,
    CONFLICT,
    INVALID_PARAMETER,
    INVALID_PLACEMENT,
    NOT_FOUND,
    ApiError,
)
from streamrec.api.extensions import PLACEMENTS, placements_of, services
from streamrec.api.views import _json_body, _redis_guard, ok
from streamrec.keys import Keys
from streamrec.placement_store import DocumentTooLarge, PlacementCache, PlacementsFull, PlacementStore
from streamrec.placements import PlacementError, name_problem, parse_placement
from streamrec.settings import keys_of

bp = Blueprint("admin_placements", __name__)


def _store() -> PlacementStore:
    return placements_of().store


def _check_name(name: str) -> None:
    problem = name_problem(name)
    if problem:
        raise ApiError(400, INVALID_PARAMETER, f"name: {problem}")


def _unknown(name: str) -> ApiError:
    return ApiError(404, NOT_FOUND, f"no placement {name!r} (GET /v1/admin/placements lists them)")


@bp.put("/v1/admin/placements/<name>")
@_redis_guard
def put_placement(name: str):  # type: ignore[no-untyped-def]
    """Create or replace a placement (a named rule set); in effect in every API process within 1 s."""
    _check_name(name)
    document = _json_body()
    try:
        placement = parse_placement(name, document)
        created, version = _store().put(placement)
    except DocumentTooLarge as exc:
        raise ApiError(413, BODY_TOO_LARGE, str(exc), {"path": exc.path}) from None
    except PlacementError as exc:
        raise ApiError(400, INVALID_PLACEMENT, str(exc), {"path": exc.path, "problem": exc.problem}) from None
    except PlacementsFull as exc:
        raise ApiError(409, CONFLICT, str(exc)) from None
    return ok({"name": name, "placement": document, "version": version}, 201 if created else 200)


@bp.get("/v1/admin/placements/<name>")
@_redis_guard
def get_placement(name: str):  # type: ignore[no-untyped-def]
    """One placement's document, as stored."""
    _check_name(name)
    document = _store().get(name)
    if document is None:
        raise _unknown(name)
    return ok({"name": name, "placement": document})


@bp.delete("/v1/admin/placements/<name>")
@_redis_guard
def delete_placement(name: str):  # type: ignore[no-untyped-def]
    """Delete a placement; slots that name it get 404 within 1 s."""
    _check_name(name)
    if not _store().delete(name):
        raise _unknown(name)
    return ok({"name": name, "deleted": True})


@bp.get("/v1/admin/placements")
@_redis_guard
def list_placements():  # type: ignore[no-untyped-def]
    """Every placement with its document, by name."""
    return ok({"placements": [{"name": n, "placement": d} for n, d in _store().all().items()]})


def init_app(app: Flask, keys: Keys | None = None) -> None:
    """Register the endpoints and give the app its per-process placement cache (on the app's Redis)."""
    svc = services(app)
    app.extensions[PLACEMENTS] = PlacementCache(PlacementStore(svc.redis, keys or keys_of(svc.settings)))
    app.register_blueprint(bp)
