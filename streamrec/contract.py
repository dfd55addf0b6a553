"""The event and catalog contracts of DESIGN.md, validated with pydantic.

Every program decodes and encodes through these models, so a message the API accepts is a message the
worker accepts. ``decode_event`` never raises on bad input: it returns a ``Rejection`` whose reason a
person can read, which the worker sends to the dead-letter topic and the API returns as a 400.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from streamrec.event_types import TYPES, EventType

SCHEMA_VERSION = 1
# Event times before 1995 or more than a day ahead are refused: they are almost always seconds sent
# as milliseconds, or a broken clock.
MIN_TS_MS = 788_918_400_000
MAX_CLOCK_SKEW_MS = 86_400_000


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _no_control_characters(value: str) -> str:
    """Ids become Redis key names inside the state script, whose string formatting stops at a NUL:
    "a\x00b" and "a\x00c" would share one key (and one dedupe claim), so control characters are refused."""
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters (such as NUL, tab or newline)")
    return value


Id64 = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, strip_whitespace=True),
    AfterValidator(_no_control_characters),
]
Id128 = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, strip_whitespace=True),
    AfterValidator(_no_control_characters),
]
Query = Annotated[str, StringConstraints(min_length=1, max_length=512, strip_whitespace=True)]
ShortText = Annotated[str, StringConstraints(max_length=128)]


def now_ms() -> int:
    return int(time.time() * 1000)


class Event(BaseModel):
    """One thing a shopper did. Immutable; ``ts`` is event time in epoch milliseconds (UTC)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    event_id: Id64
    type: EventType
    user_id: Id128
    item_id: Id128 | None = None
    query: Query | None = None
    session_id: ShortText | None = None
    recommendation_id: ShortText | None = None
    quantity: Annotated[float, Field(ge=0, le=1_000_000)] | None = None
    price: Annotated[float, Field(ge=0, le=1e12)] | None = None
    ts: Annotated[int, Field(strict=True)] = Field(default_factory=now_ms)
    schema_: Annotated[int, Field(alias="schema")] = SCHEMA_VERSION

    @model_validator(mode="after")
    def _check_rules(self) -> Event:
        if self.type is EventType.SEARCH:
            if self.query is None:
                raise ValueError("a search event needs a non-empty 'query'")
        elif TYPES[self.type].needs_item and self.item_id is None:
            raise ValueError(f"a {self.type.value} event needs an 'item_id'")
        if self.ts < MIN_TS_MS:
            raise ValueError(
                f"'ts' {self.ts} is before 1995: event time must be epoch milliseconds, not seconds"
            )
        if self.ts > now_ms() + MAX_CLOCK_SKEW_MS:
            raise ValueError(f"'ts' {self.ts} is more than a day in the future")
        if self.schema_ != SCHEMA_VERSION:
            raise ValueError(f"unsupported 'schema' {self.schema_}: this version reads {SCHEMA_VERSION}")
        return self

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", by_alias=True, exclude_none=True))


class CatalogItem(BaseModel):
    """A product record: what every answer is enriched with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    item_id: Id128
    title: Annotated[str, StringConstraints(max_length=512)] = ""
    description: Annotated[str, StringConstraints(max_length=4096)] = ""
    category: Annotated[str, StringConstraints(max_length=128), AfterValidator(_no_control_characters)] = ""
    price: Annotated[float, Field(ge=0, le=1e12)] | None = None
    image_url: Annotated[str, StringConstraints(max_length=2048)] = ""
    in_stock: bool = True
    attributes: dict[str, Any] = Field(default_factory=dict)
    ts: Annotated[int, Field(strict=True, ge=0)] = Field(default_factory=now_ms)

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))


class ItemDeletion(BaseModel):
    """A product leaves the catalog (``DELETE /v1/items/{item_id}``): items topic, key = item_id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    item_id: Id128
    deleted: Literal[True]
    ts: Annotated[int, Field(strict=True, ge=0)] = Field(default_factory=now_ms)

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))


class UserErasure(BaseModel):
    """Erase every trace of a user's state (``DELETE /v1/users/{user_id}``): events topic, key = user_id,
    so it is ordered after the user's earlier events."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    erase_user: Id128
    erasure_id: Id64
    ts: Annotated[int, Field(strict=True, ge=0)] = Field(default_factory=now_ms)

    @property
    def user_id(self) -> str:
        """The erased user."""
        return self.erase_user

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))


@dataclass(frozen=True)
class Rejection:
    """Why a message was refused, for a person."""

    reason: str
    errors: list[dict[str, Any]]


def describe_errors(exc: ValidationError) -> tuple[str, list[dict[str, Any]]]:
    """Turn pydantic's errors into one readable sentence and a list of ``{field, problem}``."""
    items = []
    for err in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(p) for p in err["loc"]) or "(event)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "is not a field of this record"
        items.append({"field": field, "problem": msg})
    reason = "; ".join(
        item["problem"] if item["field"] == "(event)" else f"{item['field']}: {item['problem']}"
        for item in items
    )
    return reason, items


def _decode(model: type[BaseModel], raw: bytes | str | dict[str, Any]) -> BaseModel | Rejection:
    try:
        data = raw if isinstance(raw, dict) else orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejection(f"not valid JSON: {exc}", [])
    if not isinstance(data, dict):
        return Rejection(f"expected a JSON object, got {type(data).__name__}", [])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        reason, errors = describe_errors(exc)
        return Rejection(reason, errors)


def decode_event(raw: bytes | str | dict[str, Any]) -> Event | Rejection:
    """Validate one event from JSON bytes, text or a parsed object."""
    result = _decode(Event, raw)
    assert isinstance(result, Event | Rejection)
    return result


def decode_item(raw: bytes | str | dict[str, Any]) -> CatalogItem | Rejection:
    """Validate one catalog record from JSON bytes, text or a parsed object."""
    result = _decode(CatalogItem, raw)
    assert isinstance(result, CatalogItem | Rejection)
    return result


def _parsed(raw: bytes | str | dict[str, Any]) -> dict[str, Any] | None:
    if isinstance(raw, dict):
        return raw
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def decode_event_record(raw: bytes | str | dict[str, Any]) -> Event | UserErasure | Rejection:
    """A record of the events topic: an event, or a user's erasure (it carries ``erase_user``)."""
    data = _parsed(raw)
    if data is not None and "erase_user" in data:
        result = _decode(UserErasure, data)
        assert isinstance(result, UserErasure | Rejection)
        return result
    return decode_event(raw)


def decode_catalog_record(raw: bytes | str | dict[str, Any]) -> CatalogItem | ItemDeletion | Rejection:
    """A record of the items topic: a catalog record, or a deletion (it carries ``deleted``)."""
    data = _parsed(raw)
    if data is not None and "deleted" in data:
        result = _decode(ItemDeletion, data)
        assert isinstance(result, ItemDeletion | Rejection)
        return result
    return decode_item(raw)
