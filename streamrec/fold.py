"""Folding events and catalog records into Redis: the script's arguments, and the schedules that run it.

``fold.lua`` holds every stage of a fold (docs/STATE.md). On one Redis a batch is **one call** of the
``all`` mode (events) or the ``catalog`` mode (catalog records): atomic, one round trip, exactly as
before the layout was split into groups. On a Redis Cluster a script may touch only one hash slot, so the
same stages run as separate calls, one per slot: user → item → copies (and trims) → stats → ack, each
exactly-once per slot through that slot's offset watermark.

A schedule is written once, as a generator that yields the calls of a stage and receives their replies
(``Plan``); ``StateWriter`` drives it with blocking calls, ``AsyncStateWriter`` with concurrent ones.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import orjson
import redis
import redis.asyncio

from streamrec.contract import DEFAULT_MAX_FUTURE_SKEW_MS, CatalogItem, Event, ItemDeletion, UserErasure
from streamrec.event_types import EventType
from streamrec.keys import Keys, slot
from streamrec.scoring import decay_rate, search_terms
from streamrec.settings import ScoringSettings

APPLIED, DUPLICATE, ERASED = "applied", "duplicate", "erased"
_OUTCOME = {0: APPLIED, 1: DUPLICATE, 2: ERASED}


@cache
def _script() -> str:
    return resources.files("streamrec").joinpath("fold.lua").read_text(encoding="utf-8")


def script_config(
    keys: Keys, s: ScoringSettings, max_future_skew_ms: int = DEFAULT_MAX_FUTURE_SKEW_MS
) -> bytes:
    """The script's configuration argument (JSON): key templates, weights, rates (per ms), bounds, TTLs."""
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
            "shrink": max(s.neighbour_shrinkage, 0.0),
            "pref_rate": decay_rate(s.preference_halflife_ms),
            "pref_max": s.preference_max,
            "bought_max": s.purchases_max,
            "pop_rate": decay_rate(s.popularity_halflife_ms),
            "trend_rate": decay_rate(s.trending_halflife_ms),
            "cooc_rate": decay_rate(s.cooc_halflife_ms),
            "shard_max": math.ceil(s.popular_max / keys.shards),
            "forget_log": math.log(s.forget_below),
            "searches_max": s.searches_max,
            "search_window": s.search_window_ms,
            "term_max": s.term_items_max,
            "user_ttl": s.user_ttl_s,
            "term_ttl": s.term_ttl_s,
            "item_ttl": s.item_ttl_s,
            "dedupe_window": s.dedupe_window_s * 1000,
            "dedupe_window_s": s.dedupe_window_s,
            "outbox_ttl": s.outbox_ttl_s,
            "max_skew": max_future_skew_ms,
        }
    )


@dataclass(frozen=True)
class Source:
    """Where a record came from: its Kafka partition and offset (the watermarks' unit)."""

    partition: int
    offset: int


@dataclass(frozen=True)
class Refused:
    """The script refused this event on its own merits; ``reason`` is for the dead letter."""

    reason: str


Outcome = str | Refused


@dataclass(frozen=True)
class FoldResult:
    """What happened to each event of a batch, in input order: applied, duplicate, erased or ``Refused``."""

    outcomes: list[Outcome]
    ids: list[str] = field(default_factory=list)

    @property
    def applied(self) -> int:
        """Events whose effects were folded in by this call."""
        return sum(1 for o in self.outcomes if o == APPLIED)

    @property
    def duplicates(self) -> int:
        """Events already folded before (redelivered, or a client's retry within the dedupe window)."""
        return sum(1 for o in self.outcomes if o == DUPLICATE)

    @property
    def erased(self) -> int:
        """Events of users erased after the event: refused without a dead letter."""
        return sum(1 for o in self.outcomes if o == ERASED)

    def refused(self) -> dict[int, str]:
        """Position in the batch -> the script's reason, for every event it refused."""
        return {n: o.reason for n, o in enumerate(self.outcomes) if isinstance(o, Refused)}


