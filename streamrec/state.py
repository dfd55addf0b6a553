"""Recommendation state in Redis: the writers that fold events in, and the reader the API ranks from.

Writes go through two Lua scripts (``state.lua``, ``catalog.lua``) so that a batch is applied with one
round trip and atomically with its event_id claims. The argument encoding is shared by the synchronous
writer (tests, offline evaluation) and the asynchronous one (the Faust worker).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import orjson
import redis
import redis.asyncio

from streamrec.contract import CatalogItem, Event
from streamrec.event_types import EventType
from streamrec.keys import Keys
from streamrec.scoring import HistoryEntry, decay_rate, decayed_value, search_terms, trending_score
from streamrec.settings import ScoringSettings


@cache
def _script(name: str) -> str:
    return resources.files("streamrec").joinpath(name).read_text(encoding="utf-8")


def script_config(keys: Keys, s: ScoringSettings) -> bytes:
    """The state script's configuration argument."""
    return orjson.dumps(
        {
            "tpl": keys.templates(),
            "w": s.type_weights(),
            "w_search": s.weight_search_click,
            "history_max": s.history_len,
            "window": s.cooc_window,
            "pos_decay": s.cooc_position_decay,
            "backward": s.cooc_backward_weight,
            "max_gap": s.cooc_max_gap_ms,
            "nbr_max": s.neighbours_max,
            "nbr_slack": s.neighbours_slack,
            "alpha": s.popularity_alpha,
            "pref_rate": decay_rate(s.preference_halflife_ms),
            "pref_max": s.preference_max,
            "bought_max": s.purchases_max,
            "pop_rate": decay_rate(s.popularity_halflife_ms),
            "trend_rate": decay_rate(s.trending_halflife_ms),
            "popular_max": s.popular_max,
            "searches_max": s.searches_max,
            "search_window": s.search_window_ms,
            "term_max": s.term_items_max,
            "user_ttl": s.user_ttl_s,
            "term_ttl": s.term_ttl_s,
            "dedupe_ttl": s.dedupe_ttl_s,
        }
    )


def encode_events(events: Iterable[Event]) -> bytes:
    """The state script's events argument: only what the script needs, search queries as terms."""
    out = []
    for e in events:
        row: dict[str, Any] = {"id": e.event_id, "type": e.type.value, "user": e.user_id, "ts": e.ts}
        if e.type is EventType.SEARCH:
            row["terms"] = search_terms(e.query or "")
        else:
            row["item"] = e.item_id
        out.append(row)
    return orjson.dumps(out)


def catalog_fields(item: CatalogItem) -> dict[str, str]:
    """A catalog record as the flat string hash stored in Redis."""
    return {
        "item_id": item.item_id,
        "title": item.title,
        "description": item.description,
        "category": item.category,
        "price": "" if item.price is None else repr(item.price),
        "image_url": item.image_url,
        "in_stock": "1" if item.in_stock else "0",
        "attributes": orjson.dumps(item.attributes).decode(),
        "ts": str(item.ts),
    }


def encode_items(items: Iterable[CatalogItem]) -> bytes:
    return orjson.dumps([{"id": i.item_id, "ts": i.ts, "fields": catalog_fields(i)} for i in items])


@dataclass(frozen=True)
class ApplyResult:
    applied: int
    duplicates: int


class StateWriter:
    """Synchronous writer, for tests and offline evaluation (same scripts as the worker)."""

    def __init__(self, client: redis.Redis, keys: Keys, scoring: ScoringSettings) -> None:
        self._keys = keys
        self._config = script_config(keys, scoring)
        self._apply = client.register_script(_script("state.lua"))
        self._upsert = client.register_script(_script("catalog.lua"))

    def apply(self, events: Sequence[Event]) -> ApplyResult:
        if not events:
            return ApplyResult(0, 0)
        applied, dup = self._apply(args=[self._config, encode_events(events)])
        return ApplyResult(int(applied), int(dup))

    def upsert_items(self, items: Sequence[CatalogItem]) -> int:
        if not items:
            return 0
        return int(
            self._upsert(args=[self._keys.templates()["catalog"], self._keys.stats(), encode_items(items)])
        )


class AsyncStateWriter:
    """The worker's writer, on ``redis.asyncio``."""

    def __init__(self, client: redis.asyncio.Redis, keys: Keys, scoring: ScoringSettings) -> None:
        self._keys = keys
        self._config = script_config(keys, scoring)
        self._apply = client.register_script(_script("state.lua"))
        self._upsert = client.register_script(_script("catalog.lua"))

    async def apply(self, events: Sequence[Event]) -> ApplyResult:
        if not events:
            return ApplyResult(0, 0)
        applied, dup = await self._apply(args=[self._config, encode_events(events)])
        return ApplyResult(int(applied), int(dup))

    async def upsert_items(self, items: Sequence[CatalogItem]) -> int:
        if not items:
            return 0
        tpl = self._keys.templates()["catalog"]
        return int(await self._upsert(args=[tpl, self._keys.stats(), encode_items(items)]))


