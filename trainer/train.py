"""Build a batch item-to-item model: choose the family on a validation split, fit it, publish it.

The choice is made on a split carved from the training data (each user's last training item held out),
never on test items. Every candidate is scored the way the API serves it: the user's recent actions,
weighted by recency and event type, seed each item's top neighbours.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import scipy.sparse as sp

from streamrec.modelstore import ModelStore
from streamrec.scoring import HistoryEntry, history_seeds
from streamrec.settings import ScoringSettings
from streamrec.trainer import models
from streamrec.trainer.models import Matrix
from streamrec.trainer.ranking_metrics import Result, score_lists
from streamrec.trainer.splits import Split

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Config:
    """One model family with its hyper-parameters."""

    family: str  # ease | bm25 | cosine
    params: tuple[tuple[str, float], ...] = ()

    @property
    def name(self) -> str:
        args = ",".join(f"{k}={v:g}" for k, v in self.params)
        return f"{self.family}({args})" if args else self.family


DEFAULT_CONFIGS: tuple[Config, ...] = (
    Config("ease", (("lambda", 50.0),)),
    Config("ease", (("lambda", 250.0),)),
    Config("bm25", (("k", 100.0),)),
    Config("cosine", (("k", 100.0),)),
)
NEIGHBOURS = 100  # neighbours kept per item in the served model


@dataclass
class TrainedModel:
    """A fitted item-to-item model in its served form, and how it was chosen."""

    config: Config
    neighbours: dict[str, tuple[list[str], list[float]]]
    validation: list[Result] = field(default_factory=list)
    fit_seconds: float = 0.0

    def meta(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {
            "family": self.config.family,
            "params": dict(self.config.params),
            "neighbours_per_item": max((len(ids) for ids, _ in self.neighbours.values()), default=0),
            "validation": [r.as_dict() for r in self.validation],
            "fit_seconds": round(self.fit_seconds, 2),
            **(extra or {}),
        }


def fit(m: Matrix, config: Config, n: int = NEIGHBOURS, cache: dict | None = None) -> sp.csr_matrix:
    """Fit ``config`` on the matrix and keep each item's top ``n`` neighbours (items x items)."""
    key = (id(m), config, n)
    if cache is not None and key in cache:
        return cache[key]
    p = dict(config.params)
    if config.family == "ease":
        weights: Any = models.ease(m.X, p.get("lambda", 50.0))
    elif config.family in ("bm25", "cosine"):
        weights = models.item_knn(m.X, config.family, int(p.get("k", 100)))
    else:
        raise ValueError(f"unknown model family {config.family!r}: use ease, bm25 or cosine")
    table = models.top_neighbours(weights, n)
    if cache is not None:
        cache[key] = table
    return table


def seed_matrix(m: Matrix, split: Split, scoring: ScoringSettings) -> sp.csr_matrix:
    """Each user's seeds exactly as the recommender weights them (``scoring.history_seeds``)."""
    weights = scoring.type_weights()
    rows, cols, vals = [], [], []
    for u, user in enumerate(m.users):
        recent = split.train[user][-scoring.history_len :][::-1]
        history = [HistoryEntry(item, ts, str(etype)) for etype, item, ts in recent]
        seeds = history_seeds(history, scoring.history_used, scoring.history_position_decay, weights)
        for item, w in seeds.items():
            rows.append(u)
            cols.append(m.item_index[item])
            vals.append(w)
    return sp.csr_matrix((vals, (rows, cols)), shape=m.X.shape, dtype=np.float32)


def served_lists(
    m: Matrix, split: Split, table: sp.csr_matrix, scoring: ScoringSettings, k: int = 10
) -> dict[str, list[str]]:
    """Top-k lists from a neighbour table, seeded as the API seeds it."""
    Q = seed_matrix(m, split, scoring)
    users = [u for u in split.targets if u in m.user_index]
    return models.top_k_lists(lambda rows: (Q[rows] @ table).toarray(), users, m, split.exclude, k)