ApplyResult = FoldResult  # the name callers used before per-event outcomes


def _outcome(raw: Any) -> Outcome:
    if isinstance(raw, str):
        return Refused(raw)
    return _OUTCOME[int(raw)]


def encode_event(e: Event | UserErasure, source: Source | None, keys: Keys) -> dict[str, Any]:
    """One event as the script reads it: only what it needs, search queries as terms."""
    src = source or Source(-1, -1)
    if isinstance(e, UserErasure):
        return {"id": e.erasure_id, "type": "erase", "user": e.user_id, "ts": e.ts, "p": src.partition,
                "o": src.offset}  # fmt: skip
    row: dict[str, Any] = {
        "id": e.event_id,
        "type": e.type.value,
        "user": e.user_id,
        "ts": e.ts,
        "p": src.partition,
        "o": src.offset,
    }
    if e.type is EventType.SEARCH:
        row["terms"] = search_terms(e.query or "")
    else:
        row["item"] = e.item_id
        row["s"] = keys.shard(e.item_id or "")
    return row


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


def encode_record(r: CatalogItem | ItemDeletion, keys: Keys, offset: int = -1) -> dict[str, Any]:
    """One catalog record (upsert or deletion) as the script reads it; ``offset`` is its offset in its
    partition of the items topic (-1: none, e.g. records folded without Kafka)."""
    if isinstance(r, ItemDeletion):
        return {"id": r.item_id, "ts": r.ts, "s": keys.shard(r.item_id), "o": offset, "deleted": True}
    return {"id": r.item_id, "ts": r.ts, "s": keys.shard(r.item_id), "o": offset, "fields": catalog_fields(r)}


# ------------------------------------------------------------------------------------------ schedules


@dataclass(frozen=True)
class Call:
    """One request of a stage: a script call in ``mode`` on ``keys`` (one slot on a cluster), or, with
    ``mode`` "hget", a plain ``HGET key field`` of ``keys[0]``, or with "incr" a plain ``INCR keys[0]``."""

    mode: str
    keys: list[str]
    payload: Any


Plan = Generator[list[Call], list[Any], FoldResult | int]


