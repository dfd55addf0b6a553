"""Admin actions over HTTP: switch the active batch model, or roll it back (an admin key is required;
``api.security`` checks it for every endpoint of this blueprint)."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from streamrec.api.errors import CONFLICT, INVALID_PARAMETER, NOT_FOUND, ApiError
from streamrec.api.extensions import services
from streamrec.modelstore import ModelError

bp = Blueprint("admin", __name__)


def _store():  # type: ignore[no-untyped-def]
    store = services().recommender.models
    if store is None:
        raise ApiError(503, INVALID_PARAMETER, "this API has no model store")
    return store


@bp.post("/v1/admin/model/activate")
def activate_model():  # type: ignore[no-untyped-def]
    """Make a published model version the active one, atomically."""
    body = request.get_json(silent=True)
    version = body.get("version") if isinstance(body, dict) else None
    if not isinstance(version, str) or not version.strip() or len(version) > 128:
        raise ApiError(400, INVALID_PARAMETER, 'send {"version": "<a published model version>"}')
    if set(body) != {"version"}:
        raise ApiError(400, INVALID_PARAMETER, "the body holds only 'version'")
    try:
        _store().activate(version)
    except ModelError as exc:  # the only refusal: no such published version
        raise ApiError(404, NOT_FOUND, str(exc)) from None
    return jsonify({"code": 0, "msg": "ok", "data": {"status": "active", "version": version}})


@bp.post("/v1/admin/model/rollback")
def rollback_model():  # type: ignore[no-untyped-def]
    """Switch back to the model version that was active before the current one."""
    try:
        version = _store().rollback()
    except ModelError as exc:  # the only refusal: nothing earlier to go back to, a state conflict
        raise ApiError(409, CONFLICT, str(exc)) from None
    return jsonify({"code": 0, "msg": "ok", "data": {"status": "active", "version": version}})
