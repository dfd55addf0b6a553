"""Every Redis key streamrec uses, built in this one module from a configurable prefix.

Keys are grouped by owner with a Redis Cluster hash tag (``{...}``) that is part of each template, so all
keys of one user (``{u:<user>}``), of one item (``{i:<item>}``) or of one search term (``{t:<term>}``)
hash to one slot, and a script can touch a whole group on any one node (docs/STATE.md). Hot aggregates
(popularity, trending, stats) are sharded across tags so that no one shard takes every event.

The state script (``fold.lua``) receives the same templates through ``Keys.templates()``, so the Python
readers and the Lua writer can never disagree on a name. A template holds one ``%s`` for an id (two for a
sharded per-category key: shard, then category).
"""

from __future__ import annotations

import functools
import re
import zlib
from dataclasses import dataclass

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

# Braces are refused: a hash tag in the prefix would put the whole deployment in one slot.
_PREFIX = re.compile(r"^[A-Za-z0-9_.:\-]{1,32}$")
DEFAULT_SHARDS = 8


@functools.cache
def _templates(p: str) -> dict[str, str]:
    return {
        # per user, one slot: {u:<user>} (all expire user_ttl after the user's last event)
        "history": f"{p}:{{u:%s}}:h",  # LIST of "item_id|ts|type", newest first, capped
        "prefs": f"{p}:{{u:%s}}:p",  # ZSET item -> log of time-decayed, type-weighted interest
        "bought": f"{p}:{{u:%s}}:b",  # ZSET item -> time of purchase, capped
        "searches": f"{p}:{{u:%s}}:q",  # LIST of "ts|term\tterm..." (newest first), capped
        "version": f"{p}:{{u:%s}}:v",  # HASH n: events folded, s: when n started (wall ms); readers compare both
        "claims": f"{p}:{{u:%s}}:e",  # ZSET event_id -> first seen (wall ms), pruned to the dedupe window
        "outbox": f"{p}:{{u:%s}}:o",  # HASH "<partition>:<offset>" -> effects JSON (cluster schedule only)
        "erased": f"{p}:{{u:%s}}:x",  # STRING: erased at (ms); older events of the user are refused
        # per item, one slot: {i:<item>}
        "catalog": f"{p}:{{i:%s}}:c",  # HASH of the catalog record, or a deletion tombstone
        # one per deployment, one slot: {cg}
        "catalog_generation": f"{p}:{{cg}}",  # STRING: batches of catalog records folded (cached answers compare)
        # a Pub/Sub channel, not a key: the ids of items whose {i:<item>} keys a fold call changed
        "changes": f"{p}:changes",
        "activity": f"{p}:{{i:%s}}:s",  # HASH n, pop, trend (log decayed totals), c (occurrences), last (ms), cat
        "neighbours": f"{p}:{{i:%s}}:n",  # ZSET neighbour -> log of decayed, order-weighted co-occurrence
        # per search term, one slot: {t:<term>}
        "term": f"{p}:{{t:%s}}:i",  # ZSET item -> weight of actions that followed this term
        # sharded aggregates: copies of each item's totals, shard = shard_of(item); a shard's popularity
        # and trending sets share one slot ({g:<shard>} or {g:<shard>:<category>})
        "popular": f"{p}:{{g:%s}}:pop",  # ZSET item -> log decayed popularity
        "popular_cat": f"{p}:{{g:%s:%s}}:pop",
        "trending": f"{p}:{{g:%s}}:trend",  # ZSET item -> log of the fast-decayed rate
        "trending_cat": f"{p}:{{g:%s:%s}}:trend",
        # per source partition: counters and (standalone) the offset watermark of each partition
        "stats": f"{p}:{{st:%s}}",  # HASH applied:<type>, duplicates, erased, items ... ; %s = "<kind>:<partition>"
        "watermark": f"{p}:wm",  # HASH "<kind>:<partition>" -> last offset folded (one Redis)
        "local_feeds": f"{p}:up:feeds",  # HASH feed label -> events published ('streamrec up' only)
        "slot_watermark": f"{p}:{{%s}}:wm",  # HASH "<stage>:<partition>" -> last offset (one per hash slot)
        # batch models published by the trainer (see modelstore.py): the control keys share one slot
        # ({m}), so a switch or a rollback is one script on one node; a version's rows are sharded by item
        "model_active": f"{p}:{{m}}:active",  # STRING: the version the API blends in
        "model_versions": f"{p}:{{m}}:versions",  # ZSET version -> publish time (ms)
        "model_log": f"{p}:{{m}}:log",  # LIST of activated versions, newest first (for rollback)
        "model_meta": f"{p}:{{m:%s}}:meta",  # HASH: family, params, figures, sizes
        "model_rows": f"{p}:{{m:%s:%s}}:nb",  # HASH item -> JSON [[neighbour ids], [weights]]; version, shard
        # placements (see placement_store.py): one slot ({pl}), so a change and its version are one script
        "placements": f"{p}:{{pl}}:docs",  # HASH name -> placement document (compact JSON), bounded
        "placements_version": f"{p}:{{pl}}:v",  # STRING: INCR on every change (API processes compare it)
        # experiments (see experiment_store.py): the documents in one slot ({xp}), like placements; each
        # experiment's config and counts in its own slot ({x:<name>}), written by one script per call
        "experiments": f"{p}:{{xp}}:docs",  # HASH name -> {"run": n, "document": ...}, bounded
        "experiments_version": f"{p}:{{xp}}:v",  # STRING: INCR on every change
        "experiment_runs": f"{p}:{{xp}}:runs",  # STRING: INCR when a name is created (its run number)
        "experiment_config": f"{p}:{{x:%s}}:cfg",  # STRING: {"run", "variants": [[name, weight]]} (credit script)
        "experiment_counts": f"{p}:{{x:%s}}:n",  # HASH answers|view|add_to_cart|purchase|revenue|revenue_sq:<variant>
        "experiment_exposed": f"{p}:{{x:%s}}:seen:%s",  # SET of shopper digests shown the variant
        "experiment_buyers": f"{p}:{{x:%s}}:buy:%s",  # HASH shopper digest -> attributed revenue
        "experiment_credited": f"{p}:{{x:%s}}:ev",  # ZSET event_id -> credited at (ms), pruned to the dedupe window
        "experiment_marks": f"{p}:{{x:%s}}:wm",  # HASH events partition -> last offset credited
    }


