"""Query-parameter parsing with messages a person understands."""

from __future__ import annotations

from flask import Request

from streamrec.api.errors import INVALID_PARAMETER, ApiError

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}


def int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(
            400, INVALID_PARAMETER, f"'{name}' must be a whole number from {lo} to {hi}, got {raw!r}"
        ) from None
    if not lo <= value <= hi:
        raise ApiError(400, INVALID_PARAMETER, f"'{name}' must be from {lo} to {hi}, got {value}")
    return value


def str_param(request: Request, name: str, max_len: int = 128) -> str | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > max_len:
        raise ApiError(400, INVALID_PARAMETER, f"'{name}' is longer than {max_len} characters")
    return raw


def bool_param(request: Request, name: str) -> bool:
    raw = request.args.get(name, "").strip().lower()
    if raw in TRUE:
        return True
    if raw in FALSE:
        return False
    raise ApiError(400, INVALID_PARAMETER, f"'{name}' must be true or false, got {raw!r}")


def list_param(request: Request, name: str, max_items: int = 100) -> list[str]:
    values = [v.strip() for raw in request.args.getlist(name) for v in raw.split(",") if v.strip()]
    if len(values) > max_items:
        raise ApiError(400, INVALID_PARAMETER, f"'{name}' lists more than {max_items} ids")
    return values
