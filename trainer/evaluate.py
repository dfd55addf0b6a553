"""``streamrec eval``: the served recommender and the strongest simple baselines on one split.

``streamrec-live`` folds the training events through the worker's own state script into a real Redis
and ranks with the API's own ``Recommender``; ``streamrec`` does the same with the trainer's batch model
published and blended in, exactly as the API serves it. The trainer chooses the model and its blend share
together on the validation split, whose live state is folded by the same script (first, under the run's
own prefix, when its events are a prefix of each user's; see ``LiveStates``). The baselines see the same
training matrix, the same exclusions and the same metric code.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import redis
import scipy.sparse as sp
from tqdm import tqdm

from streamrec.contract import Event
from streamrec.datasets import merge_events
from streamrec.fold import StateWriter
from streamrec.keys import Keys
from streamrec.modelstore import ModelStore
from streamrec.recommend import Recommender
from streamrec.settings import ScoringSettings
from streamrec.state import FrozenCache, StateReader
from streamrec.trainer import models, train
from streamrec.trainer.models import Matrix
from streamrec.trainer.ranking_metrics import TAIL_SUPPORT, Result, score_lists, tail_share
from streamrec.trainer.splits import Split, training_end

MODELS = (
    "streamrec", "streamrec-live", "popularity", "bm25", "cosine", "als", "ease", "slist", "slist-catalog"
)  # fmt: skip
SLIST = train.DEFAULT_CONFIGS[0]  # the side-by-side SLIST row: the trainer's first (SLIST) config
EASE = train.Config("ease", (("lambda", 50.0),))  # the side-by-side EASE row (a baseline)
# SLIST with the catalog's features (where the data has a catalog), as the trainer tries it
SLIST_CATALOG = train.Config(SLIST.family, SLIST.params + (("features", train.FEATURE_WEIGHT),))
K = 10
FOLD_BATCH = 500
CHUNK = 250  # users per task handed to a ranking process
Say = Callable[[str], None]


def split_events(split: Split, id_prefix: str = "eval") -> Iterator[Event]:
    """The training actions as contract events, in global time order (each user's own order kept).

    Event ids are ``<id_prefix>-<n>``, numbered within the split: a second split folded into the same
    state needs its own prefix, or the state's dedupe would take its events for retries.
    """
    return merge_events(id_prefix, list(split.train.items()), sessions=False)


def fold(
    split: Split,
    client: redis.Redis,
    keys: Keys,
    scoring: ScoringSettings,
    bar: bool,
    id_prefix: str = "eval",
) -> float:
    """Apply the training events with the worker's state script; returns seconds taken."""
    writer = StateWriter(client, keys, scoring, cluster=isinstance(client, redis.cluster.RedisCluster))
    total = sum(len(a) for a in split.train.values())
    t0 = time.perf_counter()
    batch: list[Event] = []
    with tqdm(total=total, desc="fold into Redis", unit="ev", disable=not bar, leave=False) as progress:
        for event in split_events(split, id_prefix):
            batch.append(event)
            if len(batch) >= FOLD_BATCH:
                writer.apply(batch)
                progress.update(len(batch))
                batch = []
        if batch:
            writer.apply(batch)
            progress.update(len(batch))
    return time.perf_counter() - t0


def later_part(split: Split, earlier: Split) -> Split | None:
    """``split``'s training actions that ``earlier`` lacks, or None unless each of ``earlier``'s users'
    training actions are the first of theirs in ``split`` (a prefix, as a validation split carved by
    holding out each user's last action is).

    Folding ``earlier`` and then this part gives the state of folding ``split``: each user's actions still
    arrive in their order, and the state's sums do not depend on how users interleave. One exception:
    a neighbour list past its bound is trimmed to its strongest members at the moment it overflows, so
    where lists are full the two orders may keep different weak members (on MovieLens-100k the live
    row's HR@10 moved from 0.1983 to 0.1972).
    """
    rest: dict[str, list] = {}
    for user, actions in split.train.items():
        before = earlier.train.get(user, [])
        if actions[: len(before)] != before:
            return None
        if len(actions) > len(before):
            rest[user] = actions[len(before) :]
    if set(earlier.train) - set(split.train):
        return None
    return Split(f"{split.name}:later", rest, {}, {}, split.target_type, list(split.items), split.features)


_folder: dict = {}


def _prepare(step: str) -> tuple[sp.csr_matrix | None, float]:
    """One step of ``LiveStates``, run in its forked process: returns (validation's live table or None,
    seconds spent folding towards the test state)."""
    f = _folder
    split, client, keys, scoring, valid, later = (
        f[k] for k in ("split", "client", "keys", "scoring", "valid", "later")
    )
    if step == "validation":
        if later is None:  # not a prefix: folded under its own key prefix, read, dropped
            return validation_live(split, client, keys, scoring, False), 0.0
        seconds = fold(valid, client, keys, scoring, False)
        return live_table(client, keys, scoring, valid.items, training_end(valid) + 1), seconds
    if later is not None:
        return None, fold(later, client, keys, scoring, False, id_prefix="eval-later")
    return None, fold(split, client, keys, scoring, False)


def _answer_live() -> tuple[dict[str, list[str]], float]:
    """``LiveStates``' last step, in its forked process: the live state's answers, and the seconds taken."""
    f = _folder
    t0 = time.perf_counter()
    lists = served_lists(f["split"], f["client"], f["keys"], f["scoring"], False, False, "live", processes=1)
    return lists, time.perf_counter() - t0


class LiveStates:
    """The streaming state an offline run needs, folded into Redis in a forked process while the
    baselines and the trainer's families are fitted in this one (Redis, not Python, is the fold's
    bottleneck, so the two overlap on two cores).

    With ``validation`` the validation split's live table is read first (``table()``). When its events
    are a prefix of each user's training events (``later_part``), they are folded under the run's own
    key prefix and only the rest follows, so the training events are folded once, not twice.
    ``wait()`` returns the seconds spent folding the test state, once it is complete. With ``answer`` the
    same process then answers every evaluated user from the live state (``live_lists()``), while this
    one is still fitting: on Beauty that takes its 25 s off the run's critical path.
    Errors of the fold (e.g. Redis refusing writes) are raised by ``table()`` / ``wait()``.
    """

    def __init__(
        self,
        split: Split,
        client: redis.Redis,
        keys: Keys,
        scoring: ScoringSettings,
        validation: bool,
        answer: bool = False,
    ) -> None:
        valid = split.validation() if validation else None
        later = later_part(split, valid) if valid is not None else None
        _folder.update(split=split, client=client, keys=keys, scoring=scoring, valid=valid, later=later)
        self.incremental = later is not None
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
        self._table = self._pool.submit(_prepare, "validation") if validation else None
        self._state = self._pool.submit(_prepare, "test")
        self._answers = self._pool.submit(_answer_live) if answer else None

    def table(self) -> sp.csr_matrix:
        """The validation split's live table (``live_table``), waiting for it."""
        if self._table is None:
            raise ValueError("these live states were prepared without the validation split")
        table, _ = self._table.result()
        assert table is not None
        return table

    def wait(self) -> float:
        """Wait for the test state; returns the seconds its events took to fold."""
        _, seconds = self._state.result()
        if self.incremental and self._table is not None:
            seconds += self._table.result()[1]
        return seconds

    def live_lists(self) -> tuple[dict[str, list[str]], float]:
        """With ``answer``: the live state's top-10 per evaluated user (the API's ``Recommender``, training
        items excluded, answered in the forked process once the state is complete, beside this process's
        fits), and the seconds the answers took."""
        if self._answers is None:
            raise ValueError("these live states were prepared without their answers")
        return self._answers.result()

    def close(self) -> None:
        """Wait for the forked process to finish its step and end it."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        _folder.clear()


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
    end = training_end(split)
    # the state does not change while the users are answered, and the clock stands still: what one answer
    # read, the next takes from the cache (the same values, so the same answers; on Beauty, 22,363 users
    # are answered in about 26 s instead of 235 s)
    _worker["recommender"] = Recommender(
        StateReader(client, keys, scoring), scoring, store, clock=lambda: end + 1, cache=FrozenCache()
    )
    out: dict[str, list[str]] = {}
    if processes == 1:  # here, in order (already in a forked process, say)
        try:
            for chunk in chunks:
                out.update(_rank_chunk(chunk))
        finally:
            _worker.clear()
        return out
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


def live_table(
    client: redis.Redis,
    keys: Keys,
    scoring: ScoringSettings,
    items: Sequence[str],
    now_ms: int,
    chunk: int = 500,
) -> sp.csr_matrix:
    """The folded state's neighbours of every item, normalised exactly as the API's ranking does it.

    Returns items x items (in ``items`` order): row ``a`` holds ``a``'s popularity-normalised neighbours
    as ``Recommender`` computes them for a seed ``a`` at ``now_ms`` (epoch ms; decay is relative to it).
    """
    index = {item: n for n, item in enumerate(items)}
    recommender = Recommender(StateReader(client, keys, scoring), scoring, clock=lambda: now_ms)
    rows, cols, vals = [], [], []
    for start in range(0, len(items), chunk):
        part = list(items[start : start + chunk])
        for anchor, neighbours in recommender._normalised(
            part, now_ms
        ).items():  # the API's own normalisation
            for item, weight in neighbours.items():
                if item in index:
                    rows.append(index[anchor])
                    cols.append(index[item])
                    vals.append(weight)
    return sp.csr_matrix((vals, (rows, cols)), shape=(len(items), len(items)), dtype=np.float32)


def _drop(client: redis.Redis, keys: Keys) -> None:
    batch: list = []
    for key in client.scan_iter(keys.pattern(), count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            client.delete(*batch)
            batch = []
    if batch:
        client.delete(*batch)


def validation_live(
    split: Split, client: redis.Redis, keys: Keys, scoring: ScoringSettings, bar: bool
) -> sp.csr_matrix:
    """Fold ``split.validation()``'s training events under a sibling prefix, read its live table, drop it."""
    valid = split.validation()
    vkeys = Keys(f"{keys.prefix}-v")
    try:
        fold(valid, client, vkeys, scoring, bar)
        return live_table(client, vkeys, scoring, valid.items, training_end(valid) + 1)
    finally:
        _drop(client, vkeys)


def support_counts(split: Split) -> dict[str, int]:
    """Each item's number of interactions in the training log (every event type)."""
    counts: dict[str, int] = {}
    for actions in split.train.values():
        for _, item, _ in actions:
            counts[item] = counts.get(item, 0) + 1
    return counts


def check_models(wanted: Sequence[str]) -> None:
    """Refuse model names this run does not know, naming the ones it does."""
    unknown = set(wanted) - set(MODELS)
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(sorted(unknown))}: use {', '.join(MODELS)}")


