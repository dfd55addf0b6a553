"""Experiments in Redis: their documents, who was exposed to which variant, and what was credited to it.

Keys (``streamrec.keys``, docs/STATE.md):

- ``{xp}``: every experiment's document (``docs`` HASH, at most ``MAX_EXPERIMENTS``), a version counter
  and the run counter, in one slot, so a change and its version bump are one script; API processes keep
  compiled copies (``ExperimentCache``, current within 250 ms like placements).
- ``{x:<name>}``: one experiment's config for the worker (its run and weighted variants), its counts
  HASH, per variant the exposed shoppers (a SET of 64-bit digests, ``experiments.shopper_digest``) and the
  buyers (a HASH digest -> attributed revenue), and the ids of the events credited (a ZSET pruned to the
  dedupe window). One slot: exposure and credit are each one script, on one Redis and on a cluster.

Who writes what:

- the API records exposures (``Exposures``): each answer inside a running experiment adds its shopper to
  the variant's set and counts one answer. Writes are gathered per process and sent every
  ``FLUSH_EVERY_S`` (200 ms), one script call per experiment, by a background thread, so an answer does not
  wait for them; a process stopped by SIGKILL loses at most its last 200 ms of exposure counts.
- the worker credits events (``ExperimentCredits``): a view, add_to_cart or purchase that cites an
  answer's recommendation_id of a variant is credited to it once (the event id is claimed in the same
  script), if the experiment of that run still exists and the event's shopper is in that variant under
  the experiment's weights (the script computes the assignment itself: ``redis.sha1hex``). It also adds
  the shopper to the variant's exposed set, so converted shoppers are always a subset of exposed ones.

Bounded: at most ``MAX_EXPERIMENTS`` experiments, each with sets that grow with its distinct shoppers
(measured by ``streamrec bench --experiments``: about 60 bytes per exposed shopper) and a credited-event
ZSET of one dedupe window. Everything of an experiment leaves with ``DELETE /v1/admin/experiments/{name}``.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from streamrec.contract import Event
from streamrec.event_types import ATTRIBUTED_TYPES
from streamrec.experiment_stats import VariantCounts
from streamrec.experiments import (
    Experiment,
    Variant,
    cited,
    parse_experiment,
    shopper_digest,
)
from streamrec.keys import Keys
from streamrec.placement_store import CHECK_EVERY_S, DocumentCache
from streamrec.placements import PlacementError

log = logging.getLogger("streamrec.experiments")

MAX_EXPERIMENTS = 100
FLUSH_EVERY_S = 0.2
MAX_PENDING = 20_000  # exposures one process holds while Redis cannot take them; beyond, they are dropped
# the attributed types (``event_types.ATTRIBUTED_TYPES``) whose counts the report shows: checked once
COUNTED_TYPES = tuple(t for t in ("view", "add_to_cart", "purchase") if t in ATTRIBUTED_TYPES)

# KEYS: docs, version, runs (one slot). ARGV: name, document, most experiments.
# Returns {created 1/0, new version, run}, or {-1, 0, 0} when full and the name is new.
_PUT = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
local run
if old then
  run = tonumber(string.match(old, '^(%d+)\\t'))
else
  if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return {-1, 0, 0} end
  run = redis.call('INCR', KEYS[3])
end
redis.call('HSET', KEYS[1], ARGV[1], run .. '\\t' .. ARGV[2])
local created = 1
if old then created = 0 end
return {created, redis.call('INCR', KEYS[2]), run}
"""
# KEYS: docs, version. ARGV: name. Returns the new version, or 0 when there was no such experiment.
_DELETE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
return redis.call('INCR', KEYS[2])
"""
# KEYS: config, counts, exposed set of each variant (in ARGV's order). ARGV: run, k, k variant names,
# k answer counts, then "<variant index>\\t<shopper digest>" entries. Returns the shoppers newly exposed,
# or -1 when the experiment of this run is gone (deleted or re-created).
_EXPOSE = """
local raw = redis.call('GET', KEYS[1])
if not raw then return -1 end
local cfg = cjson.decode(raw)
if tostring(cfg.run) ~= ARGV[1] then return -1 end
local known = {}
for _, v in ipairs(cfg.variants) do known[v[1]] = true end
local k = tonumber(ARGV[2])
for i = 1, k do
  local n = tonumber(ARGV[2 + k + i])
  if n > 0 and known[ARGV[2 + i]] then redis.call('HINCRBY', KEYS[2], 'answers:' .. ARGV[2 + i], n) end
