"""The offset watermarks the state script keeps per source partition: read them, and forget them.

The fold script writes, with the state it changes, the last offset it folded of each partition
(``<stage>:<partition>`` in the watermark hash; one hash on one Redis, one per hash slot on a cluster,
docs/STATE.md), and skips any record at or below it: that is what makes broker redelivery and worker
crashes harmless, however late they come. The cluster schedule's stats shards keep their own
(``wm:<partition>`` fields), and so does each A/B experiment's credit script (``{x:<name>}:wm``: the last
events offset credited per partition, ``streamrec.experiment_store``).

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
    experiment_keys: list[str] = field(default_factory=list)


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
    out.experiment_keys = sorted(
        _text(n) for n in client.scan_iter(match=keys.experiment_marks_pattern(), count=1000)
    )
    return out


def forget_offsets(client: Any, keys: Keys) -> Watermarks:
    """Delete every watermark (hashes, the stats shards' fields and the experiments' credit watermarks);
    returns what was there.

    Run it with the workers stopped, after a topic was recreated: a record then folds whatever its offset.
    Events redelivered after this (a worker crash before its commit) are caught by their claims only
    within the dedupe window.
    """
    before = read_watermarks(client, keys)
    for name in before.keys:
        client.delete(name)
    for name, fields in _stats_marks(client, keys).items():
        client.hdel(name, *fields)
    for name in before.experiment_keys:
        client.delete(name)
    return before


_EVENT_FIELDS = re.compile(r"^(ev|u|i):(\d+)$")


def event_watermarks(client: Any, keys: Keys) -> dict[int, int]:
    """Partition of the events topic -> the offset up to which every stage has folded it.

    One Redis: the ``ev:<partition>`` fields. A cluster: the lowest ``u:`` or ``i:`` field of the
    partition over every slot's hash (a slot that never saw the partition has none), so that rewinding
    to it misses nothing in any slot.
    """
    marks: dict[int, int] = {}
    for name in watermark_keys(client, keys):
        for f, v in client.hgetall(name).items():
            found = _EVENT_FIELDS.match(_text(f))
            if found:
                p = int(found.group(2))
                marks[p] = min(marks.get(p, int(v)), int(v))
    return marks


def rewind_targets(committed: dict[int, int | None], marks: dict[int, int]) -> dict[int, int]:
    """Partition -> the offset to commit, for each partition whose committed offset lies beyond
    ``watermark + 1`` (a partition with no watermark goes back to 0: nothing of it is in Redis).
    Partitions with nothing committed are left alone (the group starts them from the earliest offset)."""
    out: dict[int, int] = {}
    for p, offset in committed.items():
        target = marks.get(p, -1) + 1
        if offset is not None and offset > target:
            out[p] = target
    return out


@dataclass
class Rewound:
    """What ``rewind_group`` did (or, with ``dry_run``, would do): topic -> partition -> (from, to)."""

    moves: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)
    members: int = 0


def _without_acl_operations(obj: dict[str, Any]) -> dict[str, Any]:
    obj.pop("authorized_operations", None)
    return obj


def rewind_group(
    bootstrap: str,
    group: str,
    events_topic: str,
    marks: dict[int, int],
    items_topic: str | None = None,
    dry_run: bool = False,
) -> Rewound:
    """Move ``group``'s committed offsets of ``events_topic`` back to just past the watermarks ``marks``
    (and, with ``items_topic``, that topic's back to 0: catalog records are idempotent by their ``ts``).

    For a Redis restored from AOF or a backup, whose watermarks lie below what the group committed: the
    workers then fold what Redis lost, once. Raises ``RuntimeError`` if the group has active members
    (stop the workers first) or the broker refuses a commit (Tansu can keep a stopped Faust worker listed
    as a member: see docs/operations/local-broker.md).
    """
    from kafka import TopicPartition
    from kafka.admin import KafkaAdminClient
    from kafka.structs import OffsetAndMetadata

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="streamrec-rewind")
    # kafka-python always asks for the group's authorized operations and fails on a code its enum lacks
    # (Tansu answers 15); the members are all this needs, so the operations are dropped unread
    admin._process_acl_operations = _without_acl_operations  # type: ignore[method-assign]
    try:
        try:
            described = admin.describe_groups([group]).get(group) or {}
        except ValueError as exc:  # not knowing whether workers are running is a reason to stop
            raise RuntimeError(f"cannot tell whether consumer group {group!r} has members: {exc}") from exc
        members = len(described.get("members") or [])
        out = Rewound(members=members)
        if members:
            raise RuntimeError(
                f"consumer group {group!r} has {members} active members (state "
                f"{described.get('group_state')}): stop the workers first"
            )
        committed = admin.list_group_offsets({group: None}).get(group, {})
        wanted: dict[TopicPartition, OffsetAndMetadata] = {}
        for topic, targets in ((events_topic, marks), (items_topic, None)):
            if topic is None:
                continue
            mine = {tp.partition: meta.offset for tp, meta in committed.items() if tp.topic == topic}
            moves = (
                rewind_targets(mine, targets) if targets is not None else {p: 0 for p, o in mine.items() if o}
            )
            for p, target in moves.items():
                out.moves.setdefault(topic, {})[p] = (mine[p], target)
                wanted[TopicPartition(topic, p)] = OffsetAndMetadata(target, "", -1)
        if wanted and not dry_run:
            errors = admin.alter_group_offsets(group, wanted)
            failed = {tp: err for tp, err in errors.items() if getattr(err, "errno", 0)}
            if failed:
                raise RuntimeError(f"the broker refused to move offsets of {group!r}: {failed}")
        return out
    finally:
        admin.close()
