"""JSON errors with stable codes: every failure answers ``{"code", "msg", "details"}``, never a trace."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException, MethodNotAllowed

log = logging.getLogger("streamrec.api")

# Stable error numbers: clients may branch on them, so never renumber.
INVALID_JSON = 1001
INVALID_EVENT = 1002
BATCH_TOO_LARGE = 1003
INVALID_PARAMETER = 1004
INVALID_ITEM = 1005
INVALID_BODY_ENCODING = 1006
INVALID_PLACEMENT = 1007  # details: {path, problem}: the JSON path of the wrong part
INVALID_EXPERIMENT = 1008  # details: {path, problem}, as for placements
NOT_FOUND = 1404
METHOD_NOT_ALLOWED = 1405
UNAUTHORIZED = 1401
FORBIDDEN = 1403
CONFLICT = 1409
RATE_LIMITED = 1429
BODY_TOO_LARGE = 1413
UNSUPPORTED_MEDIA = 1415
INTERNAL = 1500
UNAVAILABLE = 1503

_HTTP_CODES = {404: NOT_FOUND, 405: METHOD_NOT_ALLOWED, 413: BODY_TOO_LARGE, 415: UNSUPPORTED_MEDIA}


class ApiError(Exception):
    """An error meant for the caller."""

    def __init__(
        self, status: int, code: int, msg: str, details: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg, self.details = status, code, msg, details
        self.headers = headers or {}


def error_body(code: int, msg: str, details: Any = None) -> dict[str, Any]:
    """The JSON error shape every 4xx/5xx answer has: a numeric code (see this module), a message a person reads, optional details."""
    return {"code": code, "msg": msg, "details": details}


def init_app(app: Flask) -> None:
    """Register handlers that turn every error into the JSON error shape."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):  # type: ignore[no-untyped-def]
        return jsonify(error_body(exc.code, exc.msg, exc.details)), exc.status, exc.headers

    @app.errorhandler(MethodNotAllowed)
    def _method_not_allowed(exc: MethodNotAllowed):  # type: ignore[no-untyped-def]
        allowed = ", ".join(sorted(exc.valid_methods or []))
        resp = jsonify(error_body(METHOD_NOT_ALLOWED, f"method not allowed here; allowed: {allowed}"))
        resp.headers["Allow"] = allowed  # RFC 9110 §15.5.6: a 405 lists the methods the resource supports
        return resp, 405

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
        status = exc.code or 500
        msg = {
            404: "no such endpoint; GET /docs lists every endpoint of this API",
            413: "request body too large: at most 4 MiB, as sent and once decoded from its Content-Encoding",
        }.get(status, exc.description or exc.name)
        return jsonify(error_body(_HTTP_CODES.get(status, 1000 + status), msg)), status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # type: ignore[no-untyped-def]
        log.exception("unhandled error")
        return jsonify(error_body(INTERNAL, "internal error; it has been logged")), 500