end
local added = 0
for j = 3 + 2 * k, #ARGV do
  local tab = string.find(ARGV[j], '\\t', 1, true)
  local i = tonumber(string.sub(ARGV[j], 1, tab - 1))
  if known[ARGV[2 + i]] then
    added = added + redis.call('SADD', KEYS[2 + i], string.sub(ARGV[j], tab + 1))
  end
end
return added
"""
# KEYS: config, counts, credited, watermark, then (exposed, buyers) of each variant named in ARGV.
# ARGV: run, experiment, now ms, window ms, v, v variant names, then 8 fields per event in offset order:
# variant index, shopper id, shopper digest, event id, type, revenue, partition, offset (-1: none).
# Returns per event 1 when credited, -1 when credited before (its offset at or below the partition's
# watermark, or its event id claimed within the window), 0 when it cites no live variant of its shopper.
_CREDIT = """
local out = {}
local raw = redis.call('GET', KEYS[1])
local cfg = raw and cjson.decode(raw)
local live = cfg and tostring(cfg.run) == ARGV[1]
local now, window, v = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if live then redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window) end
local marks = {}
for j = 6 + v, #ARGV, 8 do
  local i, user, digest, id, kind = tonumber(ARGV[j]), ARGV[j + 1], ARGV[j + 2], ARGV[j + 3], ARGV[j + 4]
  local rev, part, offset = tonumber(ARGV[j + 5]), ARGV[j + 6], tonumber(ARGV[j + 7])
  local variant, result = ARGV[5 + i], 0
  if live then
    local best, low = nil, nil
    for _, w in ipairs(cfg.variants) do
      local h = tonumber(string.sub(redis.sha1hex(ARGV[2] .. '\\031' .. w[1] .. '\\031' .. user), 1, 13), 16)
      local s = -math.log((h + 0.5) / 4503599627370496) / w[2]
      if low == nil or s < low then best, low = w[1], s end
    end
    if best == variant then
      if marks[part] == nil then marks[part] = tonumber(redis.call('HGET', KEYS[4], part) or '-1') end
      if offset >= 0 and offset <= marks[part] then
        result = -1
      elseif redis.call('ZADD', KEYS[3], 'NX', now, id) == 0 then
        result = -1
      else
        result = 1
        local exposed, buyers = KEYS[3 + 2 * i], KEYS[4 + 2 * i]
        redis.call('SADD', exposed, digest)
        redis.call('HINCRBY', KEYS[2], kind .. ':' .. variant, 1)
        if kind == 'purchase' then
          local old = tonumber(redis.call('HGET', buyers, digest) or '0')
          redis.call('HINCRBYFLOAT', buyers, digest, rev)
          redis.call('HINCRBYFLOAT', KEYS[2], 'revenue:' .. variant, rev)
          redis.call('HINCRBYFLOAT', KEYS[2], 'revenue_sq:' .. variant, (old + rev) * (old + rev) - old * old)
        end
      end
      if offset > marks[part] then
        marks[part] = offset
        redis.call('HSET', KEYS[4], part, offset)
      end
    end
  end
  out[#out + 1] = result
end
return out
"""


class ExperimentsFull(Exception):
    """The store holds ``MAX_EXPERIMENTS`` experiments already and the name is new."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stored(raw: bytes | str) -> dict[str, Any]:
    run, _, document = _text(raw).partition("\t")
    return {"run": int(run), "document": orjson.loads(document)}


def _config(experiment: Experiment) -> bytes:
    return orjson.dumps(
        {"run": experiment.run, "variants": [[v.name, v.weight] for v in experiment.variants]}
    )


class ExperimentStore:
    """The experiments of one deployment (one key prefix) in Redis.

    ``client`` is a ``redis.Redis`` or a ``redis.cluster.RedisCluster``; Redis errors propagate
    (``redis.exceptions.RedisError``). Documents are validated (``experiments.parse_experiment``) by the
    caller before they are stored, and again when read back.
    """

    def __init__(self, client: Any, keys: Keys, max_experiments: int = MAX_EXPERIMENTS) -> None:
        self.client, self.keys, self.max_experiments = client, keys, max_experiments
        self._put = client.register_script(_PUT)
        self._delete = client.register_script(_DELETE)

    def _doc_keys(self) -> list[str]:
        return [self.keys.experiments(), self.keys.experiments_version(), self.keys.experiment_runs()]

    def put(self, experiment: Experiment) -> tuple[bool, int, Experiment]:
        """Create or replace ``experiment``; returns (created, the new version, the experiment with its
        run). Raises ``ExperimentsFull`` when ``max_experiments`` exist and the name is new.

        The document (slot ``{xp}``) is written first, then the worker's config (slot ``{x:<name>}``): in
        between, at most one round trip long, exposures and credits of a new run are not counted. The
        counts of variants the new document no longer has are deleted."""
        old = self.get(experiment.name)
        document = orjson.dumps(experiment.document())
        created, version, run = self._put(
            keys=self._doc_keys(),
            args=[experiment.name, document, self.max_experiments],
        )
        if created == -1:
            raise ExperimentsFull(
                f"there are {self.max_experiments} experiments already, the most one deployment keeps; "
                "delete one first"
            )
        stored = dataclasses.replace(experiment, run=int(run))
        self.client.set(self.keys.experiment_config(stored.name), _config(stored))
        if old is not None:
            gone = [v.name for v in old.variants if stored.variant(v.name) is None]
            if gone:
                self.client.unlink(*self.keys.experiment_keys(stored.name, gone)[4:])
        return bool(created), int(version), stored

    def get(self, name: str) -> Experiment | None:
        """Experiment ``name`` with its run, or None."""
        raw = self.client.hget(self.keys.experiments(), name)
        if raw is None:
            return None
        stored = _stored(raw)
        return parse_experiment(name, stored["document"], stored["run"])

    def delete(self, name: str) -> bool:
        """Delete experiment ``name`` and every count of it; False when there was none."""
        experiment = self.get(name)
        if experiment is None or not self._delete(keys=self._doc_keys()[:2], args=[name]):
            return False
        self.client.unlink(*self.keys.experiment_keys(name, [v.name for v in experiment.variants]))
        return True

    def all(self) -> dict[str, dict[str, Any]]:
        """Every experiment as stored (``{"run": n, "document": {...}}``) by name, sorted by name."""
        raw = self.client.hgetall(self.keys.experiments())
        return {_text(n): _stored(d) for n, d in sorted(raw.items())}

    def experiments(self) -> list[Experiment]:
        """Every stored experiment, compiled, by name; one the code no longer accepts is logged and left
        out, as ``ExperimentCache`` leaves it out of serving."""
        out = []
        for name, stored in self.all().items():
            try:
                out.append(_compiled(name, stored))
            except PlacementError as exc:
                log.error("stored experiment %r is not valid here and is left out: %s", name, exc)
        return out

    def version(self) -> int:
        """How many changes the experiments have had (0: never changed)."""
        return int(self.client.get(self.keys.experiments_version()) or 0)

    def counts(self, experiment: Experiment) -> list[VariantCounts]:
        """What Redis holds of each variant (in the document's order): one pipelined trip to the
        experiment's slot."""
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(k.experiment_counts(experiment.name))
        for v in experiment.variants:
            pipe.scard(k.experiment_exposed(experiment.name, v.name))
            pipe.hlen(k.experiment_buyers(experiment.name, v.name))
        replies = pipe.execute()
        counts = {_text(f): float(x) for f, x in replies[0].items()}
        out = []
        for i, v in enumerate(experiment.variants):
            c = lambda what, name=v.name: counts.get(f"{what}:{name}", 0.0)  # noqa: E731
            out.append(
                VariantCounts(
                    name=v.name,
                    weight=v.weight,
                    exposed=int(replies[1 + 2 * i]),
                    answers=int(c("answers")),
                    views=int(c("view")),
                    carts=int(c("add_to_cart")),
                    purchases=int(c("purchase")),
                    revenue=c("revenue"),
                    converted=int(replies[2 + 2 * i]),
                    revenue_sq=c("revenue_sq"),
                )
            )
        return out

    def memory_bytes(self, experiment: Experiment) -> int:
        """Redis's own measure (``MEMORY USAGE``, every element sampled) of every key of the experiment."""
        total = 0
        for key in self.keys.experiment_keys(experiment.name, [v.name for v in experiment.variants]):
            total += int(self.client.memory_usage(key, samples=0) or 0)
        return total


def _compiled(name: str, stored: dict[str, Any]) -> Experiment:
    return parse_experiment(name, stored["document"], stored["run"])


class ExperimentCache(DocumentCache[Experiment]):
    """One API process's compiled experiments, current within ``check_every_s`` of a change
    (``DocumentCache``), with each placement's experiment."""

    def __init__(
        self,
        store: ExperimentStore,
        check_every_s: float = CHECK_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._by_placement: dict[str, Experiment] = {}
        super().__init__(store, _compiled, check_every_s, clock)

    def _compiled(self, compiled: dict[str, Experiment]) -> None:
        by_placement: dict[str, Experiment] = {}
        for experiment in sorted(compiled.values(), key=lambda e: (not e.running, e.run)):
            by_placement.setdefault(experiment.placement, experiment)  # a running one first
        self._by_placement = by_placement

    def for_placement(self, placement: str) -> Experiment | None:
        """The experiment on ``placement`` (a running one if there is one), or None."""
        self._refresh()
        return self._by_placement.get(placement)


@dataclass
class _Pending:
    experiment: Experiment
    answers: dict[str, int] = field(default_factory=dict)
    shoppers: set[tuple[str, str]] = field(default_factory=set)  # (variant, digest)

    def size(self) -> int:
        return len(self.shoppers)


class Exposures:
    """One API process's exposure writes, gathered and sent every ``flush_every_s`` by a daemon thread
    (started by the first ``record``, so after gunicorn's fork) and at exit.

    While Redis does not take them they are kept, up to ``max_pending`` shoppers; beyond that the oldest
    experiment's are dropped and logged (requests then fail on Redis anyway). Thread-safe."""

    def __init__(
        self,
        client: Any,
        keys: Keys,
        flush_every_s: float = FLUSH_EVERY_S,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.client, self.keys = client, keys
        self.flush_every_s, self.max_pending = flush_every_s, max_pending
        self._expose = client.register_script(_EXPOSE)
        self._pending: dict[tuple[str, int], _Pending] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.dropped = 0

    def record(self, experiment: Experiment, variant: Variant, shopper: str) -> None:
        """Count one answer of ``variant`` shown to ``shopper`` (sent within ``flush_every_s``)."""
        digest = shopper_digest(shopper)
        with self._lock:
            pending = self._pending.get((experiment.name, experiment.run))
            if pending is None:
                pending = self._pending[(experiment.name, experiment.run)] = _Pending(experiment)
            pending.answers[variant.name] = pending.answers.get(variant.name, 0) + 1
            pending.shoppers.add((variant.name, digest))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="streamrec-exposures", daemon=True)
                self._thread.start()
                atexit.register(self._last_flush)

    def _last_flush(self) -> None:
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001 - at exit there is no one to raise to
            log.warning("the last experiment exposures were not sent at exit: %s", exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_every_s):
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any one failure
                # one line, no traceback: formatting one parses source (ast) in this thread, which CPython
                # 3.11 does not allow while another thread parses (werkzeug compiling a URL rule)
                log.warning("experiment exposures not sent (%s); kept for the next try", exc)

    def close(self) -> None:
        """Stop the sending thread (what is still gathered is sent by ``flush``, or at exit)."""
        self._stop.set()

    def flush(self) -> int:
        """Send every gathered exposure now; returns the shoppers newly exposed. Redis errors propagate
        after the unsent exposures are put back."""
        with self._lock:
            pending, self._pending = self._pending, {}
        added = 0
        items = list(pending.items())
        for n, (_key, p) in enumerate(items):
            try:
                added += max(self._send(p), 0)
            except Exception:
                self._put_back(dict(items[n:]))
                raise
        return added

    def _send(self, p: _Pending) -> int:
        e = p.experiment
        names = [v.name for v in e.variants]
        index = {name: i for i, name in enumerate(names, start=1)}
        keys = [self.keys.experiment_config(e.name), self.keys.experiment_counts(e.name)]
        keys += [self.keys.experiment_exposed(e.name, name) for name in names]
        args: list[Any] = [e.run, len(names), *names, *(p.answers.get(name, 0) for name in names)]
        args += [f"{index[v]}\t{digest}" for v, digest in p.shoppers if v in index]
        return int(self._expose(keys=keys, args=args))

    def _put_back(self, unsent: dict[tuple[str, int], _Pending]) -> None:
        with self._lock:
            for key, p in unsent.items():
                mine = self._pending.setdefault(key, _Pending(p.experiment))
                for v, n in p.answers.items():
                    mine.answers[v] = mine.answers.get(v, 0) + n
                mine.shoppers |= p.shoppers
            while sum(p.size() for p in self._pending.values()) > self.max_pending and self._pending:
                key = next(iter(self._pending))
                self.dropped += self._pending.pop(key).size()
                log.warning("dropped experiment %r's unsent exposures: Redis has not taken them", key[0])


@dataclass(frozen=True)
class Credit:
    """One event to credit: what it cites, and where it came from (its events partition and offset; -1:
    not from Kafka)."""

    event: Event
    run: int
    experiment: str
    variant: str
    partition: int = -1
    offset: int = -1

    @property
    def revenue(self) -> float:
        """Price × quantity of a purchase (quantity 1 when absent, price 0 when absent); 0 otherwise."""
        if self.event.type.value != "purchase":
            return 0.0
        quantity = 1 if self.event.quantity is None else self.event.quantity
        return float(self.event.price or 0) * float(quantity)


def credits_of(events: Iterable[Any], sources: Iterable[tuple[int, int]] | None = None) -> list[Credit]:
    """The events that cite an experiment answer and are of a credited type (view, add_to_cart,
    purchase), with their (partition, offset) from ``sources`` (parallel to ``events``)."""
    out = []
    for e, (partition, offset) in zip(events, sources or _none(), strict=False):
        if not isinstance(e, Event) or e.type.value not in COUNTED_TYPES:
            continue
        c = cited(e.recommendation_id)
        if c is not None:
            out.append(Credit(e, c.run, c.experiment, c.variant, partition, offset))
    return out


def _none() -> Iterable[tuple[int, int]]:
    while True:
        yield (-1, -1)


class ExperimentCredits:
    """The worker's crediting of events to experiment variants (on ``redis.asyncio``, one Redis or a
    cluster): one script call per experiment and batch, in the experiment's slot. An event is credited
    once: a redelivered one is recognised by its partition's offset watermark however late it comes, a
    client's retry of an event id within ``window_ms`` (the worker's dedupe window) by its claimed id,
    as the fold does."""

    def __init__(self, client: Any, keys: Keys, window_ms: int) -> None:
        self.client, self.keys, self.window_ms = client, keys, window_ms
        self._credit = client.register_script(_CREDIT)

    async def _experiment(self, name: str, credits: list[Credit], now_ms: int) -> list[int]:
        k = self.keys
        variants = list(dict.fromkeys(c.variant for c in credits))
        index = {v: i for i, v in enumerate(variants, start=1)}
        keys = [k.experiment_config(name), k.experiment_counts(name)]
        keys += [k.experiment_credited(name), k.experiment_marks(name)]
        keys += [x for v in variants for x in (k.experiment_exposed(name, v), k.experiment_buyers(name, v))]
        args: list[Any] = [credits[0].run, name, now_ms, self.window_ms, len(variants), *variants]
        for c in credits:
            e = c.event
            args += [index[c.variant], e.user_id, shopper_digest(e.user_id), e.event_id, e.type.value]
            args += [repr(c.revenue), c.partition, c.offset]
        return [int(x) for x in await self._credit(keys=keys, args=args)]

    async def credit(self, credits: Sequence[Credit]) -> list[int]:
        """Credit each event (1), or not: credited before (-1), or no live variant of its shopper (0);
        results in the order given."""
        now_ms = int(time.time() * 1000)
        groups: dict[tuple[str, int], list[int]] = {}
        # the script keeps each partition's watermark: it must see the partition's events in offset order
        for n in sorted(range(len(credits)), key=lambda n: (credits[n].partition, credits[n].offset)):
            c = credits[n]
            groups.setdefault((c.experiment, c.run), []).append(n)
        results = [0] * len(credits)
        replies = await asyncio.gather(
            *(self._experiment(name, [credits[n] for n in ns], now_ms) for (name, _), ns in groups.items())
        )
        for ns, reply in zip(groups.values(), replies, strict=True):
            for n, r in zip(ns, reply, strict=True):
                results[n] = r
        return results
