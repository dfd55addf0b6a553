"""The event and catalog contracts (``streamrec.contract``) and the worker's batch decoding and dead letters
(``stream_processor.fold``): what is accepted, and that every refusal reads as a sentence."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamrec.contract import (
    DEFAULT_MAX_FUTURE_SKEW_MS,
    MAX_TS_MS,
    MIN_TS_MS,
    CatalogItem,
    Event,
    EventType,
    ItemDeletion,
    Rejection,
    TimePolicy,
    UserErasure,
    decode_event,
    decode_item,
    id_problem,
    now_ms,
)
from streamrec.settings import Settings
from streamrec.stream_processor.fold import RawMessage, decode_batch

TS = 1_700_000_000_000


def _event(**over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"event_id": "e1", "type": "view", "user_id": "u1", "item_id": "i1", "ts": TS}
    row.update(over)
    return {k: v for k, v in row.items() if v is not None}


def _rejected(raw: Any) -> Rejection:
    result = decode_event(raw)
    assert isinstance(result, Rejection), f"expected a rejection, got {result!r}"
    assert result.reason  # always something a person can read
    return result


# --- events: accepted -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["view", "add_to_cart", "remove_from_cart", "purchase"])
def test_each_item_event_type_is_accepted(kind: str) -> None:
    event = decode_event(_event(type=kind, quantity=2, price=9.5))
    assert isinstance(event, Event)
    assert event.type is EventType(kind)
    assert (event.event_id, event.user_id, event.item_id, event.ts) == ("e1", "u1", "i1", TS)
    assert (event.quantity, event.price) == (2.0, 9.5)


def test_search_event_is_accepted_without_item() -> None:
    event = decode_event(_event(type="search", item_id=None, query="red shoes"))
    assert isinstance(event, Event)
    assert event.type is EventType.SEARCH
    assert event.query == "red shoes"
    assert event.item_id is None


@pytest.mark.parametrize("form", ["bytes", "str", "dict"])
def test_decode_accepts_bytes_text_and_parsed_objects(form: str) -> None:
    row = _event()
    raw: Any = {"bytes": orjson.dumps(row), "str": orjson.dumps(row).decode(), "dict": row}[form]
    assert isinstance(decode_event(raw), Event)


def test_default_ts_is_now() -> None:
    before = now_ms()
    event = decode_event(_event(ts=None))
    after = now_ms()
    assert isinstance(event, Event)
    assert before <= event.ts <= after


def test_optional_fields_and_exact_limits_are_accepted() -> None:
    event = decode_event(
        _event(
            event_id="e" * 64,
            user_id="u" * 128,
            item_id="i" * 128,
            session_id="s1",
            recommendation_id="r1",
            schema=1,
        )
    )
    assert isinstance(event, Event)
    assert event.recommendation_id == "r1"
    search = decode_event(_event(type="search", item_id=None, query="q" * 512))
    assert isinstance(search, Event)


def test_to_json_round_trips() -> None:
    event = decode_event(
        _event(type="purchase", quantity=1, price=12.5, session_id="s", recommendation_id="r")
    )
    assert isinstance(event, Event)
    encoded = orjson.loads(event.to_json())
    assert encoded["schema"] == 1 and "schema_" not in encoded
    assert encoded["type"] == "purchase"
    assert decode_event(event.to_json()) == event


def test_search_event_to_json_leaves_out_empty_fields() -> None:
    event = decode_event(_event(type="search", item_id=None, query="hat"))
    assert isinstance(event, Event)
    assert set(orjson.loads(event.to_json())) == {"event_id", "type", "user_id", "query", "ts", "schema"}


# --- events: rejected -------------------------------------------------------------------------------


def test_unknown_type_is_rejected() -> None:
    r = _rejected(_event(type="teleport"))
    assert r.reason.startswith("type:")
    assert "view" in r.reason and "purchase" in r.reason  # names the allowed values
    assert r.errors[0]["field"] == "type"


@pytest.mark.parametrize("kind", ["view", "add_to_cart", "remove_from_cart", "purchase"])
def test_item_event_without_item_id_is_rejected(kind: str) -> None:
    r = _rejected(_event(type=kind, item_id=None))
    assert r.reason == f"a {kind} event needs an 'item_id'"


@pytest.mark.parametrize("query", [None, "", "   ", "\u3000\n"])
def test_search_without_query_is_rejected(query: str | None) -> None:
    r = _rejected(_event(type="search", item_id=None, query=query))
    assert "query" in r.reason


@pytest.mark.parametrize(
    ("field", "value", "limit"),
    [("event_id", "e" * 65, 64), ("user_id", "u" * 129, 128), ("item_id", "i" * 129, 128)],
)
def test_oversize_ids_are_rejected(field: str, value: str, limit: int) -> None:
    r = _rejected(_event(**{field: value}))
    assert r.reason == f"{field}: String should have at most {limit} characters"


def test_oversize_query_is_rejected() -> None:
    r = _rejected(_event(type="search", item_id=None, query="q" * 513))
    assert r.reason == "query: String should have at most 512 characters"


@pytest.mark.parametrize("field", ["event_id", "user_id"])
def test_missing_or_blank_ids_are_rejected(field: str) -> None:
    assert field in _rejected(_event(**{field: None})).reason
    assert field in _rejected(_event(**{field: "  "})).reason


@pytest.mark.parametrize("field", ["event_id", "user_id", "item_id"])
@pytest.mark.parametrize("value", [" a", "a ", "\u3000a", "a\u00a0", "\u2028a"])
def test_ids_with_whitespace_at_either_end_are_refused_not_stripped(field: str, value: str) -> None:
    assert _rejected(_event(**{field: value})).reason == f"{field}: must not start or end with whitespace"
    assert id_problem(value) == "must not start or end with whitespace"


@pytest.mark.parametrize(
    "value", ["SKU-1/XL", "acct/1", "100%", "a+b", "a b", "?#", "商品-😀", "\ufeffa", ".", ".."]
)
def test_ids_are_kept_byte_for_byte(value: str) -> None:
    event = decode_event(_event(user_id=value, item_id=value))
    assert isinstance(event, Event) and (event.user_id, event.item_id) == (value, value)
    assert id_problem(value) is None


# --- the time policy: one rule for events and catalog records ----------------------------------------

NOW = 1_790_000_000_000  # a fixed receiver clock
FIXED = TimePolicy(clock=lambda: NOW)


def _ts_reason(ts: int, kind: str, policy: TimePolicy = FIXED) -> str:
    raw = _event(ts=ts) if kind == "event" else {"item_id": "sku-1", "ts": ts}
    result = decode_event(raw, policy) if kind == "event" else decode_item(raw, policy)
    assert isinstance(result, Rejection), result
    assert [e["field"] for e in result.errors] == ["ts"]
    return result.reason


@pytest.mark.parametrize("kind", ["event", "item"])
def test_ts_in_seconds_is_refused_naming_the_unit(kind: str) -> None:
    reason = _ts_reason(1_700_000_000, kind)
    assert reason == (
        "ts: 1700000000 is before 1995: it looks like epoch seconds; send epoch milliseconds UTC (1700000000000)"
    )


@pytest.mark.parametrize(
    ("ts", "unit", "ms"),
    [(NOW * 1000, "microseconds", NOW), (NOW * 1_000_000 + 999_999, "nanoseconds", NOW)],
)
@pytest.mark.parametrize("kind", ["event", "item"])
def test_ts_in_micro_or_nanoseconds_is_refused_naming_the_unit(
    kind: str, ts: int, unit: str, ms: int
) -> None:
    reason = _ts_reason(ts, kind)
    assert reason == f"ts: {ts} is after 2100: it looks like epoch {unit}; send epoch milliseconds UTC ({ms})"


@pytest.mark.parametrize("kind", ["event", "item"])
def test_ts_before_1995_that_is_no_unit_is_refused(kind: str) -> None:
    for ts in (0, -5, MIN_TS_MS - 1):
        assert _ts_reason(ts, kind).startswith(f"ts: {ts} is before 1995: ts is epoch milliseconds UTC")


@pytest.mark.parametrize("kind", ["event", "item"])
def test_ts_after_2100_that_is_no_unit_is_refused_whatever_the_skew(kind: str) -> None:
    lenient = TimePolicy(max_future_skew_ms=10**15, clock=lambda: NOW)
    assert _ts_reason(MAX_TS_MS + 1, kind, lenient) == (
        f"ts: {MAX_TS_MS + 1} is after 2100: ts is epoch milliseconds UTC (at most {MAX_TS_MS})"
    )
    assert not isinstance(decode_item({"item_id": "i", "ts": MAX_TS_MS}, lenient), Rejection)


@pytest.mark.parametrize("kind", ["event", "item"])
def test_ts_ahead_of_the_receiver_clock_is_refused_with_how_far(kind: str) -> None:
    reason = _ts_reason(NOW + 10 * 3_600_000, kind)
    assert reason == (
        f"ts: {NOW + 36_000_000} is 10 h ahead of the receiver's clock, more than the 5 min allowed: "
        "ts is epoch milliseconds UTC; check the sender's clock"
    )


@pytest.mark.parametrize("kind", ["event", "item"])
def test_the_bounds_themselves_are_accepted(kind: str) -> None:
    for ts in (MIN_TS_MS, NOW, NOW + DEFAULT_MAX_FUTURE_SKEW_MS):
        raw = _event(ts=ts) if kind == "event" else {"item_id": "sku-1", "ts": ts}
        result = decode_event(raw, FIXED) if kind == "event" else decode_item(raw, FIXED)
        assert not isinstance(result, Rejection), (ts, result)
    assert _ts_reason(NOW + DEFAULT_MAX_FUTURE_SKEW_MS + 1, kind).endswith("check the sender's clock")


def test_the_skew_is_the_receivers_setting() -> None:
    assert Settings().max_future_skew_ms == DEFAULT_MAX_FUTURE_SKEW_MS == 5 * 60_000
    wide = TimePolicy(max_future_skew_ms=3_600_000, clock=lambda: NOW)
    assert isinstance(decode_event(_event(ts=NOW + 3_000_000), wide), Event)
    assert "more than the 1 h allowed" in _ts_reason(NOW + 3_600_001, "event", wide)
    assert isinstance(
        decode_event(_event(ts=NOW + 3_000_000), TimePolicy(clock=lambda: NOW + 3_000_000)), Event
    )


def test_the_default_policy_is_the_wall_clock() -> None:
    assert isinstance(decode_event(_event(ts=now_ms() + 60_000)), Event)
    assert (
        "check the sender's clock"
        in _rejected(_event(ts=now_ms() + DEFAULT_MAX_FUTURE_SKEW_MS + 60_000)).reason
    )


def test_models_built_in_process_check_the_unit_but_not_a_clock() -> None:
    # the receiver checks the clock (whoever decodes the record); a sender cannot know the receiver's clock
    far = now_ms() + 10 * 3_600_000
    assert Event(event_id="e", type=EventType.VIEW, user_id="u", item_id="i", ts=far).ts == far
    with pytest.raises(ValueError, match="looks like epoch seconds"):
        CatalogItem(item_id="i", ts=1_700_000_000)
    with pytest.raises(ValueError, match="looks like epoch microseconds"):
        Event(event_id="e", type=EventType.VIEW, user_id="u", item_id="i", ts=far * 1000)


def test_an_integral_number_is_an_integer_as_in_json_schema() -> None:
    event = decode_event(b'{"event_id": "e", "type": "view", "user_id": "u", "item_id": "i", "ts": 1.7e12}')
    assert isinstance(event, Event) and event.ts == 1_700_000_000_000 and type(event.ts) is int
    item = decode_item({"item_id": "i", "ts": 1_700_000_000_000.0})
    assert isinstance(item, CatalogItem) and type(item.ts) is int
    assert isinstance(decode_event(_event(schema=1.0)), Event)


@pytest.mark.parametrize(
    ("field", "value"),
    [("schema", "1"), ("schema", True), ("quantity", "2"), ("price", True), ("price", "9.5")],
)
def test_numbers_are_not_coerced_from_strings_or_booleans(field: str, value: Any) -> None:
    assert _rejected(_event(**{field: value})).errors[0]["field"] == field


@pytest.mark.parametrize("value", ["true", 1, "yes"])
def test_in_stock_is_a_json_boolean(value: Any) -> None:
    result = decode_item({"item_id": "i", "in_stock": value})
    assert isinstance(result, Rejection) and result.errors[0]["field"] == "in_stock"


@pytest.mark.parametrize("ts", [1_700_000_000_000.5, "1700000000000", True])
def test_ts_must_be_an_integer(ts: Any) -> None:
    r = _rejected(_event(ts=ts))
    assert r.reason.startswith("ts:")
    assert r.errors[0]["field"] == "ts"


def test_unknown_fields_are_rejected() -> None:
    r = _rejected(_event(colour="red"))
    assert r.reason == "colour: is not a field of this record"


def test_unsupported_schema_is_rejected() -> None:
    assert "schema" in _rejected(_event(schema=2)).reason


@pytest.mark.parametrize(
    ("raw", "kind"), [(b"[1, 2]", "list"), (b'"view"', "str"), (b"42", "int"), (b"null", "NoneType")]
)
def test_non_object_json_is_rejected(raw: bytes, kind: str) -> None:
    assert _rejected(raw).reason == f"expected a JSON object, got {kind}"


@pytest.mark.parametrize("raw", [b"{not json", b"", '{"event_id": "e1",'])
def test_invalid_json_is_rejected(raw: bytes | str) -> None:
    assert _rejected(raw).reason.startswith("not valid JSON")


def test_several_problems_are_all_named() -> None:
    r = _rejected({"event_id": "e" * 65, "type": "view", "user_id": "u", "item_id": "i", "ts": TS, "x": 1})
    assert {e["field"] for e in r.errors} == {"event_id", "x"}
    assert "event_id:" in r.reason and "x:" in r.reason


def test_negative_quantity_and_price_are_rejected() -> None:
    assert _rejected(_event(quantity=-1)).reason.startswith("quantity:")
    assert _rejected(_event(price=-0.01)).reason.startswith("price:")


# --- catalog records --------------------------------------------------------------------------------


def test_minimal_catalog_item_gets_defaults() -> None:
    before = now_ms()
    item = decode_item({"item_id": "sku-1"})
    assert isinstance(item, CatalogItem)
    assert (item.title, item.category, item.price, item.in_stock, item.attributes) == ("", "", None, True, {})
    assert before <= item.ts <= now_ms()


def test_full_catalog_item_round_trips() -> None:
    row = {
        "item_id": "sku-1",
        "title": "Red shoes",
        "description": "Nice",
        "category": "shoes",
        "price": 49.9,
        "image_url": "/static/img/sku-1.svg",
        "in_stock": False,
        "attributes": {"size": [41, 42]},
        "ts": TS,
    }
    item = decode_item(orjson.dumps(row))
    assert isinstance(item, CatalogItem)
    assert orjson.loads(item.to_json()) == row
    assert decode_item(item.to_json()) == item


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"title": "no id"}, "item_id"),
        ({"item_id": "x", "price": -1}, "price"),
        ({"item_id": "x", "colour": "red"}, "colour"),
        ({"item_id": "x", "ts": 1.5}, "ts"),
        ({"item_id": "x", "ts": 1}, "ts"),
        ({"item_id": " x"}, "item_id"),
        ({"item_id": "x", "category": "a\tb"}, "category"),
        ({"item_id": "x" * 129}, "item_id"),
    ],
)
def test_bad_catalog_items_are_rejected(row: dict[str, Any], field: str) -> None:
    result = decode_item(row)
    assert isinstance(result, Rejection)
    assert result.reason.startswith(f"{field}:")


def test_catalog_non_object_and_invalid_json_are_rejected() -> None:
    r1, r2 = decode_item(b"[]"), decode_item(b"{")
    assert isinstance(r1, Rejection) and r1.reason == "expected a JSON object, got list"
    assert isinstance(r2, Rejection) and r2.reason.startswith("not valid JSON")


# --- the worker's batch decoding and dead letters ---------------------------------------------------


def _msg(value: bytes | None, offset: int = 0, key: bytes | None = b"u1") -> RawMessage:
    return RawMessage(topic="streamrec.events", partition=1, offset=offset, key=key, value=value)


def test_decode_batch_splits_good_from_dead_in_order() -> None:
    good1, good2 = (
        orjson.dumps(_event(event_id="g1")),
        orjson.dumps(_event(event_id="g2", type="search", item_id=None, query="q")),
    )
    msgs = [
        _msg(good1, 0),
        _msg(b"{bad", 1),
        _msg(None, 2),
        _msg(orjson.dumps(_event(type="teleport")), 3),
        _msg(good2, 4),
    ]
    out = decode_batch(msgs, "event")
    assert [e.event_id for e in out.good] == ["g1", "g2"]
    assert [m.offset for m, _ in out.dead] == [1, 2, 3]
    assert out.dead[0][1].reason.startswith("not valid JSON")
    assert out.dead[1][1].reason == "empty message (no value)"
    assert out.dead[2][1].reason.startswith("type:")


def test_decode_batch_of_items() -> None:
    out = decode_batch(
        [_msg(b'{"item_id": "a", "ts": 1700000000000}'), _msg(b'{"item_id": "b", "price": -2}', 1)], "item"
    )
    assert [i.item_id for i in out.good] == ["a"]
    assert [m.offset for m, _ in out.dead] == [1]
    assert isinstance(out.good[0], CatalogItem)


def test_decode_batch_applies_the_receivers_time_policy() -> None:
    ahead = orjson.dumps(_event(ts=TS + 30 * 60_000))
    strict = decode_batch([_msg(ahead)], "event", TimePolicy(clock=lambda: TS))
    lenient = decode_batch([_msg(ahead)], "event", TimePolicy(max_future_skew_ms=3_600_000, clock=lambda: TS))
    assert [r.reason for _, r in strict.dead] == [
        f"ts: {TS + 1_800_000} is 30 min ahead of the receiver's clock, more than the 5 min allowed: "
        "ts is epoch milliseconds UTC; check the sender's clock"
    ]
    assert [e.ts for e in lenient.good] == [TS + 1_800_000]


# --- deletions and erasures: the wire formats of DELETE /v1/items/{id} and DELETE /v1/users/{id} -----


def test_item_deletion_wire_format_round_trips() -> None:
    row = {"item_id": "SKU-1/XL", "deleted": True, "ts": TS}
    deletion = decode_item(orjson.dumps(row))
    assert deletion == ItemDeletion(item_id="SKU-1/XL", deleted=True, ts=TS)
    assert isinstance(deletion, ItemDeletion) and orjson.loads(deletion.to_json()) == row
    with pytest.raises(ValueError):
        deletion.ts = 5  # type: ignore[misc]  # frozen


def test_user_erasure_wire_format_round_trips() -> None:
    row = {"erase_user": "acct/1", "erasure_id": "0123456789abcdef0123456789abcdef", "ts": TS}
    erasure = decode_event(orjson.dumps(row))
    assert isinstance(erasure, UserErasure)
    assert (erasure.erase_user, erasure.erasure_id, erasure.ts) == ("acct/1", row["erasure_id"], TS)
    assert orjson.loads(erasure.to_json()) == row


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"item_id": "a", "deleted": False, "ts": TS}, "deleted: Input should be True"),
        ({"item_id": "a", "deleted": True, "title": "x"}, "title: is not a field of this record"),
        ({"item_id": " a", "deleted": True}, "item_id: must not start or end with whitespace"),
        ({"item_id": "a", "deleted": True, "ts": 1_700_000_000}, "ts: 1700000000 is before 1995"),
    ],
)
def test_bad_deletions_are_rejected(row: dict[str, Any], reason: str) -> None:
    result = decode_item(row)
    assert isinstance(result, Rejection) and result.reason.startswith(reason), result


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"erase_user": "u", "erasure_id": "not-hex"}, "erasure_id: String should match pattern"),
        ({"erase_user": "u"}, "erasure_id: Field required"),
        ({"erase_user": "u", "erasure_id": "a" * 32, "type": "view"}, "type: is not a field of this record"),
        ({"erase_user": "", "erasure_id": "a" * 32}, "erase_user: String should have at least 1 character"),
    ],
)
def test_bad_erasures_are_rejected(row: dict[str, Any], reason: str) -> None:
    result = decode_event(row)
    assert isinstance(result, Rejection) and result.reason.startswith(reason), result


def test_decode_batch_keeps_erasures_and_deletions_in_topic_order() -> None:
    erase = orjson.dumps({"erase_user": "u1", "erasure_id": "a" * 32, "ts": TS + 1})
    events = decode_batch(
        [
            _msg(orjson.dumps(_event(event_id="before"))),
            _msg(erase, 1),
            _msg(orjson.dumps(_event(event_id="after")), 2),
        ],
        "event",
    )
    assert [type(r).__name__ for r in events.good] == ["Event", "UserErasure", "Event"]
    assert [m.offset for m in events.sources] == [0, 1, 2]
    delete = orjson.dumps({"item_id": "a", "deleted": True, "ts": TS + 1})
    items = decode_batch([_msg(b'{"item_id": "a", "ts": 1700000000000}'), _msg(delete, 1)], "item")
    assert [type(r).__name__ for r in items.good] == ["CatalogItem", "ItemDeletion"]
