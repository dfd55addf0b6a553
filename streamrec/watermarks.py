"""The offset watermarks the state script keeps per source partition: read them, and forget them.

The fold script writes, with the state it changes, the last offset it folded of each partition
(``<stage>:<partition>`` in the watermark hash; one hash on one Redis, one per hash slot on a cluster,
docs/STATE.md), and skips any record at or below it: that is what makes broker redelivery and worker
crashes harmless, however late they come. The cluster schedule's stats shards keep their own
(``wm:<partition>`` fields).

When a topic is deleted and created again, its offsets restart at 0, below the old watermarks, and new
events would be taken for folded ones. ``forget_offsets`` clears every watermark so that they are folded;
the per-user event-id claims still catch a client's retries within the dedupe window.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from streamrec.keys import Keys

_SLOT_TAG = re.compile(r"^\{w\d+\}:wm$")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def watermark_keys(client: Any, keys: Keys) -> list[str]:
    """Every watermark hash of the deployment that exists: the one-Redis hash and the per-slot ones."""
    found = [keys.watermark()] if client.exists(keys.watermark()) else []
    head = f"{keys.prefix}:"
    for name in client.scan_iter(match=f"{keys.prefix}:{{w*}}:wm", count=1000):
        name = _text(name)
        if _SLOT_TAG.match(name[len(head) :]) and name not in found:
            found.append(name)
    return sorted(found)


@dataclass
class Watermarks:
    """The watermarks found: ``offsets`` maps ``<stage>:<partition>`` to the highest offset any hash holds
    for it; ``keys`` are the hashes; ``stats_fields`` counts the stats shards' own watermark fields."""

    offsets: dict[str, int] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)
    stats_fields: int = 0


def _stats_marks(client: Any, keys: Keys) -> dict[str, list[str]]:
    """Stats shard -> its ``wm:<partition>`` fields (the cluster schedule's exactly-once stats)."""
    out: dict[str, list[str]] = {}
    for name in client.scan_iter(match=keys.stats_pattern(), count=1000):
        fields = [_text(f) for f in client.hkeys(name) if _text(f).startswith("wm:")]
        if fields:
            out[_text(name)] = fields
    return out


def read_watermarks(client: Any, keys: Keys) -> Watermarks:
    """Every watermark of the deployment (see ``Watermarks``); ``client`` is a Redis or RedisCluster."""
    out = Watermarks(keys=watermark_keys(client, keys))
    for name in out.keys:
        for f, v in client.hgetall(name).items():
            f = _text(f)
            if f == "guard":  # the fold's first write, not a watermark
                continue
            out.offsets[f] = max(out.offsets.get(f, -1), int(v))
    out.stats_fields = sum(len(f) for f in _stats_marks(client, keys).values())
    return out


def forget_offsets(client: Any, keys: Keys) -> Watermarks:
    """Delete every watermark (hashes and the stats shards' fields); returns what was there.

    Run it with the workers stopped, after a topic was recreated: a record then folds whatever its offset.
    Events redelivered after this (a worker crash before its commit) are caught by their claims only
    within the dedupe window.
    """
    before = read_watermarks(client, keys)
    for name in before.keys:
        client.delete(name)
    for name, fields in _stats_marks(client, keys).items():
        client.hdel(name, *fields)
    return before
