"""Build a batch item-to-item model: choose the family on a validation split, fit it, publish it.

The choice is made on a split carved from the training data (each user's last training item held out),
never on test items. Every candidate is scored the way the API serves it: the user's recent actions,
weighted by recency and event type, seed each item's top neighbours. Only the families whose fit fits
the memory budget are tried (dense EASE and SLIST hold several items x items matrices; item-kNN is
sparse). When the live state of the validation split is given, the two best families alone are each
blended with it on the same split, and the family and blend share that serve best together win; the
share is recorded in the model's metadata, where the API reads it.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from streamrec import event_types
from streamrec.modelstore import ModelStore
from streamrec.scoring import HistoryEntry, history_seeds
from streamrec.settings import ScoringSettings
from streamrec.trainer import features, models
from streamrec.trainer.models import Matrix
from streamrec.trainer.ranking_metrics import Result, hit_and_gain, score_lists
from streamrec.trainer.splits import Split, training_end

Progress = Callable[[str], None]
GIB = 1 << 30


@dataclass(frozen=True)
class Config:
    """One model family with its hyper-parameters (``w_<type>``: that event type's weight in the matrix)."""

    family: str  # slist | ease | slist-local | rp3beta | bm25 | cosine
    params: tuple[tuple[str, float], ...] = ()

    @property
    def name(self) -> str:
        """The configuration as written in reports, e.g. ``ease(l2=500)``."""
        args = ",".join(f"{k}={v:g}" for k, v in self.params)
        return f"{self.family}({args})" if args else self.family

    @property
    def dense(self) -> bool:
        """Whether the family fits a dense items x items matrix (SLIST, EASE), which the memory budget bounds."""
        return self.family in DENSE_FAMILIES

    def type_weights(self) -> dict[str, float] | None:
        """Event-type weights of the training matrix relative to a purchase (None: binary)."""
        weights = {k[2:]: v for k, v in self.params if k.startswith("w_")}
        return {"purchase": 1.0, **weights} if weights else None


DENSE_FAMILIES = ("slist", "ease")
FAMILIES = ("slist", "ease", "slist-local", "rp3beta", "bm25", "cosine")
# Sparse item-item families (``SCALABLE_CONFIGS``) stand in for the dense ones where those do not fit the
# budget; where a dense SLIST fits they are not tried: on Beauty's validation split SLIST scored 0.1088
# (with features 0.1239) against SLIST restricted to 100 candidates 0.0889 and RP3beta with features 0.0994
# RP3beta's walk sharpening and popularity penalty (``models.rp3beta``), chosen on validation: HR@10 on
# Beauty's (with features at 3) alpha 1 / beta 0.3 0.0982, 0.8 / 0.3 0.0994 (beta 0.2: 0.0945, 0.4: 0.0901);
# on Yelp's (no catalog) alpha 1 0.0231, 0.6 0.0328, against SLIST on 100 candidates (lambda 50) 0.0417, BM25 0.0230
RP3BETA_PARAMS: tuple[tuple[str, float], ...] = (("alpha", 0.8), ("beta", 0.3))
# The families the trainer tries. EASE (``Config("ease", (("lambda", 50.0),))``) can still be fitted, but is
# no longer tried: SLIST with alpha 1 is EASE without its zero-diagonal constraint, and SLIST at 0.5 scored
# above it on every validation split we have (HR@10 on Beauty 0.1088 vs 0.0986, MovieLens-100k 0.1962 vs
# 0.1569, Beibei 0.2174 vs 0.1343), so its fit (a fifth of Beauty's eval) never changed the choice.
DEFAULT_CONFIGS: tuple[Config, ...] = (
    Config("slist", (("alpha", 0.5), ("lambda", 50.0))),
    Config("bm25", (("k", 100.0),)),
    Config("cosine", (("k", 100.0),)),
)
# weights a non-purchase action (a cart add, a view) gets in the matrix, tried where the data has several
TYPE_WEIGHT_GRID = (0.25, 1.0)
# weight of the catalog's feature tokens as SLIST pseudo-users (``models.slist``), tried where the data has a
# catalog; on Beauty's validation split 0.1, 1, 3 gave HR@10 0.1114, 0.1216, 0.1208 with attribute ids alone
# as tokens (0: 0.1088), and 1 gives 0.1239 with the catalog's category token too
FEATURE_WEIGHT = 1.0
# RP3beta's tokens weigh more (``models.rp3beta``'s ``gamma``): they are edges of a random walk, where a
# shopper's row and a token's row are each normalised to one. On Yelp's validation split (attribute ids, one
# of them on 69% of the items) the tokens cost SLIST-local HR@10 (lambda 400: 0.0465 without, 0.0307 with)
# and lift RP3beta (0.0282 to 0.0313); the choice on validation leaves them out there
# SLIST restricted to 100 candidates is tried without the catalog: with it, it lost on every validation
# split measured (HR@10 on Yelp's 0.0307 against 0.0465 without; on the 100,000-item simulator's 0.0465
# against 0.0535), and each fit costs minutes at catalogue scale. RP3beta keeps it (Beauty: 0.0994 with)
FEATURE_WEIGHTS = {"slist": FEATURE_WEIGHT, "rp3beta": 3.0}
# SLIST-local's ridge, chosen on Yelp's validation split (HR@10 / NDCG@10, alpha 0.5, 100 candidates): lambda
# 20 0.0375/0.0203, 50 0.0417/0.0220, 150 0.0445/0.0235, 400 0.0465/0.0239, 1000 0.0467/0.0239 (a plateau:
# 400 keeps it a regression rather than plain co-occurrence); alpha 0.25 0.0371 and 0.75 0.0448 (at 150)
SCALABLE_CONFIGS: tuple[Config, ...] = (
    Config("slist-local", (("alpha", 0.5), ("lambda", 400.0), ("candidates", 100.0))),
    Config("rp3beta", RP3BETA_PARAMS),
)
BLEND_GRID = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
BLEND_FINALISTS = 2  # the configs best alone on validation whose blends with the live state are compared
MAX_BLEND = 0.9  # the live state always keeps a share: new items and co-occurrences show before a retrain
NEIGHBOURS = 100  # neighbours kept per item in the served model
SLIST_WINDOW = 10  # SLIT's past and future reach, in actions (Choi et al. use whole sessions)
VALIDATION_USERS = 30_000  # held-out users scored per validation pass (a fixed, evenly spread sample above)


@dataclass
class TrainedModel:
    """A fitted item-to-item model in its served form, and how it was chosen."""

    config: Config
    table: sp.csr_matrix
    items: list[str]
    validation: list[Result] = field(default_factory=list)
    fit_seconds: float = 0.0
    blend: float | None = None
    blend_validation: list[dict[str, float]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def meta(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The model's metadata stored with its rows: family, parameters, neighbour counts, the chosen blend share and its validation, plus ``extra``."""
        counts = np.diff(self.table.indptr)
        meta: dict[str, Any] = {
            "family": self.config.family,
            "params": dict(self.config.params),
            "neighbours_per_item": int(counts.max()) if len(counts) else 0,
            "validation": [r.as_dict() for r in self.validation],
            "fit_seconds": round(self.fit_seconds, 2),
            "skipped": self.skipped,
        }
        if self.blend is not None:
            meta["blend"] = self.blend
            meta["blend_validation"] = self.blend_validation
        return {**meta, **(extra or {})}


def memory_needed(config: Config, n_items: int, nnz: int, gram_nnz: int | None = None) -> int:
    """Bytes a fit of ``config`` needs on ``n_items`` items and ``nnz`` interactions (an upper estimate;
    ``gram_nnz``, a bound on the entries of the item Gram matrix, sharpens it for SLIST-local)."""
    if config.dense:
        return models.dense_bytes(
            n_items, models.EASE_COPIES if config.family == "ease" else models.DENSE_COPIES
        )
    if config.family == "rp3beta":
        return models.sparse_item_bytes(nnz, n_items, NEIGHBOURS)
    if config.family == "slist-local":
        # its Gram and target matrices hold at most gram_nnz entries each (``models.gram_entries``)
        k = int(dict(config.params).get("candidates", 100))
        return models.sparse_item_bytes(gram_nnz or nnz * n_items, n_items, max(k, NEIGHBOURS))
    return models.sparse_bytes(nnz, n_items, int(dict(config.params).get("k", 100)))


def within_budget(
    configs: Sequence[Config], n_items: int, nnz: int, budget_bytes: int, gram_nnz: int | None = None
) -> tuple[list[Config], list[str]]:
    """The configs whose fit fits ``budget_bytes``, and a note for each one left out."""
    kept, skipped = [], []
    for config in configs:
        need = memory_needed(config, n_items, nnz, gram_nnz)
        if need <= budget_bytes:
            kept.append(config)
        else:
            skipped.append(f"{config.name}: needs {need / GIB:.1f} GiB > budget {budget_bytes / GIB:.1f} GiB")
    return kept, skipped


def within_budget_or_scalable(
    configs: Sequence[Config], split: Split, m: Matrix, budget_bytes: int
) -> tuple[list[Config], list[str]]:
    """``configs`` with their type-weight and catalog variants that fit the budget (``within_budget``);
    where they include a dense family and none of those fits, ``SCALABLE_CONFIGS`` (with their variants)
    stand in for them, first. Returns the configs to try and a note per config left out."""
    wanted = with_features(with_type_weights(configs, split), split)
    gram = models.gram_entries(m.X)
    kept, skipped = within_budget(wanted, len(m.items), m.X.nnz, budget_bytes, gram)
    if any(c.dense for c in wanted) and not any(c.dense for c in kept):
        scalable = with_features(with_type_weights(SCALABLE_CONFIGS, split), split)
        more, more_skipped = within_budget(scalable, len(m.items), m.X.nnz, budget_bytes, gram)
        kept, skipped = more + kept, skipped + more_skipped
    return kept, skipped


def with_type_weights(configs: Sequence[Config], split: Split) -> list[Config]:
    """Add variants that weigh non-purchase actions where the data has several positive event types."""
    present = {str(t) for acts in split.train.values() for t, _, _ in acts}
    others = sorted(t for t in present if t != "purchase" and (event_types.info(t) or _ZERO).weight > 0)
    if not others or "purchase" not in present:
        return list(configs)
    out = []
    for config in configs:
        for w in TYPE_WEIGHT_GRID:
            out.append(Config(config.family, config.params + tuple((f"w_{t}", w) for t in others)))
    return out


_ZERO = event_types.TypeInfo(weight=0.0, strength=0)


def with_features(configs: Sequence[Config], split: Split) -> list[Config]:
    """Add, after each config of a family in ``FEATURE_WEIGHTS`` (SLIST, RP3beta), its variant
    with the catalog's features at that family's weight where ``split`` has features; the others as they are."""
    out = []
    for config in configs:
        out.append(config)
        weight = FEATURE_WEIGHTS.get(config.family)
        if split.features and weight is not None and "features" not in dict(config.params):
            out.append(Config(config.family, config.params + (("features", weight),)))
    return out


def fit_key(m: Matrix, config: Config, split: Split | None, n: int = NEIGHBOURS) -> tuple:
    """``fit``'s cache key: the matrix's content, the config, ``n`` and, for a config that uses them, the
    split's catalog features (by content)."""
    uses = split is not None and dict(config.params).get("features")
    return (m.fingerprint, config, n, features.digest(split.features) if uses else None)


def fit(
    m: Matrix,
    config: Config,
    n: int = NEIGHBOURS,
    cache: dict | None = None,
    split: Split | None = None,
    progress: bool = False,
) -> sp.csr_matrix:
    """Fit ``config`` on the matrix and keep each item's top ``n`` neighbours (items x items).

    ``cache`` is keyed by the matrix's content (``Matrix.fingerprint``), so a fit is reused only for the
    same data. A config with event-type weights rebuilds its weighted matrix from ``split``, and one with
    ``features`` reads the catalog's feature tokens from it. Raises ``ValueError`` when such a config
    comes without ``split``, or for an unknown family.
    """
    return fit_many(m, [config], n, cache, split, progress)[0]


def fit_many(
    m: Matrix,
    configs: Sequence[Config],
    n: int = NEIGHBOURS,
    cache: dict | None = None,
    split: Split | None = None,
    progress: bool = False,
) -> list[sp.csr_matrix]:
    """``fit`` of each of ``configs``, in order. SLIST configs that differ only in their ``features``
    weight are fitted from one factorisation (``models.slist_fits``), about half the time of two fits."""
    cache = {} if cache is None else cache
    for config in configs:
        if (config.type_weights() is not None or dict(config.params).get("features")) and split is None:
            raise ValueError(f"{config.name} needs the split: fit() was given none")
    keys = {config: fit_key(m, config, split, n) for config in configs}  # a features digest each: once
    siblings: dict[Any, list[Config]] = {}
    for config in configs:
        if keys[config] not in cache:
            siblings.setdefault(_sibling_key(config), []).append(config)
    for group in siblings.values():
        for config, dense in fit_weights(m, group, split, progress):
            cache[keys[config]] = models.top_neighbours(dense, n, progress)
            del dense
    return [cache[keys[config]] for config in configs]


def _sibling_key(config: Config) -> Any:
    """Configs with the same key are fitted together: SLIST's differ only in their ``features`` weight."""
    if config.family != "slist":
        return config
    return config.family, tuple(kv for kv in config.params if kv[0] != "features")


def fit_weights(
    m: Matrix, group: Sequence[Config], split: Split | None, progress: bool
) -> Iterator[tuple[Config, Any]]:
    """Each config of ``group`` (one config, or SLIST siblings that differ only in their ``features``
    weight, yielded by ascending weight from one factorisation) with its full weights: items x items,
    dense for SLIST and EASE, sparse for item-kNN. A dense one is let go when the next is asked for."""
    config = group[0]
    p = dict(config.params)
    weights = config.type_weights()
    if weights is not None and split is not None:
        m = Matrix.from_split(split, weights)
    if config.family == "slist":
        group = sorted(group, key=lambda c: dict(c.params).get("features", 0.0))
        betas = [dict(c.params).get("features", 0.0) for c in group]
        S, T = models.session_matrices(m.sequences, len(m.items), SLIST_WINDOW)
        F = features.feature_matrix(split.features, m.items) if split is not None and betas[-1] else None
        fits = models.slist_fits(m.X, S, T, p.get("alpha", 0.5), p.get("lambda", 50.0), F, betas, progress)
        for c, (_, B) in zip(group, fits, strict=True):
            yield c, B
            del B  # before the next fit is made: one items x items B alive at a time
    elif config.family == "ease":
        yield config, models.ease(m.X, p.get("lambda", 50.0), progress)
    elif config.family == "slist-local":
        beta = p.get("features", 0.0)
        F = features.feature_matrix(split.features, m.items) if split is not None and beta else None
        S, T = models.session_matrices(m.sequences, len(m.items), SLIST_WINDOW)
        yield (
            config,
            models.local_slist(
                m.X,
                S,
                T,
                p.get("alpha", 0.5),
                p.get("lambda", 50.0),
                int(p.get("candidates", 100)),
                NEIGHBOURS,
                F,
                beta,
                progress=progress,
            ),
        )
    elif config.family == "rp3beta":
        gamma = p.get("features", 0.0)
        F = features.feature_matrix(split.features, m.items) if split is not None and gamma else None
        yield config, models.rp3beta(m.X, p.get("alpha", 1.0), p.get("beta", 0.5), NEIGHBOURS, F, gamma)
    elif config.family in ("bm25", "cosine"):
        yield config, models.item_knn(m.X, config.family, int(p.get("k", 100)))
    else:
        raise ValueError(f"unknown model family {config.family!r}: use {', '.join(FAMILIES)}")


def seed_matrix(m: Matrix, split: Split, scoring: ScoringSettings) -> sp.csr_matrix:
    """Each user's seeds exactly as the recommender weights them (``scoring.history_seeds``), as of the
    end of the training data (a seed's age weighs in; a common shift of "now" scales every user's seeds
    alike)."""
    weights = scoring.type_weights()
    now = training_end(split) + 1
    rows, cols, vals = [], [], []
    for u, user in enumerate(m.users):
        recent = split.train[user][-scoring.history_len :][::-1]
        history = [HistoryEntry(item, ts, str(etype)) for etype, item, ts in recent]
        seeds = history_seeds(
            history,
            scoring.history_used,
            scoring.history_position_decay,
            weights,
            now,
            scoring.preference_halflife_ms,
        )
        for item, w in seeds.items():
            rows.append(u)
            cols.append(m.item_index[item])
            vals.append(w)
    return sp.csr_matrix((vals, (rows, cols)), shape=m.X.shape, dtype=np.float32)


def preference_matrix(m: Matrix, split: Split, scoring: ScoringSettings) -> sp.csr_matrix:
    """Each user's item preferences as the state keeps them: type-weighted, decayed to the user's last action.

    Used only where answers offer the user's own items back (``exclude_seen`` off): the offline copy of
    the state's preference set, for choosing the blend share.
    """
    weights = scoring.type_weights()
    hl = scoring.preference_halflife_ms
    rows, cols, vals = [], [], []
    for u, user in enumerate(m.users):
        actions = split.train[user]
        if not actions:
            continue
        now = max(ts for _, _, ts in actions)
        prefs: dict[int, float] = {}
        for etype, item, ts in actions:
            j = m.item_index[item]
            prefs[j] = prefs.get(j, 0.0) + weights.get(str(etype), 0.0) * 2.0 ** ((ts - now) / hl)
        top = sorted(((v, j) for j, v in prefs.items() if v > 0), reverse=True)[: scoring.preference_max]
        for v, j in top:
            rows.append(u)
            cols.append(j)
            vals.append(v)
    return sp.csr_matrix((vals, (rows, cols)), shape=m.X.shape, dtype=np.float32)


def served_lists(
    m: Matrix, split: Split, table: sp.csr_matrix, scoring: ScoringSettings, k: int = 10
) -> dict[str, list[str]]:
    """Top-k lists from a neighbour table, seeded as the API seeds it."""
    Q = seed_matrix(m, split, scoring)
    users = [u for u in split.targets if u in m.user_index]
    return models.top_k_lists(lambda rows: (Q[rows] @ table).toarray(), users, m, split.exclude, k)


def _row_top(values: np.ndarray, rows: np.ndarray, n_rows: int) -> np.ndarray:
    """Each row's largest value, at least 0 (a dense row's absent entries are zeros)."""
    top = np.zeros(n_rows, dtype=values.dtype)
    np.maximum.at(top, rows, values)
    return top


def _positive_or_one(top: np.ndarray) -> np.ndarray:
    return np.where(top > 0, top, 1.0).astype(top.dtype)


def _aligned(parts: Sequence[sp.coo_matrix], n: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The union of the parts' entries (rows x ``n``) as (row, column, one value array per part)."""
    keys = np.concatenate([p.row.astype(np.int64) * n + p.col for p in parts])
    union, where = np.unique(keys, return_inverse=True)
    values, at = [], 0
    for p in parts:
        v = np.zeros(len(union), dtype=np.float32)
        v[where[at : at + p.nnz]] = p.data
        at += p.nnz
        values.append(v)
    return union // n, union % n, values


def blend_results(
    m: Matrix,
    split: Split,
    table: sp.csr_matrix,
    live: sp.csr_matrix,
    scoring: ScoringSettings,
    shares: Sequence[float] = BLEND_GRID,
    k: int = 10,
) -> list[tuple[float, float, float]]:
    """HR@k and NDCG@k of the served blend at each share, on ``split``: ``[(share, hr, ndcg)]``.

    The same maths as the API's ranking: live and batch candidates each scaled to a top of one and mixed
    (``scoring.blend``); with ``exclude_seen`` off the user's own items are offered back as
    ``scoring.add_repeats`` does; the user's seen items or the protocol's exclusions are left out.
    ``live`` is the live state's popularity-normalised neighbour table (items x items).

    Only each user's candidates are scored (the items either side or the preferences name, a few
    hundred of the catalogue): per share, the top ``k`` is picked from a row as wide as the most
    candidates any user of the batch has, not from the whole catalogue.
    """
    Q = seed_matrix(m, split, scoring)
    prefs = (
        None if scoring.exclude_seen or scoring.repeat_blend <= 0 else preference_matrix(m, split, scoring)
    )
    users = [u for u in split.targets if u in m.user_index]
    hits = np.zeros(len(shares))
    gains = np.zeros(len(shares))
    n = len(m.items)
    batch_rows = models.score_batch(n)
    for start in range(0, len(users), batch_rows):
        chunk = users[start : start + batch_rows]
        index = np.array([m.user_index[u] for u in chunk])
        q = Q[index]
        parts = [(q @ live).tocoo(), (q @ table).tocoo()]
        if prefs is not None:
            parts.append(prefs[index].tocoo())
        rows, cols, values = _aligned(parts, n)
        # each side scaled to a top of one per user (a top that is not positive leaves the side as it is)
        L, B = (v / _positive_or_one(_row_top(v, rows, len(chunk)))[rows] for v in values[:2])
        banned_keys = []
        for r, user in enumerate(chunk):
            ex = split.exclude.get(user, set())
            if scoring.exclude_seen:
                ex = ex | {i for _, i, _ in split.train[user]}
            banned_keys.extend(r * n + m.item_index[i] for i in ex if i in m.item_index)
        banned = np.isin(rows * n + cols, np.array(banned_keys, dtype=np.int64))
        counts = np.bincount(rows, minlength=len(chunk))
        width = max(int(counts.max()) if len(counts) else 0, 1)
        slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        item_at = np.zeros((len(chunk), width), dtype=np.int64)
        item_at[rows, slot] = cols
        for s, share in enumerate(shares):
            S = (1.0 - share) * L + share * B
            if prefs is not None:
                P = values[2]
                top_pref = _row_top(P, rows, len(chunk))
                top_s = _row_top(S, rows, len(chunk))
                scale = scoring.repeat_blend * _positive_or_one(top_s)
                factor = np.divide(scale, top_pref, out=np.zeros_like(top_pref), where=top_pref > 0)
                S = S + factor[rows] * P
            keep = (S > 0) & ~banned
            V = np.full((len(chunk), width), -np.inf, dtype=np.float32)
            V[rows[keep], slot[keep]] = S[keep]
            top = (
                np.argpartition(-V, k, axis=1)[:, :k]
                if width > k
                else np.tile(np.arange(width), (len(chunk), 1))
            )
            order = np.argsort(-np.take_along_axis(V, top, axis=1), axis=1, kind="stable")
            top = np.take_along_axis(top, order, axis=1)
            # plain ints per row: indexing numpy scalars one by one cost a third of this function
            shown = np.take_along_axis(item_at, top, axis=1).tolist()
            finite = np.isfinite(np.take_along_axis(V, top, axis=1)).tolist()
            for r, user in enumerate(chunk):
                ranked = [m.items[j] for j, ok in zip(shown[r], finite[r], strict=True) if ok]
                h, g = hit_and_gain(ranked, split.targets[user], k)
                hits[s] += h
                gains[s] += g
    count = max(len(split.targets), 1)
    return [(float(share), float(hits[s] / count), float(gains[s] / count)) for s, share in enumerate(shares)]


def sampled(split: Split, n: int = VALIDATION_USERS) -> Split:
    """``split`` with at most ``n`` evaluated users, evenly spread over its users (deterministic)."""
    if len(split.targets) <= n:
        return split
    users = list(split.targets)
    keep = [users[i * len(users) // n] for i in range(n)]
    return Split(
        split.name,
        split.train,
        {u: split.targets[u] for u in keep},
        {u: split.exclude.get(u, set()) for u in keep},
        split.target_type,
        split.items,
        split.features,
    )


def select(
    split: Split,
    scoring: ScoringSettings,
    configs: Sequence[Config] = DEFAULT_CONFIGS,
    progress: Progress | None = None,
    budget_bytes: int = 4 * GIB,
    bars: bool = False,
    cache: dict | None = None,
) -> tuple[list[Config], list[Result], list[str]]:
    """Score every config that fits the budget on the validation split carved from ``split``.

    Returns the configs scored, best first (HR@10, then NDCG@10), every candidate's validation figures
    (in the order tried) and a note per config left out for memory.
    """
    valid = sampled(split.validation())
    m = Matrix.from_split(valid)
    configs, skipped = within_budget_or_scalable(configs, valid, m, budget_bytes)
    for note in skipped:
        if progress:
            progress(f"skipped {note}")
    if not configs:
        raise ValueError(f"no model family fits the memory budget of {budget_bytes / GIB:.1f} GiB")
    results = []
    cache = {} if cache is None else cache
    for config in configs:
        t0 = time.perf_counter()
        # with its siblings, fitted together (``fit_many``) and kept in ``cache`` for their turn
        together = [config] + [c for c in configs if c != config and _sibling_key(c) == _sibling_key(config)]
        table = fit_many(m, together, cache=cache, split=valid, progress=bars)[0]
        lists = served_lists(m, valid, table, scoring)
        result = score_lists(config.name, lists, valid.targets, len(valid.items), time.perf_counter() - t0)
        results.append(result)
        if progress:
            progress(f"validation {config.name}: HR@10 {result.hr_at_10:.4f} NDCG@10 {result.ndcg_at_10:.4f}")
    ranked = sorted(
        zip(configs, results, strict=True), key=lambda cr: (-cr[1].hr_at_10, -cr[1].ndcg_at_10)
    )  # stable: on a tie the earlier config stays first
    return [c for c, _ in ranked], results, skipped


def choose_blend(
    split: Split,
    configs: Sequence[Config],
    scoring: ScoringSettings,
    live: sp.csr_matrix,
    progress: Progress | None = None,
    cache: dict | None = None,
    max_share: float = MAX_BLEND,
) -> tuple[Config, float, list[dict[str, float]]]:
    """The config among ``configs`` and its blend share, at most ``max_share``, whose blend with the live
    state serves the validation split best (HR@10, then NDCG@10; on a tie the earlier config, then the
    share nearest ``scoring.model_blend``). Returns it with its share and that config's figure per share.

    The family and the share are chosen together on the served blend's figure: a batch model that scores
    a little higher alone may add less to the live state than one that scores a little lower.
    ``live`` is the live state built from the validation split's training events (by the real state
    script), as a popularity-normalised items x items table in ``split.validation()``'s item order.
    """
    valid = sampled(split.validation())
    m = Matrix.from_split(valid)
    shares = [s for s in BLEND_GRID if s <= max_share]
    best: tuple[tuple[float, float, float], Config, float, list[dict[str, float]]] | None = None
    for config in configs:
        table = fit(m, config, cache=cache, split=valid)
        rows = blend_results(m, valid, table, live, scoring, shares)
        if progress:
            progress(
                f"validation blend {config.name} " + ", ".join(f"{s:g}: {h:.4f}/{g:.4f}" for s, h, g in rows)
            )
        out = [{"share": s, "hr_at_10": round(h, 6), "ndcg_at_10": round(g, 6)} for s, h, g in rows]
        for share, hr, ndcg in rows:
            key = (hr, ndcg, -abs(share - scoring.model_blend))
            if best is None or key > best[0]:
                best = (key, config, share, out)
    if best is None:
        raise ValueError("no config to blend")
    return best[1], best[2], best[3]


def choose(
    split: Split,
    scoring: ScoringSettings,
    configs: Sequence[Config],
    progress: Progress | None,
    budget_bytes: int,
    bars: bool,
    cache: dict,
    live: sp.csr_matrix | Callable[[], sp.csr_matrix | None] | None,
    max_share: float,
) -> tuple[Config, list[Result], list[str], float | None, list[dict[str, float]]]:
    """Choose on validation: every config alone (``select``), then, given ``live``, the best
    ``BLEND_FINALISTS`` configs' blends with it (``choose_blend``). Returns the chosen config, every
    config's validation figures, the configs left out for memory, the share (None without ``live``) and
    the chosen config's figure per share.

    ``live`` may be a callable that returns the table: it is called only once the configs are scored, so
    a caller can fold the validation events into Redis while the families are fitted (``streamrec
    train`` does). A callable that returns None (no throwaway Redis) means no share is chosen.
    """
    ranked, validation, skipped = select(split, scoring, configs, progress, budget_bytes, bars, cache)
    table = live() if callable(live) else live
    if table is None:
        return ranked[0], validation, skipped, None, []
    config, share, rows = choose_blend(
        split, ranked[:BLEND_FINALISTS], scoring, table, progress, cache, max_share
    )
    return config, validation, skipped, share, rows


def train(
    split: Split,
    scoring: ScoringSettings,
    configs: Sequence[Config] = DEFAULT_CONFIGS,
    progress: Progress | None = None,
    cache: dict | None = None,
    m: Matrix | None = None,
    live: sp.csr_matrix | Callable[[], sp.csr_matrix | None] | None = None,
    budget_bytes: int = 4 * GIB,
    bars: bool = False,
    max_share: float = MAX_BLEND,
) -> TrainedModel:
    """Choose on validation (``choose``: the family, and with ``live`` the blend share with it), then fit
    on all of ``split``."""
    cache = {} if cache is None else cache
    config, validation, skipped, blend, blend_rows = choose(
        split, scoring, configs, progress, budget_bytes, bars, cache, live, max_share
    )
    m = m or Matrix.from_split(split)
    t0 = time.perf_counter()
    table = fit(m, config, cache=cache, split=split, progress=bars)
    seconds = time.perf_counter() - t0
    if progress:
        chosen = f"; blend share {blend:g}" if blend is not None else ""
        progress(f"chose {config.name}{chosen}; fitted on {m.X.nnz:,} interactions in {seconds:.1f}s")
    return TrainedModel(config, table, m.items, validation, seconds, blend, blend_rows, skipped)


def neighbour_rows(
    items: Sequence[str], table: sp.csr_matrix, bar: bool = False
) -> Iterator[tuple[str, tuple[list[str], list[float]]]]:
    """The table's rows as ``(item, (neighbour ids, weights))``, strongest first, one at a time."""
    for r in tqdm(range(table.shape[0]), desc="publish", unit="item", disable=not bar, leave=False):
        start, end = table.indptr[r], table.indptr[r + 1]
        if start == end:
            continue
        idx, data = table.indices[start:end], table.data[start:end]
        order = np.argsort(-data, kind="stable")
        yield items[r], ([items[j] for j in idx[order]], [float(w) for w in data[order]])


def new_version(config: Config) -> str:
    """A sortable, readable version name: UTC time and the family."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{config.family}"


def peak_rss_bytes() -> int:
    """The peak resident memory of this process so far (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass(frozen=True)
class Report:
    """What ``streamrec train`` did: the version published, how it was chosen and how it scored."""

    version: str
    config: Config
    validation: list[Result]
    test: Result
    activated: bool
    events: int
    items: int = 0
    seconds: float = 0.0
    peak_rss_bytes: int = 0
    blend: float | None = None
    skipped: list[str] = field(default_factory=list)


def train_and_publish(
    split: Split,
    store: ModelStore,
    scoring: ScoringSettings,
    activate: bool = True,
    configs: Sequence[Config] = DEFAULT_CONFIGS,
    progress: Progress | None = None,
    budget_bytes: int = 4 * GIB,
    live: sp.csr_matrix | Callable[[], sp.csr_matrix | None] | None = None,
    bars: bool = False,
    max_share: float = MAX_BLEND,
    started: float | None = None,
) -> Report:
    """Choose on validation, report the held-out figures, then refit on everything and publish.

    The published model has seen all the data (the held-out items too): the test figure is the estimate
    of how a model trained this way does on actions it has not seen. With ``live`` (the live state of the
    validation split, or a callable that returns it: see ``choose``) the blend share is chosen too and
    recorded in the metadata for the API.
    ``started`` (``time.perf_counter()`` when the run began, reading the data included; default: now)
    is where the recorded ``train_seconds`` count from.
    """
    started = time.perf_counter() if started is None else started
    cache: dict = {}
    config, validation, skipped, blend, blend_rows = choose(
        split, scoring, configs, progress, budget_bytes, bars, cache, live, max_share
    )
    cache.clear()
    m = Matrix.from_split(split)
    t0 = time.perf_counter()
    lists = served_lists(m, split, fit(m, config, split=split, progress=bars), scoring)
    test = score_lists(f"{config.name}", lists, split.targets, len(split.items), time.perf_counter() - t0)
    if progress:
        progress(f"held-out test {config.name}: HR@10 {test.hr_at_10:.4f} NDCG@10 {test.ndcg_at_10:.4f}")
    del m, lists
    full = split.everything()
    mf = Matrix.from_split(full)
    t0 = time.perf_counter()
    table = fit(mf, config, split=full, progress=bars)
    model = TrainedModel(
        config, table, mf.items, validation, time.perf_counter() - t0, blend, blend_rows, skipped
    )
    version = new_version(config)
    seconds = time.perf_counter() - started
    store.publish(
        version,
        neighbour_rows(mf.items, table, bars),
        model.meta(
            {
                "test": test.as_dict(),
                "events": full.n_events,
                "source": split.name,
                "train_seconds": round(seconds, 2),
                "peak_rss_mb": round(peak_rss_bytes() / (1 << 20), 1),
                "memory_budget_mb": round(budget_bytes / (1 << 20)),
            }
        ),
    )
    if activate:
        store.activate(version)
    return Report(
        version,
        config,
        validation,
        test,
        activate,
        full.n_events,
        len(mf.items),
        time.perf_counter() - started,
        peak_rss_bytes(),
        blend,
        skipped,
    )
