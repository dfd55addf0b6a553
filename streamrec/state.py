"""Reading recommendation state from Redis for ranking (the writers are in ``streamrec.fold``).

Each method is one pipelined round trip. A user's state is read in one ``MULTI`` (every key of a user is
in one hash slot), so the history, preferences, purchases and searches of one answer are one consistent
snapshot; its ``version`` (events folded) lets a caller notice an event folded between two reads.
Decayed totals are stored in log space (``scoring``) and turned into values at the caller's ``now_ms``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from streamrec.keys import Keys
from streamrec.scoring import HistoryEntry, decayed_value, trending_score
from streamrec.settings import ScoringSettings


@dataclass(frozen=True)
class UserState:
    """What the state knows of one user, decayed to ``now``; ``version`` counts the events folded in."""

    history: list[HistoryEntry]
    preferences: dict[str, float]
    bought: set[str]
    searches: list[tuple[int, list[str]]]
    version: int = 0


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


def parse_history(raw: Iterable[bytes | str]) -> list[HistoryEntry]:
    """History entries ``item|ts|type`` (item ids may hold ``|``: split from the right), newest first."""
    out = []
    for entry in raw:
        item, _, rest = (_text(entry) or "").rpartition("|")
        item, _, ts = item.rpartition("|")
        if item and ts.isdigit():
            out.append(HistoryEntry(item, int(ts), rest))
    return out


def parse_searches(raw: Iterable[bytes | str]) -> list[tuple[int, list[str]]]:
    r"""Search entries ``ts|term\tterm…`` as (ts ms, terms), newest first."""
    out = []
    for entry in raw:
        ts, _, terms = (_text(entry) or "").partition("|")
        if ts.isdigit():
            out.append((int(ts), [t for t in terms.split("\t") if t]))
    return out


STATS_PARTITIONS = 256  # stats shards are read for partitions 0..255 of each topic


def read_stats(client: Any, keys: Keys, kinds: Sequence[str] = ("ev", "it")) -> dict[str, int]:
    """The counters of every partition's stats shard, summed (``applied:<type>`` for the events topic,
    ``items`` for the catalog's size), in one pipelined round trip over partitions 0..255.

    The shards' watermark fields (``wm:<partition>``, ``guard``) are bookkeeping and left out.
    """
    pipe = client.pipeline(transaction=False)
    for kind in kinds:
        for partition in range(STATS_PARTITIONS):
            pipe.hgetall(keys.stats(kind, partition))
    total: dict[str, int] = {}
    for fields in pipe.execute():
        for k, v in fields.items():
            name = _text(k) or ""
            if not name.startswith("wm:") and name != "guard":
                total[name] = total.get(name, 0) + int(v)
    return total


def applied_events(client: Any, keys: Keys) -> int:
    """How many events have been folded in so far (every type)."""
    return sum(v for k, v in read_stats(client, keys).items() if k.startswith("applied:"))


class StateReader:
    """Reads state for ranking. Every method is one pipelined round trip.

    ``client`` is a ``redis.Redis`` or a ``redis.cluster.RedisCluster`` (whose pipelines send each node its
    commands at once).
    """

    def __init__(self, client: Any, keys: Keys, scoring: ScoringSettings) -> None:
        self.client = client
        self.keys = keys
        self.scoring = scoring

    def user(self, user_id: str, now_ms: int) -> UserState:
        """One user's state in one transaction: history, preferences decayed to ``now_ms``, purchases,
        searches and the version (events folded). An unknown user has empty state and version 0."""
        k, s = self.keys, self.scoring
        pipe = self.client.pipeline(transaction=True)
        pipe.lrange(k.history(user_id), 0, -1)
        pipe.zrange(k.prefs(user_id), 0, -1, withscores=True)
        pipe.zrange(k.bought(user_id), 0, -1)
        pipe.lrange(k.searches(user_id), 0, -1)
        pipe.hget(k.version(user_id), "n")
        history, prefs, bought, searches, version = pipe.execute()
        return UserState(
            history=parse_history(history),
            preferences={
                _text(m) or "": decayed_value(score, now_ms, s.preference_halflife_ms) for m, score in prefs
            },
            bought={_text(m) or "" for m in bought},
            searches=parse_searches(searches),
            version=int(version or 0),
        )

    def version(self, user_id: str) -> int:
        """The number of events folded into the user's state (0 for an unknown user)."""
        return int(self.client.hget(self.keys.version(user_id), "n") or 0)

    def neighbours(self, items: Sequence[str], n: int, now_ms: int) -> dict[str, dict[str, float]]:
        """Each item's top ``n`` neighbours with their co-occurrence decayed to ``now_ms`` (raw, not yet
        normalised by popularity)."""
        if not items:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for item in items:
            pipe.zrevrange(self.keys.neighbours(item), 0, n - 1, withscores=True)
        hl = self.scoring.cooc_halflife_ms
        return {
            item: {_text(m) or "": decayed_value(w, now_ms, hl) for m, w in rows}
            for item, rows in zip(items, pipe.execute(), strict=True)
        }

    def counts(self, items: Sequence[str], now_ms: int) -> dict[str, float]:
        """Each item's occurrence count decayed to ``now_ms`` (the co-occurrence normaliser); items with no
        activity left (expired, deleted, never seen) are absent."""
        if not items:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for item in items:
            pipe.hget(self.keys.activity(item), "n")
        hl = self.scoring.cooc_halflife_ms
        return {
            item: decayed_value(float(v), now_ms, hl)
            for item, v in zip(items, pipe.execute(), strict=True)
            if v is not None
        }

    def occurrences(self, items: Sequence[str]) -> dict[str, int]:
        """Each item's plain number of folded occurrences (not decayed; items with no activity absent)."""
        if not items:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for item in items:
            pipe.hget(self.keys.activity(item), "c")
        return {item: int(v) for item, v in zip(items, pipe.execute(), strict=True) if v is not None}

    def term_items(self, terms: Sequence[str], n: int) -> dict[str, dict[str, float]]:
        """For each search term, the top ``n`` items shoppers acted on after searching it."""
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
        """Catalog records by item id; unknown items are left out (a deleted one reads ``deleted: "1"``)."""
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

    def _merged(self, names: list[str], start: int, stop: int) -> list[tuple[str, float]]:
        """Rows ``start..stop`` (by rank) of each sharded ZSET, merged by score (highest first, ties by id)."""
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.zrevrange(name, start, stop, withscores=True)
        rows = [((_text(m) or ""), float(w)) for shard in pipe.execute() for m, w in shard]
        return heapq.nsmallest(len(rows), rows, key=lambda r: (-r[1], r[0]))

    def popular(
        self, n: int, now_ms: int, category: str | None = None, offset: int = 0
    ) -> list[tuple[str, float]]:
        """The ``n`` most popular items (time-decayed to ``now_ms``), overall or in one category, skipping
        the first ``offset``. Read from every shard; exact, because each shard returns its own top."""
        k = self.keys
        names = [k.popular(s, category) for s in range(k.shards)]
        rows = self._merged(names, 0, offset + n - 1)[offset : offset + n]
        hl = self.scoring.popularity_halflife_ms
        return [(item, decayed_value(w, now_ms, hl)) for item, w in rows]

    def trending(self, n: int, now_ms: int, category: str | None = None) -> list[tuple[str, float]]:
        """Items gaining interest fastest: the top of the fast-decayed lists, re-scored against popularity
        (``scoring.trending_score``). Two round trips per pool: the pool (the top of the fast lists) widens
        until it holds ``n`` rising items or the whole list, since yesterday's best-sellers can fill the
        top of the fast lists while their score is negative (falling). A wider pool reads and scores only
        the rows it has not seen yet (their popularity with one ZMSCORE per shard)."""
        s, k = self.scoring, self.keys
        names = [k.trending(sh, category) for sh in range(k.shards)]
        rows: list[tuple[str, float]] = []
        scores: dict[str, float] = {}
        start, pool = 0, max(n * 5, 50)
        while True:
            # each shard's ranks start..pool-1, with the ones read before: every shard's top pool, which
            # holds the top pool overall
            rows = list(heapq.merge(rows, self._merged(names, start, pool - 1), key=lambda r: (-r[1], r[0])))
            fast = rows[:pool]
            by_shard: dict[int, list[tuple[str, float]]] = {}
            for item, fl in fast:
                if item not in scores:
                    by_shard.setdefault(k.shard(item), []).append((item, fl))
            pipe = self.client.pipeline(transaction=False)
            for sh, new in by_shard.items():
                pipe.zmscore(k.popular(sh, category), [item for item, _ in new])
            for new, slow in zip(by_shard.values(), pipe.execute(), strict=True):
                for (item, fl), sl in zip(new, slow, strict=True):
                    scores[item] = trending_score(
                        fl, sl, now_ms, s.trending_halflife_ms, s.popularity_halflife_ms
                    )
            scored = [(i, scores[i]) for i, _ in fast if scores[i] > 0 and math.isfinite(scores[i])]
            if len(scored) >= n or len(fast) < pool:
                break
            start, pool = pool, pool * 4
        scored.sort(key=lambda row: (-row[1], row[0]))
        return scored[:n]

    def stats(self) -> dict[str, int]:
        """The deployment's counters, summed over partitions (see ``read_stats``)."""
        return read_stats(self.client, self.keys)

    def catalog_size(self) -> int:
        """How many items the catalog holds (records created minus deleted)."""
        return read_stats(self.client, self.keys, ("it",)).get("items", 0)

    def popularity_log(self, items: Sequence[str], category: str | None = None) -> dict[str, float]:
        """Each item's log-space popularity total (comparable between items at any one moment), read from
        its shard; items with none are absent."""
        if not items:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for item in items:
            pipe.zscore(self.keys.popular(self.keys.shard(item), category), item)
        return {i: float(s) for i, s in zip(items, pipe.execute(), strict=True) if s is not None}

    def popular_ids(self, n: int, category: str | None = None) -> list[str]:
        """The ids of the ``n`` most popular items, most popular first (no decay needed to order them)."""
        k = self.keys
        return [
            item for item, _ in self._merged([k.popular(s, category) for s in range(k.shards)], 0, n - 1)[:n]
        ]