def _baselines(
    split: Split,
    m: Matrix,
    users: list[str],
    wanted: Sequence[str],
    scoring: ScoringSettings,
    budget_bytes: int,
    bar: bool,
    cache: dict,
    record: Callable[[str, dict[str, list[str]], float], None],
    say: Say,
) -> None:
    """The baselines in ``wanted``, each recorded; the SLIST fits are left in ``cache`` for the trainer."""
    n_items = len(split.items)
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
    dense: list[tuple[str, train.Config]] = []  # the dense rows wanted that fit the budget
    for family, config in (("ease", EASE), ("slist", SLIST), ("slist-catalog", SLIST_CATALOG)):
        need = train.memory_needed(config, n_items, m.X.nnz)
        if family not in wanted:
            continue
        if family == "slist-catalog" and not split.features:
            say(f"{family:>15}: skipped, the data comes with no catalog features")
        elif need > budget_bytes:
            say(f"{family:>15}: skipped, needs {need / train.GIB:.1f} GiB > the memory budget")
        else:
            dense.append((family, config))
    if ("ease", EASE) in dense:
        t0 = time.perf_counter()
        B = models.ease(m.X, 50.0, bar)
        lists = models.top_k_lists(lambda rows, B=B: m.X[rows] @ B, users, m, split.exclude)
        record("ease", lists, time.perf_counter() - t0)
        del B  # a baseline only: the trainer does not try EASE (``train.DEFAULT_CONFIGS``)
    slists = [(family, config) for family, config in dense if family != "ease"]
    if not slists:
        return
    # both SLIST rows from one factorisation (as the trainer fits them); each scored as its paper serves
    # it and as the API would: recent actions, recency-weighted
    t0 = time.perf_counter()
    family_of = {config: family for family, config in slists}
    Q = train.seed_matrix(m, split, scoring)
    for config, B in train.fit_weights(m, list(family_of), split, bar):
        family = family_of[config]
        lists = models.top_k_lists(lambda rows, B=B: Q[rows] @ B, users, m, split.exclude)
        record(family, lists, time.perf_counter() - t0)
        # the same fit, in served form, for the trainer should it choose this config on validation
        cache[train.fit_key(m, config, split)] = models.top_neighbours(B, train.NEIGHBOURS)
        del B
        t0 = time.perf_counter()