def select(
    split: Split,
    scoring: ScoringSettings,
    configs: Sequence[Config] = DEFAULT_CONFIGS,
    progress: Progress | None = None,
) -> tuple[Config, list[Result]]:
    """Score every config on the validation split carved from ``split``'s training data; best HR@10 wins."""
    valid = split.validation()
    m = Matrix.from_split(valid)
    results = []
    for config in configs:
        t0 = time.perf_counter()
        table = fit(m, config)
        lists = served_lists(m, valid, table, scoring)
        result = score_lists(config.name, lists, valid.targets, len(valid.items), time.perf_counter() - t0)
        results.append(result)
        if progress:
            progress(f"validation {config.name}: HR@10 {result.hr_at_10:.4f} NDCG@10 {result.ndcg_at_10:.4f}")
    best = max(zip(configs, results, strict=True), key=lambda cr: (cr[1].hr_at_10, cr[1].ndcg_at_10))
    return best[0], results


def train(
    split: Split,
    scoring: ScoringSettings,
    configs: Sequence[Config] = DEFAULT_CONFIGS,
    progress: Progress | None = None,
    cache: dict | None = None,
    m: Matrix | None = None,
) -> TrainedModel:
    """Choose on validation, then fit the winner on all of ``split``'s training data."""
    config, validation = select(split, scoring, configs, progress)
    m = m or Matrix.from_split(split)
    t0 = time.perf_counter()
    table = fit(m, config, cache=cache)
    seconds = time.perf_counter() - t0
    if progress:
        progress(f"chose {config.name}; fitted on {m.X.nnz:,} interactions in {seconds:.1f}s")
    return TrainedModel(config, neighbour_rows(m, table), validation, seconds)


def neighbour_rows(m: Matrix, table: sp.csr_matrix) -> dict[str, tuple[list[str], list[float]]]:
    """The table as ``item -> (neighbour ids, weights)``, strongest first."""
    out = {}
    for r in range(table.shape[0]):
        start, end = table.indptr[r], table.indptr[r + 1]
        if start == end:
            continue
        idx, data = table.indices[start:end], table.data[start:end]
        order = np.argsort(-data, kind="stable")
        out[m.items[r]] = ([m.items[j] for j in idx[order]], [float(w) for w in data[order]])
    return out


def new_version(config: Config) -> str:
    """A sortable, readable version name: UTC time and the family."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{config.family}"


@dataclass(frozen=True)
class Report:
    """What ``streamrec train`` did: the version published, how it was chosen and how it scored."""

    version: str
    config: Config
    validation: list[Result]
    test: Result
    activated: bool
    events: int


def train_and_publish(
    split: Split,
    store: ModelStore,
    scoring: ScoringSettings,
    activate: bool = True,
    configs: Sequence[Config] = DEFAULT_CONFIGS,
    progress: Progress | None = None,
) -> Report:
    """Choose on validation, report the held-out figures, then refit on everything and publish.

    The published model has seen all the data (the held-out items too): the test figure is the estimate
    of how a model trained this way does on actions it has not seen.
    """
    started = time.perf_counter()
    config, validation = select(split, scoring, configs, progress)
    m = Matrix.from_split(split)
    t0 = time.perf_counter()
    lists = served_lists(m, split, fit(m, config), scoring)
    test = score_lists(f"{config.name}", lists, split.targets, len(split.items), time.perf_counter() - t0)
    if progress:
        progress(f"held-out test {config.name}: HR@10 {test.hr_at_10:.4f} NDCG@10 {test.ndcg_at_10:.4f}")
    full = split.everything()
    mf = Matrix.from_split(full)
    t0 = time.perf_counter()
    table = fit(mf, config)
    model = TrainedModel(config, neighbour_rows(mf, table), validation, time.perf_counter() - t0)
    version = new_version(config)
    store.publish(
        version,
        model.neighbours,
        model.meta(
            {
                "test": test.as_dict(),
                "events": full.n_events,
                "source": split.name,
                "train_seconds": round(time.perf_counter() - started, 2),
            }
        ),
    )
    if activate:
        store.activate(version)
    return Report(version, config, validation, test, activate, full.n_events)
