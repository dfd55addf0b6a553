"""The API's per-process cache: when entries leave, what a derivation may use, what is evicted."""

from __future__ import annotations

from streamrec.api.cache import JITTER, ProcessCache
from streamrec.state import MISSING


def _cache(now: list[float], ttl_ms: int = 1000, items: int = 10_000) -> ProcessCache:
    return ProcessCache(ttl_ms, items, 100, clock=lambda: now[0], neighbours_ttl_ms=ttl_ms, seed=3)


def test_entries_read_together_leave_spread_over_the_last_quarter_of_the_bound_never_after_it() -> None:
    now = [0.0]
    cache = _cache(now)
    for n in range(1000):
        cache.put("catalog", n, {"item_id": str(n)})

    def held() -> int:
        return sum(cache.get("catalog", n) is not MISSING for n in range(1000))

    now[0] = (1.0 - JITTER) * 0.999
    assert held() == 1000  # nothing leaves before 75 % of the bound
    now[0] = 1.0 - JITTER / 2
    assert 350 < held() < 650  # about half have left by the middle of the last quarter, not all at once
    now[0] = 1.0001
    assert held() == 0  # and none is kept past the bound


def test_a_derivation_takes_only_inputs_read_within_its_share_of_the_bound() -> None:
    now = [0.0]
    cache = _cache(now, ttl_ms=10_000)
    cache.put("counts", "a", 1.5)
    now[0] = 4.0
    cache.put("counts", "b", 2.5)
    now[0] = 6.0
    assert cache.held("counts", ["a", "b"], 0.5) == {"b": (4.0, 2.5)}  # a was read 6 s ago: too old for it
    assert cache.held("counts", ["a", "b"]) == {"a": (0.0, 1.5), "b": (4.0, 2.5)}
    assert cache.get("counts", "a") == 1.5  # still served as it is: 6 s is inside the bound


def test_a_derived_value_leaves_by_the_age_of_its_oldest_input() -> None:
    now = [0.0]
    cache = _cache(now, ttl_ms=10_000)
    now[0] = 5.0
    cache.put("neighbours", "a", {"b": 0.5}, read_at=0.0)  # derived now from a count read at 0 s
    now[0] = 10.0001
    assert cache.get("neighbours", "a") is MISSING


def test_a_full_table_evicts_the_entry_read_longest_ago_even_if_it_was_just_used() -> None:
    now = [0.0]
    cache = _cache(now, items=2)
    cache.put("catalog", "a", 1)
    cache.put("catalog", "b", 2)
    assert cache.get("catalog", "a") == 1  # a hit does not make it younger
    cache.put("catalog", "c", 3)
    assert cache.get("catalog", "a") is MISSING and cache.get("catalog", "b") == 2


def test_model_rows_have_no_bound_and_leave_least_recently_used_first() -> None:
    now = [0.0]
    cache = _cache(now, items=2)
    cache.put("model_rows", ("v1", "a"), {"x": 1.0})
    cache.put("model_rows", ("v1", "b"), {"y": 1.0})
    now[0] = 1e6
    assert cache.get("model_rows", ("v1", "a")) == {"x": 1.0}  # never too old; now the most recently used
    cache.put("model_rows", ("v1", "c"), {"z": 1.0})
    assert cache.get("model_rows", ("v1", "b")) is MISSING
    assert cache.held("model_rows", [("v1", "a"), ("v1", "c")], 0.5) == {
        ("v1", "a"): (0.0, {"x": 1.0}),
        ("v1", "c"): (1e6, {"z": 1.0}),
    }


def test_a_value_that_left_is_still_a_hint_until_it_is_evicted() -> None:
    now = [0.0]
    cache = _cache(now, items=2)
    cache.put("neighbours", "a", {"x": 1.0})
    now[0] = 2.0  # past the bound: left
    assert cache.get("neighbours", "a") is MISSING
    before = cache.stats()["neighbours"]
    assert cache.last_known("neighbours", ["a", "b"]) == {"a": {"x": 1.0}}
    assert cache.stats()["neighbours"] == before  # a hint is neither a hit nor a miss
    cache.put("neighbours", "b", {})
    cache.put("neighbours", "c", {})  # a full table evicts the one read longest ago
    assert cache.last_known("neighbours", ["a", "b", "c"]) == {"b": {}, "c": {}}


