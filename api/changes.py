"""What other shoppers changed, as it happens: the worker's change feed, followed by each API process.

Every fold call that changes items publishes them on one Pub/Sub channel (``Keys.changes()``): the ids
of items whose neighbour list or catalog record changed, and with its new value each item whose count
(the normaliser of the lists it is in) changed (``parse``). Each API process follows the channel on a
thread of its own (``ChangeFeed``) and keeps a ``ChangeLog``: a sequence number that moves with every
message, and for each changed item the number of the last message that named it (of any kind, and of
the first kind alone); the counts go straight into the cache (``ProcessCache.heard``). A value an answer read is tagged with the sequence number seen before it was read;
it is valid as long as none of the items it depends on changed since (``ChangeLog.unchanged``; the cache
looks again at most once per its general bound, ``api/cache.py``).

That is how the API's caches keep the freshness contract by construction (docs/GUARANTEES.md): what any
shopper does reaches every cached value that depends on it as soon as the worker has folded it, not when
a staleness bound runs out. The race of a read and a change crossing is safe: a value read before a
change is tagged with a number below the change's, so the change's message invalidates it whenever it
arrives, even after the value was cached.

Pub/Sub keeps no messages for a subscriber that is away. Whenever the feed is not subscribed (before its
first subscription, after a lost connection, while Redis is down), ``trusted`` is False for everything read
before it subscribed again, and callers fall back to a short staleness bound (``FALLBACK_MS``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("streamrec.api")

FALLBACK_MS = 500  # how stale a cached value may be while the feed cannot vouch for it (ms)
# the most items the log remembers; past it, it forgets them all and trusts nothing read before (bounded
# memory whatever the catalog's size: at worst the caches are emptied once per this many changed items)
MAX_ITEMS = 200_000


class ChangeLog:
    """Which items changed, in the order the feed heard of it. Thread-safe for one writer (the feed's
    thread) and many readers (request threads): readers only look values up.

    ``seq`` is the number of the last message applied. ``floor`` is the first number the log vouches for:
    a value tagged below it was read while the feed was away (or before the log forgot), so nothing says
    whether it changed since. Two kinds of change are told apart: an item's *record* (its neighbour list
    or its catalog record) and its *count* alone (the co-occurrence normaliser, which moves with every
    view of the item). What depends on an item's count changes with either; a neighbour list as stored
    and a catalog record only with the first (``unchanged(..., counts=False)``).
    """

    def __init__(self, max_items: int = MAX_ITEMS) -> None:
        self.seq = 0
        self.floor = 1  # nothing is vouched for until the feed has subscribed once
        self.subscribed = False
        self.max_items = max_items
        self._changed: dict[str, int] = {}  # item -> number of the last message naming it at all
        self._records: dict[str, int] = {}  # item -> ... naming its neighbour list or catalog record

    def trusted(self, tag: int) -> bool:
        """Whether the log knows every change since a value tagged ``tag`` was read."""
        return self.subscribed and tag >= self.floor

    def unchanged(self, tag: int, items: Iterable[str], counts: bool = True) -> bool:
        """Whether none of ``items`` changed since a value tagged ``tag`` was read (and the log can tell);
        with ``counts`` False, changes of their counts alone do not count."""
        if not self.trusted(tag):
            return False
        get = (self._changed if counts else self._records).get
        return all(get(item, 0) <= tag for item in items)

    def last(self, item: str) -> int:
        """The number of the last message that named ``item`` (0: none the log remembers)."""
        return self._changed.get(item, 0)

    def changed(self, records: Iterable[str], counts: Iterable[str] = ()) -> None:
        """One message (the feed's thread): the neighbour lists or catalog records of ``records`` changed,
        and the counts of ``counts``."""
        seq = self.seq + 1
        changed, kept = self._changed, self._records
        for item in records:
            changed[item] = seq
            kept[item] = seq
        for item in counts:
            changed[item] = seq
        self.seq = seq
        if len(changed) > self.max_items:
            self.forget()

    def forget(self) -> None:
        """Vouch for nothing read so far (the feed was away, or the log is full): the number moves on, and
        only values tagged with it or a later one (read from now on) are vouched for."""
        self.seq += 1
        self.floor = self.seq
        self._changed = {}
        self._records = {}

    def set_subscribed(self, subscribed: bool) -> None:
        """The feed (re)subscribed, or lost its subscription: either way, what was read before is not
        vouched for (messages may have been missed in between)."""
        self.forget()
        self.subscribed = subscribed


class ChangeFeed:
    """Follows the change channel on a daemon thread and applies each message to ``changes``.

    ``connect()`` returns a fresh ``redis.Redis`` (or cluster client) to subscribe with; ``on_message(n)``
    is told how many items each message named (metrics). A message is one line per item (``parse``); the
    new counts it carries go to ``on_counts(counts, seq)`` once the log has applied the message (``seq``:
    its number; the API's cache takes them in, ``ProcessCache.heard``). A lost connection is retried with
    backoff (0.1 s doubling to 5 s); meanwhile ``changes.subscribed`` is False. ``start`` returns at once.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        channel: str,
        changes: ChangeLog,
        on_message: Callable[[int], None] = lambda n: None,
        on_state: Callable[[bool], None] = lambda up: None,
        on_counts: Callable[[dict[str, float], int], None] = lambda counts, seq: None,
    ) -> None:
        self._connect = connect
        self._on_counts = on_counts
        self.channel = channel
        self.changes = changes
        self._on_message = on_message
        self._on_state = on_state
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ChangeFeed:
        """Start following the channel (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="change-feed", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop following (tests); the thread ends within a second."""
        self._stop.set()

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                self._follow()
                backoff = 0.1
            except Exception as exc:  # noqa: BLE001 - the feed never dies: redis-py's cluster client
                # raises RedisClusterException (not a RedisError) when no node answers
                if self.changes.subscribed:
                    log.warning("change feed lost (%s): caches fall back to %d ms", exc, FALLBACK_MS)
            finally:
                if self.changes.subscribed:
                    self.changes.set_subscribed(False)
                    self._on_state(False)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _follow(self) -> None:
        client = self._connect()
        pubsub = client.pubsub(ignore_subscribe_messages=False)
        try:
            pubsub.subscribe(self.channel)
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                kind = message.get("type")
                if kind == "subscribe":
                    # from here on every change is heard: values read from now on are vouched for
                    self.changes.set_subscribed(True)
                    self._on_state(True)
                    log.info("change feed subscribed to %s", self.channel)
                elif kind == "message":
                    data = message["data"]
                    records, counts = parse(data.decode() if isinstance(data, bytes) else data)
                    self.changes.changed(records, counts)
                    if counts:
                        self._on_counts(counts, self.changes.seq)
                    self._on_message(len(records) + len(counts))
        finally:
            try:
                pubsub.close()
                client.close()
            except Exception:  # noqa: BLE001 - closing a broken connection must not end the feed
                pass


def parse(text: str) -> tuple[list[str], dict[str, float]]:
    r"""One change message (``fold.lua``'s ``publish_changes``): the ids of the items whose neighbour list
    or catalog record changed, and the new log-space counts of those whose count changed. Each line is an
    item id (the first kind) or ``<id>\t<log count>`` (the second: the text Redis stored); an item may be
    named once of each kind. Ids hold no control characters (the event contract). A count that does not
    read as a number makes its line count as the first kind (whatever was cached of the item is read
    again)."""
    records: list[str] = []
    counts: dict[str, float] = {}
    for line in text.split("\n"):
        item, tab, value = line.partition("\t")
        if tab:
            try:
                counts[item] = float(value)
                continue
            except ValueError:
                pass
        records.append(item)
    return records, counts


def wait_subscribed(changes: ChangeLog, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the feed to subscribe (tests, benchmarks); whether it did."""
    deadline = time.monotonic() + timeout
    while not changes.subscribed:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
