"""The scoring maths: pure functions over plain data, shared by the state script's callers, the API
and offline evaluation.

Time decay is stored in log space ("forward decay"): an event of weight ``w`` at time ``t`` adds
``w * 2**(t / h)`` to a total, kept as its natural log ``ln w + t ln2 / h``. Every total is then
comparable at any moment without rewriting it (they all decay by the same factor), and the log never
overflows however long the system runs. The value at time ``now`` is ``exp(log_total - now ln2 / h)``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from streamrec import event_types, search_text

LN2 = math.log(2.0)


def decay_rate(halflife_ms: float) -> float:
    """The per-millisecond exponent used in log space for a half-life."""
    return LN2 / halflife_ms


def log_weight(weight: float, ts_ms: int, halflife_ms: float) -> float:
    """The log-space contribution of one event of ``weight`` (> 0) at ``ts_ms``."""
    return math.log(weight) + ts_ms * decay_rate(halflife_ms)


def log_add(a: float | None, b: float) -> float:
    """``ln(e**a + e**b)`` without overflow; ``a`` None means an empty total."""
    if a is None:
        return b
    hi, lo = (a, b) if a >= b else (b, a)
    return hi + math.log1p(math.exp(lo - hi))


def decayed_value(log_total: float, now_ms: int, halflife_ms: float) -> float:
    """The decayed total at ``now_ms`` of a log-space total."""
    return math.exp(log_total - now_ms * decay_rate(halflife_ms))


def trending_score(
    fast_log: float, slow_log: float | None, now_ms: int, fast_hl: float, slow_hl: float
) -> float:
    """How much faster an item is gaining interest now than over the long run.

    Both totals are turned into rates (events per hour) of exponentially weighted moving averages with
    a short and a long half-life; the score is the excess of the short rate over the long one, divided
    by the long rate's square root (a Poisson z-score), so a jump from 0 to 5 an hour outranks a drift
    from 500 to 505.
    """
    hour = 3_600_000.0
    fast_rate = decayed_value(fast_log, now_ms, fast_hl) * LN2 / fast_hl * hour
    slow_rate = 0.0 if slow_log is None else decayed_value(slow_log, now_ms, slow_hl) * LN2 / slow_hl * hour
    return (fast_rate - slow_rate) / math.sqrt(slow_rate + 1.0)


def search_terms(query: str, max_terms: int = 6, max_len: int = 64) -> list[str]:
    """Normalise a search query into the terms its follow-up actions are credited to.

    The query is read as ``search_text.tokens`` reads it (accent- and case-folded; ``c++`` and ``c#``
    stay apart), the one normalisation the API's reads share. The whole normalised query (its tokens
    joined by one space) comes first, as it is the most specific, then its tokens of two or more
    characters, without repeats; at most ``max_terms`` terms of at most ``max_len`` characters.
    """
    words = search_text.tokens(query)
    terms: list[str] = []
    whole = " ".join(words)[:max_len]
    for term in [whole, *(w[:max_len] for w in words if len(w) >= 2)]:
        if term and term not in terms:
            terms.append(term)
        if len(terms) >= max_terms:
            break
    return terms


def normalised_neighbours(
    raw: Mapping[str, float],
    counts: Mapping[str, float],
    anchor_count: float,
    alpha: float,
    shrinkage: float = 0.0,
) -> dict[str, float]:
    """Divide raw co-occurrence by the popularity of both ends: ``c / (n_anchor**(1-a) * (n_other + s)**a)``.

    ``alpha`` 0.5 is cosine similarity; higher values push popular neighbours down harder. ``shrinkage``
    ``s`` (in interactions, >= 0) adds pseudo-interactions to every neighbour's count, the additive
    smoothing of a count in the denominator (shrinkage towards zero for thinly supported items, as in
    Koren's neighbourhood models): an item seen once that co-occurred once no longer ties with a neighbour
    that co-occurred with the anchor on ten of its hundred occurrences. 0 is plain cosine.

    The reference form, on decayed values; answers compute it from log-space totals in one pass
    (``normalised_log_neighbours``).
    """
    base = max(anchor_count, 1.0) ** (1.0 - alpha)
    shrink = max(shrinkage, 0.0)
    return {
        item: weight / (base * (max(counts.get(item, 1.0), 1.0) + shrink) ** alpha)
        for item, weight in raw.items()
    }


def normalised_log_neighbours(
    raw_log: Mapping[str, float],
    counts_log: Mapping[str, float | None],
    anchor: str,
    now_ms: int,
    halflife_ms: float,
    alpha: float,
    shrinkage: float = 0.0,
) -> dict[str, float]:
    """``normalised_neighbours`` of log-space totals, decayed to ``now_ms`` in the same pass.

    ``raw_log`` maps each neighbour of ``anchor`` to its log-space co-occurrence total, ``counts_log`` each
    item (the anchor and every neighbour) to its log-space count, ``None`` when it has no activity left;
    neighbours whose count is ``None`` or absent are left out, and an anchor without a count counts as one.
    Every value is the same float as ``decayed_value`` of each total followed by ``normalised_neighbours``
    (the same operations in the same order), with one subtraction and one ``exp`` per total: this runs for
    every neighbour list an answer reads (issue 15).
    """
    shift = now_ms * decay_rate(halflife_ms)
    exp = math.exp
    own = counts_log.get(anchor)
    base = max(1.0 if own is None else exp(own - shift), 1.0) ** (1.0 - alpha)
    shrink = max(shrinkage, 0.0)
    out: dict[str, float] = {}
    for item, weight in raw_log.items():
        count = counts_log.get(item)
        if count is not None:
            out[item] = exp(weight - shift) / (base * (max(exp(count - shift), 1.0) + shrink) ** alpha)
    return out


@dataclass(frozen=True)
class HistoryEntry:
    """One entry of a user's recent history: item, time (epoch ms) and event type."""

    item_id: str
    ts: int
    type: str


@dataclass
class Candidate:
    """A scored item and the strongest reason it was chosen."""

    item_id: str
    score: float = 0.0
    reason: str = ""
    source: str = ""
    best: float = field(default=0.0, repr=False)

    def add(self, amount: float, reason: str, source: str) -> None:
        """Add ``amount`` (a score contribution) to this candidate; the largest single contribution names its reason and source."""
        self.score += amount
        if amount > self.best:
            self.best, self.reason, self.source = amount, reason, source


def history_seeds(
    history: Iterable[HistoryEntry],
    used: int,
    position_decay: float,
    type_weights: Mapping[str, float],
    now_ms: int | None = None,
    halflife_ms: float | None = None,
) -> dict[str, float]:
    """Weight each distinct recent item as a seed: newer and stronger actions count more.

    Recency follows event time, never the order entries arrived or are listed in: the ``used`` newest
    entries by ``ts`` (epoch ms; ties keep their given order) are taken, the newest weighs
    ``type_weight``, each step back in event time ``position_decay`` times less, and with ``now_ms`` and
    ``halflife_ms`` (ms) each entry also halves per ``halflife_ms`` of age (``now_ms - ts``, a future
    ``ts`` counting as age 0), so a late event stamped hours ago neither outranks a recent one nor weighs
    as if it were recent. A purchase seeds "bought together" candidates harder than a view; a removal
    from the cart seeds none. Returns item -> weight (unitless), items in order of their newest entry.
    """
    newest_first = sorted(history, key=lambda entry: -entry.ts)  # stable: equal ts keep their order
    rate = decay_rate(halflife_ms) if now_ms is not None and halflife_ms else 0.0
    seeds: dict[str, float] = {}
    for position, entry in enumerate(newest_first[:used]):
        weight = type_weights.get(entry.type, 1.0)
        if weight <= 0:
            continue
        age = max(0, now_ms - entry.ts) if rate and now_ms is not None else 0
        amount = weight * position_decay**position * math.exp(-age * rate)
        seeds[entry.item_id] = seeds.get(entry.item_id, 0.0) + amount
    return seeds


class Scores:
    """Candidates as parallel dicts: item -> total score, its largest single contribution (``best``), and
    that contribution's reason (``why``) and source (``src``).

    The hot path of every answer (about a thousand candidates each) works on these, and makes a
    ``Candidate`` only for the items ``top`` keeps. Every step does ``Candidate.add``'s arithmetic in the
    same order, so scores and reasons are the same to the last bit as with candidate objects.
    """

    __slots__ = ("score", "best", "why", "src")

    def __init__(self) -> None:
        self.score: dict[str, float] = {}
        self.best: dict[str, float] = {}
        self.why: dict[str, str] = {}
        self.src: dict[str, str] = {}

    @classmethod
    def of(cls, candidates: Mapping[str, Candidate]) -> Scores:
        """The same candidates as parallel dicts."""
        out = cls()
        for item, c in candidates.items():
            out.score[item], out.best[item], out.why[item], out.src[item] = (
                c.score,
                c.best,
                c.reason,
                c.source,
            )
        return out

    def add(self, item: str, amount: float, reason: str, source: str) -> None:
        """``Candidate.add`` for ``item`` (a new item starts at zero)."""
        self.score[item] = self.score.get(item, 0.0) + amount
        if amount > self.best.get(item, 0.0):
            self.best[item], self.why[item], self.src[item] = amount, reason, source

    def candidate(self, item: str) -> Candidate:
        """``item`` as a ``Candidate``."""
        return Candidate(
            item, self.score[item], self.why.get(item, ""), self.src.get(item, ""), self.best.get(item, 0.0)
        )

    def candidates(self) -> dict[str, Candidate]:
        """Every item as a ``Candidate``, in the order they were added."""
        return {item: self.candidate(item) for item in self.score}

    def blended(self, batch: Scores, weight: float) -> Scores:
        """These (live-state) scores mixed with ``batch``'s, each side scaled to a top of one (see ``blend``)."""
        live_top = max(self.score.values(), default=0.0) or 1.0
        batch_top = max(batch.score.values(), default=0.0) or 1.0
        out = Scores()
        score, best, why, src = out.score, out.best, out.why, out.src
        share = 1.0 - weight
        for item, value in self.score.items():
            score[item] = 0.0
            if weight < 1:
                amount = share * value / live_top
                score[item] += amount
                if amount > 0.0:
                    best[item], why[item], src[item] = amount, self.why.get(item, ""), self.src.get(item, "")
        for item, value in batch.score.items():
            if item not in score:
                score[item] = 0.0
            if weight > 0:
                amount = weight * value / batch_top
                score[item] += amount
                if amount > best.get(item, 0.0):
                    best[item], why[item], src[item] = amount, batch.why.get(item, ""), "model"
        return out

    def add_repeats(
        self, preferences: Mapping[str, float], seed_types: Mapping[str, str], weight: float
    ) -> None:
        """Offer the user's own items back, in place (see ``add_repeats``)."""
        top_pref = max((v for v in preferences.values() if v > 0), default=0.0)
        if weight <= 0 or top_pref <= 0:
            return
        scale = weight * (max(self.score.values(), default=0.0) or 1.0) / top_pref
        for item, pref in preferences.items():
            if pref > 0:
                self.add(item, scale * pref, event_types.repeat_reason(seed_types.get(item, "")), "repeat")

    def top(self, k: int, exclude: set[str]) -> list[Candidate]:
        """The ``k`` best items with a positive score outside ``exclude``, as ``rank`` orders them."""
        score = self.score
        kept = [item for item, value in score.items() if value > 0 and item not in exclude]
        return [self.candidate(item) for item in heapq.nsmallest(k, kept, key=lambda i: (-score[i], i))]


def personal_scores(
    seeds: Mapping[str, float],
    seed_types: Mapping[str, str],
    neighbours: Mapping[str, Mapping[str, float]],
    term_items: Mapping[str, Mapping[str, float]],
    search_blend: float,
) -> Scores:
    """Blend item-to-item neighbours of the seeds with items that followed the user's searches.

    ``seeds`` maps an item of the user's recent history to its weight (``history_seeds``);
    ``neighbours`` maps a seed to its popularity-normalised neighbours; ``term_items`` maps each recent
    search term to item weights (normalised here to sum to one per term, so a common term does not
    drown a rare one). A candidate's score is the sum of seed weight x similarity over its seeds plus
    ``search_blend`` x its normalised term weights; its reason is that of its largest contribution.
    """
    out = Scores()
    score, best, why, src = out.score, out.best, out.why, out.src
    for seed, seed_weight in seeds.items():
        row = neighbours.get(seed)
        if not row:
            continue
        reason = event_types.reason(seed_types.get(seed, "view")).format(seed)
        for item, sim in row.items():
            amount = seed_weight * sim
            score[item] = score.get(item, 0.0) + amount
            if amount > best.get(item, 0.0):
                best[item], why[item], src[item] = amount, reason, "item_to_item"
    for term, items in term_items.items():
        total = sum(v for v in items.values() if v > 0)
        if total <= 0:
            continue
        for item, weight in items.items():
            if weight <= 0:
                continue
            out.add(item, search_blend * weight / total, f"matches your search '{term}'", "search")
    return out


def score_personal(
    seeds: Mapping[str, float],
    seed_types: Mapping[str, str],
    neighbours: Mapping[str, Mapping[str, float]],
    term_items: Mapping[str, Mapping[str, float]],
    search_blend: float,
) -> dict[str, Candidate]:
    """``personal_scores`` as a ``Candidate`` per item."""
    return personal_scores(seeds, seed_types, neighbours, term_items, search_blend).candidates()


def blend(
    live: Mapping[str, Candidate], batch: Mapping[str, Candidate], weight: float
) -> dict[str, Candidate]:
    """Mix live-state and batch-model candidates: each side scaled to a top score of one, then weighted.

    ``weight`` is the batch model's share (0 = live state alone, 1 = batch model alone). Each item keeps
    the reason of whichever side contributed more.
    """
    return Scores.of(live).blended(Scores.of(batch), weight).candidates()


def add_repeats(
    candidates: Mapping[str, Candidate],
    preferences: Mapping[str, float],
    seed_types: Mapping[str, str],
    weight: float,
) -> dict[str, Candidate]:
    """Offer the user's own items back (carted, viewed), scaled so the strongest matches the best candidate.

    Used when seen items are not excluded: an item waiting in the cart is often the next purchase.
    Returns the candidates with the user's items added (the input is left as it was).
    """
    scores = Scores.of(candidates)
    scores.add_repeats(preferences, seed_types, weight)
    return scores.candidates()


def rank(
    candidates: Iterable[Candidate], k: int, exclude: set[str], allowed: set[str] | None = None
) -> list[Candidate]:
    """The top ``k`` candidates by score (ties broken by id, so answers are stable)."""
    kept = [
        c
        for c in candidates
        if c.score > 0 and c.item_id not in exclude and (allowed is None or c.item_id in allowed)
    ]
    return heapq.nsmallest(k, kept, key=lambda c: (-c.score, c.item_id))  # sorted(kept, key)[:k], cheaper
