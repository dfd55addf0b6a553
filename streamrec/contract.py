"""The event and catalog contracts of DESIGN.md, validated with pydantic.

Every program decodes and encodes through these models, so a message the API accepts is a message the
worker accepts. ``decode_event`` and ``decode_item`` never raise on bad input: they return a
``Rejection`` whose reason a person can read, which the worker sends to the dead-letter topic and the
API returns as a 400.

Two rules hold for every record that enters, events and catalog records alike:

- **Time** (``TimePolicy``): ``ts`` is epoch milliseconds UTC, from 1995 to 2100, and not more than the
  receiver's ``max_future_skew_ms`` ahead of the receiver's clock. A value that looks like seconds,
  microseconds or nanoseconds is refused with a message naming the unit. The decoders apply the policy
  they are given; a model built in-process checks the static bounds only (its receiver checks the clock).
- **Ids** (``event_id``, ``user_id``, ``item_id``): used byte for byte, never altered. Leading or trailing
  whitespace and control characters are refused (``ID_PATTERN`` is the same rule as a regular expression,
  for the OpenAPI document); any other character, ``/``, ``%``, ``+``, spaces inside and unicode included,
  is allowed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema as cs

from streamrec.event_types import TYPES, EventType

SCHEMA_VERSION = 1
MIN_TS_MS = 788_918_400_000  # 1995-01-01T00:00:00Z: anything earlier is a unit error or a broken clock
MAX_TS_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z: anything later is a unit error, whatever the clock
MINUTE_MS = 60_000
# How far ahead of the receiver's clock an event time may be, by default. Five minutes covers a device
# clock that is a little off (NTP-synced servers are within milliseconds), and moves trending (half-life
# one hour) by at most 2^(5/60) = 1.06x; a whole hour off, a wrong time zone, is refused and named.
DEFAULT_MAX_FUTURE_SKEW_MS = 5 * MINUTE_MS
TIME_POLICY = "time_policy"  # the pydantic validation-context key that carries a TimePolicy


def now_ms() -> int:
    """Now as epoch milliseconds (the wall clock; every ``ts`` in the contract is in this unit)."""
    return int(time.time() * 1000)


def _duration(ms: int) -> str:
    """A duration for a person: '40 s', '5 min', '4 min 10 s', '10 h', '3 d 2 h'."""
    s = max(ms, 0) // 1000
    if s < 60:
        return f"{max(ms, 0) / 1000:g} s"
    if s < 3600:
        big, unit, small, sub = s // 60, "min", s % 60, "s"
    elif s < 86_400:
        big, unit, small, sub = s // 3600, "h", s % 3600 // 60, "min"
    else:
        big, unit, small, sub = s // 86_400, "d", s % 86_400 // 3600, "h"
    return f"{big} {unit}" + (f" {small} {sub}" if small else "")


@dataclass(frozen=True)
class TimePolicy:
    """Which ``ts`` values a receiver (the API, the worker's decoder) accepts.

    ``ts`` is epoch milliseconds UTC, from ``min_ts_ms`` (1995) to ``max_ts_ms`` (2100), and at most
    ``max_future_skew_ms`` ahead of ``clock()`` (epoch milliseconds). ``max_future_skew_ms=None`` checks no
    clock: the rule for models built in-process, which are checked again by whoever receives them.
    """

    max_future_skew_ms: int | None = DEFAULT_MAX_FUTURE_SKEW_MS
    min_ts_ms: int = MIN_TS_MS
    max_ts_ms: int = MAX_TS_MS
    clock: Callable[[], int] = field(default=now_ms, compare=False)

    def problem(self, ts: int) -> str | None:
        """Why ``ts`` is refused, naming the unit it was probably sent in; None when it is accepted."""
        skew = self.max_future_skew_ms
        now = self.clock() if skew is not None else self.max_ts_ms
        latest = min(now + (skew or 0), self.max_ts_ms)

        def looks_like(ms: int) -> bool:
            return self.min_ts_ms <= ms <= latest

        if ts < self.min_ts_ms:
            if looks_like(ts * 1000):
                return (
                    f"{ts} is before 1995: it looks like epoch seconds; send epoch milliseconds UTC "
                    f"({ts * 1000})"
                )
            return f"{ts} is before 1995: ts is epoch milliseconds UTC (at least {self.min_ts_ms})"
        if ts > self.max_ts_ms:
            for unit, factor in (("microseconds", 1000), ("nanoseconds", 1_000_000)):
                if looks_like(ts // factor):
                    return (
                        f"{ts} is after 2100: it looks like epoch {unit}; send epoch milliseconds UTC "
                        f"({ts // factor})"
                    )
            return f"{ts} is after 2100: ts is epoch milliseconds UTC (at most {self.max_ts_ms})"
        if skew is not None and ts > now + skew:
            return (
                f"{ts} is {_duration(ts - now)} ahead of the receiver's clock, more than the "
                f"{_duration(skew)} allowed: ts is epoch milliseconds UTC; check the sender's clock"
            )
        return None


DEFAULT_TIME_POLICY = TimePolicy()
_NO_CLOCK = TimePolicy(max_future_skew_ms=None)


def _policy(info: ValidationInfo) -> TimePolicy:
    context = info.context if isinstance(info.context, dict) else {}
    policy = context.get(TIME_POLICY)
    return policy if isinstance(policy, TimePolicy) else _NO_CLOCK


def _check_ts(ts: int, info: ValidationInfo) -> int:
    problem = _policy(info).problem(ts)
    if problem:
        raise ValueError(problem)
    return ts


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Character classes (ECMA-262 and Python read them alike) for the patterns of the OpenAPI document:
# Python's str.isspace() characters outside ASCII, all of them, and control characters or whitespace.
_WIDE_SPACE = r"\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_SPACE = r"\t\n\x0b\x0c\r\x1c-\x20" + _WIDE_SPACE
_EDGE = r"\x00-\x20\x7f" + _WIDE_SPACE
# The id rule as one regular expression: no control character, no whitespace at either end.
ID_PATTERN = rf"^[^{_EDGE}](?:[^\x00-\x1f\x7f]*[^{_EDGE}])?$"
# At least one character that is not whitespace (a search pattern).
HAS_TEXT_PATTERN = f"[^{_SPACE}]"


def _no_control_characters(value: str) -> str:
    r"""Ids become Redis key names inside the state script, whose string formatting stops at a NUL:
    "a\x00b" and "a\x00c" would share one key (and one dedupe claim), so control characters are refused."""
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters (such as NUL, tab or newline)")
    return value


def _exact_id(value: str) -> str:
    """An id is used byte for byte on every endpoint, so whitespace at its ends is refused, not stripped:
    ' a' and 'a' would otherwise be one id on write and two in a URL."""
    _no_control_characters(value)
    if value != value.strip():
        raise ValueError("must not start or end with whitespace")
    return value


@dataclass(frozen=True)
class _Pattern:
    """Adds ``pattern`` to a field's JSON schema without pydantic enforcing it (a validator does, with a
    message a person understands)."""

    pattern: str

    def __get_pydantic_json_schema__(
        self, schema: cs.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        out = handler(schema)
        out["pattern"] = self.pattern
        return out


Id64 = Annotated[
    str, StringConstraints(min_length=1, max_length=64), AfterValidator(_exact_id), _Pattern(ID_PATTERN)
]
Id128 = Annotated[
    str, StringConstraints(min_length=1, max_length=128), AfterValidator(_exact_id), _Pattern(ID_PATTERN)
]


def _has_text(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain something other than whitespace")
    return value


Query = Annotated[
    str,
    StringConstraints(min_length=1, max_length=512),
    AfterValidator(_has_text),
    _Pattern(HAS_TEXT_PATTERN),
]
ShortText = Annotated[str, StringConstraints(max_length=128)]
Category = Annotated[
    str,
    StringConstraints(max_length=128),
    AfterValidator(_no_control_characters),
    _Pattern(r"^[^\x00-\x1f\x7f]*$"),
]


def _integral(value: Any) -> Any:
    """JSON Schema counts 1.7e12 and 1700000000000.0 as integers, so the contract does too; a fraction,
    a string or a boolean is still refused (strict)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Number = Annotated[float, Field(strict=True)]  # an int or a float; never a string or a boolean
