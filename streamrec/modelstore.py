"""Versioned batch models in Redis: publish under a new version, switch atomically, roll back.

A model is an item-to-item table (each item's top neighbours with weights) plus metadata. Publishing
writes everything under the new version's keys, which nobody reads yet: the rows sharded by item
(``{m:<version>:<shard>}``, so a large model spreads over a Redis Cluster's masters), then the metadata,
and last the version's entry in the versions list, which marks it complete. Readers see a model only
through one string key, the active version: ``activate`` and ``rollback`` rewrite it together with the
activation log in one script on the control group's slot (``{m}``: active, versions, log), so an answer
sees the old model or the new one, never a mix, on one Redis and on a cluster alike. The trainer writes;
the API reads.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import orjson

from streamrec.keys import Keys

KEEP_VERSIONS = 5  # published versions kept; older ones (never the active one) are deleted
LOG_MAX = 50

# KEYS: versions, active, log (one slot). ARGV: version, log length. Returns 1, or 0 for an unknown version.
_ACTIVATE = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('LPUSH', KEYS[3], ARGV[1])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[2]) - 1)
return 1
"""

# KEYS: versions, active, log. Returns the version switched back to, or false when there is none.
_ROLLBACK = """
local active = redis.call('GET', KEYS[2])
if not active then return false end
local previous = false
for _, v in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
  if v ~= active and redis.call('ZSCORE', KEYS[1], v) then previous = v break end
end
if not previous then return false end
redis.call('SET', KEYS[2], previous)
redis.call('LREM', KEYS[3], 1, active)
redis.call('LREM', KEYS[3], 1, previous)
redis.call('LPUSH', KEYS[3], previous)
return previous
"""

# KEYS: versions, active. ARGV: versions kept. Forgets the older ones but the active one; returns them.
_FORGET = """
local active = redis.call('GET', KEYS[2])
local gone = {}
for _, v in ipairs(redis.call('ZREVRANGE', KEYS[1], tonumber(ARGV[1]), -1)) do
  if v ~= active then
    redis.call('ZREM', KEYS[1], v)
    gone[#gone + 1] = v
  end
end
return gone
"""


class ModelError(ValueError):
    """A model operation that cannot be done (unknown version, nothing to roll back to)."""


