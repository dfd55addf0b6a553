"""Read every key of a namespace into plain Python, to compare whole states."""

from __future__ import annotations

from typing import Any

import redis

from streamrec.keys import Keys

_READ = {
    b"string": lambda pipe, key: pipe.get(key),
    b"hash": lambda pipe, key: pipe.hgetall(key),
    b"list": lambda pipe, key: pipe.lrange(key, 0, -1),
    b"zset": lambda pipe, key: pipe.zrange(key, 0, -1, withscores=True),
    b"set": lambda pipe, key: pipe.smembers(key),
}


def snapshot(client: redis.Redis, pattern: str, chunk: int = 2000) -> dict[bytes, Any]:
    """Every key matching ``pattern`` with its value; pipelined, so tens of thousands of keys take seconds."""
    keys = sorted(client.scan_iter(match=pattern, count=1000))
    out: dict[bytes, Any] = {}
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        pipe = client.pipeline(transaction=False)
        for key in part:
            pipe.type(key)
        kinds = pipe.execute()
        pipe = client.pipeline(transaction=False)
        read = [(key, kind) for key, kind in zip(part, kinds, strict=True) if kind in _READ]
        for key, kind in read:
            _READ[kind](pipe, key)
        for (key, _), value in zip(read, pipe.execute(), strict=True):
            out[key] = value
    return out


def item_occurrences(client: redis.Redis, keys: Keys) -> dict[str, int]:
    """Every item's plain occurrence count (the activity hash's ``c``), for exactly-once checks."""
    head, tail = keys.activity("\0").split("\0")
    names = list(client.scan_iter(match=keys.activity("*"), count=1000))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hget(name, "c")
    return {
        name.decode()[len(head) : len(name.decode()) - len(tail)]: int(v)
        for name, v in zip(names, pipe.execute(), strict=True)
        if v is not None
    }


def state_only(snap: dict[bytes, Any], keys: Keys) -> dict[bytes, Any]:
    """A snapshot without the fold's bookkeeping, which legitimately differs between two runs that
    folded the same events: offset watermarks (where each run's consumer got to), and the times in the
    event-id claims (wall clock when first seen; the claimed ids themselves are kept). On a cluster the
    stats shards also keep their partition's watermark (``wm:<partition>``): left out too. So are the
    stamps cached answers are compared by: when each user's event count started (the version's ``s``, wall
    clock) and the catalog generation (a batch of records delivered again moves it again)."""
    claims = keys.claims("\0").split("\0")[1].encode()  # the claims keys' suffix, e.g. b"}:e"
    version = keys.version("\0").split("\0")[1].encode()  # b"}:v"
    stats = keys.stats_pattern().encode()[:-1]  # the stats shards' common head, e.g. b"sr:{st:"
    out: dict[bytes, Any] = {}
    for key, value in snap.items():
        if key in (keys.watermark().encode(), keys.catalog_generation().encode()) or key.endswith(b"}:wm"):
            continue
        if key.endswith(claims):
            value = sorted(member for member, _ in value)
        if key.endswith(version) and isinstance(value, dict):
            value = {f: v for f, v in value.items() if f != b"s"}
        if key.startswith(stats) and isinstance(value, dict):
            value = {f: v for f, v in value.items() if not f.startswith(b"wm:")}
        out[key] = value
    return out
