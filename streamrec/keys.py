"""Every Redis key streamrec uses, built in this one module from a configurable prefix.

The state script (``state.lua``) receives the same templates through ``Keys.templates()``, so the Python
readers and the Lua writer can never disagree on a name. A template holds one ``%s`` for an id.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

_PREFIX = re.compile(r"^[A-Za-z0-9_.:\-{}]{1,32}$")


@functools.cache
def _templates(p: str) -> dict[str, str]:
    return {
        # per user (all expire user_ttl after the user's last event)
        "history": f"{p}:u:%s:h",  # LIST of "item_id|ts|type", newest first, capped
        "prefs": f"{p}:u:%s:p",  # ZSET item -> log of time-decayed, type-weighted interest
        "bought": f"{p}:u:%s:b",  # ZSET item -> time of purchase, capped
        "searches": f"{p}:u:%s:q",  # LIST of "ts|term\tterm..." (newest first), capped
        # per item
        "neighbours": f"{p}:i:%s:n",  # ZSET neighbour -> order/recency-weighted co-occurrence
        "catalog": f"{p}:i:%s:c",  # HASH of the catalog record
        "item_counts": f"{p}:icnt",  # HASH item -> occurrences (the popularity normaliser)
        # popularity, trending (log-space forward decay, see scoring.py)
        "popular": f"{p}:pop",  # ZSET item -> log decayed popularity
        "popular_cat": f"{p}:pop:c:%s",
        "trending": f"{p}:trend",  # ZSET item -> log of the fast-decayed rate
        "trending_cat": f"{p}:trend:c:%s",
        # search
        "term": f"{p}:t:%s",  # ZSET item -> weight of actions that followed this term
        # bookkeeping
        "dedupe": f"{p}:e:%s",  # STRING, one per applied event_id, expires
        "clock": f"{p}:clock",  # STRING: newest event time folded in (epoch ms): the state's "now"
        "stats": f"{p}:stats",  # HASH of counters: applied:<type>, items
        # batch models published by the trainer (see modelstore.py)
        "model_active": f"{p}:model:active",  # STRING: the version the API blends in
        "model_versions": f"{p}:model:versions",  # ZSET version -> publish time (ms)
        "model_log": f"{p}:model:log",  # LIST of activated versions, newest first (for rollback)
        "model_meta": f"{p}:model:%s:meta",  # HASH: family, params, figures, sizes
        "model_neighbours": f"{p}:model:%s:nb",  # HASH item -> JSON [[neighbour ids], [weights]]
    }


@dataclass(frozen=True)
class Keys:
    """Key builders for one deployment (one prefix)."""

    prefix: str = "sr"

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise ValueError(f"Redis prefix {self.prefix!r} must be 1-32 characters of [A-Za-z0-9_.:-{{}}]")

    def templates(self) -> dict[str, str]:
        """Name -> template. Per-user and per-item keys take their id through ``%s``."""
        return _templates(self.prefix)

    def _k(self, name: str, arg: str | None = None) -> str:
        template = _templates(self.prefix)[name]
        return template if arg is None else template % arg

    def history(self, user_id: str) -> str:
        return self._k("history", user_id)

    def prefs(self, user_id: str) -> str:
        return self._k("prefs", user_id)

    def bought(self, user_id: str) -> str:
        return self._k("bought", user_id)

    def searches(self, user_id: str) -> str:
        return self._k("searches", user_id)

    def neighbours(self, item_id: str) -> str:
        return self._k("neighbours", item_id)

    def catalog(self, item_id: str) -> str:
        return self._k("catalog", item_id)

    def item_counts(self) -> str:
        return self._k("item_counts")

    def popular(self, category: str | None = None) -> str:
        return self._k("popular_cat", category) if category else self._k("popular")

    def trending(self, category: str | None = None) -> str:
        return self._k("trending_cat", category) if category else self._k("trending")

    def term(self, term: str) -> str:
        return self._k("term", term)

    def dedupe(self, event_id: str) -> str:
        return self._k("dedupe", event_id)

    def clock(self) -> str:
        return self._k("clock")

    def stats(self) -> str:
        return self._k("stats")

    def model_active(self) -> str:
        return self._k("model_active")

    def model_versions(self) -> str:
        return self._k("model_versions")

    def model_log(self) -> str:
        return self._k("model_log")

    def model_meta(self, version: str) -> str:
        return self._k("model_meta", version)

    def model_neighbours(self, version: str) -> str:
        return self._k("model_neighbours", version)

    def pattern(self) -> str:
        """A SCAN pattern matching every key of this deployment."""
        return f"{self.prefix}:*"