def run(
    split: Split,
    client: redis.Redis,
    keys: Keys,
    scoring: ScoringSettings,
    wanted: Sequence[str] = MODELS,
    say: Say = print,
    bar: bool = True,
    budget_bytes: int = 4 * train.GIB,
    max_share: float = train.MAX_BLEND,
) -> list[Result]:
    """Evaluate the ``wanted`` models on ``split``; ``client``/``keys`` must point at an empty keyspace.

    Besides HR@10, NDCG@10 and coverage, every result carries its long-tail share: the share of shown
    items with fewer than ``TAIL_SUPPORT`` training interactions, to compare with that of the held-out
    items (said once, first).
    """
    check_models(wanted)
    # The protocol's exclusions are explicit, so the recommender's own "seen" filter is not applied twice.
    scoring = scoring.model_copy(update={"exclude_seen": False})
    n_items = len(split.items)
    m = Matrix.from_split(split)
    support = support_counts(split)
    results: list[Result] = []
    cache: dict = {}
    users = [u for u in split.targets if u in m.user_index]
    say(
        f"held-out items with fewer than {TAIL_SUPPORT} training interactions: "
        f"{tail_share(split.targets, support):.3f}"
    )

    def record(name: str, lists: dict[str, list[str]], seconds: float) -> None:
        result = score_lists(name, lists, split.targets, n_items, seconds, K, support)
        results.append(result)
        say(
            f"{name:>15}: HR@10 {result.hr_at_10:.4f}  NDCG@10 {result.ndcg_at_10:.4f}  "
            f"tail {result.tail_share:.3f}  ({seconds:.1f}s)"
        )

    # the streaming state folds in a forked process while the baselines and the trainer fit here
    live_states = None
    if "streamrec-live" in wanted or "streamrec" in wanted:
        live_states = LiveStates(
            split, client, keys, scoring, validation="streamrec" in wanted, answer="streamrec-live" in wanted
        )
    try:
        _baselines(split, m, users, wanted, scoring, budget_bytes, bar, cache, record, say)
        if live_states is None:
            return results
        trained, train_seconds = None, 0.0
        if "streamrec" in wanted:
            t0 = time.perf_counter()
            trained = train.train(
                split,
                scoring,
                progress=say,
                cache=cache,
                m=m,
                live=live_states.table,
                budget_bytes=budget_bytes,
                bars=bar,
                max_share=max_share,
            )
            train_seconds = time.perf_counter() - t0
        fold_seconds = live_states.wait()
    finally:
        if live_states is not None:
            live_states.close()
    how = "the validation split's first, then the rest" if live_states.incremental else "in one pass"
    say(
        f"folded {sum(len(a) for a in split.train.values()):,} training events ({how}) in {fold_seconds:.1f}s"
    )
    if "streamrec-live" in wanted:
        lists, answer_seconds = live_states.live_lists()
        record("streamrec-live", lists, fold_seconds + answer_seconds)
    if trained is not None:
        t0 = time.perf_counter()
        store = ModelStore(client, keys)
        version = train.new_version(trained.config)
        store.publish(
            version,
            train.neighbour_rows(trained.items, trained.table),
            trained.meta({"trained_on": split.name}),
        )
        store.activate(version)
        lists = served_lists(split, client, keys, scoring, True, bar, "streamrec")
        record("streamrec", lists, fold_seconds + train_seconds + time.perf_counter() - t0)
    return results
