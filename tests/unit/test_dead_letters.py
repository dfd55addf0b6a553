"""The dead-letter record: reason, source and the original, bounded so that no message can stall a partition."""

from __future__ import annotations

import base64
import hashlib

import orjson

from streamrec.contract import Rejection, decode_event, now_ms
from streamrec.stream_processor.fold import (
    MAX_ORIGINAL_BYTES,
    PREFIX_BYTES,
    RawMessage,
    dead_letter,
    decode_batch,
)

# aiokafka's default max_request_size: a dead letter must fit in one request with room to spare
PRODUCER_REQUEST_LIMIT = 1024 * 1024


def test_dead_letter_carries_reason_source_and_original_once() -> None:
    value = b'{"event_id": "x1", "type": "teleport"}'
    msg = RawMessage("streamrec.events", 3, 17, b"user-9", value)
    rejection = decode_event(value)
    assert isinstance(rejection, Rejection)
    before = now_ms()
    record = orjson.loads(dead_letter(msg, rejection))
    assert record["reason"] == rejection.reason
    assert record["errors"] == rejection.errors
    assert record["source"] == {"topic": "streamrec.events", "partition": 3, "offset": 17}
    assert record["key"] == "user-9"
    assert record["original"] == value.decode()
    assert "original_b64" not in record  # kept once, not twice
    assert record["original_length"] == len(value)
    assert record["original_sha256"] == hashlib.sha256(value).hexdigest()
    assert before <= record["rejected_at"] <= now_ms()


def test_dead_letter_of_non_utf8_bytes_keeps_them_in_base64() -> None:
    value = b"\xff\xfe{\x80not utf-8"
    msg = RawMessage("streamrec.events", 0, 5, b"\xffkey", value)
    [(_, rejection)] = decode_batch([msg], "event").dead
    record = orjson.loads(dead_letter(msg, rejection))
    assert "original" not in record
    assert base64.b64decode(record["original_b64"]) == value
    assert record["key"] == "\ufffdkey"
    assert record["reason"].startswith("not valid JSON")


def test_dead_letter_of_an_empty_message() -> None:
    msg = RawMessage("streamrec.events", 0, 6, None, None)
    [(_, rejection)] = decode_batch([msg], "event").dead
    record = orjson.loads(dead_letter(msg, rejection))
    assert (record["original"], record["original_length"], record["key"]) == ("", 0, None)
    assert record["reason"] == "empty message (no value)"


def test_an_oversized_message_leaves_a_bounded_record_that_still_finds_the_original() -> None:
    value = b'{"event_id": "big", "type": "view", "user_id": "u", "item_id": "' + b"x" * 900_000 + b'"}'
    msg = RawMessage("streamrec.events", 2, 41, b"u", value)
    [(_, rejection)] = decode_batch([msg], "event").dead
    raw = dead_letter(msg, rejection)
    record = orjson.loads(raw)
    assert len(raw) < MAX_ORIGINAL_BYTES + 8 * 1024 < PRODUCER_REQUEST_LIMIT
    assert record["truncated"] is True
    assert "original" not in record and "original_b64" not in record
    assert record["original_length"] == len(value)
    assert record["original_sha256"] == hashlib.sha256(value).hexdigest()
    assert base64.b64decode(record["original_prefix_b64"]) == value[:PREFIX_BYTES]
    assert record["source"] == {"topic": "streamrec.events", "partition": 2, "offset": 41}


def test_a_message_at_the_limit_is_kept_whole() -> None:
    value = b"x" * MAX_ORIGINAL_BYTES
    record = orjson.loads(dead_letter(RawMessage("t", 0, 0, None, value), Rejection("not valid JSON", [])))
    assert record["original"] == value.decode()
    assert "truncated" not in record