Ts = Annotated[
    int,
    BeforeValidator(_integral),
    Field(
        strict=True,
        description="epoch milliseconds UTC, defaulting to the receive time; from 1995 to 2100, and at "
        "most STREAMREC_MAX_FUTURE_SKEW_MS (default 5 minutes) ahead of the receiver's clock (a bound that "
        "moves with the clock, so no schema keyword can state it)",
        json_schema_extra={"minimum": MIN_TS_MS, "maximum": MAX_TS_MS},
    ),
]


def id_problem(value: str, max_length: int = 128) -> str | None:
    """Why ``value`` cannot be an id (the contract's rule, for ids read from a URL); None if it can."""
    if not value:
        return "must not be empty"
    if len(value) > max_length:
        return f"must have at most {max_length} characters"
    try:
        _exact_id(value)
    except ValueError as exc:
        return str(exc)
    return None


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
    quantity: Annotated[Number, Field(ge=0, le=1_000_000)] | None = None
    price: Annotated[Number, Field(ge=0, le=1e12)] | None = None
    ts: Ts = Field(default_factory=now_ms)
    schema_: Annotated[
        int,
        BeforeValidator(_integral),
        Field(strict=True, alias="schema", json_schema_extra={"const": SCHEMA_VERSION}),
    ] = SCHEMA_VERSION

    _ts = field_validator("ts")(_check_ts)

    @model_validator(mode="after")
    def _check_rules(self) -> Event:
        if self.type is EventType.SEARCH:
            if self.query is None:
                raise ValueError("a search event needs a non-empty 'query'")
        elif TYPES[self.type].needs_item and self.item_id is None:
            raise ValueError(f"a {self.type.value} event needs an 'item_id'")
        if self.schema_ != SCHEMA_VERSION:
            raise ValueError(f"unsupported 'schema' {self.schema_}: this version reads {SCHEMA_VERSION}")
        return self

    def to_json(self) -> bytes:
        """The wire form published to Kafka: compact UTF-8 JSON (orjson)."""
        return orjson.dumps(self.model_dump(mode="json", by_alias=True, exclude_none=True))


