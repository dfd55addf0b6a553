"""Recency follows event time, not arrival order (issue 26, part 2), on a real Redis: a late or
replayed event takes its event-time place in the user's bounded history and searches, is paired with the
actions next to it in event time, and weighs as a seed by its place and age in event time."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from streamrec.scoring import HistoryEntry
from streamrec.state import parse_history
from tests.integration.test_state import T0, World, ev, make_world

pytestmark = pytest.mark.redis

HOUR_MS = 3_600_000


@pytest.fixture
def world(redis_client: redis.Redis) -> Iterator[World]:
    w = make_world(redis_client)
    yield w
    for key in redis_client.scan_iter(match=w.keys.pattern(), count=1000):
        redis_client.delete(key)


def stored_history(world: World, user: str) -> list[HistoryEntry]:
    """The history list as stored (its raw order, not re-sorted by the reader)."""
    raw = world.client.lrange(world.keys.history(user), 0, -1)
    return [parse_history([entry])[0] for entry in raw]


def test_a_late_event_takes_its_event_time_place_in_the_history(world: World) -> None:
    world.apply(ev("view", "u", "x1", T0 + HOUR_MS), ev("view", "u", "x2", T0 + 2 * HOUR_MS))
    world.apply(ev("view", "u", "x0", T0))  # arrives last, happened first
    world.apply(ev("view", "u", "x15", T0 + HOUR_MS + HOUR_MS // 2))  # arrives last, happened between
    assert [e.item_id for e in stored_history(world, "u")] == ["x2", "x15", "x1", "x0"]
    assert [e.item_id for e in world.reader.user("u", T0).history] == ["x2", "x15", "x1", "x0"]


def test_a_late_or_replayed_batch_does_not_push_recent_actions_out_of_the_bounded_history(
    world: World,
) -> None:
    size = world.scoring.history_len
    recent = [ev("view", "u", f"new{n}", T0 + HOUR_MS + n) for n in range(size)]
    world.apply(*recent)
    world.apply(*[ev("view", "u", f"old{n}", T0 + n) for n in range(size)])  # a replay, hours older
    kept = stored_history(world, "u")
    assert [e.item_id for e in kept] == [f"new{n}" for n in reversed(range(size))]
    # a late event newer than the oldest kept takes its place (before new1, which it ties), new0 leaves
    world.apply(ev("view", "u", "mid", T0 + HOUR_MS + 1))
    kept = stored_history(world, "u")
    assert len(kept) == size and [e.item_id for e in kept][-3:] == ["new2", "mid", "new1"]


def test_the_searches_are_kept_in_event_time_order(world: World) -> None:
    world.apply(ev("search", "u", query="boots", ts=T0 + 2000), ev("search", "u", query="hat", ts=T0))
    raw = [e.decode() for e in world.client.lrange(world.keys.searches("u"), 0, -1)]
    assert raw == [f"{T0 + 2000}|boots", f"{T0}|hat"]


def test_a_late_event_older_than_the_rest_pairs_as_if_it_had_come_in_order(world: World) -> None:
    world.views("in-order", "a", "b", "c")
    in_order = {i: world.nbr(i) for i in "abc"}
    other = make_world(world.client, world.scoring)
    try:
        other.apply(ev("view", "u", "b", T0 + 1000), ev("view", "u", "c", T0 + 2000))
        other.apply(ev("view", "u", "a", T0))  # the first action, delivered last
        assert {i: other.nbr(i) for i in "abc"} == {i: pytest.approx(row) for i, row in in_order.items()}
    finally:
        for key in world.client.scan_iter(match=other.keys.pattern(), count=1000):
            world.client.delete(key)


def test_a_late_search_is_credited_with_the_actions_that_followed_it_once(world: World) -> None:
    world.apply(ev("view", "u", "x", T0 + 1000), ev("search", "u", query="Wool hat", ts=T0))
    assert world.reader.term_items(["wool hat", "hat"], 10) == {"wool hat": {"x": 1.0}, "hat": {"x": 1.0}}
    # in order, the action credits the search itself: the same totals, each credited once
    world.apply(ev("search", "v", query="wool hat", ts=T0), ev("view", "v", "y", T0 + 1000))
    world.apply(ev("view", "v", "y", T0 + 2000))  # a second view credits again, as it would in order
    assert world.reader.term_items(["wool hat"], 10) == {"wool hat": {"y": 2.0, "x": 1.0}}


def test_a_view_stamped_hours_ago_does_not_outrank_a_recent_one(world: World) -> None:
    # issue 26's input: others view X0 then N0, and X1 then N1; U views X1 a minute ago, then a view of
    # X0 stamped 20 h ago arrives
    now = int(time.time() * 1000)
    for n in range(3):
        world.views(f"bg0-{n}", "X0", "N0", ts=now - 2 * HOUR_MS + n * 10_000)
        world.views(f"bg1-{n}", "X1", "N1", ts=now - 2 * HOUR_MS + n * 10_000)
    world.apply(ev("view", "U", "X1", now - 60_000))
    world.apply(ev("view", "U", "X0", now - 20 * HOUR_MS))
    answer = world.recommender().for_user("U", 2)
    assert [r.item_id for r in answer.items] == ["N1", "N0"]
    assert [r.reason for r in answer.items] == ["viewed together with X1", "viewed together with X0"]
    assert answer.items[1].score < 0.75 * answer.items[0].score