def shard_of(item_id: str, shards: int) -> int:
    """The popularity shard of an item: ``crc32(utf-8 id) mod shards`` (stable across processes)."""
    return zlib.crc32(item_id.encode()) % shards


@functools.cache
def slot_tags() -> tuple[str, ...]:
    """One short hash tag per Redis Cluster hash slot: ``slot_tags()[s]`` hashes to slot ``s``.

    Found by counting ``w0, w1, …`` until every slot has one (about 170,000 CRC16s, a few tens of ms),
    so a per-slot key (the cluster schedule's watermarks) can be named for any slot.
    """
    tags: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    missing, n = REDIS_CLUSTER_HASH_SLOTS, 0
    while missing:
        tag = f"w{n}"
        slot = key_slot(tag.encode())
        if tags[slot] is None:
            tags[slot] = tag
            missing -= 1
        n += 1
    return tuple(t for t in tags if t is not None)


@dataclass(frozen=True)
class Keys:
    """Key builders for one deployment (one prefix, a fixed number of popularity shards).

    Raises ``ValueError`` for a prefix outside ``[A-Za-z0-9_.:-]{1,32}`` or a shard count below 1.
    """

    prefix: str = "sr"
    shards: int = DEFAULT_SHARDS

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise ValueError(f"Redis prefix {self.prefix!r} must be 1-32 characters of [A-Za-z0-9_.:-]")
        if self.shards < 1:
            raise ValueError(f"the number of popularity shards must be at least 1, got {self.shards}")

    def templates(self) -> dict[str, str]:
        """Name -> template. Per-user, per-item and per-term keys take their id through ``%s``."""
        return _templates(self.prefix)

    def _k(self, name: str, *args: object) -> str:
        template = _templates(self.prefix)[name]
        return template % args if args else template

    # --- one user (one slot)
    def history(self, user_id: str) -> str:
        """LIST of the user's recent actions, ``item|ts|type``, newest first."""
        return self._k("history", user_id)

    def prefs(self, user_id: str) -> str:
        """ZSET item -> log-space decayed, type-weighted interest."""
        return self._k("prefs", user_id)

    def bought(self, user_id: str) -> str:
        """ZSET item -> purchase time (ms)."""
        return self._k("bought", user_id)

    def searches(self, user_id: str) -> str:
        r"""LIST of the user's recent searches, ``ts|term\tterm…``, newest first."""
        return self._k("searches", user_id)

    def version(self, user_id: str) -> str:
        """HASH with ``n``, the number of events folded into the user's state (a snapshot's version), and
        ``s``, when that count started (wall ms): a count that starts again (after an erasure, or once the
        user's keys expired) never repeats a stamp ``(n, s)`` an answer was cached under."""
        return self._k("version", user_id)

    def claims(self, user_id: str) -> str:
        """ZSET of the user's recent event ids -> first seen (wall ms): retries within the dedupe window."""
        return self._k("claims", user_id)

    def outbox(self, user_id: str) -> str:
        """HASH of effects emitted by the cluster schedule's user stage, until the ack stage."""
        return self._k("outbox", user_id)

    def erased(self, user_id: str) -> str:
        """STRING: when the user was erased (ms); the user's older events are refused."""
        return self._k("erased", user_id)

    def user_keys(self, user_id: str) -> list[str]:
        """Every key of one user's group (one hash slot)."""
        return [
            self.history(user_id),
            self.prefs(user_id),
            self.bought(user_id),
            self.searches(user_id),
            self.version(user_id),
            self.claims(user_id),
            self.outbox(user_id),
            self.erased(user_id),
        ]

    # --- one item (one slot)
    def catalog(self, item_id: str) -> str:
        """HASH of the item's catalog record (or its deletion tombstone)."""
        return self._k("catalog", item_id)

    def changes(self) -> str:
        """The Pub/Sub channel (not a key: it has no slot) on which every fold call that changed items
        publishes their ids, newline-separated: an item's activity (its count), its neighbour list, or its
        catalog record. API processes drop what they cached of those items at once (``api/changes.py``)."""
        return self._k("changes")

    def catalog_generation(self) -> str:
        """STRING: how many batches of catalog records were folded (INCR after each, once its records are
        written). An answer cached under one generation is not served once it moved."""
        return self._k("catalog_generation")

    def activity(self, item_id: str) -> str:
        """HASH of the item's activity: ``n``, ``pop``, ``trend`` (log-space decayed totals), ``last``, ``cat``."""
        return self._k("activity", item_id)

    def neighbours(self, item_id: str) -> str:
        """ZSET neighbour -> log-space decayed co-occurrence with this item."""
        return self._k("neighbours", item_id)

    def item_keys(self, item_id: str) -> list[str]:
        """Every key of one item's group (one hash slot)."""
        return [self.catalog(item_id), self.activity(item_id), self.neighbours(item_id)]

    # --- one search term (one slot)
    def term(self, term: str) -> str:
        """ZSET item -> weight of the actions that followed a search with this term."""
        return self._k("term", term)

    # --- sharded aggregates
    def shard(self, item_id: str) -> int:
        """The popularity shard ``item_id`` is filed in."""
        return shard_of(item_id, self.shards)

    def popular(self, shard: int, category: str | None = None) -> str:
        """One shard of the popularity ZSET, overall or of one category."""
        return self._k("popular_cat", shard, category) if category else self._k("popular", shard)

    def trending(self, shard: int, category: str | None = None) -> str:
        """One shard of the trending (fast-decayed) ZSET, overall or of one category."""
        return self._k("trending_cat", shard, category) if category else self._k("trending", shard)

    def stats(self, kind: str = "ev", partition: int = 0) -> str:
        """The counters of one source partition (``kind`` ``ev`` for events, ``it`` for catalog records)."""
        return self._k("stats", f"{kind}:{partition}")

    def stats_pattern(self) -> str:
        """A SCAN pattern matching every stats shard."""
        return f"{self.prefix}:{{st:*"

    def watermark(self) -> str:
        """HASH ``<kind>:<partition>`` -> last folded offset (the one-Redis schedule)."""
        return self._k("watermark")

    def local_feeds(self) -> str:
        """HASH feed label -> events it published: the feeds ``streamrec up`` folded into this state (one
        field per dataset it was run with; deleted with the local data folder)."""
        return self._k("local_feeds")

    def slot_watermark(self, slot: int) -> str:
        """HASH ``<stage>:<partition>`` -> last folded offset, living in hash slot ``slot`` (cluster)."""
        return self._k("slot_watermark", slot_tags()[slot])

    # --- batch models
    def model_active(self) -> str:
        """STRING: the active model version."""
        return self._k("model_active")

    def model_versions(self) -> str:
        """ZSET version -> publish time (ms)."""
        return self._k("model_versions")

    def model_log(self) -> str:
        """LIST of activated versions, newest first."""
        return self._k("model_log")

    def model_meta(self, version: str) -> str:
        """HASH of one model version's metadata."""
        return self._k("model_meta", version)

    def model_rows(self, version: str, shard: int) -> str:
        """HASH item -> JSON ``[[neighbour ids], [weights]]``: one model version's rows of the items in
        popularity shard ``shard`` (``shard(item)``), so that a large model spreads over the cluster."""
        return self._k("model_rows", version, shard)

    def model_row_keys(self, version: str) -> list[str]:
        """Every row shard of one model version."""
        return [self.model_rows(version, s) for s in range(self.shards)]

    # --- placements (one slot)
    def placements(self) -> str:
        """HASH placement name -> its document as compact JSON (at most ``placement_store.MAX_PLACEMENTS``
        fields of at most ``placement_store.MAX_DOCUMENT_BYTES`` each)."""
        return self._k("placements")

    def placements_version(self) -> str:
        """STRING: how many changes the placements have had (INCR by the same script as each change), so
        an API process knows whether what it compiled is current with one GET."""
        return self._k("placements_version")

    # --- experiments: documents in one slot, each experiment's counts in its own
    def experiments(self) -> str:
        """HASH experiment name -> ``{"run": n, "document": {...}}`` (at most
        ``experiment_store.MAX_EXPERIMENTS`` fields)."""
        return self._k("experiments")

    def experiments_version(self) -> str:
        """STRING: how many changes the experiments have had (API processes compare it)."""
        return self._k("experiments_version")

    def experiment_runs(self) -> str:
        """STRING: the last run number given to a newly created experiment name."""
        return self._k("experiment_runs")

    def experiment_config(self, name: str) -> str:
        """STRING: what the credit script needs of an experiment (its run and weighted variants)."""
        return self._k("experiment_config", name)

    def experiment_counts(self, name: str) -> str:
        """HASH ``<count>:<variant>`` -> answers, attributed events by type, revenue and its sum of squares."""
        return self._k("experiment_counts", name)

    def experiment_exposed(self, name: str, variant: str) -> str:
        """SET of the digests of shoppers shown an answer of ``variant``."""
        return self._k("experiment_exposed", name, variant)

    def experiment_buyers(self, name: str, variant: str) -> str:
        """HASH shopper digest -> attributed revenue of shoppers with an attributed purchase in ``variant``."""
        return self._k("experiment_buyers", name, variant)

    def experiment_credited(self, name: str) -> str:
        """ZSET event_id -> when it was credited (ms): an event is credited once."""
        return self._k("experiment_credited", name)

    def experiment_marks(self, name: str) -> str:
        """HASH events partition -> the last offset credited: a redelivered event is credited once."""
        return self._k("experiment_marks", name)

    def experiment_marks_pattern(self) -> str:
        """A SCAN pattern matching every experiment's credit watermark hash."""
        return f"{self.prefix}:{{x:*}}:wm"

    def experiment_keys(self, name: str, variants: list[str]) -> list[str]:
        """Every key of experiment ``name`` with ``variants`` (one slot): config, counts, credited, marks,
        then each variant's exposed set and buyers hash."""
        per_variant = [
            k for v in variants for k in (self.experiment_exposed(name, v), self.experiment_buyers(name, v))
        ]
        own = ["experiment_config", "experiment_counts", "experiment_credited", "experiment_marks"]
        return [self._k(kind, name) for kind in own] + per_variant

    def pattern(self) -> str:
        """A SCAN pattern matching every key of this deployment."""
        return f"{self.prefix}:*"


def slot(key: str) -> int:
    """The Redis Cluster hash slot of ``key`` (CRC16 of its hash tag, or of the whole key)."""
    return int(key_slot(key.encode()))
