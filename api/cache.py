"""The API's per-process cache of state that changes slowly or never (``streamrec.state.Cache``).

Each kind of value has its own table, bounded in entries; a value is read again before it is older than
the staleness bound (``STREAMREC_API_CACHE_TTL_MS``). A user's own state is never cached here:
``Snapshot`` reads it on every answer (a cached answer is served only while it is unchanged), so a
shopper's new action shows at once. A TTL of 0 turns the whole
cache off.

Each entry leaves at a random point between ``1 - JITTER`` and all of the bound after it was read, so the
entries of one burst of reads (a process that starts, or a cold cache) do not all leave at the same
moment, one bound later, and again every bound after that. Measured in process at 175 personal answers a
second on 3,000 Beauty shoppers: without it, the 10 s after each minute had 8–9 neighbour-list misses per
answer against 0.1–0.4 in between, and cost 3.4–3.7 ms of CPU per answer against 1.7–2.0; with it (and
``state.DERIVE_WITHIN``) every 10 s cost 1.9–2.6 ms, about the same on average, without the waves.

Whole answers (personal, and similar items) are kept too (``STREAMREC_API_CACHE_ANSWERS_TTL_MS``,
``…_ANSWERS`` entries), each under its stamp (the user's version, the catalog generation, the active
model) and served only while the stamp read in the answer's first trip is the same
(``recommend.Recommender``); their age counts from the oldest neighbour list they were ranked from.
A catalog record cannot change while the catalog generation stays as it is, so catalog records are then
kept for twice the answers' bound: an answer computed again (its bound passed) finds most of those it
shows here, under the generation it checks, instead of reading them in one more trip.

**With a change feed** (``api/changes.py``; ``STREAMREC_API_CHANGE_FEED``, the default), the values
other shoppers change (counts, neighbour lists, catalog records, whole answers) are kept as long as none
of the items they depend on changed: each entry carries the change log's number seen before it was read
(its tag) and the items it depends on. Counts are kept current by the feed itself: each message carries
the new counts (``heard``), so a count held is never read again while the feed vouches for it. A catalog
record is checked on every lookup, so it is exact: a sale stop leaves the very next answer, and an answer
never comes out short because a restock was not seen; a move of its item's count alone leaves it be.
Neighbour lists (normalised by ~120 counts each) and whole answers are looked at again at most once per
general bound (``STREAMREC_API_CACHE_TTL_MS``, 500 ms): found unchanged, it is served for another bound
without a look; found changed, it goes (a list whose anchor's list is as it was is then normalised again
from the weights it keeps, ``state.Snapshot.neighbours``). So co-occurrence reaches every answer within
that bound (plus the feed's few milliseconds), an entry nothing changed stays however long, and one whose
inputs change many times a second (a popular item's list under live traffic) is computed again at most
twice a second. Answers are stamped by the catalog generation besides (``recommend.Recommender``). The
kinds' staleness bounds then only bound memory and what a lost feed may cost: while the feed cannot vouch
for an entry (not subscribed, or subscribed again since the entry was read), the entry is served only
within ``changes.FALLBACK_MS`` of its read. Parts of an answer that no item change announces (the
popularity fill-ins and search terms' items it used) keep their own bound, ``STREAMREC_API_CACHE_TTL_MS``,
through the entry's ``fresh_until``.

A full table evicts the entry read longest ago: every entry of a kind with a staleness bound leaves by its
age anyway, so a hit does not reorder the table (the cache's own bookkeeping was about a tenth of an
answer's time before). A model version's rows never change once published, so they are kept until
evicted, least recently used first.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

from streamrec.api.changes import FALLBACK_MS, ChangeLog
from streamrec.settings import Settings
from streamrec.state import CACHED_KINDS, MISSING

IMMUTABLE = frozenset({"model_rows"})  # kept until evicted: a published version's rows never change
# other shoppers' co-occurrence: kept for STREAMREC_API_CACHE_NEIGHBOURS_TTL_MS (the user's own history,
# which picks the seeds, is read on every answer)
NEIGHBOURS = frozenset({"neighbours", "counts"})
LISTS = frozenset({"model_active", "popular", "trending", "catalog_generation"})  # few keys: api_cache_lists
ANSWERS = "answers"  # whole answers: STREAMREC_API_CACHE_ANSWERS_TTL_MS, STREAMREC_API_CACHE_ANSWERS
# catalog records, each under the catalog generation it was read under: with answers kept, kept for twice
# the answers' bound (``ProcessCache.catalog_within``)
CATALOG = "catalog"
# items' counts: with a change feed, every new value comes with its message (``ProcessCache.heard``), so
# a count held is current for as long as the feed vouches, whatever changed
COUNTS = "counts"
JITTER = 0.25  # an entry stays for between 75 % and 100 % of its kind's staleness bound (uniformly)
# answers are computed in a burst when a process starts (every shopper's first request): they leave over
# the second half of their bound, so that the burst of answers computed again a bound later is spread
# out twice as much each time (in process at 500 answers/s on 3,000 shoppers, with 25 % the misses came
# back as waves of 20 % of the answers every 90 s)
ANSWERS_JITTER = 0.5
# what the change feed vouches for: values that change only when an item they depend on changes
FED = frozenset({"counts", "neighbours", "catalog", "answers"})
# of those, the ones looked at again once per general bound (catalog records: on every lookup, exactly;
# counts: current as long as the feed vouches, ``COUNTS``)
WINDOWED = frozenset({"neighbours", "answers"})


# an entry: [read at, value, leaves at, tag, depends on, fresh until, checked until]: times on the cache's
# clock; tag and depends on (item ids) for the change log (None: no tag); fresh until bounds parts no
# change announces; checked until: the entry was found unchanged, and is served without looking again
# until then (``ProcessCache._valid``)
Entry = list[Any]


class _Table:
    """One kind's entries (``Entry``), the one to evict first (read longest ago; for a kind without a
    staleness bound, used longest ago) first."""

    def __init__(self, size: int, ttl_s: float | None, jitter: float = JITTER) -> None:
        self.size, self.ttl_s, self.jitter = size, ttl_s, jitter
        self.entries: OrderedDict[Hashable, Entry] = OrderedDict()
        self.hits = self.misses = 0


class ProcessCache:
    """A thread-safe cache per kind, bounded in age and entries (``state.CACHED_KINDS``), for one API process.

    ``ttl_ms`` bounds how stale a value may be (0 disables the cache); ``neighbours_ttl_ms`` (default
    ``ttl_ms``) bounds the normalised neighbour lists and the counts they are computed from; ``items``
    bounds each per-item kind (catalog records, counts, neighbour lists, model rows), ``lists`` the list
    kinds (active model version, popularity tops, trending, the newest catalog generation seen);
    ``answers_ttl_ms`` and ``answers`` (default 0: none) bound the whole answers kept (compared
    by their stamp before they are served; ``recommend.Recommender``). With answers kept, catalog records
    are kept for twice the answers' bound (each under the catalog generation it was read under, which a
    stamped answer checks), and ``catalog_within`` is the share of that bound within which a reader
    without a stamp takes one (``ttl_ms`` over it). ``clock`` (seconds, monotonic) and
    ``seed`` (of when entries leave, ``JITTER``) are for tests. ``changes``: the change log a change feed
    keeps (``FED`` kinds are then kept while their items are unchanged, see the module). Raises
    ``ValueError`` for a negative bound.
    """

    def __init__(
        self,
        ttl_ms: int,
        items: int,
        lists: int,
        clock: Callable[[], float] = time.monotonic,
        neighbours_ttl_ms: int | None = None,
        seed: int | None = None,
        answers_ttl_ms: int = 0,
        answers: int = 0,
        changes: ChangeLog | None = None,
    ) -> None:
        self.changes = changes
        self._fallback_s = FALLBACK_MS / 1000.0
        neighbours_ttl_ms = ttl_ms if neighbours_ttl_ms is None else neighbours_ttl_ms
        if min(ttl_ms, items, lists, neighbours_ttl_ms, answers_ttl_ms, answers) < 0:
            raise ValueError("cache staleness and sizes must be >= 0")
        self.enabled = ttl_ms > 0 and items > 0
        self.answers = self.enabled and answers_ttl_ms > 0 and answers > 0
        self.clock = clock
        self._lock = threading.Lock()
        self._random = random.Random(seed)  # when each entry leaves (``JITTER``)

        # a catalog record does not change within a catalog generation: a stamped answer takes one read
        # under its generation or a later one whatever its age, so records are kept for twice the
        # answers' bound (a record read for an answer is still there when the answer is computed again);
        # a reader without a stamp takes only those read within the general bound
        catalog_ttl_ms = max(ttl_ms, 2 * answers_ttl_ms) if self.answers else ttl_ms
        self._ttl_s = ttl_ms / 1000.0
        self.catalog_within = ttl_ms / catalog_ttl_ms if catalog_ttl_ms else 1.0

        def ttl_s(kind: str) -> float | None:
            if kind in IMMUTABLE:
                return None
            if kind == ANSWERS:
                return answers_ttl_ms / 1000.0
            if kind == CATALOG:
                return catalog_ttl_ms / 1000.0
            return (neighbours_ttl_ms if kind in NEIGHBOURS else ttl_ms) / 1000.0

        def size(kind: str) -> int:
            return answers if kind == ANSWERS else lists if kind in LISTS else items

        self._tables = {
            kind: _Table(size(kind), ttl_s(kind), ANSWERS_JITTER if kind == ANSWERS else JITTER)
            for kind in CACHED_KINDS
        }

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
        changes: ChangeLog | None = None,
    ) -> ProcessCache:
        """The cache ``STREAMREC_API_CACHE_TTL_MS``, ``…_NEIGHBOURS_TTL_MS``, ``…_ANSWERS_TTL_MS``,
        ``…_ANSWERS``, ``…_ITEMS`` and ``…_LISTS`` describe (``clock``: seconds, monotonic; benchmarks and
        tests pass their own), following ``changes`` when given."""
        return cls(
            settings.api_cache_ttl_ms,
            settings.api_cache_items,
            settings.api_cache_lists,
            clock=clock,
            neighbours_ttl_ms=settings.api_cache_neighbours_ttl_ms,
            answers_ttl_ms=settings.api_cache_answers_ttl_ms,
            answers=settings.api_cache_answers,
            changes=changes,
        )

    @property
    def fresh_within_s(self) -> float:
        """The general staleness bound (``STREAMREC_API_CACHE_TTL_MS``) in seconds: how long parts of an
        answer that no item change announces may be kept (``put``'s ``fresh_until``)."""
        return self._ttl_s

    def now(self) -> float:
        """The cache's clock (seconds, monotonic)."""
        return self.clock()

    def tag(self) -> int | None:
        """The change log's number now, to tag values about to be read (None: no change log, or it vouches
        for nothing now)."""
        changes = self.changes
        if changes is None or not changes.subscribed:
            return None
        return changes.seq

    def _valid(self, kind: str, entry: Entry, now: float) -> bool:
        """Whether ``entry`` of ``kind`` may be served at ``now``: not left, and for a ``FED`` kind with a
        change log, unchanged since its tag (or, if the log cannot tell, read within the fallback bound)."""
        if now > entry[2]:
            return False
        changes = self.changes
        if changes is None or kind not in FED:
            return True
        tag = entry[3]
        if tag is None or not changes.trusted(tag):
            return now - entry[0] <= self._fallback_s
        if kind == COUNTS:
            return True  # the feed carries every new count into it (``heard``): current while trusted
        if entry[5] is not None and now > entry[5]:
            return False
        if now <= entry[6] and kind in WINDOWED:
            return True  # found unchanged less than one bound ago: a change since is at most that old
        if not changes.unchanged(tag, entry[4], kind != CATALOG):  # a record is not its count
            return False
        entry[6] = now + self._ttl_s
        return True

    def get(self, kind: str, key: Hashable) -> Any:
        """The value kept for ``(kind, key)``, or ``MISSING`` (never kept, evicted or left)."""
        if not self.enabled:
            return MISSING
        table = self._tables[kind]
        with self._lock:
            entry = table.entries.get(key)
            if entry is None or not self._valid(kind, entry, self.clock()):
                table.misses += 1
                return MISSING
            if table.ttl_s is None:
                table.entries.move_to_end(key)
            table.hits += 1
            return entry[1]

    def put(
        self,
        kind: str,
        key: Hashable,
        value: Any,
        read_at: float | None = None,
        tag: int | None = None,
        deps: tuple[str, ...] = (),
        fresh_until: float | None = None,
    ) -> None:
        """Keep ``value`` (shared, never mutated) for ``(kind, key)``, evicting as ``_Table`` orders; its
        age counts from ``read_at`` (this cache's clock, seconds; default now), the time its oldest input
        was read when it is derived from other values, and it leaves between ``1 - JITTER`` (answers:
        ``1 - ANSWERS_JITTER``) and all of the kind's bound after that. ``tag`` (the change log's number
        before the value or its inputs were read, ``tag()``) and ``deps`` (the item ids it depends on) let
        a change feed keep it exactly while they are unchanged; ``fresh_until`` (this cache's clock) ends
        it sooner for parts no change announces."""
        if not self.enabled:
            return
        table = self._tables[kind]
        with self._lock:
            changes = self.changes
            if kind == COUNTS and changes is not None and tag is not None and changes.last(key) > tag:
                return  # a newer count came with the feed since it was read: kept by ``heard`` or read again
            read_at = self.clock() if read_at is None else read_at
            life = (
                math.inf
                if table.ttl_s is None
                else table.ttl_s * (1.0 - table.jitter * self._random.random())
            )
            # checked now: its inputs were read after the tag, and whatever changes from here is looked
            # for once the general bound has passed
            table.entries[key] = [
                read_at,
                value,
                read_at + life,
                tag,
                deps,
                fresh_until,
                self.clock() + self._ttl_s,
            ]
            table.entries.move_to_end(key)
            while len(table.entries) > table.size:
                table.entries.popitem(last=False)

    def heard(self, counts: Mapping[str, float], seq: int) -> None:
        """New log-space counts the change feed carried in its message ``seq`` (``changes.ChangeFeed``):
        each count held takes its value as if read now, vouched for from ``seq`` on, so the answers that
        normalise by it read nothing again. Counts not held are left out (the table keeps those answers
        used; one that needs another reads it). Called on the feed's thread, after the log applied ``seq``."""
        if not self.enabled:
            return
        table = self._tables["counts"]
        with self._lock:
            entries, now = table.entries, self.clock()
            for item, value in counts.items():
                entry = entries.get(item)
                if entry is None:
                    continue
                life = table.ttl_s * (1.0 - table.jitter * self._random.random()) if table.ttl_s else 0.0
                entry[0], entry[1], entry[2], entry[3], entry[6] = (
                    now,
                    value,
                    now + life,
                    seq,
                    now + self._ttl_s,
                )
                entries.move_to_end(item)

    def held(
        self, kind: str, keys: Iterable[Hashable], within: float = 1.0
    ) -> dict[Hashable, tuple[float, Any]]:
        """Of ``keys``, those held for ``kind`` (not left yet) and read within ``within`` × its staleness
        bound, as (read at on this cache's clock, value), under one lock; each counts as a hit or a miss."""
        if not self.enabled:
            return {}
        table = self._tables[kind]
        out: dict[Hashable, tuple[float, Any]] = {}
        with self._lock:
            entries, ttl_s = table.entries, table.ttl_s
            now = self.clock()
            oldest = None if ttl_s is None else now - ttl_s * within
            fed = self.changes is not None and kind in FED
            for key in keys:
                entry = entries.get(key)
                if (
                    entry is None
                    or now > entry[2]
                    or (oldest is not None and entry[0] < oldest)
                    or (fed and not self._valid(kind, entry, now))
                ):
                    table.misses += 1
                    continue
                if oldest is None:  # no staleness bound: least recently used leaves first
                    entries.move_to_end(key)
                table.hits += 1
                out[key] = (entry[0], entry[1])
        return out

    def last_known(self, kind: str, keys: Iterable[Hashable]) -> dict[Hashable, Any]:
        """Of ``keys``, the values still in ``kind``'s table however old (left, not evicted yet): hints of
        what to read next, never served. Counts no hit or miss."""
        if not self.enabled:
            return {}
        with self._lock:
            entries = self._tables[kind].entries
            return {key: entry[1] for key in keys if (entry := entries.get(key)) is not None}

    def records_unchanged(self, tag: int | None, items: Iterable[str]) -> bool:
        """Whether the change log vouches that the neighbour lists and catalog records of ``items`` did
        not change since ``tag`` (their counts may have); False without a log, a tag, or trust."""
        changes = self.changes
        return changes is not None and tag is not None and changes.unchanged(tag, items, counts=False)

    def clear(self) -> None:
        """Forget everything (tests; an operator's switch takes effect here at once)."""
        with self._lock:
            for table in self._tables.values():
                table.entries.clear()

    def stats(self) -> dict[str, dict[str, int]]:
        """Per kind: entries held, hits and misses since start (for profiling and tests)."""
        with self._lock:
            return {
                kind: {"entries": len(t.entries), "hits": t.hits, "misses": t.misses}
                for kind, t in self._tables.items()
            }
