"""Query-parameter and path-id parsing with messages a person understands."""

from __future__ import annotations

from flask import Request

from streamrec.api.errors import INVALID_PARAMETER, ApiError
from streamrec.contract import id_problem

MAX_LIST_ITEMS = 100
# Booleans are exactly what the OpenAPI document's ``type: boolean`` serialises to; anything else,
# an empty value included, is a 400 rather than a guess.
BOOLEANS = {"true": True, "false": False}


def int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    """The query parameter ``name`` as an int in [``lo``, ``hi``], or ``default`` when absent; raises ApiError 400 otherwise."""
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
    """The query parameter ``name`` stripped, or None when absent or empty; raises ApiError 400 past ``max_len`` characters."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > max_len:
        raise ApiError(400, INVALID_PARAMETER, f"'{name}' is longer than {max_len} characters")
    return raw


def bool_param(request: Request, name: str) -> bool:
    """``true`` or ``false``; False when the parameter is absent; a 400 for anything else."""
    raw = request.args.get(name)
    if raw is None:
        return False
    if raw in BOOLEANS:
        return BOOLEANS[raw]
    raise ApiError(400, INVALID_PARAMETER, f"'{name}' must be true or false, got {raw!r}")


def id_param(request: Request, name: str) -> str | None:
    """An optional id in the query string, under the contract's id rule (so an empty value is a 400)."""
    raw = request.args.get(name)
    if raw is None:
        return None
    return check_id(name, raw, "query parameter")


def check_id(name: str, value: str, where: str = "path") -> str:
    """``value`` if it is an id the contract accepts, else a 400 naming the rule it breaks."""
    problem = id_problem(value)
    if problem:
        raise ApiError(400, INVALID_PARAMETER, f"'{name}' ({where}) {problem}", {"field": name})
    return value


def list_param(request: Request, name: str, max_items: int = MAX_LIST_ITEMS) -> list[str]:
    """The comma-separated (or repeated) query parameter ``name`` as a list of ids; raises ApiError 400 past
    ``max_items`` parts, empty ones counted (so the OpenAPI document's pattern states the bound exactly)."""
    parts = [v.strip() for raw in request.args.getlist(name) for v in raw.split(",")]
    if len(parts) > max_items:
        raise ApiError(400, INVALID_PARAMETER, f"'{name}' lists more than {max_items} ids")
    return [v for v in parts if v]
