"""Versioned batch models in Redis: publish under a new version, switch atomically, roll back.

A model is an item-to-item table (each item's top neighbours with weights) plus metadata. Publishing
writes everything under the new version's keys, which nobody reads yet; ``activate`` then flips one
string key in a MULTI block, so an answer sees the old model or the new one, never a mix. The activation
log makes ``rollback`` a switch back to the previously active version. The trainer writes; the API reads.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import orjson
import redis

from streamrec.keys import Keys

KEEP_VERSIONS = 5  # published versions kept; older ones (never the active one) are deleted
LOG_MAX = 50


class ModelError(ValueError):
    """A model operation that cannot be done (unknown version, nothing to roll back to)."""


@dataclass(frozen=True)
class ModelInfo:
    version: str
    published_ms: int
    active: bool
    meta: dict[str, Any]


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class ModelStore:
    """The batch models of one deployment (one key prefix)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._shares: dict[str, float | None] = {}

    def publish(
        self,
        version: str,
        neighbours: Mapping[str, tuple[Sequence[str], Sequence[float]]]
        | Iterable[tuple[str, tuple[Sequence[str], Sequence[float]]]],
        meta: Mapping[str, Any],
        chunk: int = 2000,
    ) -> None:
        """Write a model under ``version`` (not yet active). Its metadata goes in last, marking it complete.

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
        table = k.model_neighbours(version)
        self.client.delete(table, k.model_meta(version))
        rows = iter(neighbours.items() if isinstance(neighbours, Mapping) else neighbours)
        written = 0
        while part := list(islice(rows, chunk)):
            mapping = {
                item: orjson.dumps([list(ids), [round(float(w), 6) for w in weights]])
                for item, (ids, weights) in part
            }
            self.client.hset(table, mapping=mapping)
            written += len(mapping)
        fields = {name: orjson.dumps(value) for name, value in meta.items()}
        fields["items"] = orjson.dumps(written)
        now = int(time.time() * 1000)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(k.model_meta(version), mapping=fields)
        pipe.zadd(k.model_versions(), {version: now})
        pipe.execute()
        self._prune()

    def activate(self, version: str) -> None:
        """Make ``version`` the model the API blends in, in one atomic step."""
        k = self.keys
        if self.client.zscore(k.model_versions(), version) is None:
            raise ModelError(f"no published model version {version!r} (see 'streamrec model list')")
        pipe = self.client.pipeline(transaction=True)
        pipe.set(k.model_active(), version)
        pipe.lpush(k.model_log(), version)
        pipe.ltrim(k.model_log(), 0, LOG_MAX - 1)
        pipe.execute()

    def rollback(self) -> str:
        """Switch back to the version active before the current one; returns it."""
        k = self.keys

        def switch(pipe: redis.client.Pipeline) -> str:
            active = _text(pipe.get(k.model_active()))
            log = [_text(v) for v in pipe.lrange(k.model_log(), 0, -1)]
            previous = next(
                (
                    v
                    for v in log
                    if v != active and v is not None and pipe.zscore(k.model_versions(), v) is not None
                ),
                None,
            )
            if active is None or previous is None:
                raise ModelError("there is no earlier model version to roll back to")
            pipe.multi()
            pipe.set(k.model_active(), previous)
            pipe.lrem(k.model_log(), 1, active)  # the rolled-back version leaves the log's head
            pipe.lrem(k.model_log(), 1, previous)
            pipe.lpush(k.model_log(), previous)
            return previous

        return self.client.transaction(switch, k.model_active(), k.model_log(), value_from_callable=True)

    def deactivate(self) -> None:
        """Serve the live state alone (no batch model)."""
        self.client.delete(self.keys.model_active())

    def active(self) -> str | None:
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
        items = list(items)
        version = self.active()
        if version is None or not items:
            return version, {}
        out: dict[str, dict[str, float]] = {}
        for item, raw in zip(
            items, self.client.hmget(self.keys.model_neighbours(version), items), strict=True
        ):
            if raw:
                ids, weights = orjson.loads(raw)
                out[item] = dict(zip(ids, weights, strict=True))
        return version, out

    def _prune(self) -> None:
        k = self.keys
        active = self.active()
        old = [_text(v) for v in self.client.zrevrange(k.model_versions(), KEEP_VERSIONS, -1)]
        for version in old:
            if version and version != active:
                pipe = self.client.pipeline(transaction=True)
                pipe.zrem(k.model_versions(), version)
                pipe.delete(k.model_meta(version), k.model_neighbours(version))
                pipe.execute()