class UserErasure(BaseModel):
    """The right to erasure (``DELETE /v1/users/{user_id}``), on the events topic keyed by the user, so it
    is ordered after every event of theirs published before it. Wire form:
    ``{"erase_user": "<user_id>", "erasure_id": "<uuid hex>", "ts": <ms>}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    erase_user: Id128
    erasure_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
    ts: Ts = Field(default_factory=now_ms)

    _ts = field_validator("ts")(_check_ts)

    @property
    def user_id(self) -> str:
        """The erased user (the record's key)."""
        return self.erase_user

    def to_json(self) -> bytes:
        """The wire form published to Kafka: compact UTF-8 JSON (orjson)."""
        return orjson.dumps(self.model_dump(mode="json"))


class CatalogItem(BaseModel):
    """A product record: what every answer is enriched with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    item_id: Id128
    title: Annotated[str, StringConstraints(max_length=512)] = ""
    description: Annotated[str, StringConstraints(max_length=4096)] = ""
    category: Category = ""
    price: Annotated[Number, Field(ge=0, le=1e12)] | None = None
    image_url: Annotated[str, StringConstraints(max_length=2048)] = ""
    in_stock: Annotated[bool, Field(strict=True)] = True
    attributes: dict[str, Any] = Field(default_factory=dict)
    ts: Ts = Field(default_factory=now_ms)

    _ts = field_validator("ts")(_check_ts)

    def to_json(self) -> bytes:
        """The wire form published to Kafka: compact UTF-8 JSON (orjson)."""
        return orjson.dumps(self.model_dump(mode="json"))


class ItemDeletion(BaseModel):
    """A discontinued product (``DELETE /v1/items/{item_id}``), on the items topic keyed by the item.
    Wire form: ``{"item_id": "<id>", "deleted": true, "ts": <ms>}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    item_id: Id128
    deleted: Literal[True]
    ts: Ts = Field(default_factory=now_ms)

    _ts = field_validator("ts")(_check_ts)

    def to_json(self) -> bytes:
        """The wire form published to Kafka: compact UTF-8 JSON (orjson)."""
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
        field_name = ".".join(str(p) for p in err["loc"]) or "(event)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "is not a field of this record"
        items.append({"field": field_name, "problem": msg})
    reason = "; ".join(
        item["problem"] if item["field"] == "(event)" else f"{item['field']}: {item['problem']}"
        for item in items
    )
    return reason, items


def _decode(
    raw: bytes | str | dict[str, Any],
    policy: TimePolicy,
    marker: str,
    marked: type[BaseModel],
    plain: type[BaseModel],
) -> BaseModel | Rejection:
    """Parse ``raw`` and validate it as ``marked`` if it holds the ``marker`` field, else as ``plain``."""
    try:
        data = raw if isinstance(raw, dict) else orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejection(f"not valid JSON: {exc}", [])
    if not isinstance(data, dict):
        return Rejection(f"expected a JSON object, got {type(data).__name__}", [])
    try:
        return (marked if marker in data else plain).model_validate(data, context={TIME_POLICY: policy})
    except ValidationError as exc:
        reason, errors = describe_errors(exc)
        return Rejection(reason, errors)


def decode_event(
    raw: bytes | str | dict[str, Any], policy: TimePolicy = DEFAULT_TIME_POLICY
) -> Event | UserErasure | Rejection:
    """Validate one record of the events topic from JSON bytes, text or a parsed object.

    An object with ``erase_user`` is a ``UserErasure``; anything else must be an ``Event``. ``policy`` is
    the receiver's time rule. Never raises: a bad record is a ``Rejection``.
    """
    result = _decode(raw, policy, "erase_user", UserErasure, Event)
    assert isinstance(result, Event | UserErasure | Rejection)
    return result


def decode_item(
    raw: bytes | str | dict[str, Any], policy: TimePolicy = DEFAULT_TIME_POLICY
) -> CatalogItem | ItemDeletion | Rejection:
    """Validate one record of the items topic from JSON bytes, text or a parsed object.

    An object with ``deleted`` is an ``ItemDeletion``; anything else must be a ``CatalogItem``. ``policy``
    is the receiver's time rule. Never raises: a bad record is a ``Rejection``.
    """
    result = _decode(raw, policy, "deleted", ItemDeletion, CatalogItem)
    assert isinstance(result, CatalogItem | ItemDeletion | Rejection)
    return result