def test_with_a_change_log_an_entry_stays_until_an_item_it_depends_on_changes() -> None:
    from streamrec.api.changes import FALLBACK_MS, ChangeLog

    now = [0.0]
    changes = ChangeLog()
    cache = ProcessCache(1000, 100, 100, clock=lambda: now[0], neighbours_ttl_ms=60_000, changes=changes)
    assert cache.tag() is None  # not subscribed yet: nothing is vouched for
    changes.set_subscribed(True)
    tag = cache.tag()
    assert tag is not None
    # read right after subscribing, with no message since: vouched for, kept past the fallback bound
    cache.put("neighbours", "a", ({"b": 1.0}, ("a", "b")), tag=tag, deps=("a", "b"))
    cache.put("counts", "c", 2.0, tag=tag, deps=("c",))
    now[0] = 10.0
    assert cache.get("neighbours", "a") == ({"b": 1.0}, ("a", "b"))
    changes.changed(["b"])  # a neighbour's count moved: the list goes once it is looked at again
    assert cache.get("neighbours", "a") == ({"b": 1.0}, ("a", "b"))  # checked at 10.0, as it was read
    cache.put("catalog", "g", (1, {"in_stock": "1"}), tag=cache.tag(), deps=("g",))
    changes.changed(["g"])
    assert cache.get("catalog", "g") is MISSING  # a catalog record is checked on every lookup
    now[0] = 11.1  # one general bound (1 s here) after its last look
    assert cache.get("neighbours", "a") is MISSING
    cache.put("counts", "c", 2.0, tag=cache.tag(), deps=("c",))
    # the feed lost: what was read before is not vouched for, and kept FALLBACK_MS from its read at most
    cache.put("counts", "d", 3.0, tag=cache.tag(), deps=("d",))
    changes.set_subscribed(False)
    assert cache.get("counts", "d") == 3.0  # read at 11.1, now 11.1: within the fallback bound
    now[0] = 11.1 + FALLBACK_MS / 1000 + 0.001
    assert cache.get("counts", "d") is MISSING
    assert cache.get("counts", "c") is MISSING


def test_the_feed_carries_counts_into_the_cache_and_a_count_move_leaves_records_standing() -> None:
    from streamrec.api.changes import ChangeLog

    now = [0.0]
    changes = ChangeLog()
    changes.set_subscribed(True)
    cache = ProcessCache(1000, 100, 100, clock=lambda: now[0], neighbours_ttl_ms=60_000, changes=changes)
    tag = cache.tag()
    cache.put("counts", "c", 2.0, tag=tag, deps=("c",))
    cache.put("catalog", "c", (1, {"in_stock": "1"}), tag=tag, deps=("c",))
    cache.put("neighbours", "a", ({"c": 1.0}, ("a", "c")), tag=tag, deps=("a", "c"))
    # a message: c's count moved to 5.0 (and nothing else about c)
    changes.changed([], ["c"])
    cache.heard({"c": 5.0, "unheld": 1.0}, changes.seq)
    assert cache.get("counts", "c") == 5.0  # taken from the message, nothing read again
    assert cache.get("counts", "unheld") is MISSING  # a count no answer used is not kept
    assert cache.get("catalog", "c") == (1, {"in_stock": "1"})  # its record did not change
    assert cache.records_unchanged(tag, ["a", "c"])  # the lists and records as read: only counts moved
    now[0] = 1.1  # a bound later the list is looked at again: a count it divides by moved, so it goes
    assert cache.get("neighbours", "a") is MISSING
    # a count read before a message that carried a newer one is not kept over it
    cache.put("counts", "c", 2.0, tag=tag, deps=("c",))
    assert cache.get("counts", "c") == 5.0
    changes.changed(["c"])  # c's catalog record (or list) changed
    assert cache.get("catalog", "c") is MISSING
    assert not cache.records_unchanged(tag, ["c"])
    assert cache.get("counts", "c") == 5.0  # its count did not


def test_a_change_message_names_records_and_carries_counts() -> None:
    from streamrec.api.changes import parse

    assert parse("a\nb\t1.5\nc\nb") == (["a", "c", "b"], {"b": 1.5})
    assert parse("x\t-inf") == ([], {"x": float("-inf")})
    assert parse("y\tnot-a-number") == (["y"], {})  # the item counts as changed: read again