def _by_partition(rows: list[dict[str, Any]]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for n, row in enumerate(rows):
        groups[row["p"]].append(n)
    return groups


def standalone_events(rows: list[dict[str, Any]], wall: int) -> Plan:
    """One Redis: one ``all`` call per source partition in the batch (usually one)."""
    groups = _by_partition(rows)
    parts = sorted(groups)
    replies = yield [
        Call("all", [], {"wall": wall, "p": p, "events": [rows[n] for n in groups[p]]}) for p in parts
    ]
    outcomes: list[Outcome] = [APPLIED] * len(rows)
    for p, reply in zip(parts, replies, strict=True):
        for n, raw in zip(groups[p], orjson.loads(reply), strict=True):
            outcomes[n] = _outcome(raw)
    return FoldResult(outcomes, [r["id"] for r in rows])


def _op_target(keys: Keys, op: list[Any]) -> tuple[int, list[str]]:
    """The slot an item-stage effect lands in, and the keys it touches there."""
    kind = op[0]
    if kind == "occ":
        return slot(keys.activity(op[1])), keys.item_keys(op[1])
    if kind == "nb":
        return slot(keys.neighbours(op[1])), [keys.catalog(op[1]), keys.neighbours(op[1])]
    return slot(keys.term(op[1])), [keys.term(op[1])]


def _copy_keys(keys: Keys, copy: list[Any]) -> list[str]:
    scope = copy[4]
    category = scope[2:] if scope else None
    return [keys.popular(copy[1], category), keys.trending(copy[1], category)]


def _grouped(pairs: Iterable[tuple[int, list[str], Any]]) -> list[tuple[list[str], list[Any]]]:
    """Group (slot, keys, item) by slot, in first-seen order; keys deduplicated, items in order."""
    groups: dict[int, tuple[dict[str, None], list[Any]]] = {}
    for s, ks, item in pairs:
        declared, items = groups.setdefault(s, ({}, []))
        declared.update(dict.fromkeys(ks))
        items.append(item)
    return [(list(declared), items) for declared, items in groups.values()]


def _copy_calls(keys: Keys, copies: list[list[Any]]) -> list[Call]:
    def pairs() -> Iterable[tuple[int, list[str], Any]]:
        for c in copies:
            ks = _copy_keys(keys, c)
            yield slot(ks[0]), ks, c

    return [Call("copies", ks, {"copies": cs}) for ks, cs in _grouped(pairs())]


def cluster_events(keys: Keys, rows: list[dict[str, Any]], wall: int) -> Plan:
    """Redis Cluster: the stages of docs/STATE.md, one call per slot each, partition by partition."""
    outcomes: list[Outcome] = [APPLIED] * len(rows)
    for p, positions in sorted(_by_partition(rows).items()):
        # user stage: one call per slot of users
        by_slot: dict[int, list[int]] = defaultdict(list)
        for n in positions:
            by_slot[slot(keys.history(rows[n]["user"]))].append(n)
        slots = list(by_slot)
        calls = []
        for s in slots:
            users = list(dict.fromkeys(rows[n]["user"] for n in by_slot[s]))
            wm = keys.slot_watermark(s)
            calls.append(
                Call(
                    "user",
                    [wm, *(k for u in users for k in keys.user_keys(u))],
                    {"wall": wall, "wm": wm, "p": p, "events": [rows[n] for n in by_slot[s]]},
                )
            )
        replies = yield calls
        effects: list[list[Any]] = []
        for s, reply in zip(slots, replies, strict=True):
            raw_outcomes, ops = orjson.loads(reply)
            for n, raw in zip(by_slot[s], raw_outcomes, strict=True):
                outcomes[n] = _outcome(raw)
            effects.extend(ops if isinstance(ops, list) else [])
        effects.sort(key=lambda op: op[-1])  # offset order, stable within one event
        # item stage: occurrences, neighbour increments, term credits, one call per slot
        item_calls = []
        for declared, ops in _grouped((s, ks, op) for op in effects for s, ks in [_op_target(keys, op)]):
            s = slot(declared[0])
            wm = keys.slot_watermark(s)
            item_calls.append(Call("item", [wm, *declared], {"wm": wm, "p": p, "ops": ops}))
        replies = yield item_calls
        copies: list[list[Any]] = []
        overfull: list[tuple[str, list[str]]] = []
        for reply in replies:
            made, full = orjson.loads(reply)
            copies.extend(made if isinstance(made, list) else [])
            overfull.extend((a, m) for a, m in (full if isinstance(full, list) else []))
        # copies into the sharded lists, and the counts an over-full neighbour list is trimmed by
        members = sorted({m for _, ms in overfull for m in ms})
        reads = [Call("hget", [keys.activity(m)], "n") for m in members]
        replies = yield _copy_calls(keys, copies) + reads
        counts = dict(zip(members, replies[len(replies) - len(reads) :], strict=True))
        trims = []
        for declared, lists in _grouped(
            (
                slot(keys.neighbours(a)),
                [keys.neighbours(a)],
                [a, {m: float(counts[m]) for m in ms if counts[m] is not None}],
            )
            for a, ms in overfull
        ):
            trims.append(Call("trim", declared, {"now": wall, "lists": lists}))
        # stats exactly once per event: only what changed the state (a replay leaves the stats as they
        # were), each offset counted once even when a redelivered batch straddles one counted before
        applied = [[rows[n]["o"], f"applied:{rows[n]['type']}"] for n in positions if outcomes[n] == APPLIED]
        last = max(rows[n]["o"] for n in positions)
        stats_key = keys.stats("ev", max(p, 0))
        yield [*trims, Call("stats", [stats_key], {"key": stats_key, "p": p, "o": last, "applied": applied})]
        # then the user stage's outbox entries are acknowledged: while an entry lives, a redelivered
        # event is re-emitted and counted as applied (so an ack must never precede the stats it feeds)
        if p >= 0:
            yield [
                Call(
                    "ack",
                    [keys.outbox(u) for u in dict.fromkeys(rows[n]["user"] for n in by_slot[s])],
                    {"entries": [[rows[n]["user"], f"{p}:{rows[n]['o']}"] for n in by_slot[s]]},
                )
                for s in slots
            ]
    return FoldResult(outcomes, [r["id"] for r in rows])


def standalone_catalog(records: list[dict[str, Any]], partition: int, wall: int) -> Plan:
    """One Redis: a batch of catalog records in one ``catalog`` call."""
    replies = yield [Call("catalog", [], {"wall": wall, "p": partition, "records": records})]
    return int(replies[0])


def cluster_catalog(keys: Keys, records: list[dict[str, Any]], partition: int, wall: int) -> Plan:
    """Redis Cluster: each item's slot folds its records, then the copies they move and the catalog-size
    counter, then each slot drops the outbox fields that carried them (``cack``).

    Exactly once per record offset: a batch cut after any step and delivered again (a worker killed
    between two calls) counts each created or deleted item once and moves its copies, because ``citem``
    keeps each record's count change and moves in its slot until ``cack``, and ``stats`` adds an offset's
    change only past its partition's mark. Records without an offset (-1) are counted as they come.
    """
    groups = _grouped((slot(keys.catalog(r["id"])), keys.item_keys(r["id"]), r) for r in records)
    calls = []
    for ks, rs in groups:
        wm = keys.slot_watermark(slot(ks[0]))
        calls.append(Call("citem", [wm, *ks], {"wall": wall, "wm": wm, "p": partition, "records": rs}))
    replies = yield calls
    moves: list[list[Any]] = []
    counted: list[list[Any]] = []
    for reply in replies:
        made, count = orjson.loads(reply)
        moves.extend(made if isinstance(made, list) else [])  # cjson writes an empty table as {}
        counted.extend(count if isinstance(count, list) else [])
    key = keys.stats("it", max(partition, 0))
    last = max((int(r["o"]) for r in records), default=-1)
    # the catalog generation moves once the records are written (on every attempt: a batch delivered again
    # moves it again, which only makes cached answers be computed again)
    yield [
        *_copy_calls(keys, moves),
        Call("stats", [key], {"key": key, "p": partition, "o": last, "counts": {}, "applied": counted}),
        Call("incr", [keys.catalog_generation()], None),
    ]
    acks = [
        Call("cack", [call.keys[0]], {"wm": call.keys[0], "fields": fields})
        for call in calls
        if (fields := [f"co:{partition}:{r['o']}" for r in call.payload["records"] if r["o"] >= 0])
    ]
    if acks:
        yield acks
    return len(records)


# -------------------------------------------------------------------------------------------- writers


class _Writer:
    """What both writers share: the script's arguments and the choice of schedule."""

    def __init__(
        self,
        keys: Keys,
        scoring: ScoringSettings,
        cluster: bool = False,
        max_future_skew_ms: int = DEFAULT_MAX_FUTURE_SKEW_MS,
    ) -> None:
        self.keys = keys
        self.cluster = cluster
        self._config = script_config(keys, scoring, max_future_skew_ms)

    def events_plan(
        self, events: Sequence[Event | UserErasure], sources: Sequence[Source | None] | None
    ) -> Plan:
        """The schedule that folds ``events`` (their sources give partitions and offsets, if any)."""
        srcs = list(sources) if sources is not None else [None] * len(events)
        rows = [encode_event(e, s, self.keys) for e, s in zip(events, srcs, strict=True)]
        wall = int(time.time() * 1000)
        return cluster_events(self.keys, rows, wall) if self.cluster else standalone_events(rows, wall)

    def catalog_plan(
        self,
        items: Sequence[CatalogItem | ItemDeletion],
        partition: int,
        offsets: Sequence[int] | None = None,
    ) -> Plan:
        """The schedule that folds catalog records (upserts and deletions); ``offsets``, one per record,
        are their offsets in ``partition`` of the items topic (what makes a cluster's catalog stage
        exactly-once; see ``cluster_catalog``)."""
        offs = list(offsets) if offsets is not None else [-1] * len(items)
        records = [encode_record(r, self.keys, o) for r, o in zip(items, offs, strict=True)]
        wall = int(time.time() * 1000)
        if self.cluster:
            return cluster_catalog(self.keys, records, partition, wall)
        return standalone_catalog(records, partition, wall)

    def args(self, call: Call) -> list[bytes | str]:
        """The script's ARGV for one call."""
        return [self._config, call.mode, orjson.dumps(call.payload)]


class StateWriter(_Writer):
    """Blocking writer, for tests, offline evaluation and the trainer (same script and schedules as the
    worker). ``client`` is a ``redis.Redis`` or, with ``cluster=True``, a ``redis.cluster.RedisCluster``.
    Redis errors propagate (``redis.exceptions.RedisError``)."""

    def __init__(
        self,
        client: Any,
        keys: Keys,
        scoring: ScoringSettings,
        cluster: bool = False,
        max_future_skew_ms: int = DEFAULT_MAX_FUTURE_SKEW_MS,
    ) -> None:
        super().__init__(keys, scoring, cluster, max_future_skew_ms)
        self.client = client
        self._script = client.register_script(_script())

    def _run(self, plan: Plan) -> Any:
        replies: list[Any] | None = None
        try:
            while True:
                calls = plan.send(replies) if replies is not None else next(plan)
                replies = [self._one(call) for call in calls]
        except StopIteration as done:
            return done.value

    def _one(self, call: Call) -> Any:
        if call.mode == "hget":
            return self.client.hget(call.keys[0], call.payload)
        if call.mode == "incr":
            return self.client.incr(call.keys[0])
        return self._script(keys=call.keys, args=self.args(call))

    def apply(
        self, events: Sequence[Event | UserErasure], sources: Sequence[Source | None] | None = None
    ) -> FoldResult:
        """Fold a batch of events; each event's outcome is in the result (nothing raised for one event)."""
        if not events:
            return FoldResult([])
        result = self._run(self.events_plan(events, sources))
        assert isinstance(result, FoldResult)
        return result

    def upsert_items(
        self,
        items: Sequence[CatalogItem | ItemDeletion],
        partition: int = 0,
        offsets: Sequence[int] | None = None,
    ) -> int:
        """Fold catalog records (``offsets``: theirs in ``partition``, if they came from Kafka); returns how
        many were written (older records than the stored ones lose)."""
        if not items:
            return 0
        return int(self._run(self.catalog_plan(items, partition, offsets)))


class AsyncStateWriter(_Writer):
    """The worker's writer, on ``redis.asyncio`` (a ``RedisCluster`` with ``cluster=True``): a stage's calls
    run concurrently, at most ``max_in_flight`` at once over every batch this writer folds (a stage of a
    500-event batch on a cluster has hundreds of calls; redis-py's cluster client refuses more than 100
    connections per node with ``MaxConnectionsError``). Redis errors propagate; the worker classifies and
    retries them."""

    def __init__(
        self,
        client: Any,
        keys: Keys,
        scoring: ScoringSettings,
        cluster: bool = False,
        max_future_skew_ms: int = DEFAULT_MAX_FUTURE_SKEW_MS,
        max_in_flight: int = 32,
    ) -> None:
        super().__init__(keys, scoring, cluster, max_future_skew_ms)
        self.client = client
        self._script = client.register_script(_script())
        self._in_flight = asyncio.Semaphore(max_in_flight)

    async def _run(self, plan: Plan) -> Any:
        replies: list[Any] | None = None
        try:
            while True:
                calls = plan.send(replies) if replies is not None else next(plan)
                if len(calls) == 1:
                    replies = [await self._one(calls[0])]
                else:
                    replies = list(await asyncio.gather(*(self._one(c) for c in calls)))
        except StopIteration as done:
            return done.value

    async def _one(self, call: Call) -> Any:
        async with self._in_flight:
            if call.mode == "hget":
                return await self.client.hget(call.keys[0], call.payload)
            if call.mode == "incr":
                return await self.client.incr(call.keys[0])
            return await self._script(keys=call.keys, args=self.args(call))

    async def apply(
        self, events: Sequence[Event | UserErasure], sources: Sequence[Source | None] | None = None
    ) -> FoldResult:
        """Fold a batch of events; each event's outcome is in the result."""
        if not events:
            return FoldResult([])
        result = await self._run(self.events_plan(events, sources))
        assert isinstance(result, FoldResult)
        return result

    async def upsert_items(
        self,
        items: Sequence[CatalogItem | ItemDeletion],
        partition: int = 0,
        offsets: Sequence[int] | None = None,
    ) -> int:
        """Fold catalog records (``offsets``: theirs in ``partition``); returns how many were written."""
        if not items:
            return 0
        return int(await self._run(self.catalog_plan(items, partition, offsets)))


def redis_client(url: str, cluster: bool, **options: Any) -> Any:
    """A blocking client for ``url``: ``redis.Redis``, or ``RedisCluster`` (any one node's URL).

    One Redis is spoken to in RESP2 unless ``options`` say ``protocol``. redis-py 8 defaults to RESP3 and
    then turns each reply back into the RESP2 shapes in Python: every score of a ``ZRANGE … WITHSCORES``
    is parsed as a double by hiredis, formatted back to bytes and parsed again. On RESP2 hiredis hands the
    scores over as bytes and one ``float`` each makes them numbers; the Python values are the same. That
    conversion was about a tenth of a personal answer's CPU in the API (issue 15; both protocols measured
    interleaved in one process on the same state). A cluster keeps redis-py's default: on RESP2, redis-py
    8.1's cluster ``MULTI`` pipeline returns ``ZRANGE … WITHSCORES`` as a flat list, unpaired
    (``tests/e2e/test_cluster.py`` caught it when a user's state was read in a ``MULTI``; it is a script
    now, but other pipelines are not checked on RESP2).
    """
    if cluster:
        return redis.cluster.RedisCluster.from_url(url, **options)
    options.setdefault("protocol", 2)
    return redis.Redis.from_url(url, **options)


class _AsyncCluster(redis.asyncio.cluster.RedisCluster):
    """redis-py's asyncio ``RedisCluster`` (8.1) made safe for the concurrent calls of a stage.

    That client tears connections down under commands in flight when several commands meet its
    (re)initialisation, which it does on first use and after every connection error, MOVED burst or
    CLUSTERDOWN: they fail with ``AttributeError: 'NoneType' object has no attribute 'writelines'``, on
    every retry of a wide stage. So while it (re)learns the cluster's layout, commands go through one at a
    time; and a connection torn down under a command anyway (a topology change while commands are in
    flight) is raised as the ``ConnectionError`` it is, which the worker waits out and retries (the
    stages' watermarks make a retried call harmless) instead of taking it for a refusal of the batch.
    """

    _learning: asyncio.Lock | None = None

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            if self._initialize:
                if self._learning is None:
                    self._learning = asyncio.Lock()
                async with self._learning:
                    return await super().execute_command(*args, **kwargs)
            return await super().execute_command(*args, **kwargs)
        except AttributeError as exc:
            raise redis.exceptions.ConnectionError(f"connection closed under a command: {exc}") from exc


def async_redis_client(url: str, cluster: bool, **options: Any) -> Any:
    """An asyncio client for ``url``: ``redis.asyncio.Redis``, or its ``RedisCluster`` (see ``_AsyncCluster``)."""
    if cluster:
        return _AsyncCluster.from_url(url, **options)
    return redis.asyncio.Redis.from_url(url, **options)
