"""Reading recommendation state from Redis for ranking (the writers are in ``streamrec.fold``).

Each ``StateReader`` method is one pipelined round trip. A user's state is read in one read-only script,
``user_read.lua`` (every key of a user is in one hash slot), so the history, preferences, purchases and
searches of one answer are one consistent snapshot; its ``version`` (events folded) lets a caller notice an event folded between two reads.
Decayed totals are stored in log space (``scoring``) and turned into values at the caller's ``now_ms``.

A ``Snapshot`` is one answer's view of the state (docs/STATE.md, "One consistent read"): the user's group
read once, then everything else from a per-process ``Cache`` or, for what the cache misses, in one pipelined
trip that reads the user's version again, so that an event of the user folded in between is noticed and the
answer computed again.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol

from redis.cluster import RedisCluster

from streamrec.keys import Keys
from streamrec.scoring import HistoryEntry, decayed_value, normalised_log_neighbours, trending_score
from streamrec.settings import ScoringSettings


@dataclass(frozen=True)
class UserState:
    """What the state knows of one user, decayed to ``now``; ``version`` counts the events folded in."""

    history: list[HistoryEntry]
    preferences: dict[str, float]
    bought: set[str]
    searches: list[tuple[int, list[str]]]
    version: int = 0


@dataclass(frozen=True)
class UserReply:
    """Trip 1 of an answer as Redis sent it: the user's history, preferences (member, log score), purchases
    and searches, unparsed (``state(now_ms, …)`` parses them: an answer served from the cache never does;
    an ``unchanged`` reply, sent when the stamp equals the one the caller held, has none),
    with the version ``n`` and when that count started ``since`` (wall ms, 0: never); with a ``stamp``
    read, also the catalog generation and the active model version (None when not read)."""

    history: list[Any]
    prefs: list[Any]
    bought: list[Any]
    searches: list[Any]
    version: int
    since: int
    generation: int | None = None
    model: str | None = None
    unchanged: bool = False  # the stamp equalled the one the caller held: no state was sent

    @property
    def stamp(self) -> tuple[int, int, int, str | None] | None:
        """What a cached answer of this user is valid for: (version, since, catalog generation, active
        model), or None when the generation was not read."""
        if self.generation is None:
            return None
        return (self.version, self.since, self.generation, self.model)

    def state(self, now_ms: int, preference_halflife_ms: float) -> UserState:
        """The parsed state, preferences decayed to ``now_ms`` (``scoring.decayed_value``). Raises
        ``ValueError`` for an ``unchanged`` reply, which carries none."""
        if self.unchanged:
            raise ValueError("an unchanged reply carries no state: serve the answer held for its stamp")
        return UserState(
            history=parse_history(self.history),
            preferences={
                _text(m) or "": decayed_value(score, now_ms, preference_halflife_ms)
                for m, score in self.prefs
            },
            bought={_text(m) or "" for m in self.bought},
            searches=parse_searches(self.searches),
            version=self.version,
        )


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


def parse_history(raw: Iterable[bytes | str]) -> list[HistoryEntry]:
    """History entries ``item|ts|type`` (item ids may hold ``|``: split from the right), newest first by
    event time (``ts``; equal times keep the stored order, the later arrival first).

    The fold keeps the list in event-time order; sorting here too keeps a list written before it did
    (in arrival order) from ranking a late event as recent."""
    out = []
    for entry in raw:
        item, _, rest = (_text(entry) or "").rpartition("|")
        item, _, ts = item.rpartition("|")
        if item and ts.isdigit():
            out.append(HistoryEntry(item, int(ts), rest))
    out.sort(key=lambda e: -e.ts)
    return out


def parse_searches(raw: Iterable[bytes | str]) -> list[tuple[int, list[str]]]:
    r"""Search entries ``ts|term\tterm…`` as (ts ms, terms), newest first by event time (as
    ``parse_history``)."""
    out = []
    for entry in raw:
        ts, _, terms = (_text(entry) or "").partition("|")
        if ts.isdigit():
            out.append((int(ts), [t for t in terms.split("\t") if t]))
    out.sort(key=lambda e: -e[0])
    return out


def _scored(rows: Sequence[tuple[bytes | str, float]]) -> dict[str, float]:
    """A ``ZRANGE … WITHSCORES`` reply (``(member, score)`` pairs, scores already floats) as member -> score."""
    if rows and isinstance(rows[0][0], bytes):
        return {m.decode(): w for m, w in rows}
    return dict(rows)  # type: ignore[arg-type]


def _answer_fields(values: Sequence[bytes | str | None]) -> dict[str, str] | None:
    """An ``HMGET`` of ``ANSWER_FIELDS`` as a record holding the fields present (None: no record)."""
    record = {f: _text(v) or "" for f, v in zip(ANSWER_FIELDS, values, strict=True) if v is not None}
    return record or None


def _user_read_script() -> str:
    return resources.files("streamrec").joinpath("user_read.lua").read_text(encoding="utf-8")


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


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # what a cache answers for a key it does not hold (None is a value: "no record")


class Cache(Protocol):
    """A per-process store of state that changes slowly or never, with a bounded staleness.

    ``kind`` names what a value is (``CACHED_KINDS``); ``get`` answers ``MISSING`` for a key it does not
    hold (or holds for longer than its staleness bound). Values are shared between threads: never mutate one.
    """

    enabled: bool
    answers: bool  # whether it keeps whole answers (kind "answers"; see ``recommend.Recommender``)
    # how long parts of an answer that no item change announces (popularity fill-ins, search terms'
    # items) may be kept, in seconds
    fresh_within_s: float
    # share of the catalog kind's bound within which a reader without a stamp (which checks no catalog
    # generation) takes a record: ``held("catalog", items, catalog_within)``
    catalog_within: float

    def get(self, kind: str, key: Hashable) -> Any:
        """The value held for ``(kind, key)``, or ``MISSING``."""

    def put(
        self,
        kind: str,
        key: Hashable,
        value: Any,
        read_at: float | None = None,
        tag: int | None = None,
        deps: tuple[str, ...] = (),
        fresh_until: float | None = None,
    ) -> None:
        """Hold ``value`` for ``(kind, key)`` (the cache bounds how many and for how long). A value derived
        from others gives ``read_at``, when the oldest of them was read (``read_at`` of theirs): its
        staleness counts from there, not from now, so deriving never stretches the bound. ``tag`` (from
        ``tag()`` before the value's inputs were read) and ``deps`` (the item ids it depends on) let a cache
        that follows the change feed keep it exactly while those are unchanged; ``fresh_until`` (the
        cache's clock) ends it sooner, for parts no item change announces."""

    def tag(self) -> int | None:
        """The change log's number now, to tag values about to be read (None: no change feed to vouch)."""

    def now(self) -> float:
        """The cache's clock (seconds), for ``fresh_until``."""

    def held(
        self, kind: str, keys: Iterable[Hashable], within: float = 1.0
    ) -> dict[Hashable, tuple[float, Any]]:
        """Of ``keys``, those held for ``kind`` and read within ``within`` × its staleness bound (0 < within
        <= 1), each as (when it was read on the cache's clock, value): many lookups at once, for a value
        derived from them (the rest count as misses)."""

    def last_known(self, kind: str, keys: Iterable[Hashable]) -> dict[Hashable, Any]:
        """Of ``keys``, the values the cache still has for ``kind`` however old: hints of what to read
        next (never served)."""

    def records_unchanged(self, tag: int | None, items: Iterable[str]) -> bool:
        """Whether the neighbour lists and catalog records of ``items`` are known to be as they were when
        a value tagged ``tag`` was read (their counts may have moved): True lets a reader derive again from
        what it kept instead of reading it again. False whenever nothing vouches for it."""


# What a Cache is asked to keep: the active model version and its rows (immutable per version), catalog
# records (each as (catalog generation it was read under, record)), items' decayed counts, normalised
# neighbour lists, the tops of the popularity lists, trending, the newest catalog generation seen, and
# whole personal answers (each as (stamp, answer)).
CACHED_KINDS = (
    "model_active",
    "model_rows",
    "catalog",
    "counts",
    "neighbours",
    "popular",
    "trending",
    "catalog_generation",
    "answers",
)


class NoCache:
    """A cache that holds nothing: every answer reads all it needs (offline evaluation, tests)."""

    enabled = False
    answers = False
    catalog_within = 1.0
    fresh_within_s = 0.0

    def get(self, kind: str, key: Hashable) -> Any:
        """Always ``MISSING``."""
        return MISSING

    def put(self, kind: str, key: Hashable, value: Any, read_at: float | None = None, **_: Any) -> None:
        """Keep nothing."""
        return None

    def tag(self) -> int | None:
        """No change feed."""
        return None

    def now(self) -> float:
        """No clock: nothing is kept."""
        return 0.0

    def held(
        self, kind: str, keys: Iterable[Hashable], within: float = 1.0
    ) -> dict[Hashable, tuple[float, Any]]:
        """Always empty."""
        return {}

    def last_known(self, kind: str, keys: Iterable[Hashable]) -> dict[Hashable, Any]:
        """Always empty."""
        return {}

    def records_unchanged(self, tag: int | None, items: Iterable[str]) -> bool:
        """Nothing vouches: False."""
        return False


class FrozenCache:
    """A cache for a state that does not change while it is used: offline evaluation answers every held-out
    user from one folded state at one fixed clock, so whatever an answer read is exactly what the next
    one would read again. Everything is kept, without a staleness bound; memory grows with what is read
    (at most one entry per kind and item, list or model row). Not thread-safe: one per process."""

    enabled = True
    answers = False  # each held-out user is answered once
    catalog_within = 1.0
    fresh_within_s = float("inf")

    def __init__(self) -> None:
        self._entries: dict[tuple[str, Hashable], Any] = {}

    def get(self, kind: str, key: Hashable) -> Any:
        """The value kept for ``(kind, key)``, or ``MISSING``."""
        return self._entries.get((kind, key), MISSING)

    def put(self, kind: str, key: Hashable, value: Any, read_at: float | None = None, **_: Any) -> None:
        """Keep ``value`` for good (``read_at`` and the rest do not matter: nothing ages or changes)."""
        self._entries[(kind, key)] = value

    def tag(self) -> int | None:
        """No change feed: nothing changes."""
        return None

    def now(self) -> float:
        """The clock stands still."""
        return 0.0

    def held(
        self, kind: str, keys: Iterable[Hashable], within: float = 1.0
    ) -> dict[Hashable, tuple[float, Any]]:
        """The kept ones of ``keys``, each as (0.0, value) (nothing ages, whatever ``within``)."""
        entries = self._entries
        return {k: (0.0, v) for k in keys if (v := entries.get((kind, k), MISSING)) is not MISSING}

    def last_known(self, kind: str, keys: Iterable[Hashable]) -> dict[Hashable, Any]:
        """The kept ones of ``keys`` (nothing ages)."""
        return {k: v for k, (_, v) in self.held(kind, keys).items()}

    def records_unchanged(self, tag: int | None, items: Iterable[str]) -> bool:
        """Nothing changes: True."""
        return True


# The catalog fields an answer uses: what it shows, and what decides whether an item may be shown.
ANSWER_FIELDS = ("item_id", "title", "price", "image_url", "category", "in_stock", "deleted", "attributes")


@dataclass
class Reads:
    """What one pipelined trip reads: top ``n`` items of search terms, top ``n`` neighbours of items, items'
    counts, catalog fields, and the top ``n`` of popularity lists (``(category or None, n)``)."""

    terms: dict[str, int] = field(default_factory=dict)
    neighbours: dict[str, int] = field(default_factory=dict)
    counts: dict[str, None] = field(default_factory=dict)
    catalog: dict[str, None] = field(default_factory=dict)
    popular: dict[tuple[str | None, int], None] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.terms or self.neighbours or self.counts or self.catalog or self.popular)


@dataclass
class ReadResult:
    """The answers to ``Reads``, raw: term weights; neighbours' and counts' log-space totals (``None``: the
    item has no activity left); catalog fields (``None``: no record); popularity rows ``(item, log total)``
    merged over shards, highest first; and the user's version read after everything else."""

    terms: dict[str, dict[str, float]]
    neighbours: dict[str, dict[str, float]]
    counts: dict[str, float | None]
    catalog: dict[str, dict[str, str] | None]
    popular: dict[tuple[str | None, int], list[tuple[str, float]]]
    version: int | None = None


class StateReader:
    """Reads state for ranking. Every method is one pipelined round trip.

    ``client`` is a ``redis.Redis`` or a ``redis.cluster.RedisCluster`` (whose pipelines send each node its
    commands at once).
    """

    def __init__(self, client: Any, keys: Keys, scoring: ScoringSettings) -> None:
        self.client = client
        self.keys = keys
        self.scoring = scoring
        self._cluster = isinstance(client, RedisCluster)
        self._user_read = client.register_script(_user_read_script())

    def read(self, reads: Reads, version_of: str | None = None) -> ReadResult:
        """Everything in ``reads`` in one pipelined round trip, then ``version_of``'s version (events folded).

        On one Redis the version is the pipeline's last command, so it is read after every other read of
        the trip: if it still equals the version of the user's own read, no event of the user was folded
        before any of these reads. A cluster's pipeline reads its nodes at once, in no order, so there the
        version is read in a trip of its own after the pipeline.
        """
        k, names = self.keys, self._popular_names
        pipe = self.client.pipeline(transaction=False)
        for term, n in reads.terms.items():
            pipe.zrevrange(k.term(term), 0, n - 1, withscores=True)
        for item, n in reads.neighbours.items():
            pipe.zrevrange(k.neighbours(item), 0, n - 1, withscores=True)
        for item in reads.counts:
            pipe.hget(k.activity(item), "n")
        for item in reads.catalog:
            pipe.hmget(k.catalog(item), ANSWER_FIELDS)
        for category, n in reads.popular:
            for name in names(category):
                pipe.zrevrange(name, 0, n - 1, withscores=True)
        check = version_of is not None and not self._cluster
        if check:
            pipe.hget(k.version(version_of or ""), "n")
        replies = iter(pipe.execute()) if reads or check else iter(())
        result = ReadResult(
            terms={t: _scored(next(replies)) for t in reads.terms},
            neighbours={i: _scored(next(replies)) for i in reads.neighbours},
            counts={i: None if (v := next(replies)) is None else float(v) for i in reads.counts},
            catalog={i: _answer_fields(next(replies)) for i in reads.catalog},
            popular={},
        )
        for category, n in reads.popular:
            shards = [next(replies) for _ in range(k.shards)]
            rows = [((_text(m) or ""), float(w)) for shard in shards for m, w in shard]
            result.popular[(category, n)] = heapq.nsmallest(n, rows, key=lambda r: (-r[1], r[0]))
        if version_of is not None:
            raw = next(replies) if check else self.client.hget(k.version(version_of), "n")
            result.version = int(raw or 0)
        return result

    def _popular_names(self, category: str | None) -> list[str]:
        return [self.keys.popular(s, category) for s in range(self.keys.shards)]

    def user(self, user_id: str, now_ms: int) -> UserState:
        """One user's state in one transaction: history, preferences decayed to ``now_ms``, purchases,
        searches and the version (events folded). An unknown user has empty state and version 0."""
        return self.user_reply(user_id).state(now_ms, self.scoring.preference_halflife_ms)

    def user_reply(self, user_id: str, stamp: bool = False, held: tuple[Any, ...] | None = None) -> UserReply:
        """The user's group in one round trip, atomically (``user_read.lua``, read-only, on the user's one
        slot), unparsed. With ``stamp``, also the catalog generation and the active model version, which a
        cached answer is compared by: on one Redis in the same script; on a cluster (other slots) in a
        pipeline of their own just before it. Either way they are read before anything the answer reads
        next. ``held``, the stamp of an answer the caller holds: if the stamp read equals it, the reply is
        ``unchanged`` and carries no state (nothing else was sent)."""
        k = self.keys
        keys = [
            k.history(user_id),
            k.prefs(user_id),
            k.bought(user_id),
            k.searches(user_id),
            k.version(user_id),
        ]
        generation: int | None = None
        model: str | None = None
        if stamp and self._cluster:
            generation, model = self.catalog_and_model()
            if held is not None and (generation, model) != tuple(held[2:]):
                held = None  # the catalog or the model moved: the state is needed whatever the user did
        elif stamp:
            keys += [k.catalog_generation(), k.model_active()]
        args = [] if held is None else [str(x) if x else "" for x in held[: len(keys) - 3]]
        reply = self._user_read(keys=keys, args=args)
        n, since = int(reply[0] or 0), int(reply[1] or 0)
        if stamp and not self._cluster:
            generation, model = int(reply[2] or 0), _text(reply[3]) or None
        if len(reply) == 4:
            return UserReply([], [], [], [], n, since, generation, model, unchanged=True)
        flat = reply[5]
        prefs = list(zip(flat[0::2], map(float, flat[1::2]), strict=True))
        return UserReply(reply[4], prefs, reply[6], reply[7], n, since, generation, model)

    def catalog_and_model(self) -> tuple[int, str | None]:
        """The catalog generation (0: no catalog record folded yet) and the active model version (None:
        none), in one pipelined trip (two slots on a cluster)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.catalog_generation())
        pipe.get(self.keys.model_active())
        generation, model = pipe.execute()
        return int(generation or 0), _text(model)

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
        return {term: _scored(rows) for term, rows in zip(terms, pipe.execute(), strict=True) if rows}

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


class SnapshotMoved(Exception):
    """The user's version changed between the reads of one answer: one of their events was folded between."""


POPULAR_TOP_MIN = 64  # the smallest top of a popularity list read (and cached) at once
# A neighbour list is derived only from counts read within this share of their staleness bound, so it is
# kept for at least the rest: a list is as stale as its oldest count, and one derived from counts of every
# age (a list holds about 120, and the cache spreads when counts leave) is about as old as the bound at
# birth and is read again at once. Without it, misses grew to 10-15 neighbour lists per answer within 3
# minutes (in process, 175 answers/s); with it they stay at about 3.
DERIVE_WITHIN = 0.5


class Snapshot:
    """One answer's reads: the user's group in one script (trip 1, at construction, when a user is given),
    then everything else from the per-process ``cache`` or, when the cache misses, from this answer's own
    reads.

    An accessor answers with what is known and notes what is not as pending (it reads as empty), so the
    caller computes its answer, and while ``complete`` is False calls ``fetch`` (one pipelined trip for every
    pending read, ending with the user's version) and computes again. ``fetch`` raises ``SnapshotMoved``
    when the version moved (unless ``strict`` is False): an event of the user was folded after trip 1, and
    the answer must be computed from a new snapshot. What a trip read that the cache may keep goes into it;
    search terms' items and raw neighbour lists stay with this snapshot. Raises ``redis.RedisError``.

    With ``stamp``, trip 1 also reads the catalog generation and the active model version (``UserReply``;
    without a user, trip 1 reads only those), and ``held`` is the stamp of an answer the caller holds
    (``unchanged`` says whether it stands). The answer then uses that model version, and only catalog
    records read under that generation or a later one, so that it is valid for as long as its ``stamp``
    holds (a cached answer is compared by it).
    ``read_at`` is when the oldest neighbour list the answer used was read, or the counts it was derived
    from (the cache's clock; None: nothing older than this answer). ``tag`` is the cache's change-log
    number taken before trip 1, and ``deps`` the items the answer depends on (the anchors of the neighbour
    lists it used with their members, the items whose catalog records it read): a cache that follows the
    change feed keeps the answer while none of them changed. ``fresh_until`` (the cache's clock) bounds
    what no item change announces: the popularity rows and search terms' items it used.
    """

    def __init__(
        self,
        reader: StateReader,
        cache: Cache,
        now_ms: int,
        user_id: str | None = None,
        strict: bool = True,
        stamp: bool = False,
        held: tuple[Any, ...] | None = None,
    ) -> None:
        self.reader, self.cache, self.now, self.strict = reader, cache, now_ms, strict
        self.user_id = user_id
        # before anything is read: a change the log hears of after this number may postdate any read
        self.tag = cache.tag()
        self.deps: set[str] = set()
        self.fresh_until: float | None = None
        self._terms_read_at = self._fetched_at = 0.0  # when this snapshot's own trips read them
        self.reply = reader.user_reply(user_id, stamp, held) if user_id is not None else None
        self._user: UserState | None = None
        self.trips = 1 if user_id is not None or stamp else 0
        self._local: dict[tuple[str, Hashable], Any] = {}
        self._read_counts: dict[str, float | None] = {}  # what this snapshot's own trips read
        self._held_counts: dict[Hashable, tuple[float, Any]] = {}  # what the cache gave it, with when read
        self._raw_tags: dict[
            str, int | None
        ] = {}  # lists kept by the cache, with the tag they were read under
        self._pending = Reads()
        self.read_at: float | None = None
        # what a cached answer of this snapshot is valid for: with a user, (version, since, catalog
        # generation, model); without one, (catalog generation, model); None when not read
        self.stamp: tuple[Any, ...] | None = None
        if self.reply is not None:
            self.stamp = self.reply.stamp
        elif stamp:
            self.stamp = reader.catalog_and_model()
        known = cache.get("catalog_generation", None)
        if self.stamp is not None:
            # catalog records this answer may use: read under this generation or a later one
            self._generation, model = self.stamp[-2], self.stamp[-1]
            if known is MISSING or known < self._generation:
                cache.put("catalog_generation", None, self._generation)
            self._local[("model_active", None)] = model
        else:
            # records read by this snapshot are at least as new as the newest generation seen so far
            self._generation = -1 if known is MISSING else known
        self._held = held

    @property
    def unchanged(self) -> bool:
        """Whether the stamp read equals ``held``, the stamp of the answer the caller holds (which then
        stands as it is; a snapshot with a user then has no state to compute another from)."""
        return self.stamp is not None and self.stamp == self._held

    @property
    def user(self) -> UserState | None:
        """The user's state from trip 1, decayed to ``now`` (parsed on first use; None: no user)."""
        if self._user is None and self.reply is not None:
            self._user = self.reply.state(self.now, self.reader.scoring.preference_halflife_ms)
        return self._user

    @property
    def complete(self) -> bool:
        """Whether the last computation had every read it asked for."""
        return not self._pending

    def get(self, kind: str, key: Hashable) -> Any:
        """The value of ``(kind, key)`` this snapshot read, else the cache's (``MISSING`` when neither has it)."""
        value = self._local.get((kind, key), MISSING)
        return self.cache.get(kind, key) if value is MISSING else value

    def put(
        self, kind: str, key: Hashable, value: Any, read_at: float | None = None, deps: tuple[str, ...] = ()
    ) -> None:
        """Keep a value for this snapshot and, if the cache keeps ``kind``, for later answers (``read_at``,
        ``deps``: see ``Cache.put``; tagged with this snapshot's ``tag``)."""
        self._local[(kind, key)] = value
        self.cache.put(kind, key, value, read_at, tag=self.tag, deps=deps)

    def _depends(self, items: Iterable[str]) -> None:
        """The answer depends on ``items``; noted only when the cache follows a change feed (``tag``), the
        one reader of ``deps``, so an answer without one does no bookkeeping."""
        if self.tag is not None:
            self.deps.update(items)

    def _fresh_for(self, read_at: float) -> None:
        """The answer uses a value no item change announces, read at ``read_at`` (the cache's clock)."""
        until = read_at + self.cache.fresh_within_s
        if self.fresh_until is None or until < self.fresh_until:
            self.fresh_until = until

    def memo(self, kind: str, key: Hashable, read: Callable[[], Any]) -> Any:
        """The cached value of ``(kind, key)``, or ``read()`` (its own round trips), kept for next time."""
        value = self.get(kind, key)
        if value is MISSING:
            value = read()
            self.put(kind, key, value)
        return value

    def term_items(self, terms: Sequence[str], n: int) -> dict[str, dict[str, float]]:
        """For each search term (in order), the top ``n`` items acted on after it; never from the cache."""
        out = {}
        for term in terms:
            items = self._local.get(("terms", term), MISSING)
            if items is MISSING:
                self._pending.terms[term] = n
            elif items:
                out[term] = items
                self._fresh_for(self._terms_read_at)
        return out

    def neighbours(self, anchors: Sequence[str]) -> dict[str, dict[str, float]]:
        """Each anchor's stored neighbours (all of them: the list is bounded) normalised by popularity
        (``scoring.normalised_log_neighbours``), without neighbours that have no activity left.

        Without shrinkage a normalised value does not depend on the time it is computed at (numerator and
        denominators decay alike); the shrinkage's pseudo-interactions do not decay, so a cached list drifts
        by the decay over the cache's staleness (a second against half-lives of days) besides the activity
        that arrived since it was read. A list is kept in the cache as read when its oldest count was, so
        it is never staler than the neighbours' bound (``STREAMREC_API_CACHE_NEIGHBOURS_TTL_MS``); the
        counts it is derived from were read within ``DERIVE_WITHIN`` of that bound (older ones are read
        again), so it stays in the cache for at least the rest of it. ``read_at`` becomes the time the
        oldest list used was read.

        An anchor whose list is read again (it left the cache) has its last list's neighbours' counts read
        in the same trip as the list: they are the ones normalising the new list needs, but for neighbours
        that came since (read in one more trip).
        """
        s = self.reader.scoring
        n = s.neighbours_max + s.neighbours_slack
        local = self._local
        held = self.cache.held("neighbours", [a for a in anchors if ("neighbours", a) not in local])
        unread = [a for a in anchors if a not in held and ("neighbours", a) not in local]
        last = self.cache.last_known("neighbours", unread) if unread else {}
        out: dict[str, dict[str, float]] = {}
        for anchor in anchors:
            out[anchor] = {}
            # kept as (normalised list, the items it depends on: the anchor and every stored neighbour)
            kept = local.get(("neighbours", anchor), MISSING)
            if kept is MISSING and (entry := held.get(anchor)) is not None:
                kept = entry[1]
                self._read(entry[0])
            if kept is not MISSING:
                normalised, deps = kept[0], kept[1]
                self._depends(deps)
            else:
                raw = local.get(("raw", anchor), MISSING)
                hint = last.get(anchor)
                if raw is MISSING and hint is not None and self.cache.records_unchanged(hint[3], (anchor,)):
                    # only counts moved since the list was read (the feed says so): normalised again from
                    # the list kept, with the counts the feed keeps current, without reading it again
                    raw = dict(zip(hint[1][1:], hint[2], strict=True))
                    local[("raw", anchor)] = raw
                    self._raw_tags[anchor] = hint[3]
                if raw is MISSING:
                    self._pending.neighbours[anchor] = n
                    # read with the list: the anchor's own count and its last list's neighbours'
                    self._counts([anchor, *(hint[1][1:] if hint else ())])
                    continue
                counts, oldest = self._counts([anchor, *raw])
                if counts is None:
                    continue
                normalised = normalised_log_neighbours(
                    raw,
                    counts,
                    anchor,
                    self.now,
                    s.cooc_halflife_ms,
                    s.popularity_alpha,
                    s.neighbour_shrinkage,
                )
                # as stale as its oldest count (some may have come from the cache): kept from then on,
                # with the list as read (weights in the order of ``deps[1:]``) and the tag it was read
                # under, to be normalised again when only counts move (``records_unchanged``)
                deps = (anchor, *raw)
                kept = (normalised, deps, array("d", raw.values()), self._raw_tags.get(anchor, self.tag))
                self.put("neighbours", anchor, kept, oldest, deps)
                self._depends(deps)
                if oldest is not None:
                    self._read(oldest)
            out[anchor] = normalised
        return out

    def _read(self, at: float) -> None:
        """Note that this answer uses a value read at ``at`` (the cache's clock)."""
        if self.read_at is None or at < self.read_at:
            self.read_at = at

    def _counts(self, items: Sequence[str]) -> tuple[dict[str, float | None] | None, float | None]:
        """The log-space counts of ``items`` (None: no activity) and when the oldest that came from the
        cache was read; ``(None, None)`` when some are not known yet (they are pending)."""
        read, held = self._read_counts, self._held_counts
        unknown = [i for i in items if i not in read and i not in held]
        if unknown:
            held.update(self.cache.held("counts", unknown, DERIVE_WITHIN))
        counts: dict[str, float | None] = {}
        oldest: float | None = None
        complete = True
        for item in items:
            if item in read:
                counts[item] = read[item]
            elif (entry := held.get(item)) is not None:
                counts[item] = entry[1]
                if oldest is None or entry[0] < oldest:
                    oldest = entry[0]
            else:
                self._pending.counts[item] = None
                complete = False
        return (counts, oldest) if complete else (None, None)

    def catalog(self, items: Iterable[str]) -> dict[str, dict[str, str]]:
        """The ``ANSWER_FIELDS`` of each item's catalog record; items without a record are left out. A
        stamped snapshot uses only records read under its catalog generation or a later one (of any age
        the cache keeps: a record does not change within a generation); one without a stamp only records
        it read itself or the cache read within its general bound (``Cache.catalog_within``)."""
        items = list(items)
        self._depends(items)
        if self.stamp is None:
            # no generation to check: a record this snapshot read, or one read within the general bound
            floor = -1
            unread = [i for i in items if ("catalog", i) not in self._local]
            held = self.cache.held("catalog", unread, self.cache.catalog_within) if unread else {}
            entries = {
                i: self._local.get(("catalog", i), held[i][1] if i in held else MISSING) for i in items
            }
        else:
            floor = self._generation  # records read under this snapshot's generation or a later one
            entries = {i: self.get("catalog", i) for i in items}
        out = {}
        for item, entry in entries.items():
            if entry is MISSING or entry[0] < floor:
                self._pending.catalog[item] = None
            elif entry[1] is not None:
                out[item] = entry[1]
        return out

    def expect_catalog(self, items: Iterable[str]) -> None:
        """Items whose catalog records the answer will likely show (the last answer's): those this
        snapshot may not use yet are read with its next trip, with the lists it ranks from, instead of in
        one more trip after ranking."""
        self.catalog(items)

    def popular(self, n: int, category: str | None = None, offset: int = 0) -> list[tuple[str, float]]:
        """Rows ``offset .. offset + n - 1`` of the popularity list (overall or of ``category``), decayed to
        now, as ``StateReader.popular``; read as the list's top power-of-two rows, shared by every page in it."""
        top = max(POPULAR_TOP_MIN, 1 << max(offset + n - 1, 1).bit_length())
        key = (category, top)
        rows = self._local.get(("popular", key), MISSING)
        if rows is MISSING and (entry := self.cache.held("popular", [key]).get(key)) is not None:
            read_at, rows = entry
            self._fresh_for(read_at)
        elif rows is not MISSING:
            self._fresh_for(self._fetched_at)
        if rows is MISSING:
            self._pending.popular[key] = None
            return []
        hl = self.reader.scoring.popularity_halflife_ms
        return [(item, decayed_value(w, self.now, hl)) for item, w in rows[offset : offset + n]]

    def fetch(self) -> None:
        """Read everything pending in one pipelined trip (plus the user's version)."""
        reads, self._pending = self._pending, Reads()
        started = self.cache.now()
        got = self.reader.read(reads, self.user_id if self.reply is not None else None)
        self.trips += 1
        if got.terms:
            self._terms_read_at = started
        if got.popular:
            self._fetched_at = started
        for term, items in got.terms.items():
            self._local[("terms", term)] = items
        for item, raw in got.neighbours.items():
            self._local[("raw", item)] = raw
        for item, count in got.counts.items():
            self._read_counts[item] = count
            self.cache.put("counts", item, count, tag=self.tag, deps=(item,))
        for item, record in got.catalog.items():
            self.put("catalog", item, (self._generation, record), deps=(item,))
        for key, rows in got.popular.items():
            self.put("popular", key, rows)
        if self.strict and self.reply is not None and got.version != self.reply.version:
            raise SnapshotMoved(f"user {self.user_id!r}: version {self.reply.version} -> {got.version}")
