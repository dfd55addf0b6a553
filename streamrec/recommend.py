"""Answers to "recommended for you", "similar", "popular" and "trending", ranked from Redis state.

The API and offline evaluation both call this; neither ranks on its own. Reading is a few pipelined
round trips; the maths is in ``scoring``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from streamrec import event_types
from streamrec.modelstore import ModelStore
from streamrec.scoring import (
    Candidate,
    add_repeats,
    blend,
    history_seeds,
    normalised_neighbours,
    rank,
    score_personal,
)
from streamrec.settings import ScoringSettings
from streamrec.state import StateReader

TERM_ITEMS_READ = 50
PAGE_MAX = 5000  # the most rows one read of a popularity or trending list asks for
TERMS_USED = 10


@dataclass(frozen=True)
class Ranked:
    item_id: str
    score: float
    reason: str
    source: str


@dataclass(frozen=True)
class Answer:
    """A ranked list, the strategy that produced its first item, and the catalog records read on the way."""

    strategy: str
    items: list[Ranked]
    catalog: dict[str, dict[str, str]] = field(default_factory=dict)
    model_version: str | None = None


def _usable(record: dict[str, str] | None, category: str | None) -> bool:
    """In stock, not deleted, and in ``category`` when one is asked for (items without a record pass)."""
    if record is not None and (record.get("in_stock") == "0" or record.get("deleted") == "1"):
        return False
    return category is None or (record is not None and record.get("category") == category)


class Recommender:
    """Ranks from one state reader with one set of scoring settings."""

    def __init__(
        self,
        reader: StateReader,
        scoring: ScoringSettings,
        models: ModelStore | None = None,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.reader = reader
        self.scoring = scoring
        self.models = models
        self.clock = clock

    def _batch(self, seeds: Sequence[str]) -> tuple[str | None, dict[str, dict[str, float]], float]:
        """The active batch model's neighbours of ``seeds`` and its blend share (empty: no model to blend).

        The share is the one the trainer chose for that model on validation, recorded in its metadata;
        a model without one gets ``STREAMREC_SCORING_MODEL_BLEND``.
        """
        if self.models is None or not seeds:
            return None, {}, 0.0
        version, neighbours = self.models.neighbours(seeds)
        share = self.models.blend_share(version) if version else None
        share = self.scoring.model_blend if share is None else share
        if share <= 0:
            return None, {}, 0.0
        return version, neighbours, share

    def now(self) -> int:
        """Now in epoch ms: the wall clock, or the clock this recommender was given (offline evaluation
        ranks as of the end of its training data)."""
        return self.clock() if self.clock is not None else int(time.time() * 1000)

    def _normalised(self, anchors: Sequence[str], now: int) -> dict[str, dict[str, float]]:
        # read every stored neighbour (the list is bounded): the best normalised ones may not be the top raw ones
        s = self.scoring
        raw = self.reader.neighbours(anchors, s.neighbours_max + s.neighbours_slack, now)
        every = sorted({*anchors, *(n for nbrs in raw.values() for n in nbrs)})
        counts = self.reader.counts(every, now)
        # a neighbour with no activity left (expired or deleted) is no candidate
        live = {a: {m: c for m, c in raw[a].items() if m in counts} for a in anchors}
        alpha, shrink = s.popularity_alpha, s.neighbour_shrinkage
        return {a: normalised_neighbours(live[a], counts, counts.get(a, 1.0), alpha, shrink) for a in anchors}

    def _finish(
        self,
        ranked: list[Candidate],
        k: int,
        category: str | None,
        exclude: set[str],
        fallback_from: Sequence[str],
        now: int,
        personal: str = "personalized",
        model_version: str | None = None,
    ) -> Answer:
        """Filter by stock and category, then fill up from category popularity and overall popularity.

        The fallback uses the categories of the ``fallback_from`` items, read with the candidates' records
        in one round trip.
        """
        catalog = self.reader.catalog(list(dict.fromkeys([*(c.item_id for c in ranked), *fallback_from])))
        fallback_categories = [
            catalog[i]["category"] for i in fallback_from if catalog.get(i, {}).get("category")
        ]
        picked: list[Ranked] = []
        taken = set(exclude)
        for c in ranked:
            if len(picked) >= k:
                break
            if c.item_id not in taken and _usable(catalog.get(c.item_id), category):
                picked.append(Ranked(c.item_id, c.score, c.reason, c.source))
                taken.add(c.item_id)
        cats = [category] if category else list(dict.fromkeys(fallback_categories))
        fills = [(cat, "category_popular", f"popular in {cat}") for cat in cats]
        if category is None:
            fills.append((None, "popular", "popular right now"))
        for cat, source, reason in fills:
            # page down the list until k usable items are found or it ends: a list whose top is sold out,
            # excluded or filed under another category still fills the answer
            offset, page = 0, k + len(taken) + 10
            while len(picked) < k:
                rows = self.reader.popular(page, now, cat, offset)
                more = self.reader.catalog([item for item, _ in rows if item not in catalog])
                catalog.update(more)
                for item, score in rows:
                    if len(picked) >= k:
                        break
                    if item not in taken and _usable(catalog.get(item), cat or category):
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
        self, user_id: str, k: int, category: str | None = None, exclude: Iterable[str] = ()
    ) -> Answer:
        """Personal recommendations: neighbours of recent actions and items that followed recent searches."""
        s = self.scoring
        now = self.now()
        user = self.reader.user(user_id, now)
        seeds = history_seeds(user.history, s.history_used, s.history_position_decay, s.type_weights())
        seed_types: dict[str, str] = {}
        for entry in user.history:
            best = seed_types.get(entry.item_id, "remove_from_cart")
            if event_types.strength(entry.type) > event_types.strength(best):
                seed_types[entry.item_id] = entry.type
        terms = list(dict.fromkeys(t for _, ts in user.searches for t in ts))[:TERMS_USED]
        term_items = self.reader.term_items(terms, TERM_ITEMS_READ)
        neighbours = self._normalised(list(seeds), now)
        candidates = score_personal(seeds, seed_types, neighbours, term_items, s.search_blend)
        version, batch, share = self._batch(list(seeds))
        if batch:
            from_model = score_personal(seeds, seed_types, batch, {}, 0.0)
            candidates = blend(candidates, from_model, share)
        excluded = set(exclude) | user.bought
        if s.exclude_seen:
            excluded |= {e.item_id for e in user.history} | set(user.preferences)
        else:
            candidates = add_repeats(candidates, user.preferences, seed_types, s.repeat_blend)
        ranked = rank(candidates.values(), k * 3 + 20, excluded)
        # categories of what the user did and searched, for the fallback
        basis = list(seeds)[:10] + [i for items in term_items.values() for i in list(items)[:5]]
        return self._finish(
            ranked, k, category, excluded, basis, now, model_version=version if batch else None
        )

    def similar(self, item_id: str, k: int, user_id: str | None = None) -> Answer:
        """Items that shoppers acted on together with ``item_id``, popularity-normalised."""
        now = self.now()
        neighbours = self._normalised([item_id], now)[item_id]
        excluded = {item_id}
        if user_id:
            excluded |= self.reader.user(user_id, now).bought
        candidates = {
            item: Candidate(item, score, "customers also viewed", "item_to_item")
            for item, score in neighbours.items()
        }
        version, batch, share = self._batch([item_id])
        if batch:
            from_model = {
                item: Candidate(item, w, "customers also bought", "model")
                for item, w in batch.get(item_id, {}).items()
            }
            candidates = blend(candidates, from_model, share)
        ranked = rank(candidates.values(), k * 3 + 20, excluded)
        return self._finish(
            ranked, k, None, excluded, [item_id], now, "item_to_item", version if batch else None
        )

    def popular(self, k: int, category: str | None = None) -> Answer:
        """The most popular items (time-decayed), overall or in one category."""
        return self._finish([], k, category, set(), [], self.now())

    def trending(self, k: int, category: str | None = None) -> Answer:
        """The items whose interest grows fastest now (in stock, in ``category`` when given)."""
        now = self.now()
        n = k * 3 + 20
        catalog: dict[str, dict[str, str]] = {}
        while True:
            # a wider pool when too many of the fastest risers are sold out or were re-categorised
            rows = self.reader.trending(n, now, category)
            catalog.update(self.reader.catalog([item for item, _ in rows if item not in catalog]))
            picked = [
                Ranked(item, score, "trending now", "trending")
                for item, score in rows
                if _usable(catalog.get(item), category)
            ][:k]
            if len(picked) >= k or len(rows) < n or n >= PAGE_MAX:
                break
            n = min(n * 4, PAGE_MAX)
        return Answer(
            "trending" if picked else "empty",
            picked,
            {i.item_id: catalog[i.item_id] for i in picked if i.item_id in catalog},
        )