@dataclass(frozen=True)
class ModelInfo:
    """One published version: when it was published (epoch ms), whether it is active, its metadata."""

    version: str
    published_ms: int
    active: bool
    meta: dict[str, Any]


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class ModelStore:
    """The batch models of one deployment (one key prefix).

    ``client`` is a ``redis.Redis`` or a ``redis.cluster.RedisCluster``: every multi-key step is a script
    on the control group's one slot, every other step a pipeline of single-key commands. Redis errors
    propagate (``redis.exceptions.RedisError``).
    """

    def __init__(self, client: Any, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._activate = client.register_script(_ACTIVATE)
        self._rollback = client.register_script(_ROLLBACK)
        self._forget = client.register_script(_FORGET)
        self._shares: dict[str, float | None] = {}

    def _control(self) -> list[str]:
        k = self.keys
        return [k.model_versions(), k.model_active(), k.model_log()]

    def _delete(self, version: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key in [*self.keys.model_row_keys(version), self.keys.model_meta(version)]:
            pipe.delete(key)
        pipe.execute()

    def publish(
        self,
        version: str,
        neighbours: Mapping[str, tuple[Sequence[str], Sequence[float]]]
        | Iterable[tuple[str, tuple[Sequence[str], Sequence[float]]]],
        meta: Mapping[str, Any],
        chunk: int = 2000,
    ) -> None:
        """Write a model under ``version`` (not yet active): rows, then metadata, then its entry in the
        versions list, which marks it complete. Raises ``ModelError`` if the version exists or a ``blend``
        entry in ``meta`` is outside 0..1.

        ``neighbours`` is ``item -> (neighbour ids, weights)``, or an iterable of such pairs, written
        ``chunk`` items at a time (a 100,000-item model never sits in memory as Python objects). A
        ``blend`` entry in ``meta`` (0..1) is the share the API gives this model instead of
        ``STREAMREC_SCORING_MODEL_BLEND``.
        """
        k = self.keys
        if self.client.zscore(k.model_versions(), version) is not None:
            raise ModelError(f"model version {version!r} already exists")
        if "blend" in meta and not 0.0 <= float(meta["blend"]) <= 1.0:
            raise ModelError(f"a model's blend share must be within 0..1, not {meta['blend']!r}")
        self._delete(version)  # what a publish of this version that died half-way left behind
        rows = iter(neighbours.items() if isinstance(neighbours, Mapping) else neighbours)
        written = 0
        while part := list(islice(rows, chunk)):
            shards: dict[int, dict[str, bytes]] = defaultdict(dict)
            for item, (ids, weights) in part:
                shards[k.shard(item)][item] = orjson.dumps([list(ids), [round(float(w), 6) for w in weights]])
            pipe = self.client.pipeline(transaction=False)
            for shard, mapping in shards.items():
                pipe.hset(k.model_rows(version, shard), mapping=mapping)
            pipe.execute()
            written += len(part)
        fields = {name: orjson.dumps(value) for name, value in meta.items()}
        fields["items"] = orjson.dumps(written)
        self.client.hset(k.model_meta(version), mapping=fields)
        if not self.client.zadd(k.model_versions(), {version: int(time.time() * 1000)}, nx=True):
            raise ModelError(f"model version {version!r} already exists")
        self._prune()

    def activate(self, version: str) -> None:
        """Make ``version`` the model the API blends in, in one atomic step."""
        if not self._activate(keys=self._control(), args=[version, LOG_MAX]):
            raise ModelError(f"no published model version {version!r} (see 'streamrec model list')")

    def rollback(self) -> str:
        """Switch back to the version active before the current one (still published); returns it."""
        previous = _text(self._rollback(keys=self._control()))
        if not previous:
            raise ModelError("there is no earlier model version to roll back to")
        return previous

    def deactivate(self) -> None:
        """Serve the live state alone (no batch model)."""
        self.client.delete(self.keys.model_active())

    def active(self) -> str | None:
        """The active version, or None."""
        return _text(self.client.get(self.keys.model_active()))

    def versions(self) -> list[ModelInfo]:
        """Published versions, newest first, with their metadata."""
        k = self.keys
        rows = self.client.zrevrange(k.model_versions(), 0, -1, withscores=True)
        active = self.active()
        out = []
        for raw, score in rows:
            version = _text(raw) or ""
            meta = {_text(f): orjson.loads(v) for f, v in self.client.hgetall(k.model_meta(version)).items()}
            out.append(ModelInfo(version, int(score), version == active, meta))
        return out

    def blend_share(self, version: str) -> float | None:
        """The blend share the trainer chose for ``version`` on validation, or None when it chose none.

        A version's metadata never changes once published, so the answer is kept per process.
        """
        if version not in self._shares:
            raw = self.client.hget(self.keys.model_meta(version), "blend")
            self._shares[version] = None if raw is None else float(orjson.loads(raw))
        return self._shares[version]

    def neighbours(self, items: Iterable[str]) -> tuple[str | None, dict[str, dict[str, float]]]:
        """The active version and its neighbours of ``items`` (two round trips; empty without a model)."""
        items = list(dict.fromkeys(items))
        version = self.active()
        if version is None or not items:
            return version, {}
        by_shard: dict[int, list[str]] = defaultdict(list)
        for item in items:
            by_shard[self.keys.shard(item)].append(item)
        pipe = self.client.pipeline(transaction=False)
        for shard, group in by_shard.items():
            pipe.hmget(self.keys.model_rows(version, shard), group)
        out: dict[str, dict[str, float]] = {}
        for group, values in zip(by_shard.values(), pipe.execute(), strict=True):
            for item, raw in zip(group, values, strict=True):
                if raw:
                    ids, weights = orjson.loads(raw)
                    out[item] = dict(zip(ids, weights, strict=True))
        return version, out

    def _prune(self) -> None:
        k = self.keys
        for raw in self._forget(keys=[k.model_versions(), k.model_active()], args=[KEEP_VERSIONS]):
            version = _text(raw)
            if version:
                self._delete(version)
