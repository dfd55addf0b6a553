"""Log formats with bound ids, and the bounded label helpers of the metrics module (no services)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from streamrec import logs, metrics


def _capture(fmt: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter(fmt))
    handler.addFilter(logs.ContextFilter())
    logger = logging.getLogger(f"test.{fmt}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_json_lines_carry_bound_ids_and_extra_fields() -> None:
    logger, stream = _capture("json")
    token = logs.bind(request_id="req-1")
    try:
        logger.info("dead letter %s", "x", extra={"event_id": "e-9", "reason": "bad"})
    finally:
        logs.unbind(token)
    logger.info("after")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["msg"] == "dead letter x" and first["level"] == "INFO" and first["logger"] == "test.json"
    assert (first["request_id"], first["event_id"], first["reason"]) == ("req-1", "e-9", "bad")
    assert first["ts"].endswith("Z")
    assert "request_id" not in second  # unbound again


def test_json_lines_carry_exceptions() -> None:
    logger, stream = _capture("json")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    line = json.loads(stream.getvalue())
    assert "ValueError: boom" in line["exc"]


def test_text_lines_append_the_ids() -> None:
    logger, stream = _capture("text")
    token = logs.bind(request_id="req-2")
    try:
        logger.info("hello", extra={"event_id": "e-1"})
    finally:
        logs.unbind(token)
    assert stream.getvalue().rstrip().endswith("hello [request_id=req-2 event_id=e-1]")


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        logs.formatter("xml")


def test_recommendation_ids_name_their_strategy_and_labels_stay_bounded() -> None:
    rid = metrics.recommendation_id("item_to_item", "0123456789abcdef0123456789abcdef")
    assert metrics.strategy_of(rid) == "item_to_item"
    assert metrics.strategy_of("0123456789abcdef0123456789abcdef") == "other"  # an id from elsewhere
    assert metrics.strategy_of("made_up.0123456789abcdef") == "other"  # not a strategy we serve
    assert metrics.strategy_of("popular.<script>") == "other"
    assert metrics.strategy_of(None) == "other"
    assert metrics.bounded("GET", ("GET",)) == "GET" and metrics.bounded("BREW", ("GET",)) == "other"
