"""Catalog features for the batch models: each item's category and attributes as feature tokens.

A shop knows more about its items than who bought them: category, brand, the attributes its catalog
records carry. The trainer's SLIST family can take them as side information (``models.slist``'s
``features``), which helps most where items have few interactions. This module turns catalog records into
tokens and tokens into a matrix; it is pure except ``read_catalog_features``, which reads the deployment's
catalog from Redis.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import redis
import scipy.sparse as sp

from streamrec.keys import Keys

Features = Mapping[str, Sequence[str]]  # item id -> its feature tokens
READ_CHUNK = 1000  # catalog records read per pipelined round trip


def tokens(category: str, attributes: Mapping[str, Any]) -> tuple[str, ...]:
    """One catalog record's feature tokens, sorted: ``category=<c>`` and ``<name>=<value>`` for every
    attribute value (each element of a list value on its own; dicts, empty strings and None are left out).

    >>> tokens("lipstick", {"brand": "Acme", "tags": ["red", "matte"], "size": None})
    ('brand=Acme', 'category=lipstick', 'tags=matte', 'tags=red')
    """
    out = {f"category={category}"} if category else set()
    for name, value in attributes.items():
        for v in value if isinstance(value, list) else [value]:
            if v is None or v == "" or isinstance(v, (dict, list)):
                continue
            out.add(f"{name}={v}")
    return tuple(sorted(out))


def from_records(records: Iterable[tuple[str, str, Mapping[str, Any]]]) -> dict[str, tuple[str, ...]]:
    """``{item: tokens}`` from ``(item_id, category, attributes)`` records; items without a token left out."""
    out = {}
    for item, category, attributes in records:
        found = tokens(category, attributes)
        if found:
            out[item] = found
    return out


def feature_matrix(features: Features, items: Sequence[str]) -> sp.csr_matrix:
    """The items x tokens binary float32 matrix of ``features`` in ``items``' order, shape
    ``(len(items), tokens)``. Only tokens that two or more of ``items`` share get a column: a token of one
    item relates it to nothing. An item without such tokens is an empty row."""
    shared = Counter(t for item in items for t in set(features.get(item, ())))
    vocab: dict[str, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    for n, item in enumerate(items):
        for token in set(features.get(item, ())):
            if shared[token] > 1:
                rows.append(n)
                cols.append(vocab.setdefault(token, len(vocab)))
    data = np.ones(len(rows), dtype=np.float32)
    return sp.csr_matrix((data, (rows, cols)), shape=(len(items), len(vocab)), dtype=np.float32)


def digest(features: Features) -> str:
    """A content digest of ``features`` (equal content, equal digest), for fit caches."""
    h = hashlib.blake2b(digest_size=16)
    for item in sorted(features):
        h.update(item.encode() + b"\x1e" + "\x1f".join(features[item]).encode() + b"\x1d")
    return h.hexdigest()


def read_catalog_features(
    client: redis.Redis, keys: Keys, items: Sequence[str]
) -> dict[str, tuple[str, ...]]:
    """The deployment's catalog records for ``items`` (their ``category`` and ``attributes`` fields, in
    pipelined chunks of ``READ_CHUNK``; works on a Redis Cluster too) as feature tokens. Items without a
    record, deleted ones and records with unreadable attributes give no tokens.

    Raises ``redis.RedisError`` when Redis cannot be read.
    """
    records = []
    for start in range(0, len(items), READ_CHUNK):
        chunk = items[start : start + READ_CHUNK]
        pipe = client.pipeline(transaction=False)
        for item in chunk:
            pipe.hmget(keys.catalog(item), ["category", "attributes", "deleted"])
        for item, (category, attributes, deleted) in zip(chunk, pipe.execute(), strict=True):
            if deleted or (category is None and attributes is None):
                continue
            try:
                parsed = orjson.loads(attributes) if attributes else {}
            except orjson.JSONDecodeError:
                parsed = {}
            text = category.decode() if isinstance(category, bytes) else category or ""
            records.append((item, text, parsed if isinstance(parsed, dict) else {}))
    return from_records(records)
