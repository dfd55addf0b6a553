"""Catalog listing and search for the storefront: a bounded title index per API process, ranked by popularity.

Redis holds each catalog record as its own hash and keeps no list of item ids, so the index is built
with one SCAN over the catalog keys and pipelined HMGETs. It is held in the process and rebuilt when the
catalog's size (the ``items`` counter the catalog script keeps) changes or when it is older than
``max_age``; at most ``max_items`` records are indexed. Search matches every word of the query inside
the title or category, ranks the matches by time-decayed popularity, then adds the items shoppers acted
on after the same search (the search-term state the worker keeps), so search results learn as shoppers
use them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from urllib.parse import quote

import redis

from streamrec.keys import Keys
from streamrec.recommend import Recommender
from streamrec.scoring import search_terms
from streamrec.search_text import fold, tokens

_FIELDS = ("title", "category", "price", "in_stock", "image_url", "description")


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value else ""


def local_image(item_id: str, image_url: str) -> str:
    """The record's image if it is on this server, else the generated placeholder: the page loads nothing remote."""
    if image_url.startswith("/") and not image_url.startswith("//"):
        return image_url
    return f"/static/img/{quote(item_id, safe='')}.svg"


@dataclass(frozen=True)
class Product:
    """What a product card shows."""

    item_id: str
    title: str
    category: str
    price: float | None
    in_stock: bool
    image: str
    description: str = ""
    note: str = ""

    @classmethod
    def from_record(cls, item_id: str, record: dict[str, str], note: str = "") -> Product:
        """The product an answer shows for item_id, from its catalog hash; a price that is not a number is left out."""
        try:
            price = float(record["price"]) if record.get("price") else None
        except ValueError:
            price = None
        return cls(
            item_id=item_id,
            title=record.get("title") or item_id,
            category=record.get("category") or "",
            price=price,
            in_stock=record.get("in_stock", "1") != "0",
            image=local_image(item_id, record.get("image_url") or ""),
            description=record.get("description") or "",
            note=note,
        )


class CatalogSearch:
    """The storefront's product grid: the catalog listed by popularity, and title search."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        recommender: Recommender,
        max_items: int = 50_000,
        max_age: float = 30.0,
    ) -> None:
        self.client = client
        self.keys = keys
        self.recommender = recommender
        self.max_items = max_items
        self.max_age = max_age
        self._lock = threading.Lock()
        self._snapshot: tuple[dict[str, Product], list[tuple[str, str]]] = ({}, [])
        self._size: int | None = None
        self._built = 0.0

    def _catalog_size(self) -> int:
        return self.recommender.reader.catalog_size()

    def _index(self) -> tuple[dict[str, Product], list[tuple[str, str]]]:
        """The indexed catalog and its search texts, rebuilt first if the catalog changed size or is stale."""
        size = self._catalog_size()
        with self._lock:
            if size != self._size or time.monotonic() - self._built > self.max_age:
                self._snapshot = self._build()
                self._size = size
                self._built = time.monotonic()
            return self._snapshot

    def _build(self) -> tuple[dict[str, Product], list[tuple[str, str]]]:
        template = self.keys.templates()["catalog"]
        head, tail = template.split("%s")
        ids: list[str] = []
        for key in self.client.scan_iter(match=self.keys.catalog("*"), count=1000):
            name = _text(key)
            if name.startswith(head) and name.endswith(tail):
                ids.append(name[len(head) : len(name) - len(tail)])
                if len(ids) >= self.max_items:
                    break
        products: dict[str, Product] = {}
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            pipe = self.client.pipeline(transaction=False)
            for item in chunk:
                pipe.hmget(self.keys.catalog(item), [*_FIELDS, "deleted"])
            for item, values in zip(chunk, pipe.execute(), strict=True):
                record = {f: _text(v) for f, v in zip((*_FIELDS, "deleted"), values, strict=True)}
                if record["deleted"] != "1":  # a discontinued product's tombstone is no product
                    products[item] = Product.from_record(item, record)
        ordered = dict(sorted(products.items(), key=lambda kv: (fold(kv[1].title), kv[0])))
        return ordered, [(i, " ".join(tokens(f"{p.title} {p.category} {i}"))) for i, p in ordered.items()]

    def _popularity(self, ids: list[str]) -> dict[str, float]:
        if not ids:
            return {}
        return self.recommender.reader.popularity_log(ids)

    def listing(self, offset: int, limit: int) -> tuple[list[Product], int]:
        """One page of the catalog, most popular first; returns the page and the catalog's size."""
        products, _ = self._index()
        top = self.recommender.reader.popular_ids(offset + limit)
        order = [i for i in top if i in products]
        if len(order) < offset + limit:
            seen = set(order)
            order += [i for i in products if i not in seen][: offset + limit - len(order)]
        return [products[i] for i in order[offset : offset + limit]], len(products)

    def search(self, query: str, limit: int) -> list[Product]:
        """Items whose title or category holds every word of ``query`` (most popular first), then items
        shoppers acted on after the same search.

        Query and titles are read by the same ``search_text.tokens`` (accents and case folded, ``c++`` and
        ``c#`` kept apart) that the worker files search terms under."""
        words = tokens(query)
        if not words:
            return []
        products, haystacks = self._index()
        matched = [i for i, text in haystacks if all(w in text for w in words)][: limit * 20]
        popularity = self._popularity(matched)
        matched.sort(key=lambda i: -popularity.get(i, float("-inf")))
        found = [products[i] for i in matched[:limit]]
        if len(found) < limit:
            taken = {p.item_id for p in found}
            learned = self.recommender.reader.term_items(search_terms(query)[:1], limit)
            extra = [i for items in learned.values() for i in items if i not in taken]
            records = self.recommender.reader.catalog(extra[: limit - len(found)])
            found += [
                Product.from_record(i, r, note="shoppers who searched this chose it")
                for i, r in records.items()
                if r.get("deleted") != "1"  # a discontinued product's tombstone is no product
            ]
        return found

    def product(self, item_id: str) -> Product | None:
        """One product straight from Redis (not the index, so a new record shows at once); None when
        unknown or deleted."""
        record = self.recommender.reader.catalog([item_id]).get(item_id)
        return Product.from_record(item_id, record) if record and record.get("deleted") != "1" else None
