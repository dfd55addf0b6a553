"""How fast what other shoppers do reaches answers: the four probes of the freshness contract (issue 27).

Each probe works on a running stack (Kafka-protocol broker, worker, API) through its public doors only:
it publishes with a plain kafka-python producer, as a shop backend does, and reads the API over HTTP. It
reads the answers once *before* the change, as a live shop does while its pages are being shown, then
publishes the change, waits for Kafka's acknowledgement, and polls until every answer shows the change in
``STREAK`` reads in a row. The figure is the seconds from the acknowledgement to the first read of that
streak (docs/GUARANTEES.md, "Freshness contract": at most 1 s at p99).

- ``similar``: 3 shoppers view D then E; E in ``GET /v1/items/D/similar``.
- ``personal``: 3 shoppers view D then F; F in the answer of a shopper who viewed D earlier.
- ``popular``: 30 shoppers view H; H in popular and trending of its category.
- ``stock``: G set ``in_stock: false``; G gone from popular, trending, similar and personal answers.

Every probe uses ids of its own (``run`` prefixes them), so probes and trials never see each other.
Used by ``streamrec bench --serving`` and by the end-to-end tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import requests
from kafka import KafkaProducer

from streamrec.contract import now_ms
from streamrec.topics import Topics

STREAK = 4  # reads in a row that must all show the change
POLL_S = 0.005
KINDS = ("similar", "personal", "popular", "stock")


class ProbeTimeout(AssertionError):
    """A change did not show within the probe's deadline."""


