"""The offline run's cache: everything kept, nothing ages, and lookups in bulk as the API's cache does."""

from __future__ import annotations

from streamrec.state import MISSING, FrozenCache


def test_a_frozen_cache_keeps_what_it_is_given_and_answers_missing_for_the_rest() -> None:
    cache = FrozenCache()
    assert cache.get("counts", "a") is MISSING
    cache.put("counts", "a", 1.5)
    cache.put("counts", "b", None)  # None is a value ("no activity"), not a miss
    cache.put("neighbours", "a", {"b": 0.5}, read_at=123.0)
    assert cache.get("counts", "a") == 1.5 and cache.get("counts", "b") is None
    assert cache.get("neighbours", "a") == {"b": 0.5} and cache.get("catalog", "a") is MISSING
    assert cache.held("counts", ["a", "b", "c"]) == {"a": (0.0, 1.5), "b": (0.0, None)}
