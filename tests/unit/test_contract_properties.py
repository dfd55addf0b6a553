"""Property tests of the event decoder: whatever arrives, ``decode_event`` answers an ``Event`` or a
``Rejection`` a person can read, never an exception; and every valid event survives a round trip."""

from __future__ import annotations

import json
import re
import string
from typing import Any

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streamrec.contract import (
    ID_PATTERN,
    MIN_TS_MS,
    Event,
    Rejection,
    UserErasure,
    decode_event,
    decode_item,
    id_problem,
    now_ms,
)
from streamrec.event_types import EventType
from streamrec.stream_processor.fold import RawMessage, decode_batch

FIELDS = ["event_id", "type", "user_id", "item_id", "query", "session_id", "recommendation_id"]
FIELDS += ["quantity", "price", "ts", "schema"]
NOW = now_ms()

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# objects that look like events: known field names (and some others) with values of any JSON type
event_like = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=12),
    json_values | st.sampled_from(list(EventType)),
    max_size=12,
)
# any printable text, emoji and other planes included; control characters are refused (see below)
printable = st.characters(blacklist_categories=("Cc", "Cs"))
ids = st.text(printable, min_size=1, max_size=64).map(str.strip).filter(bool)
ids128 = st.text(printable, min_size=1, max_size=128).map(str.strip).filter(bool)
# any string at all, with the characters the id rule is about drawn often
edgy = st.sampled_from(" \t\n\x00\x1f\x7f\x85\xa0\u2028\u3000\ufeff/%+?#.é😀")
any_text = st.text(st.characters(codec="utf-8") | edgy, max_size=130)


@st.composite
def valid_events(draw: st.DrawFn) -> Event:
    etype = draw(st.sampled_from(list(EventType)))
    search = etype is EventType.SEARCH
    return Event(
        event_id=draw(ids),
        type=etype,
        user_id=draw(ids128),
        item_id=None if search else draw(ids128),
        query=draw(st.text(min_size=1, max_size=512).map(str.strip).filter(bool)) if search else None,
        session_id=draw(st.none() | st.text(max_size=128)),
        recommendation_id=draw(st.none() | st.text(max_size=128)),
        quantity=draw(st.none() | st.floats(min_value=0, max_value=1_000_000)),
        price=draw(st.none() | st.floats(min_value=0, max_value=1e12)),
        ts=draw(st.integers(min_value=MIN_TS_MS, max_value=NOW)),
    )


def _dumps(value: Any) -> bytes:
    """JSON as any client might send it: the standard library also writes huge integers and lone
    surrogates (as escapes), which orjson would refuse to write."""
    return json.dumps(value).encode()


def _answers(result: object) -> None:
    assert isinstance(result, Event | UserErasure | Rejection), result
    if isinstance(result, Rejection):
        assert isinstance(result.reason, str) and result.reason.strip(), result
        assert "Traceback" not in result.reason
        assert all(set(e) == {"field", "problem"} for e in result.errors)


@given(st.binary(max_size=2048))
@example(b"")
@example(b"\xff\xfe\x00")
@example(b"[" * 5000)  # nesting deeper than the JSON parser allows
@example(b'{"ts": 1' + b"0" * 40 + b"}")  # an integer no 64-bit field holds
@example(b'{"event_id": "\\ud800", "type": "view", "user_id": "u", "item_id": "i"}')  # a lone surrogate
def test_any_bytes_get_an_event_or_a_readable_rejection(raw: bytes) -> None:
    _answers(decode_event(raw))


@given(st.text(max_size=512))
def test_any_text_gets_an_event_or_a_readable_rejection(raw: str) -> None:
    _answers(decode_event(raw))


@given(json_values)
def test_any_json_value_gets_an_event_or_a_readable_rejection(value: Any) -> None:
    _answers(decode_event(_dumps(value)))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(event_like)
def test_event_shaped_objects_never_raise_and_wrong_ones_say_which_field(value: dict[str, Any]) -> None:
    result = decode_event(value)
    _answers(result)
    assert decode_event(_dumps(value)) == result  # bytes and parsed objects decode alike
    if isinstance(result, Rejection) and any(k not in FIELDS for k in value):
        assert "is not a field of this record" in result.reason


@given(valid_events())
def test_valid_events_round_trip(event: Event) -> None:
    raw = event.to_json()
    assert decode_event(raw) == event
    assert decode_event(raw.decode()) == event
    assert decode_event(orjson.loads(raw)) == event


@given(valid_events(), st.sampled_from(FIELDS), json_values)
def test_one_damaged_field_is_named_or_harmless(event: Event, field: str, value: Any) -> None:
    row = orjson.loads(event.to_json())
    row[field] = value
    result = decode_event(row)
    _answers(result)
    if isinstance(result, Rejection) and result.errors:
        assert any(field in e["field"] or e["field"] == "(event)" for e in result.errors), result


@given(valid_events(), st.text(alphabet=string.ascii_letters, min_size=1, max_size=10))
def test_unknown_fields_are_refused(event: Event, extra: str) -> None:
    row = orjson.loads(event.to_json())
    known = {f.alias or name for name, f in Event.model_fields.items()}  # e.g. 'query', absent from a view
    if extra in row or extra in known:
        return
    row[extra] = 1
    result = decode_event(row)
    assert isinstance(result, Rejection) and f"{extra}: is not a field of this record" in result.reason


@given(st.lists(st.binary(max_size=200) | valid_events().map(Event.to_json), max_size=20))
def test_the_worker_splits_any_batch_into_good_and_dead_without_losing_one(values: list[bytes]) -> None:
    raw = [RawMessage("t.events", 0, n, b"k", v) for n, v in enumerate(values)]
    decoded = decode_batch(raw, "event")
    assert len(decoded.good) + len(decoded.dead) == len(values)
    assert len(decoded.sources) == len(decoded.good)


@given(st.binary(max_size=1024) | json_values.map(_dumps))
def test_catalog_records_never_raise_either(raw: bytes) -> None:
    result = decode_item(raw)
    assert not isinstance(result, Rejection) or result.reason.strip()


@given(
    valid_events(), st.sampled_from(["event_id", "user_id", "item_id"]), st.sampled_from("\x00\t\n\x1f\x7f")
)
def test_ids_with_control_characters_are_refused_naming_the_field(
    event: Event, field: str, char: str
) -> None:
    # the state script formats ids into key names with Lua, which stops at a NUL: "a\0b" and "a\0c"
    # would share a key and a dedupe claim, so one event would be lost as a "duplicate"
    row = orjson.loads(event.to_json())
    if row.get(field) is None:
        return
    row[field] = f"x{char}y"
    result = decode_event(row)
    assert isinstance(result, Rejection) and f"{field}: must not contain control characters" in result.reason


@given(any_text)
@example("a\n")  # Python's '$' also matches before a final newline; the rule and the pattern must not
@example("\u3000")
@example(" ")
def test_the_id_rule_and_its_openapi_pattern_agree(value: str) -> None:
    by_pattern = 1 <= len(value) <= 128 and re.fullmatch(ID_PATTERN, value) is not None
    assert (id_problem(value) is None) == by_pattern, repr(value)
    event = decode_event({"event_id": "e", "type": "view", "user_id": value, "item_id": "i"})
    assert isinstance(event, Event) == by_pattern
    if isinstance(event, Event):
        assert event.user_id == value  # byte for byte: nothing stripped or normalised