@dataclass(frozen=True)
class UserState:
    """What the state knows of one user, decayed to the state's clock."""

    history: list[HistoryEntry]
    preferences: dict[str, float]
    bought: set[str]
    searches: list[tuple[int, list[str]]]


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


def parse_history(raw: Iterable[bytes | str]) -> list[HistoryEntry]:
    out = []
    for entry in raw:
        item, _, rest = (_text(entry) or "").rpartition("|")
        item, _, ts = item.rpartition("|")
        if item and ts.isdigit():
            out.append(HistoryEntry(item, int(ts), rest))
    return out


def parse_searches(raw: Iterable[bytes | str]) -> list[tuple[int, list[str]]]:
    out = []
    for entry in raw:
        ts, _, terms = (_text(entry) or "").partition("|")
        if ts.isdigit():
            out.append((int(ts), [t for t in terms.split("\t") if t]))
    return out


class StateReader:
    """Reads state for ranking. Every method is one pipelined round trip."""

    def __init__(self, client: redis.Redis, keys: Keys, scoring: ScoringSettings) -> None:
        self.client = client
        self.keys = keys
        self.scoring = scoring

    def clock(self) -> int | None:
        """The newest event time folded in: the state's notion of now."""
        value = self.client.get(self.keys.clock())
        return int(value) if value else None

    def user(self, user_id: str, now_ms: int) -> UserState:
        k, s = self.keys, self.scoring
        pipe = self.client.pipeline(transaction=False)
        pipe.lrange(k.history(user_id), 0, -1)
        pipe.zrange(k.prefs(user_id), 0, -1, withscores=True)
        pipe.zrange(k.bought(user_id), 0, -1)
        pipe.lrange(k.searches(user_id), 0, -1)
        history, prefs, bought, searches = pipe.execute()
        return UserState(
            history=parse_history(history),
            preferences={
                _text(m) or "": decayed_value(score, now_ms, s.preference_halflife_ms) for m, score in prefs
            },
            bought={_text(m) or "" for m in bought},
            searches=parse_searches(searches),
        )

    def neighbours(self, items: Sequence[str], n: int) -> dict[str, dict[str, float]]:
        """Raw co-occurrence weights of each item's top ``n`` neighbours."""
        if not items:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for item in items:
            pipe.zrevrange(self.keys.neighbours(item), 0, n - 1, withscores=True)
        return {
            item: {_text(m) or "": float(w) for m, w in rows}
            for item, rows in zip(items, pipe.execute(), strict=True)
        }

    def counts(self, items: Sequence[str]) -> dict[str, float]:
        if not items:
            return {}
        values = self.client.hmget(self.keys.item_counts(), list(items))
        return {item: float(v) for item, v in zip(items, values, strict=True) if v is not None}

    def term_items(self, terms: Sequence[str], n: int) -> dict[str, dict[str, float]]:
        if not terms:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for term in terms:
            pipe.zrevrange(self.keys.term(term), 0, n - 1, withscores=True)
        return {
            term: {_text(m) or "": float(w) for m, w in rows}
            for term, rows in zip(terms, pipe.execute(), strict=True)
            if rows
        }

    def catalog(self, items: Sequence[str]) -> dict[str, dict[str, str]]:
        """Catalog records by item id; unknown items are left out."""
        if not items:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for item in items:
            pipe.hgetall(self.keys.catalog(item))
        out = {}
        for item, record in zip(items, pipe.execute(), strict=True):
            if record:
                out[item] = {_text(f) or "": _text(v) or "" for f, v in record.items()}
        return out

    def popular(self, n: int, now_ms: int, category: str | None = None) -> list[tuple[str, float]]:
        rows = self.client.zrevrange(self.keys.popular(category), 0, n - 1, withscores=True)
        hl = self.scoring.popularity_halflife_ms
        return [(_text(m) or "", decayed_value(w, now_ms, hl)) for m, w in rows]

    def trending(self, n: int, now_ms: int, category: str | None = None) -> list[tuple[str, float]]:
        """Items gaining interest fastest: the top of the fast-decayed set, re-scored against popularity."""
        s = self.scoring
        pool = max(n * 5, 50)
        fast = self.client.zrevrange(self.keys.trending(category), 0, pool - 1, withscores=True)
        if not fast:
            return []
        members = [_text(m) or "" for m, _ in fast]
        slow = self.client.zmscore(self.keys.popular(category), members)
        scored = [
            (item, trending_score(fl, sl, now_ms, s.trending_halflife_ms, s.popularity_halflife_ms))
            for item, (_, fl), sl in zip(members, fast, slow, strict=True)
        ]
        scored = [(item, score) for item, score in scored if score > 0 and math.isfinite(score)]
        scored.sort(key=lambda row: (-row[1], row[0]))
        return scored[:n]

    def stats(self) -> dict[str, int]:
        return {_text(k) or "": int(v) for k, v in self.client.hgetall(self.keys.stats()).items()}