@dataclass
class Probe:
    """One shop to probe: the API's base URL, the broker and the topic prefix."""

    api: str
    bootstrap: str
    topic_prefix: str
    deadline_s: float = 30.0

    def __post_init__(self) -> None:
        self.topics = Topics(self.topic_prefix)
        self.producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=0)
        self.http = requests.Session()
        self._n = 0

    def close(self) -> None:
        """Close the producer and the HTTP session."""
        self.producer.close()
        self.http.close()

    # --- publishing
    def views(self, user: str, *items: str) -> None:
        """Publish ``user``'s views of ``items``, in that order, a millisecond apart (not flushed)."""
        t = now_ms() - 1000
        for n, item in enumerate(items):
            self._n += 1
            event = {"event_id": f"{user}-{self._n}", "type": "view", "user_id": user, "item_id": item}
            event["ts"] = t + n
            self.producer.send(self.topics.events, key=user.encode(), value=orjson.dumps(event))

    def item(self, item: str, category: str, in_stock: bool = True) -> None:
        """Publish a catalog record (not flushed)."""
        record = {
            "item_id": item,
            "title": f"Probe {item}",
            "category": category,
            "price": 9.99,
            "in_stock": in_stock,
            "ts": now_ms(),
        }
        self.producer.send(self.topics.items, key=item.encode(), value=orjson.dumps(record))

    def acknowledged(self) -> float:
        """Flush: the moment Kafka acknowledged everything sent (``time.monotonic()``)."""
        self.producer.flush()
        return time.monotonic()

    # --- reading
    def items(self, path: str) -> list[str]:
        """The item ids of one answer."""
        resp = self.http.get(f"{self.api}{path}", timeout=5)
        resp.raise_for_status()
        return [i["item_id"] for i in resp.json()["data"]["items"]]

    def settle(self, check: Callable[[], bool], what: str) -> None:
        """Wait until ``check()`` (the setup of a probe is folded)."""
        deadline = time.monotonic() + self.deadline_s
        while not check():
            if time.monotonic() > deadline:
                raise ProbeTimeout(f"setup never settled: {what}")
            time.sleep(0.05)

    def until(self, since: float, checks: dict[str, Callable[[list[str]], bool]], what: str) -> float:
        """Seconds from ``since`` until every path in ``checks`` passes ``STREAK`` reads in a row."""
        streak = 0
        first = None
        while True:
            now = time.monotonic()
            if all(check(self.items(path)) for path, check in checks.items()):
                streak += 1
                first = now if streak == 1 else first
                if streak >= STREAK:
                    return (first or now) - since
            else:
                streak = 0
            if now - since > self.deadline_s:
                raise ProbeTimeout(f"{what}: not shown within {self.deadline_s:.0f} s")
            time.sleep(POLL_S)

    # --- the four kinds
    def similar(self, tag: str) -> float:
        """3 shoppers view D then E: seconds until E is in D's similar items."""
        d, e, x = f"{tag}-D", f"{tag}-E", f"{tag}-X"
        for shopper in range(3):
            self.views(f"{tag}-bg{shopper}", d, x)
        self.acknowledged()
        path = f"/v1/items/{d}/similar?k=10"
        self.settle(lambda: x in self.items(path), f"{x} in {path}")
        assert e not in self.items(path)  # read before the change
        for shopper in range(3):
            self.views(f"{tag}-s{shopper}", d, e)
        return self.until(self.acknowledged(), {path: lambda got: e in got}, f"{e} in {path}")

    def personal(self, tag: str) -> float:
        """3 shoppers view D then F: seconds until F is in the answer of a shopper who viewed D earlier."""
        d, f, x, me = f"{tag}-D", f"{tag}-F", f"{tag}-X", f"{tag}-me"
        for shopper in range(3):
            self.views(f"{tag}-bg{shopper}", d, x)
        self.views(me, d)
        self.acknowledged()
        path = f"/v1/users/{me}/recommendations?k=10"
        self.settle(lambda: x in self.items(path), f"{x} in {path}")
        assert f not in self.items(path)
        for shopper in range(3):
            self.views(f"{tag}-s{shopper}", d, f)
        return self.until(self.acknowledged(), {path: lambda got: f in got}, f"{f} in {path}")

    def popular(self, tag: str) -> float:
        """30 shoppers view H: seconds until H is in popular and trending of its category."""
        h, category = f"{tag}-H", f"{tag}-cat"
        self.item(h, category)
        self.acknowledged()
        paths = [f"/v1/popular?k=5&category={category}", f"/v1/trending?k=5&category={category}"]
        self.settle(lambda: self._catalogued(h), f"{h} in the catalog")
        for path in paths:
            assert h not in self.items(path)
        for shopper in range(30):
            self.views(f"{tag}-s{shopper}", h)
        checks = {path: (lambda got: h in got) for path in paths}
        return self.until(self.acknowledged(), checks, f"{h} in popular and trending")

    def stock(self, tag: str) -> float:
        """G sold out: seconds until G is gone from popular, trending, similar and personal answers."""
        d, g, me, category = f"{tag}-D", f"{tag}-G", f"{tag}-me", f"{tag}-cat"
        self.item(d, category)
        self.item(g, category)
        self.acknowledged()
        self.settle(lambda: self._catalogued(g), f"{g} in the catalog")
        for shopper in range(5):
            self.views(f"{tag}-s{shopper}", d, g)
        self.views(me, d)
        self.acknowledged()
        paths = [
            f"/v1/popular?k=5&category={category}",
            f"/v1/trending?k=5&category={category}",
            f"/v1/items/{d}/similar?k=5",
            f"/v1/users/{me}/recommendations?k=5",
        ]
        self.settle(lambda: all(g in self.items(p) for p in paths), f"{g} in every answer")
        self.item(g, category, in_stock=False)
        checks = {path: (lambda got: g not in got) for path in paths}
        return self.until(self.acknowledged(), checks, f"{g} gone from every answer")

    def own(self, tag: str, item: str) -> float:
        """A new shopper views ``item`` (one with neighbours): seconds until their answer is personal."""
        me = f"{tag}-me"
        path = f"{self.api}/v1/users/{me}/recommendations?k=10"

        def personal() -> bool:
            return self.http.get(path, timeout=5).json()["data"]["strategy"] == "personalized"

        assert not personal()  # read before: a new shopper's answer is the fallback
        self.views(me, item)
        since = self.acknowledged()
        streak = 0
        while True:
            now = time.monotonic()
            streak = streak + 1 if personal() else 0
            if streak == 1:
                first = now
            if streak >= STREAK:
                return first - since
            if now - since > self.deadline_s:
                raise ProbeTimeout(f"{me}'s view of {item}: not shown within {self.deadline_s:.0f} s")
            time.sleep(POLL_S)

    def _catalogued(self, item: str) -> bool:
        return self.http.get(f"{self.api}/v1/items/{item}", timeout=5).status_code == 200

    def run(self, kind: str, tag: str) -> float:
        """One trial of ``kind`` (one of ``KINDS``) with ids prefixed by ``tag``: seconds until shown."""
        return {
            "similar": self.similar,
            "personal": self.personal,
            "popular": self.popular,
            "stock": self.stock,
        }[kind](tag)
