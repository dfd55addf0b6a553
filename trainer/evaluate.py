"""``streamrec eval``: the served recommender and the strongest simple baselines on one split.

``streamrec-live`` folds the training events through the worker's own state script into a real Redis
and ranks with the API's own ``Recommender``; ``streamrec`` does the same with the trainer's batch model
published and blended in, exactly as the API serves it. The baselines see the same training matrix, the
same exclusions and the same metric code.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import redis
from tqdm import tqdm

from streamrec.contract import Event
from streamrec.datasets import merge_events
from streamrec.fold import StateWriter
from streamrec.keys import Keys
from streamrec.modelstore import ModelStore
from streamrec.recommend import Recommender
from streamrec.settings import ScoringSettings
from streamrec.state import StateReader
from streamrec.trainer import models, train
from streamrec.trainer.models import Matrix
from streamrec.trainer.ranking_metrics import Result, score_lists
from streamrec.trainer.splits import Split

MODELS = ("streamrec", "streamrec-live", "popularity", "bm25", "cosine", "als", "ease")
K = 10
FOLD_BATCH = 500
CHUNK = 250  # users per task handed to a ranking process
Say = Callable[[str], None]


def split_events(split: Split) -> Iterator[Event]:
    """The training actions as contract events, in global time order (each user's own order kept)."""
    return merge_events("eval", list(split.train.items()), sessions=False)


def fold(split: Split, client: redis.Redis, keys: Keys, scoring: ScoringSettings, bar: bool) -> float:
    """Apply the training events with the worker's state script; returns seconds taken."""
    writer = StateWriter(client, keys, scoring)
    total = sum(len(a) for a in split.train.values())
    t0 = time.perf_counter()
    batch: list[Event] = []
    with tqdm(total=total, desc="fold into Redis", unit="ev", disable=not bar, leave=False) as progress:
        for event in split_events(split):
            batch.append(event)
            if len(batch) >= FOLD_BATCH:
                writer.apply(batch)
                progress.update(len(batch))
                batch = []
        if batch:
            writer.apply(batch)
            progress.update(len(batch))
    return time.perf_counter() - t0


_worker: dict = {}


def _rank_chunk(chunk: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    recommender: Recommender = _worker["recommender"]
    return [
        (user, [r.item_id for r in recommender.for_user(user, K, exclude=ex).items]) for user, ex in chunk
    ]


def served_lists(
    split: Split,
    client: redis.Redis,
    keys: Keys,
    scoring: ScoringSettings,
    blend_model: bool,
    bar: bool,
    label: str,
    processes: int = 2,
) -> dict[str, list[str]]:
    """Ask the API's recommender for every evaluated user, excluding their training items.

    Users are spread over ``processes`` forked processes (redis-py gives each child its own connections):
    answering is mostly waiting on round trips, so this is how the offline run keeps to minutes.
    """
    jobs = [(user, sorted(split.exclude.get(user, ()))) for user in split.targets]
    chunks = [jobs[i : i + CHUNK] for i in range(0, len(jobs), CHUNK)]
    store = ModelStore(client, keys) if blend_model else None
    # answers as of the end of the training data, whatever today's date (decay is relative to it)
    end = max((ts for actions in split.train.values() for _, _, ts in actions), default=0)
    _worker["recommender"] = Recommender(
        StateReader(client, keys, scoring), scoring, store, clock=lambda: end + 1
    )
    out: dict[str, list[str]] = {}
    try:
        with (
            ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) as pool,
            tqdm(total=len(jobs), desc=label, unit="user", disable=not bar, leave=False) as progress,
        ):
            for ranked in pool.map(_rank_chunk, chunks):
                out.update(ranked)
                progress.update(len(ranked))
    finally:
        _worker.clear()
    return out


def check_models(wanted: Sequence[str]) -> None:
    """Refuse model names this run does not know, naming the ones it does."""
    unknown = set(wanted) - set(MODELS)
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(sorted(unknown))}: use {', '.join(MODELS)}")


def run(
    split: Split,
    client: redis.Redis,
    keys: Keys,
    scoring: ScoringSettings,
    wanted: Sequence[str] = MODELS,
    say: Say = print,
    bar: bool = True,
) -> list[Result]:
    """Evaluate the ``wanted`` models on ``split``; ``client``/``keys`` must point at an empty keyspace."""
    check_models(wanted)
    # The protocol's exclusions are explicit, so the recommender's own "seen" filter is not applied twice.
    scoring = scoring.model_copy(update={"exclude_seen": False})
    n_items = len(split.items)
    m = Matrix.from_split(split)
    results: list[Result] = []
    cache: dict = {}
    users = [u for u in split.targets if u in m.user_index]

    def record(name: str, lists: dict[str, list[str]], seconds: float) -> None:
        result = score_lists(name, lists, split.targets, n_items, seconds, K)
        results.append(result)
        say(f"{name:>15}: HR@10 {result.hr_at_10:.4f}  NDCG@10 {result.ndcg_at_10:.4f}  ({seconds:.1f}s)")

    if "popularity" in wanted:
        t0 = time.perf_counter()
        pop = models.popularity_scores(m)
        lists = models.top_k_lists(
            lambda rows: np.broadcast_to(pop, (len(rows), len(pop))), users, m, split.exclude
        )
        record("popularity", lists, time.perf_counter() - t0)
    for family in ("bm25", "cosine"):
        if family in wanted:
            t0 = time.perf_counter()
            sim = models.item_knn(m.X, family, 100)
            lists = models.top_k_lists(lambda rows, s=sim: (m.X[rows] @ s).toarray(), users, m, split.exclude)
            record(family, lists, time.perf_counter() - t0)
    if "als" in wanted:
        t0 = time.perf_counter()
        uf, itf = models.als(m.X)
        lists = models.top_k_lists(lambda rows: uf[rows] @ itf.T, users, m, split.exclude)
        record("als", lists, time.perf_counter() - t0)
    if "ease" in wanted:
        t0 = time.perf_counter()
        B = models.ease(m.X, 50.0)
        lists = models.top_k_lists(lambda rows: m.X[rows] @ B, users, m, split.exclude)
        record("ease", lists, time.perf_counter() - t0)
        # the same fit, in served form, for the trainer should it choose EASE(50) on validation
        cache[(id(m), train.Config("ease", (("lambda", 50.0),)), train.NEIGHBOURS)] = models.top_neighbours(
            B, train.NEIGHBOURS
        )
        del B

    if "streamrec-live" in wanted or "streamrec" in wanted:
        fold_seconds = fold(split, client, keys, scoring, bar)
        say(f"folded {sum(len(a) for a in split.train.values()):,} training events in {fold_seconds:.1f}s")
        store = ModelStore(client, keys)
        if "streamrec-live" in wanted:
            t0 = time.perf_counter()
            lists = served_lists(split, client, keys, scoring, False, bar, "streamrec-live")
            record("streamrec-live", lists, fold_seconds + time.perf_counter() - t0)
        if "streamrec" in wanted:
            t0 = time.perf_counter()
            trained = train.train(split, scoring, progress=say, cache=cache, m=m)
            version = train.new_version(trained.config)
            store.publish(version, trained.neighbours, trained.meta({"trained_on": split.name}))
            store.activate(version)
            lists = served_lists(split, client, keys, scoring, True, bar, "streamrec")
            record("streamrec", lists, fold_seconds + time.perf_counter() - t0)
    return results
