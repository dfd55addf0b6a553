"""Pure parts of ``streamrec dlq``: reading dead-letter records, markers, filters, times and reason groups."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from streamrec.contract import Rejection, decode_event
from streamrec.producers.dlq import (
    DeadLetter,
    DlqError,
    Filter,
    Marker,
    Unreadable,
    parse_record,
    parse_time,
    reason_group,
    samples,
    stats,
)
from streamrec.stream_processor.fold import RawMessage, dead_letter


def _letter(value: bytes, offset: int = 5, reason: str | None = None) -> DeadLetter:
    msg = RawMessage("p.events", 1, 40 + offset, b"user-1", value)
    rejection = decode_event(value)
    assert isinstance(rejection, Rejection)
    if reason:
        rejection = Rejection(reason, [])
    parsed = parse_record(0, offset, b"user-1", dead_letter(msg, rejection), 1_800_000_000_000)
    assert isinstance(parsed, DeadLetter)
    return parsed


def test_a_dead_letter_reads_back_with_its_source_and_original() -> None:
    value = b'{"event_id": "x", "type": "teleport"}'
    letter = _letter(value)
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("p.events", 1, 45)
    assert letter.original == value and not letter.truncated
    assert letter.length == len(value) and letter.sha256 == hashlib.sha256(value).hexdigest()
    assert letter.key == b"user-1" and letter.position == (0, 5)
    assert "type" in letter.reason


def test_a_truncated_dead_letter_keeps_a_prefix_and_the_way_back_to_its_original() -> None:
    value = b"{" + b"x" * 200_000
    letter = _letter(value)
    assert letter.truncated and letter.original is None
    assert letter.prefix == value[:1024] and letter.length == len(value)
    assert letter.sha256 == hashlib.sha256(value).hexdigest()


def test_markers_and_foreign_records_are_told_apart() -> None:
    marker = orjson.dumps({"kind": "replayed", "letters": [[0, 3], [0, 4]], "at": 7})
    assert parse_record(0, 9, b"k", marker, 0) == Marker([(0, 3), (0, 4)], 7)
    assert parse_record(0, 10, None, b"not json", 0) == Unreadable(0, 10)
    assert parse_record(0, 11, None, b'{"hello": 1}', 0) == Unreadable(0, 11)


def test_stats_count_by_reason_group_and_know_what_was_replayed() -> None:
    a = _letter(b"{oops", 1)
    b = _letter(b"{nope nope", 2)
    c = _letter(b'{"event_id": "x"}', 3)
    figures = stats(iter([a, b, c, Marker([(0, 1)], 0), Unreadable(0, 9)]))
    assert figures.total == 3 and figures.replayed == 1 and figures.unreadable == 1
    groups = {reason: n for (reason, _), n in figures.by_reason.items()}
    assert sum(groups.values()) == 3
    assert groups[reason_group(a.reason)] == 2  # two JSON errors at different columns: one group
    only = stats(iter([a, b, c]), Filter(reason="JSON"))
    assert only.total == 2
    assert samples(iter([a, b, c]), Filter(reason="json"), limit=1) == [a]


def test_filters_by_time_are_inclusive_then_exclusive() -> None:
    letter = _letter(b"{oops")
    at = letter.rejected_at
    assert Filter(since_ms=at).matches(letter)
    assert not Filter(since_ms=at + 1).matches(letter)
    assert not Filter(until_ms=at).matches(letter)
    assert Filter(until_ms=at + 1).matches(letter)
    with pytest.raises(DlqError):
        Filter(since_ms=10, until_ms=10)


def test_times_are_iso_8601_or_epoch_milliseconds() -> None:
    assert parse_time("2026-11-30T00:00:00Z") == 1_795_996_800_000
    assert parse_time("2026-11-30") == parse_time("2026-11-30T00:00:00+00:00")
    assert parse_time("1796000000000") == 1_796_000_000_000
    with pytest.raises(DlqError, match="seconds"):
        parse_time("1796000000")
    with pytest.raises(DlqError, match="ISO 8601"):
        parse_time("yesterday")
