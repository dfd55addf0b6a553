"""Answers to "recommended for you", "similar", "popular" and "trending", ranked from Redis state.

The API and offline evaluation both call this; neither ranks on its own. The maths is in ``scoring``.

Each answer is computed from one ``state.Snapshot`` (docs/STATE.md, "One consistent read"): the user's group
in one read-only script (trip 1), everything else from the per-process cache the recommender was given, and
what the cache misses in one pipelined trip per pass that re-reads the user's version (trip 2). If an event of
the user was folded in between, the answer is computed again from a new snapshot, so that it is entirely
before or entirely after that event. With every cache warm, a personal answer is 1 round trip, or 2 when the
user searched (the search terms' items are always read fresh).

A cache that keeps answers (the API's) also keeps each personal and similar-items answer under its stamp: the
user's version, the catalog generation and the active model, read in trip 1. While they are unchanged the same
request is answered from it in that one trip (docs/STATE.md, "Cached answers").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from streamrec import event_types
from streamrec.modelstore import ModelStore
from streamrec.placements import Filter, Placement, apply_placement, is_usable
from streamrec.scoring import Candidate, blend, history_seeds, personal_scores, rank
from streamrec.settings import ScoringSettings
from streamrec.state import MISSING, Cache, NoCache, Snapshot, SnapshotMoved, StateReader

TERM_ITEMS_READ = 50
PAGE_MAX = 5000  # the most rows one read of a popularity or trending list asks for
TERMS_USED = 10
T = TypeVar("T")
SNAPSHOT_ATTEMPTS = 3  # snapshots one answer may take when the user's events keep being folded meanwhile
PASSES_MAX = 64  # computations of one answer from one snapshot (each pass reads what the last one missed)


def catalog_chunk(k: int, category: str | None = None) -> int:
    """How many ranked candidates' catalog records an answer of ``k`` reads at once: enough to fill it
    when a few are sold out or deleted (the ranked candidates are already outside the exclusions), so
    most answers read them in one go; twice as many in a ``category``, where many candidates are filed
    under another. A short answer reads the next chunk in another pass, so the size changes how many
    records are read (each a command of the answer's trip), never the answer."""
    return 2 * k + 5 if category else k + max(3, k // 4)


@dataclass(frozen=True)
class Ranked:
    """One item of an answer: its score (unitless, higher first), the reason shown and its source
    (``item_to_item``, ``model``, ``search``, ``popular``, ``trending``, …)."""

    item_id: str
    score: float
    reason: str
    source: str
    rules: tuple[str, ...] = ()  # the placement rules that placed or moved it ("pinned", "boosted ×1.5", …)


@dataclass(frozen=True)
class Rules:
    """What a request asks of an answer besides its strategy (issue 28): a placement's rules and an ad
    hoc filter (the request's ``filter=``), both compiled once (``streamrec.placements``). ``key`` tells
    them apart in cached answers' keys: the placement's name and the version of the placements it was
    read under, and the filter's text."""

    placement: Placement | None = None
    extra: Filter | None = None
    key: Hashable = None

    def admits(self, record: dict[str, str] | None) -> bool:
        """Whether an item with ``record`` passes the placement's filter and the request's."""
        row = record or {}
        placement = self.placement
        if placement is not None and placement.filter is not None and not placement.filter.matches(row):
            return False
        return self.extra is None or self.extra.matches(row)

    @property
    def filters(self) -> bool:
        """Whether some items may be filtered out."""
        return self.extra is not None or (self.placement is not None and self.placement.filter is not None)

    @property
    def reorders(self) -> bool:
        """Whether the rules may move items or take them from further down (boost, pin, promote,
        diversity): they then need a pool of candidates larger than k."""
        p = self.placement
        return p is not None and bool(p.boost or p.pin or p.promote or p.diversity)


NO_RULES = Rules()
POOL_MAX = 5000  # the most candidates one placed answer gathers (while it is short of k)
# promoted items are looked for among the first PROMOTE_POOLS × (3k + 20) candidates: an answer that is
# full but short of promoted items does not read the whole catalog for them
PROMOTE_POOLS = 4
# the most trending rows an answer with filters reads (without: PAGE_MAX): a filter that 1 item in 500
# passes still fills k from a list of this many
FILTERED_MAX = 100_000


FILL_INS = frozenset({"category_popular", "popular"})  # sources of the popularity fallbacks


def comparable(items: Sequence[Ranked]) -> list[Ranked]:
    """``items`` in the same order, with scores that compare across their sources, for rules that re-sort
    by score (a placement's boosts). An answer is ranked candidates (one scoring: item-to-item, search,
    model, repeats) followed by popularity fill-ins (category, then overall), each on its own scale: a
    fill-in's decayed popularity can be hundreds of times a candidate's normalised co-occurrence. Each run
    of one source after the first is scaled down, ratios within it kept, so that its best scores 0.99 of
    the lowest score before it (a run already below is left as it is); a boost ×m then lifts an item
    above another only when its score is within m of it, whatever their sources."""
    out: list[Ranked] = []
    floor: float | None = None  # the lowest score so far
    factor = 1.0
    run: tuple[str, str] | None = None
    for item in items:
        key = (item.source, item.reason) if item.source in FILL_INS else ("ranked", "")
        if key != run:
            run = key
            factor = 1.0
            if floor is not None and out and item.score > 0 and item.score > floor * 0.99:
                factor = max(floor, 0.0) * 0.99 / item.score
        score = item.score * factor
        out.append(
            Ranked(item.item_id, score, item.reason, item.source, item.rules) if factor != 1.0 else item
        )
        floor = score if floor is None else min(floor, score)
    return out


@dataclass(frozen=True)
class Answer:
    """A ranked list, the strategy that produced its first item, and the catalog records read on the way.

    An answer never changes once made, so what is derived from it alone never does either: ``rendered``
    keeps that for whoever shows it (the API keeps each answer's items as encoded JSON there, one per way
    of showing them), so an answer served again from a cache is not shaped again. It is not compared.
    """

    strategy: str
    items: list[Ranked]
    catalog: dict[str, dict[str, str]] = field(default_factory=dict)
    model_version: str | None = None
    rendered: dict[Hashable, Any] = field(default_factory=dict, compare=False, repr=False)


INCOMPLETE = Answer("empty", [])  # what a pass that still lacks reads computes (never served)


def _usable(record: dict[str, str] | None, category: str | None) -> bool:
    """In stock, not deleted, and in ``category`` when one is asked for (items without a record pass)."""
    if record is not None and (record.get("in_stock") == "0" or record.get("deleted") == "1"):
        return False
    return category is None or (record is not None and record.get("category") == category)


class Recommender:
    """Ranks from one state reader with one set of scoring settings.

    ``cache`` holds slowly changing state between answers (``state.Cache``; the API's is per process with a
    bounded staleness); the default holds nothing, so every answer reads all it needs.
    """

    def __init__(
        self,
        reader: StateReader,
        scoring: ScoringSettings,
        models: ModelStore | None = None,
        clock: Callable[[], int] | None = None,
        cache: Cache | None = None,
    ) -> None:
        self.reader = reader
        self.scoring = scoring
        self.models = models
        self.clock = clock
        self.cache: Cache = cache if cache is not None else NoCache()
        self._weights: tuple[ScoringSettings, dict[str, float]] | None = None

    def _type_weights(self) -> dict[str, float]:
        """``scoring.type_weights()``, computed once per settings object (every answer uses it)."""
        if self._weights is None or self._weights[0] is not self.scoring:
            self._weights = (self.scoring, self.scoring.type_weights())
        return self._weights[1]

    def now(self) -> int:
        """Now in epoch ms: the wall clock, or the clock this recommender was given (offline evaluation
        ranks as of the end of its training data)."""
        return self.clock() if self.clock is not None else int(time.time() * 1000)

    def _answer(
        self, user_id: str | None, compute: Callable[[Snapshot], T], key: Hashable | None = None
    ) -> T:
        """``compute`` on one snapshot, pass after pass until it had every read it asked for.

        A snapshot whose user moved (an event folded between its reads) is dropped and the answer computed
        from a new one; the last of ``SNAPSHOT_ATTEMPTS`` is not checked (a user whose events are folded
        faster than an answer is read gets one whose exclusions are those of its first read).

        With a ``key`` (a personal or similar-items request) and a cache that keeps answers, trip 1 also
        reads the snapshot's ``stamp`` (the user's version, if any, the catalog generation, the active
        model): an answer cached under the same key and stamp is served as it is, and a checked answer is
        cached under its stamp, its age counted from when the oldest neighbour list it was ranked from
        was read. An answer computed again reads the catalog records of the one it replaces (they are
        likely shown again) with its first reads.
        """
        stamped = key is not None and self.cache.answers
        for attempt in range(SNAPSHOT_ATTEMPTS):
            strict = attempt < SNAPSHOT_ATTEMPTS - 1
            held = self.cache.get("answers", key) if stamped else MISSING
            stamp = None if held is MISSING else held[0]
            snap = Snapshot(self.reader, self.cache, self.now(), user_id, strict, stamped, stamp)
            if held is not MISSING and snap.unchanged:
                return held[1]  # type: ignore[no-any-return]
            if stamped and (last := self.cache.last_known("answers", [key]).get(key)) is not None:
                snap.expect_catalog(r.item_id for r in last[1].items)
            try:
                for _ in range(PASSES_MAX):
                    result = compute(snap)
                    if snap.complete:
                        break
                    snap.fetch()
            except SnapshotMoved:
                continue
            if stamped and strict:
                self.cache.put(
                    "answers",
                    key,
                    (snap.stamp, result),
                    snap.read_at,
                    tag=snap.tag,
                    deps=tuple(snap.deps),
                    fresh_until=snap.fresh_until,
                )
            return result
        raise AssertionError("unreachable: the last snapshot is not checked")

    def _normalised(self, anchors: Sequence[str], now: int) -> dict[str, dict[str, float]]:
        """Each anchor's popularity-normalised neighbours at ``now`` (epoch ms), without neighbours that have no
        activity left, exactly as an answer ranks them (``Snapshot.neighbours``; offline evaluation uses
        this). Two pipelined trips: the lists with the anchors' counts, then the neighbours' counts."""
        snap = Snapshot(self.reader, self.cache, now)
        for _ in range(PASSES_MAX):
            out = snap.neighbours(anchors)
            if snap.complete:
                return out
            snap.fetch()
        raise AssertionError("unreachable: the second pass has every count")

    def _batch(
        self, snap: Snapshot, seeds: Sequence[str]
    ) -> tuple[str | None, dict[str, dict[str, float]], float]:
        """The active batch model's neighbours of ``seeds`` and its blend share (empty: no model to blend).

        The share is the one the trainer chose for that model on validation, recorded in its metadata
        (``ModelStore.blend_share``, kept per process: a version's metadata never changes); a model without
        one gets ``STREAMREC_SCORING_MODEL_BLEND``. Through ``ModelStore``'s own reads: the active version is
        cached with the cache's staleness, a version's rows (immutable) until evicted; only what the cache
        misses is read.
        """
        if self.models is None or not seeds:
            return None, {}, 0.0
        version = snap.get("model_active", None)
        if version is MISSING:
            version, rows = self.models.neighbours(seeds)  # the active version and its rows, together
            snap.put("model_active", None, version)
            if version is not None:
                for item in seeds:
                    snap.put("model_rows", (version, item), rows.get(item, {}))
        if version is None:
            return None, {}, 0.0
        recorded = self.models.blend_share(version)
        share = self.scoring.model_blend if recorded is None else recorded
        if share <= 0:
            return None, {}, 0.0
        cached = {item: snap.get("model_rows", (version, item)) for item in seeds}
        missing = [item for item, row in cached.items() if row is MISSING]
        if missing:
            read_version, rows = self.models.neighbours(missing)
            if read_version != version:  # switched since it was cached: the new version's rows of every seed
                snap.put("model_active", None, read_version)
                return self._batch(snap, seeds)
            for item in missing:
                cached[item] = rows.get(item, {})
                snap.put("model_rows", (version, item), cached[item])
        return version, {item: row for item, row in cached.items() if row}, share

    def _finish(
        self,
        snap: Snapshot,
        ranked: list[Candidate],
        k: int,
        category: str | None,
        exclude: set[str],
        fallback_from: Sequence[str],
        personal: str = "personalized",
        model_version: str | None = None,
        rules: Rules = NO_RULES,
        memo: dict[str, Any] | None = None,
    ) -> Answer:
        """Filter by stock and category (and ``rules``' filters), then fill up from category popularity
        and overall popularity; with ``rules``, place the result (``_placed``, ``memo`` its per-request
        notes).

        The fallback uses the categories of the ``fallback_from`` items. Catalog records are read as
        they are needed: the ranked candidates ``catalog_chunk(k)`` at a time, the ``fallback_from`` items'
        only when the ranked ones leave the answer short (each further read is one more pass).
        """
        if rules is NO_RULES:
            return self._gather(snap, ranked, k, category, exclude, fallback_from, personal, model_version)
        return self._placed(
            snap,
            k,
            rules,
            lambda n: self._gather(
                snap, ranked, n, category, exclude, fallback_from, personal, model_version, rules.admits
            ),
            personal,
            memo,
        )

    def _placed(
        self,
        snap: Snapshot,
        k: int,
        rules: Rules,
        gather: Callable[[int], Answer],
        personal: str = "personalized",
        memo: dict[str, Any] | None = None,
    ) -> Answer:
        """An answer of ``k`` placed by ``rules`` (``placements.apply_placement``) from the pool
        ``gather(n)`` gives: up to ``n`` usable items, in rank order, that pass the rules' filters. The
        pool is k when the rules only filter, else 3k + 20, and grows (``Placed.next_pool``) while the
        ranking has more and the placed answer is short of k (up to ``POOL_MAX``) or of promoted items
        (up to ``PROMOTE_POOLS`` × (3k + 20)). Pinned items' records are read with the first pass; a pinned item is shown whenever it is
        usable (in stock, not deleted), whatever the filters. Items carry the rules that placed them.
        ``memo`` (one per request) keeps the pool size reached, so a later pass of the same snapshot
        (one that only read more records) starts there instead of growing again from the start."""
        placement = rules.placement
        pins = placement.pinned_items if placement is not None else ()
        pinned = snap.catalog(pins) if pins else {}
        n = k * 3 + 20 if rules.reorders else k
        promote_max = PROMOTE_POOLS * (k * 3 + 20)
        if memo is not None and memo.get("pool_snap") is snap:
            n = memo["pool_n"]
        while True:
            pool = gather(n)
            if not snap.complete:
                return INCOMPLETE
            records = {**pool.catalog, **pinned}
            usable = {item: is_usable(pinned.get(item)) for item in pins}
            placed = apply_placement(placement, comparable(pool.items), records, k, usable, rules.extra)
            if not placed.needs_more or len(pool.items) < n or n >= POOL_MAX:
                break
            if placed.short_by == 0 and n >= promote_max:
                break  # full, only short of promoted items: they were looked for far enough down
            n = min(placed.next_pool(k), POOL_MAX if placed.short_by else promote_max)
            if memo is not None:
                memo["pool_snap"], memo["pool_n"] = snap, n
        items = [
            Ranked(p.item_id, p.score or 0.0, p.reason or "pinned", p.source or "pinned", p.rules)
            for p in placed.items
        ]
        strategy = next((i.source for i in items if i.source != "pinned"), "pinned" if items else "empty")
        if strategy in {"item_to_item", "search", "model", "repeat"}:
            strategy = personal
        return Answer(
            strategy,
            items,
            {i.item_id: records[i.item_id] for i in items if i.item_id in records},
            pool.model_version,
        )

    def _gather(
        self,
        snap: Snapshot,
        ranked: list[Candidate],
        k: int,
        category: str | None,
        exclude: set[str],
        fallback_from: Sequence[str],
        personal: str = "personalized",
        model_version: str | None = None,
        admits: Callable[[dict[str, str] | None], bool] | None = None,
    ) -> Answer:
        """``_finish`` without rules: up to ``k`` usable items (and, with ``admits``, items it admits),
        the ranked ones first, then category and overall popularity."""
        catalog: dict[str, dict[str, str]] = {}
        picked: list[Ranked] = []
        taken = set(exclude)
        step = catalog_chunk(k, category)
        for start in range(0, len(ranked), step):
            if len(picked) >= k:
                break
            part = ranked[start : start + step]
            catalog.update(snap.catalog(c.item_id for c in part))
            if not snap.complete:
                return INCOMPLETE
            for c in part:
                if len(picked) >= k:
                    break
                record = catalog.get(c.item_id)
                if (
                    c.item_id not in taken
                    and _usable(record, category)
                    and (admits is None or admits(record))
                ):
                    picked.append(Ranked(c.item_id, c.score, c.reason, c.source))
                    taken.add(c.item_id)
        fallback_categories: list[str] = []
        if len(picked) < k and not category:
            catalog.update(snap.catalog(i for i in dict.fromkeys(fallback_from) if i not in catalog))
            if not snap.complete:
                return INCOMPLETE
            fallback_categories = [
                catalog[i]["category"] for i in fallback_from if catalog.get(i, {}).get("category")
            ]
        cats = [category] if category else list(dict.fromkeys(fallback_categories))
        fills = [(cat, "category_popular", f"popular in {cat}") for cat in cats]
        if category is None:
            fills.append((None, "popular", "popular right now"))
        for cat, source, reason in fills:
            # page down the list until k usable items are found or it ends: a list whose top is sold out,
            # excluded or filed under another category still fills the answer
            offset, page = 0, k + len(taken) + 10
            while len(picked) < k:
                rows = snap.popular(page, cat, offset)
                catalog.update(snap.catalog(item for item, _ in rows if item not in catalog))
                if not snap.complete:
                    return INCOMPLETE
                for item, score in rows:
                    if len(picked) >= k:
                        break
                    record = catalog.get(item)
                    if (
                        item not in taken
                        and _usable(record, cat or category)
                        and (admits is None or admits(record))
                    ):
                        picked.append(Ranked(item, score, reason, source))
                        taken.add(item)
                if len(rows) < page:
                    break
                offset += len(rows)
                page = min(page * 2, PAGE_MAX)
        strategy = picked[0].source if picked else "empty"
        if strategy in {"item_to_item", "search", "model", "repeat"}:
            strategy = personal
        return Answer(
            strategy,
            picked,
            {i.item_id: catalog[i.item_id] for i in picked if i.item_id in catalog},
            model_version,
        )

    def for_user(
        self,
        user_id: str,
        k: int,
        category: str | None = None,
        exclude: Iterable[str] = (),
        rules: Rules = NO_RULES,
    ) -> Answer:
        """Personal recommendations: neighbours of recent actions and items that followed recent searches
        (placed by ``rules``, when given)."""
        exclude = set(exclude)
        scored: dict[str, Any] = {}
        key = ("for_user", user_id, k, category, frozenset(exclude), rules.key)
        return self._answer(
            user_id, lambda snap: self._for_user(snap, k, category, exclude, scored, rules), key
        )

    def _for_user(
        self,
        snap: Snapshot,
        k: int,
        category: str | None,
        exclude: set[str],
        scored: dict[str, Any],
        rules: Rules = NO_RULES,
    ) -> Answer:
        """One pass of ``for_user``. ``scored`` keeps the ranked candidates of the snapshot that scored
        them: a later pass of the same snapshot (one that only reads catalog records or fallbacks) ranks
        from the values that pass read, so it takes them as they are instead of scoring again."""
        if scored.get("snap") is snap:
            ranked, excluded, basis, version = scored["ranked"]
            return self._finish(
                snap, ranked, k, category, excluded, basis, model_version=version, rules=rules, memo=scored
            )
        s = self.scoring
        user = snap.user
        assert user is not None
        # seeds by event time: position in event-time order and age, at the preferences' half-life
        seeds = history_seeds(
            user.history,
            s.history_used,
            s.history_position_decay,
            self._type_weights(),
            snap.now,
            s.preference_halflife_ms,
        )
        seed_types: dict[str, str] = {}
        for entry in user.history:
            best = seed_types.get(entry.item_id, "remove_from_cart")
            if event_types.strength(entry.type) > event_types.strength(best):
                seed_types[entry.item_id] = entry.type
        terms = list(dict.fromkeys(t for _, ts in user.searches for t in ts))[:TERMS_USED]
        term_items = snap.term_items(terms, TERM_ITEMS_READ)
        neighbours = snap.neighbours(list(seeds))
        if not snap.complete:  # read what these need first: no scoring or ranking of half the candidates
            return INCOMPLETE
        scores = personal_scores(seeds, seed_types, neighbours, term_items, s.search_blend)
        version, batch, share = self._batch(snap, list(seeds))
        if batch:
            scores = scores.blended(personal_scores(seeds, seed_types, batch, {}, 0.0), share)
        excluded = exclude | user.bought
        if s.exclude_seen:
            excluded |= {e.item_id for e in user.history} | set(user.preferences)
        else:
            scores.add_repeats(user.preferences, seed_types, s.repeat_blend)
        # with filters, more of the scored candidates before the popularity fallbacks
        ranked = scores.top(max(k * 3 + 20, 200) if rules.filters else k * 3 + 20, excluded)
        # categories of what the user did and searched, for the fallback
        basis = list(seeds)[:10] + [i for items in term_items.values() for i in list(items)[:5]]
        used = version if batch else None
        scored["snap"], scored["ranked"] = snap, (ranked, excluded, basis, used)
        return self._finish(
            snap, ranked, k, category, excluded, basis, model_version=used, rules=rules, memo=scored
        )

    def similar(self, item_id: str, k: int, user_id: str | None = None, rules: Rules = NO_RULES) -> Answer:
        """Items that shoppers acted on together with ``item_id``, popularity-normalised (placed by
        ``rules``, when given)."""
        key = ("similar", item_id, k, user_id or None, rules.key)
        memo: dict[str, Any] = {}
        return self._answer(user_id or None, lambda snap: self._similar(snap, item_id, k, rules, memo), key)

    def _similar(
        self,
        snap: Snapshot,
        item_id: str,
        k: int,
        rules: Rules = NO_RULES,
        memo: dict[str, Any] | None = None,
    ) -> Answer:
        neighbours = snap.neighbours([item_id])[item_id]
        if not snap.complete:
            return INCOMPLETE
        excluded = {item_id} | (snap.user.bought if snap.user is not None else set())
        candidates = {
            item: Candidate(item, score, "customers also viewed", "item_to_item")
            for item, score in neighbours.items()
        }
        version, batch, share = self._batch(snap, [item_id])
        if batch:
            from_model = {
                item: Candidate(item, w, "customers also bought", "model")
                for item, w in batch.get(item_id, {}).items()
            }
            candidates = blend(candidates, from_model, share)
        ranked = rank(candidates.values(), k * 3 + 20, excluded)
        return self._finish(
            snap,
            ranked,
            k,
            None,
            excluded,
            [item_id],
            "item_to_item",
            version if batch else None,
            rules,
            memo,
        )

    def popular(self, k: int, category: str | None = None, rules: Rules = NO_RULES) -> Answer:
        """The most popular items (time-decayed), overall or in one category (placed by ``rules``)."""
        memo: dict[str, Any] = {}
        # a placed answer is kept like a personal one (stamped, and fresh as its popularity rows): placing
        # costs more than reading the tops
        key = None if rules is NO_RULES else ("popular", k, category, rules.key)
        return self._answer(
            None, lambda snap: self._finish(snap, [], k, category, set(), [], rules=rules, memo=memo), key
        )

    def trending(self, k: int, category: str | None = None, rules: Rules = NO_RULES) -> Answer:
        """The items whose interest grows fastest now (in stock, in ``category`` when given; placed by
        ``rules``)."""
        if rules is NO_RULES:
            return self._answer(None, lambda snap: self._trending(snap, k, category))
        memo: dict[str, Any] = {}
        return self._answer(
            None,
            lambda snap: self._placed(
                snap, k, rules, lambda n: self._trending(snap, n, category, rules.admits), "trending", memo
            ),
            ("trending", k, category, rules.key),
        )

    def _trending(
        self,
        snap: Snapshot,
        k: int,
        category: str | None,
        admits: Callable[[dict[str, str] | None], bool] | None = None,
    ) -> Answer:
        n = k * 3 + 20
        while True:
            # a wider pool when too many of the fastest risers are sold out or were re-categorised
            rows = snap.memo(
                "trending", (n, category), lambda n=n: self.reader.trending(n, snap.now, category)
            )
            catalog = snap.catalog(item for item, _ in rows)
            picked = [
                Ranked(item, score, "trending now", "trending")
                for item, score in rows
                if _usable(catalog.get(item), category) and (admits is None or admits(catalog.get(item)))
            ][:k]
            cap = PAGE_MAX if admits is None else FILTERED_MAX  # a rare filter pages further down
            if len(picked) >= k or len(rows) < n or n >= cap or not snap.complete:
                break
            n = min(n * 4, cap)
        return Answer(
            "trending" if picked else "empty",
            picked,
            {i.item_id: catalog[i.item_id] for i in picked if i.item_id in catalog},
        )
