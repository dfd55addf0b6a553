"""Read every key of a namespace into plain Python, to compare whole states."""

from __future__ import annotations

from typing import Any

import redis

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
