"""The event and catalog contracts (``streamrec.contract``) and the worker's batch decoding and dead letters
(``stream_processor.fold``): what is accepted, and that every refusal reads as a sentence."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamrec.contract import (
    MAX_CLOCK_SKEW_MS,
    CatalogItem,
    Event,
    EventType,
    Rejection,
    decode_event,
    decode_item,
    now_ms,
)
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


@pytest.mark.parametrize("query", [None, "", "   "])
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


def test_ts_in_seconds_is_rejected() -> None:
    r = _rejected(_event(ts=1_700_000_000))
    assert "before 1995" in r.reason and "milliseconds" in r.reason


def test_ts_far_in_the_future_is_rejected() -> None:
    r = _rejected(_event(ts=now_ms() + MAX_CLOCK_SKEW_MS + 3_600_000))
    assert "more than a day in the future" in r.reason


def test_ts_a_little_in_the_future_is_accepted() -> None:
    assert isinstance(decode_event(_event(ts=now_ms() + 60_000)), Event)


@pytest.mark.parametrize("ts", [1_700_000_000_000.0, 1_700_000_000_000.5, "1700000000000", True])
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
        [_msg(b'{"item_id": "a", "ts": 1}'), _msg(b'{"item_id": "b", "price": -2}', 1)], "item"
    )
    assert [i.item_id for i in out.good] == ["a"]
    assert [m.offset for m, _ in out.dead] == [1]
    assert isinstance(out.good[0], CatalogItem)
