"""Read every key of a namespace into plain Python, to compare whole states."""

from __future__ import annotations

from typing import Any

import redis


def snapshot(client: redis.Redis, pattern: str) -> dict[bytes, Any]:
    out: dict[bytes, Any] = {}
    for key in sorted(client.scan_iter(match=pattern, count=1000)):
        kind = client.type(key)
        if kind == b"string":
            out[key] = client.get(key)
        elif kind == b"hash":
            out[key] = client.hgetall(key)
        elif kind == b"list":
            out[key] = client.lrange(key, 0, -1)
        elif kind == b"zset":
            out[key] = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"set":
            out[key] = client.smembers(key)
    return out
