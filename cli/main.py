"""The ``streamrec`` command: one entry point, a subcommand per program.

This module is the composition root: it is the one place that imports the programs (lazily, inside each
subcommand), so the programs never import each other.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from streamrec.settings import Settings, keys_of

if TYPE_CHECKING:
    import redis

    from streamrec.keys import Keys
    from streamrec.modelstore import ModelStore
    from streamrec.publisher import EventPublisher

app = typer.Typer(
    help="streamrec: real-time recommendations for online shops (Kafka -> Faust -> Redis -> Flask).",
    no_args_is_help=True,
    add_completion=False,
)


# Libraries whose INFO lines (connections opened, metadata fetched) drown a command's own output; their
# warnings still show, and STREAMREC_LOG_LEVEL=DEBUG shows everything.
CHATTY_LIBRARIES = ("kafka",)
BROKER_CHECK_TIMEOUT_S = 3.0


def _settings() -> Settings:
    import logging

    from streamrec import logs

    settings = Settings()
    logs.configure(settings.log_level, settings.log_format)
    debug = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.WARNING)
    return settings


def _require_broker(bootstrap: str) -> None:
    """Exit with one line unless some bootstrap server accepts a TCP connection within a few seconds.

    Kafka clients otherwise retry for half a minute and end in a traceback that names no address.
    """
    import socket

    addresses = [a.strip() for a in bootstrap.split(",") if a.strip()]
    for address in addresses:
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=BROKER_CHECK_TIMEOUT_S):
                return
        except (OSError, ValueError):
            continue
    typer.echo(
        f"error: no Kafka broker answers at {', '.join(addresses) or '(empty)'} (STREAMREC_KAFKA_BOOTSTRAP); "
        "start the local stack with 'streamrec up' or point STREAMREC_KAFKA_BOOTSTRAP at a broker",
        err=True,
    )
    raise typer.Exit(1)


@contextmanager
def _publisher(ensure_topics: bool) -> Iterator[EventPublisher]:
    """A publisher for the configured topics (created first if asked), flushed and closed at the end."""
    from streamrec.publisher import EventPublisher
    from streamrec.topics import Topics
    from streamrec.topics import ensure_topics as create

    settings = _settings()
    _require_broker(settings.kafka_bootstrap)
    topics = Topics(settings.topic_prefix)
    if ensure_topics:
        create(settings.kafka_bootstrap, topics, settings.partitions)
    from streamrec import metrics

    metrics.serve(settings.metrics_host, settings.producer_metrics_port, "producer")
    with EventPublisher(settings.kafka_bootstrap, topics) as publisher:
        yield publisher


def _fail_on_undelivered(failed: int) -> None:
    """Exit non-zero when the broker did not acknowledge every record, so scripts do not take it for done."""
    if failed:
        typer.echo(
            f"error: {failed} records were not acknowledged by Kafka (see the warnings above)", err=True
        )
        raise typer.Exit(1)


@app.command()
def worker() -> None:
    """Run a stream-processor worker: fold events from Kafka into Redis (run several to share partitions)."""
    from streamrec.stream_processor.worker import run

    run(_settings())


@app.command()
def topics(
    partitions: Annotated[
        int | None, typer.Option(help="Partitions of the events topic (default: STREAMREC_PARTITIONS).")
    ] = None,
    replication_factor: Annotated[int, typer.Option(help="Replicas of each topic.")] = 1,
) -> None:
    """Create the events, items and dead-letter topics if they are missing (a deployment's first step)."""
    from streamrec.topics import Topics, ensure_topics

    settings = _settings()
    _require_broker(settings.kafka_bootstrap)
    names = Topics(settings.topic_prefix)
    ensure_topics(settings.kafka_bootstrap, names, partitions or settings.partitions, replication_factor)
    typer.echo(f"topics ready: {names.events}, {names.items}, {names.dlq}")


@app.command()
def api(
    port: Annotated[int | None, typer.Option(help="Port (default: STREAMREC_API_PORT).")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Gunicorn workers (default: STREAMREC_API_WORKERS).")
    ] = None,
) -> None:
    """Serve the HTTP API under gunicorn."""
    from streamrec.api.server import serve

    settings = _settings()
    if port is not None:
        settings.api_port = port
    if workers is not None:
        settings.api_workers = workers
    serve(settings)


@app.command()
def replay(
    dataset: Annotated[
        str,
        typer.Argument(
            help="A dataset name in STREAMREC_DATASETS (default ../shared/datasets: amazon-beauty, movielens-100k, yoochoose-100k, beibei, diginetica-sample), or such a dataset's folder."
        ),
    ],
    limit: Annotated[
        int | None, typer.Option(min=1, help="Stop after about this many events (whole users).")
    ] = None,
    rate: Annotated[
        float | None, typer.Option(min=0.001, help="Events per second (default: as fast as possible).")
    ] = None,
    ensure_topics: Annotated[bool, typer.Option(help="Create the topics if they are missing.")] = True,
) -> None:
    """Stream a real dataset into Kafka as events, each user's in order, catalog first."""
    from streamrec.datasets import find_dataset
    from streamrec.producers.replay import replay as run_replay

    with _usage_errors():
        find_dataset(dataset)  # a wrong name or a missing folder is said before Kafka is touched
    with _publisher(ensure_topics) as publisher:
        report = run_replay(publisher, dataset, limit=limit, rate=rate)
    typer.echo(f"replayed {report.events} events and {report.items} catalog records in {report.seconds:.1f}s")
    _fail_on_undelivered(report.failed)


@app.command()
def simulate(
    users: Annotated[int, typer.Option(min=1, help="Shoppers.")] = 500,
    items: Annotated[int, typer.Option(min=1, help="Catalog size.")] = 300,
    events: Annotated[
        int, typer.Option(min=1, help="Events to publish (with --react: the warm-up history).")
    ] = 20_000,
    rate: Annotated[
        float | None, typer.Option(min=0.001, help="Events per second (default: as fast as possible).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same shop).")] = 7,
    ensure_topics: Annotated[bool, typer.Option(help="Create the topics if they are missing.")] = True,
    react: Annotated[
        bool,
        typer.Option(
            "--react",
            help="Then, in rounds, ask the API for each shopper's recommendations and publish how they "
            "react (views, cart adds, purchases, from their hidden tastes); print a summary per experiment "
            "variant.",
        ),
    ] = False,
    api: Annotated[
        str | None,
        typer.Option(
            help="With --react: the API to ask (default: http://127.0.0.1:STREAMREC_API_PORT, where "
            "'streamrec up' serves it)."
        ),
    ] = None,
    placement: Annotated[
        str | None, typer.Option(help="With --react: the placement= every request names (default: none).")
    ] = None,
    rounds: Annotated[
        int | None, typer.Option(min=1, help="With --react: answers asked per shopper (default: 3).")
    ] = None,
    k: Annotated[
        int | None, typer.Option(min=1, help="With --react: items per answer (default: 10).")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, max=64, help="With --react: requests in flight (default: 8).")
    ] = None,
    fold_timeout: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="With --react: seconds to wait for the workers to fold what was sent before asking "
            "again (reads their offsets in STREAMREC_REDIS_URL; 0: do not wait; default: 120).",
        ),
    ] = None,
) -> None:
    """Drive a synthetic shop: a generated catalog and shoppers who search, view, add to cart and buy.

    With --react the shoppers then react to the API's answers (an A/B experiment's traffic): every
    reaction cites the answer's recommendation_id.
    """
    if not react:
        given = {"--api": api, "--placement": placement, "--rounds": rounds, "--k": k}
        given |= {"--concurrency": concurrency, "--fold-timeout": fold_timeout}
        if named := [name for name, value in given.items() if value is not None]:
            typer.echo(f"error: {', '.join(named)} only apply with --react", err=True)
            raise typer.Exit(2)
        from streamrec.producers.simulate import simulate as run_simulate

        with _publisher(ensure_topics) as publisher:
            report = run_simulate(
                publisher, n_users=users, n_items=items, n_events=events, rate=rate, seed=seed
            )
        typer.echo(
            f"simulated {report.events} events over {report.items} catalog items in {report.seconds:.1f}s"
        )
        _fail_on_undelivered(report.failed)
        return
    from streamrec.producers.react import FoldWatch, ReactError, RecommendationsApi, run_reactions

    settings = _settings()
    fetch = RecommendationsApi(api or f"http://127.0.0.1:{settings.api_port}", placement, k or 10)
    timeout = 120.0 if fold_timeout is None else fold_timeout
    watch = None
    try:
        fetch.check()  # before anything is published
        if timeout > 0:
            client = _redis(settings.redis_url, settings.redis_cluster)
            client.ping()  # a Redis that does not answer is said before anything is published
            watch = FoldWatch(client, keys_of(settings), timeout)
        with _publisher(ensure_topics) as publisher:
            report = run_reactions(
                publisher,
                fetch,
                n_users=users,
                n_items=items,
                n_events=events,
                seed=seed,
                rounds=rounds or 3,
                rate=rate,
                wait_folded=watch,
                concurrency=concurrency or 8,
                say=typer.echo,
            )
    except ReactError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    warm = report.warmup
    typer.echo(f"warm-up: {warm.events} events over {warm.items} catalog items in {warm.seconds:.1f}s")
    for line in report.tally.lines():
        typer.echo(line)
    sent = report.tally.events()
    by_type = f" ({', '.join(f'{n} {t}' for t, n in sorted(sent.items()))})" if sent else ""
    typer.echo(
        f"sent {sum(sent.values())} reaction events{by_type}, revenue {report.tally.revenue():.2f}, "
        f"in {report.seconds:.1f}s"
    )
    _fail_on_undelivered(warm.failed + report.failed)


@app.command()
def up(
    dataset: Annotated[
        str,
        typer.Option(
            help="What feeds the stack once it is up: 'auto' (movielens-100k when STREAMREC_DATASETS, "
            "default ../shared/datasets, holds it, else the built-in shop), 'shop' (the built-in simulated "
            "shop), 'none', or a dataset name or folder as for 'streamrec replay'."
        ),
    ] = "auto",
    limit: Annotated[
        int | None, typer.Option(min=1, help="Events published from it (default: all of it).")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Stream-processor worker processes.")] = 1,
    data_dir: Annotated[
        Path, typer.Option(help="Where Redis keeps its AOF and every process its log.")
    ] = Path(".streamrec"),
    exit_after_demo: Annotated[
        bool, typer.Option(help="Stop everything after printing the demo (for scripts).")
    ] = False,
    redis_cluster: Annotated[
        bool,
        typer.Option(
            help="A local Redis Cluster (3 masters, 3 replicas, on the URL's port and the 5 after it) instead of one Redis."
        ),
    ] = False,
) -> None:
    """Start the whole local stack on loopback (Tansu, Redis, workers, API), feed it, show live answers.

    The feed is real data when the datasets are there, else a built-in simulated shop. Ctrl-C (or
    SIGTERM) stops every process it started.
    """
    from streamrec.devtools.stack import run_stack

    settings = _settings()
    settings.redis_cluster = settings.redis_cluster or redis_cluster
    raise typer.Exit(run_stack(settings, dataset, limit, workers, data_dir, exit_after_demo))


@contextmanager
def _usage_errors() -> Iterator[None]:
    """A ValueError (bad file, format, model name or version) becomes 'error: …' and exit status 2."""
    try:
        yield
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _redis(url: str, cluster: bool) -> redis.Redis:
    """A client for ``url``: one Redis, or (``cluster``) a Redis Cluster that ``url`` names one node of."""
    from streamrec.fold import redis_client

    client: redis.Redis = redis_client(url, cluster)
    return client


def _unwind_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so a throwaway server (``_eval_redis``) is stopped, not left running."""
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


@contextmanager
def _eval_redis(url: str | None, cluster: bool = False) -> Iterator[tuple[redis.Redis, Keys]]:
    """An empty keyspace: a throwaway local redis-server, or a fresh prefix on ``url`` (a Redis Cluster's
    node with ``cluster``), deleted after. Used from a helper thread, its caller calls
    ``_unwind_on_sigterm`` first (only the main thread may set a signal handler)."""
    import tempfile
    import threading
    import uuid

    import redis as redis_lib

    from streamrec.devtools.localstack import LOOPBACK, free_port, start_redis
    from streamrec.keys import Keys

    if url:
        client = _redis(url, cluster)
        keys = Keys(f"eval-{uuid.uuid4().hex[:8]}")
        try:
            yield client, keys
        finally:
            for batch in _chunks(client.scan_iter(keys.pattern(), count=1000), 1000):
                client.delete(*batch)
        return
    if threading.current_thread() is threading.main_thread():  # a helper thread's caller did it already
        _unwind_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="streamrec-eval-") as tmp:
        port = free_port()
        server = start_redis(port, Path(tmp), appendonly=False)
        try:
            yield redis_lib.Redis(host=LOOPBACK, port=port), Keys("sr")
        finally:
            server.stop()


def _chunks(iterable, size: int):  # type: ignore[no-untyped-def]
    batch = []
    for x in iterable:
        batch.append(x)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


@app.command("eval")
def evaluate(
    dataset: Annotated[Path, typer.Option(help="The interaction file (or, for 'multi', its folder).")],
    format: Annotated[
        str, typer.Option("--format", help="seq | movielens | session | multi (see 'streamrec eval --help').")
    ],
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the figures to this JSON file.")
    ] = None,
    models: Annotated[
        str,
        typer.Option(
            help="Comma-separated: streamrec, streamrec-live, popularity, bm25, cosine, als, ease, slist, "
            "slist-catalog (SLIST with the catalog's features, where the data has a catalog)."
        ),
    ] = "streamrec,streamrec-live,popularity,bm25,cosine,als,ease,slist,slist-catalog",
    redis_url: Annotated[
        str | None,
        typer.Option(
            help="Use this Redis (a fresh key prefix, deleted after) instead of a throwaway local one."
        ),
    ] = None,
    redis_cluster: Annotated[
        bool | None,
        typer.Option(help="--redis-url names a node of a Redis Cluster (default: STREAMREC_REDIS_CLUSTER)."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Offline evaluation: hold out each user's last action, rank every item, report HR@10, NDCG@10, coverage
    and the long-tail share (shown items with fewer than 5 training interactions, beside that of the held-out items).

    Formats: seq = 'user item1 item2 ...' per line in time order; movielens = a RecBole .inter file;
    session = TSV 'SessionId ItemId Time' with a header; multi = a Beibei-style folder with train.txt
    (purchases), cart.txt (cart adds) and test.txt (held-out purchases).
    """
    import json

    from streamrec.trainer import evaluate as offline
    from streamrec.trainer.ranking_metrics import TAIL_SUPPORT, table, tail_share
    from streamrec.trainer.splits import load_split

    settings = _settings()
    with _usage_errors():
        split = load_split(dataset, format)
        wanted = [m.strip() for m in models.split(",") if m.strip()]
        offline.check_models(wanted)
    typer.echo(
        f"{split.name}: {split.n_events:,} events, {len(split.train):,} users, {len(split.items):,} items, "
        f"{len(split.targets):,} held out"
    )
    started = time.perf_counter()
    cluster = settings.redis_cluster if redis_cluster is None else redis_cluster
    with _eval_redis(redis_url, cluster) as (client, keys):
        results = offline.run(
            split,
            client,
            keys,
            settings.scoring,
            wanted,
            say=typer.echo,
            bar=progress,
            budget_bytes=settings.trainer.budget_bytes,
            max_share=settings.trainer.max_blend,
        )
    held_out_tail = tail_share(split.targets, offline.support_counts(split))
    typer.echo("\n" + table(results))
    typer.echo(f"\nheld-out items with fewer than {TAIL_SUPPORT} training interactions: {held_out_tail:.3f}")
    typer.echo(f"total {time.perf_counter() - started:.1f}s")
    if json_out:
        body = {
            "dataset": str(dataset),
            "held_out_tail_share": round(held_out_tail, 6),
            "results": [r.as_dict() for r in results],
        }
        json_out.write_text(json.dumps(body, indent=2) + "\n")


@app.command()
def tune(
    dataset: Annotated[Path, typer.Option(help="The interaction file (or, for 'multi', its folder).")],
    format: Annotated[str, typer.Option("--format", help="seq | movielens | session | multi.")],
    redis_url: Annotated[
        str | None, typer.Option(help="Use this Redis (fresh key prefixes) instead of a throwaway local one.")
    ] = None,
    redis_cluster: Annotated[
        bool | None,
        typer.Option(help="--redis-url names a node of a Redis Cluster (default: STREAMREC_REDIS_CLUSTER)."),
    ] = None,
) -> None:
    """Tune the streaming model's settings on a validation split carved from the training data."""
    from streamrec.trainer.splits import load_split
    from streamrec.trainer.tune import tune as run_tune

    settings = _settings()
    with _usage_errors():
        split = load_split(dataset, format)
    cluster = settings.redis_cluster if redis_cluster is None else redis_cluster
    rows = run_tune(split, settings.scoring, lambda: _eval_redis(redis_url, cluster), say=typer.echo)
    best, result = rows[0]
    typer.echo(f"best: {best} (validation HR@10 {result.hr_at_10:.4f}, NDCG@10 {result.ndcg_at_10:.4f})")


def _simulated_split(events: int, items: int, users: int, seed: int):  # type: ignore[no-untyped-def]
    """A leave-last-out split of a simulated shop's log, built in process (no broker), with its whole catalog."""
    from streamrec.producers.simulate import make_catalog, simulate_events
    from streamrec.trainer import features
    from streamrec.trainer.splits import SYNTHETIC_END_MS, leave_last_out

    catalog = make_catalog(items, seed)
    actions: dict[str, list] = {}
    stream = simulate_events(catalog, users, events, seed, SYNTHETIC_END_MS - 86_400_000)
    from tqdm import tqdm

    for event in tqdm(stream, total=events, desc="simulate", unit="ev"):
        if event.item_id is not None:
            actions.setdefault(event.user_id, []).append((event.type, event.item_id, event.ts))
    split = leave_last_out(f"simulated-{events}x{items}", actions.items())
    seen = set(split.items)
    split.items.extend(i.item_id for i in catalog if i.item_id not in seen)
    split.features = features.from_records((i.item_id, i.category, i.attributes) for i in catalog)
    return split


@app.command()
def train(
    dataset: Annotated[
        Path | None,
        typer.Option(help="Train from this file instead of the event log (see 'streamrec eval')."),
    ] = None,
    format: Annotated[str, typer.Option("--format", help="The dataset's format, with --dataset.")] = "seq",
    simulate_events: Annotated[
        int,
        typer.Option(
            help="Train on a simulated shop's log of this many events, made in process (no broker), instead."
        ),
    ] = 0,
    simulate_items: Annotated[int, typer.Option(help="The simulated catalog's size.")] = 100_000,
    simulate_users: Annotated[int, typer.Option(help="The simulated shoppers.")] = 20_000,
    activate: Annotated[bool, typer.Option(help="Switch the API to the new model at once.")] = True,
    choose_blend: Annotated[
        bool,
        typer.Option(
            help="Choose the model's blend share on validation: fold the validation events with the state "
            "script into a throwaway local Redis (needs the 'local' extra)."
        ),
    ] = True,
) -> None:
    """Build a batch model from the event log (Kafka, from the beginning) or a dataset, and publish it to Redis.

    Model families are tried only where they fit STREAMREC_TRAINER_MEMORY_BUDGET_MB; the command reports
    the family chosen, its blend share, the time taken and the peak memory (RSS).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from streamrec.topics import Topics
    from streamrec.trainer import eventlog, features
    from streamrec.trainer.splits import leave_last_out, load_split
    from streamrec.trainer.train import train_and_publish

    settings = _settings()
    started = time.perf_counter()
    with _usage_errors():
        if simulate_events:
            split = _simulated_split(simulate_events, simulate_items, simulate_users, seed=7)
        elif dataset is not None:
            split = load_split(dataset, format)
        else:
            topic = Topics(settings.topic_prefix).events
            _require_broker(settings.kafka_bootstrap)
            with tqdm_bar("read event log", "ev") as bar:
                users, rejected = eventlog.read_actions(settings.kafka_bootstrap, topic, on_batch=bar)
            typer.echo(
                f"read {sum(len(a) for a in users.values()):,} events from {topic} ({rejected} invalid skipped)"
            )
            split = leave_last_out(topic, users.items())
            store = _store(settings)
            split.features = features.read_catalog_features(store.client, store.keys, split.items)
            typer.echo(f"catalog features for {len(split.features):,} of {len(split.items):,} items")
        if not split.targets:
            raise ValueError("no user has two or more actions yet: nothing to choose a model on")
    typer.echo(
        f"{split.name}: {split.n_events:,} events, {len(split.train):,} users, {len(split.items):,} items, "
        f"memory budget {settings.trainer.memory_budget_mb:,} MiB"
    )
    if choose_blend:
        _unwind_on_sigterm()
    # the validation events are folded by a process of their own while the families are fitted: the blend
    # share is chosen once both are done (train.choose calls ``live`` then). Not a thread: a thread that
    # waits on Redis thousands of times a second takes the GIL from the fits each time (a local SLIST
    # block took 20 times longer). On an error the pool still waits for the fold, so its throwaway Redis
    # is always stopped.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        live = pool.submit(_validation_live, split, settings).result if choose_blend else None
        report = train_and_publish(
            split,
            _store(settings),
            settings.scoring,
            activate=activate,
            progress=typer.echo,
            budget_bytes=settings.trainer.budget_bytes,
            live=live,
            bars=True,
            max_share=settings.trainer.max_blend,
            started=started,
        )
    state = "active" if report.activated else "published (not active)"
    share = "global" if report.blend is None else f"{report.blend:g}"
    typer.echo(
        f"model {report.version} {state}: {report.config.name}, blend share {share}, held-out HR@10 "
        f"{report.test.hr_at_10:.4f} NDCG@10 {report.test.ndcg_at_10:.4f}, trained on {report.events:,} events "
        f"over {report.items:,} items in {time.perf_counter() - started:.1f}s, "
        f"peak RSS {report.peak_rss_bytes / (1 << 20):,.0f} MiB"
    )


def _validation_live(split, settings: Settings):  # type: ignore[no-untyped-def]
    """The live state of the validation split (folded by the state script in a throwaway Redis), or None.
    Runs in a process beside the model fits (no progress bar of its own: it would tear theirs); says when
    it is done."""
    from streamrec.devtools.localstack import ServiceError
    from streamrec.trainer.evaluate import validation_live

    scoring = settings.scoring.model_copy(update={"exclude_seen": False})
    started = time.perf_counter()
    try:
        with _eval_redis(None) as (client, keys):
            table = validation_live(split, client, keys, scoring, bar=False)
        typer.echo(f"validation events folded into a throwaway Redis in {time.perf_counter() - started:.1f}s")
        return table
    except (ServiceError, FileNotFoundError) as exc:
        typer.echo(f"no blend share chosen (no throwaway Redis: {exc}); the API uses its global one")
        return None


@contextmanager
def tqdm_bar(desc: str, unit: str) -> Iterator[Callable[[int], None]]:
    """A progress bar fed with running totals."""
    from tqdm import tqdm

    with tqdm(desc=desc, unit=unit) as bar:

        def update(total: int) -> None:
            bar.update(total - bar.n)

        yield update


model_app = typer.Typer(
    help="List, switch and roll back the batch models the API blends in.", no_args_is_help=True
)
app.add_typer(model_app, name="model")


def _store(settings: Settings | None = None) -> ModelStore:
    """The deployment's model store (Redis URL, cluster mode and key prefix from the settings)."""
    from streamrec.modelstore import ModelStore

    settings = settings or _settings()
    return ModelStore(_redis(settings.redis_url, settings.redis_cluster), keys_of(settings))


@model_app.command("list")
def model_list() -> None:
    """Published model versions, newest first; '*' marks the active one."""
    for info in _store().versions():
        test = info.meta.get("test", {})
        typer.echo(
            f"{'*' if info.active else ' '} {info.version}  {info.meta.get('family')} {info.meta.get('params')}"
            f"  test HR@10 {test.get('hr_at_10', float('nan')):.4f}  items {info.meta.get('items')}"
        )


@model_app.command("activate")
def model_activate(
    version: Annotated[str, typer.Argument(help="A version from 'streamrec model list'.")],
) -> None:
    """Switch the API to a published version (atomic)."""
    with _usage_errors():
        _store().activate(version)
    typer.echo(f"active model: {version}")


@model_app.command("rollback")
def model_rollback() -> None:
    """Switch back to the version that was active before the current one."""
    with _usage_errors():
        version = _store().rollback()
    typer.echo(f"active model: {version}")


@model_app.command("off")
def model_off() -> None:
    """Serve from the live state alone until a model is activated again."""
    _store().deactivate()
    typer.echo("no active model: answers come from the live state alone")


experiment_app = typer.Typer(
    help="A/B experiments on placements: list them, and report one (made with PUT "
    "/v1/admin/experiments/{name}).",
    no_args_is_help=True,
)
app.add_typer(experiment_app, name="experiment")


def _experiments():  # type: ignore[no-untyped-def]
    """The deployment's experiment store (Redis URL, cluster mode and key prefix from the settings)."""
    from streamrec.experiment_store import ExperimentStore

    settings = _settings()
    return ExperimentStore(_redis(settings.redis_url, settings.redis_cluster), keys_of(settings))


@experiment_app.command("list")
def experiment_list() -> None:
    """Every experiment: name, state, placement and its variants (weight, the placement each uses)."""
    stored = _experiments().all()
    if not stored:
        typer.echo("no experiments (create one with PUT /v1/admin/experiments/{name})")
    rows = [("experiment", "state", "placement", "run", "variants (weight -> placement)")]
    for name, s in stored.items():
        doc = s["document"]
        arms = ", ".join(f"{v['name']} {v['weight']:g} -> {v['use']}" for v in doc["variants"])
        rows.append((name, doc.get("state", "running"), doc["placement"], str(s["run"]), arms))
    if stored:
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            typer.echo("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])


@experiment_app.command("report")
def experiment_report(
    name: Annotated[str, typer.Argument(help="An experiment from 'streamrec experiment list'.")],
) -> None:
    """Per variant: exposed shoppers, answers, attributed views, carts, purchases and revenue, conversion
    with its 95 % interval, lift against the first variant with its interval and p-values; then the
    sample-ratio test."""
    from streamrec import experiment_stats

    store = _experiments()
    experiment = store.get(name)
    if experiment is None:
        typer.echo(f"error: no experiment {name!r} ('streamrec experiment list' shows them)", err=True)
        raise typer.Exit(2)
    typer.echo(
        f"experiment {name} (run {experiment.run}, {experiment.state}) on placement {experiment.placement}"
    )
    typer.echo(experiment_stats.table(experiment_stats.report(store.counts(experiment))))


@app.command()
def bench(
    out_dir: Annotated[Path, typer.Option(help="Where bench.json, bench.md and scale.png go.")] = Path(
        "docs"
    ),
    quick: Annotated[
        bool, typer.Option(help="A tiny run that checks the machinery, not the figures.")
    ] = False,
    repeats: Annotated[
        int | None, typer.Option(help="Runs of each repeated measure (median quoted).")
    ] = None,
    redis_cluster: Annotated[
        bool,
        typer.Option(
            help="Instead: one Redis beside a local Redis Cluster (3 masters, 3 replicas) in the same run, "
            "ingest with 1, 2 and 4 workers on 4 partitions, API latency and memory (bench-cluster.json, .md)."
        ),
    ] = False,
    serving: Annotated[
        bool,
        typer.Option(
            help="Only the API: 3,000 Amazon Beauty shoppers folded, then wrk on recommendations, /healthz, similar, popular and trending (serving.json, serving.md)."
        ),
    ] = False,
    server: Annotated[
        list[str] | None,
        typer.Option(
            help="With --serving: a server to measure, worker-class:workers[xthreads][:cache ms][:nofeed] (e.g. gthread:2x4, sync:3, gthread:2x4:0, sync:2:nofeed); repeat to compare. Default: the API's default, sync:2 following the change feed."
        ),
    ] = None,
    seconds: Annotated[float, typer.Option(help="With --serving: wrk's duration per endpoint.")] = 10.0,
    profile: Annotated[
        bool, typer.Option(help="With --serving: py-spy on one gunicorn worker under recommendations.")
    ] = False,
    experiments: Annotated[
        bool,
        typer.Option(
            help="Only A/B experiments: answers of a placement inside a running experiment against outside one "
            "(alternating rounds), and the Redis memory of an experiment at 1,000,000 exposed shoppers "
            "(experiments.json, experiments.md)."
        ),
    ] = False,
) -> None:
    """Measure ingest, freshness, API latency, memory and scale on a local stack of its own (Tansu, Redis, workers, API)."""
    import dataclasses

    from streamrec.devtools import bench as perf

    if redis_cluster:
        figures = perf.cluster_vs_standalone(
            perf.ClusterPlan.quick() if quick else perf.ClusterPlan.full(), out_dir
        )
        typer.echo("\n" + perf.cluster_markdown(figures))
        typer.echo(
            f"written to {out_dir}/bench-cluster.json and bench-cluster.md in {figures['seconds']:.0f}s"
        )
        return
    if experiments:
        from streamrec.devtools import experiment_bench

        figures = experiment_bench.run(out_dir, seconds)
        typer.echo("\n" + experiment_bench.markdown(figures))
        typer.echo(f"written to {out_dir}/experiments.json and experiments.md in {figures['seconds']:.0f}s")
        return
    if serving:
        try:
            servers = [perf.Server.parse(s) for s in server] if server else [perf.Server()]
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        report = perf.serving(out_dir, servers, seconds, profile=profile)
        typer.echo("\n" + perf.serving_markdown(report))
        typer.echo(f"written to {out_dir}/serving.json and serving.md in {report['seconds']:.0f}s")
        return
    plan = perf.Plan.quick() if quick else perf.Plan.full()
    if repeats is not None:
        plan = dataclasses.replace(plan, repeats=repeats)
    figures = perf.run(plan, out_dir)
    typer.echo("\n" + perf.markdown(figures))
    typer.echo(f"written to {out_dir}/bench.json, bench.md and scale.png in {figures['seconds']:.0f}s")


dlq_app = typer.Typer(
    help="The dead-letter topic: counts by reason, samples, and replay of the originals after a fix.",
    no_args_is_help=True,
)
app.add_typer(dlq_app, name="dlq")

_REASON = typer.Option(help="Only dead letters whose reason contains this text (any case).")
_SINCE = typer.Option(
    help="Only dead letters written at or after this time (ISO 8601, UTC if no zone; or epoch ms)."
)
_UNTIL = typer.Option(help="Only dead letters written before this time (ISO 8601 or epoch ms).")
_IDLE = typer.Option(help="Stop reading once this many seconds pass with no record.")


@contextmanager
def _dlq_errors(code: int = 1) -> Iterator[None]:
    """A DlqError or a Kafka error becomes 'error: …' and exit status ``code`` (2: a bad argument)."""
    from kafka.errors import KafkaError

    from streamrec.producers.dlq import DlqError

    try:
        yield
    except (DlqError, KafkaError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code) from None


def _dlq_filter(reason: str | None, since: str | None, until: str | None):  # type: ignore[no-untyped-def]
    from streamrec.producers.dlq import Filter, parse_time

    with _dlq_errors(2):
        return Filter(
            reason or None,
            parse_time(since) if since else None,
            parse_time(until) if until else None,
        )


@contextmanager
def _dlq_records(settings: Settings, idle: float):  # type: ignore[no-untyped-def]
    """The dead-letter topic's records, read from the beginning with a progress bar (on a terminal)."""
    import logging

    from tqdm import tqdm

    from streamrec.producers.dlq import read_topic
    from streamrec.topics import Topics

    topic = Topics(settings.topic_prefix).dlq
    # kafka-python logs every connection attempt; failures end as one "error: …" line instead
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    with tqdm(desc=f"read {topic}", unit="rec", disable=None, leave=False) as bar:

        def update(n: int) -> None:
            bar.update(n - bar.n)

        with _dlq_errors():
            yield read_topic(settings.kafka_bootstrap, topic, idle, update)


@dlq_app.command("stats")
def dlq_stats(
    reason: Annotated[str | None, _REASON] = None,
    since: Annotated[str | None, _SINCE] = None,
    until: Annotated[str | None, _UNTIL] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    idle: Annotated[float, _IDLE] = 2.0,
) -> None:
    """Count the dead letters by reason (numbers masked) and source topic, reading the topic from the start."""
    import json
    from datetime import UTC, datetime

    from streamrec.producers import dlq

    settings = _settings()
    flt = _dlq_filter(reason, since, until)
    with _dlq_records(settings, idle) as records:
        figures = dlq.stats(records, flt)
    if as_json:
        typer.echo(json.dumps(figures.as_dict()))
        return

    def when(ms: int | None) -> str:
        return "-" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    typer.echo(
        f"{figures.total} dead letters ({figures.truncated} truncated, {figures.replayed} replayed), "
        f"from {when(figures.first_ms)} to {when(figures.last_ms)}"
        + (f"; {figures.unreadable} unreadable records" if figures.unreadable else "")
    )
    for (group, topic), n in figures.by_reason.most_common():
        typer.echo(f"{n:>8}  {topic}  {group}")


@dlq_app.command("show")
def dlq_show(
    reason: Annotated[str | None, _REASON] = None,
    since: Annotated[str | None, _SINCE] = None,
    until: Annotated[str | None, _UNTIL] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 10,
    idle: Annotated[float, _IDLE] = 2.0,
) -> None:
    """Show sample dead letters: where they came from, why, and the original (a prefix if it was truncated)."""
    from streamrec.producers import dlq

    settings = _settings()
    flt = _dlq_filter(reason, since, until)
    with _dlq_records(settings, idle) as records:
        found = dlq.samples(records, flt, limit)
    for letter in found:
        typer.echo(dlq.describe(letter))
    typer.echo(f"{len(found)} shown")


@dlq_app.command("replay")
def dlq_replay(
    reason: Annotated[str | None, _REASON] = None,
    since: Annotated[str | None, _SINCE] = None,
    until: Annotated[str | None, _UNTIL] = None,
    dry_run: Annotated[bool, typer.Option(help="Say what would be replayed; publish nothing.")] = False,
    include_invalid: Annotated[
        bool, typer.Option(help="Also send originals that this version's contract still refuses.")
    ] = False,
    again: Annotated[
        bool, typer.Option(help="Also send dead letters an earlier replay already sent.")
    ] = False,
    idle: Annotated[float, _IDLE] = 2.0,
) -> None:
    """Re-publish dead letters' originals into the topic they came from, after a fix (idempotent).

    A truncated original is read back from its source offset. Exit status 1 if any could not be sent.
    """
    from streamrec.producers import dlq
    from streamrec.topics import Topics

    settings = _settings()
    flt = _dlq_filter(reason, since, until)
    with _dlq_records(settings, idle) as records, _dlq_errors():
        report = dlq.replay(
            settings.kafka_bootstrap,
            Topics(settings.topic_prefix),
            records,
            flt,
            dry_run=dry_run,
            include_invalid=include_invalid,
            again=again,
        )
    for problem in report.problems[:20]:
        typer.echo(f"warning: {problem}", err=True)
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(1)


state_app = typer.Typer(help="Maintenance of the Redis state: offset watermarks.", no_args_is_help=True)
app.add_typer(state_app, name="state")


def _state_client(settings: Settings):  # type: ignore[no-untyped-def]
    from streamrec.fold import redis_client

    return redis_client(settings.redis_url, settings.redis_cluster, socket_timeout=10)


@state_app.command("offsets")
def state_offsets() -> None:
    """Print the offset watermarks: the last offset folded per stage and partition."""
    from streamrec.watermarks import read_watermarks

    settings = _settings()
    found = read_watermarks(_state_client(settings), keys_of(settings))
    for name, offset in sorted(found.offsets.items()):
        typer.echo(f"{name}\t{offset}")
    typer.echo(
        f"{len(found.keys)} watermark hashes, {found.stats_fields} stats watermark fields, "
        f"{len(found.experiment_keys)} experiment credit watermarks"
    )


@state_app.command("forget-offsets")
def state_forget_offsets(
    yes: Annotated[bool, typer.Option("--yes", help="Do it (without it, only say what would go).")] = False,
) -> None:
    """Clear the offset watermarks, after a topic was recreated (its offsets restart below them).

    Stop the workers first. Afterwards every record is folded whatever its offset; the per-user claims
    still catch retries within the dedupe window (docs/GUARANTEES.md).
    """
    from streamrec.watermarks import forget_offsets, read_watermarks

    settings = _settings()
    client = _state_client(settings)
    if not yes:
        found = read_watermarks(client, keys_of(settings))
        typer.echo(
            f"would forget {len(found.offsets)} watermarks in {len(found.keys)} hashes, "
            f"{found.stats_fields} stats fields and {len(found.experiment_keys)} experiment credit watermarks; "
            "run again with --yes"
        )
        return
    gone = forget_offsets(client, keys_of(settings))
    typer.echo(
        f"forgot {len(gone.offsets)} watermarks ({', '.join(f'{k}={v}' for k, v in sorted(gone.offsets.items())) or 'none'}) "
        f"in {len(gone.keys)} hashes, {gone.stats_fields} stats fields and "
        f"{len(gone.experiment_keys)} experiment credit watermarks"
    )


@state_app.command("rewind-offsets")
def state_rewind_offsets(
    yes: Annotated[bool, typer.Option("--yes", help="Do it (without it, only say what would move).")] = False,
    items: Annotated[
        bool,
        typer.Option(help="Also move the items topic back to its start (catalog records are idempotent)."),
    ] = False,
) -> None:
    """After Redis was restored from AOF or a backup: move the workers' committed offsets back to just past
    the restored watermarks, so that the workers fold again, once, whatever Redis lost.

    Stop the workers first (the consumer group must have no members).
    """
    from kafka.errors import KafkaError

    from streamrec.topics import Topics
    from streamrec.watermarks import event_watermarks, rewind_group

    settings = _settings()
    topics = Topics(settings.topic_prefix)
    marks = event_watermarks(_state_client(settings), keys_of(settings))
    try:
        done = rewind_group(
            settings.kafka_bootstrap,
            settings.worker_group,
            topics.events,
            marks,
            topics.items if items else None,
            dry_run=not yes,
        )
    except (RuntimeError, KafkaError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    verb = "moved" if yes else "would move"
    for topic, moves in sorted(done.moves.items()):
        for p, (before, after) in sorted(moves.items()):
            typer.echo(f"{verb} {topic}[{p}] {before} -> {after}")
    count = sum(len(m) for m in done.moves.values())
    typer.echo(
        f"{verb} {count} partitions of group {settings.worker_group}"
        + ("" if yes else "; run again with --yes")
    )


@app.command()
def soak(
    minutes: Annotated[float, typer.Option(min=0.5, help="How long the shop streams.")] = 25.0,
    rate: Annotated[float, typer.Option(min=1, help="Events per second.")] = 500.0,
    users: Annotated[int, typer.Option(min=1, help="Shoppers in the simulated shop.")] = 100_000,
    items: Annotated[int, typer.Option(min=1, help="Catalog size.")] = 10_000,
    census_s: Annotated[float, typer.Option(help="Seconds between measures of every key family.")] = 300.0,
    out_dir: Annotated[Path, typer.Option(help="Where soak.json, soak.md and soak.png go.")] = Path("docs"),
) -> None:
    """Stream a simulated shop through a real worker with production defaults; report Redis memory per
    user, item and event in the dedupe window, whether it levels off, and the steady state at 1,000 events/s."""
    from streamrec.devtools import soak as soak_run

    plan = soak_run.SoakPlan(minutes=minutes, rate=rate, users=users, items=items, census_s=census_s)
    figures = soak_run.run(plan, out_dir, say=typer.echo)
    typer.echo("\n" + soak_run.markdown(figures))


@app.command()
def healthcheck(
    url: Annotated[
        str | None,
        typer.Option(
            envvar="HEALTHCHECK_URL",
            help="URL to probe (default: the API's /healthz on STREAMREC_API_HOST:STREAMREC_API_PORT).",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 2.0,
) -> None:
    """Exit 0 if the program answers HTTP 2xx, else 1 (the container image's HEALTHCHECK)."""
    import urllib.request

    if url is None:
        settings = Settings()
        host = "127.0.0.1" if settings.api_host in ("", "0.0.0.0", "::") else settings.api_host
        host = f"[{host}]" if ":" in host else host
        url = f"http://{host}:{settings.api_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - the operator's URL
            status = resp.status
    except (OSError, ValueError) as exc:
        typer.echo(f"unhealthy: {url}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"healthy: {url} answered {status}")


@app.command("settings")
def show_settings() -> None:
    """Print every setting: its environment variable, its current value and what it does (Markdown)."""
    from streamrec.settings import ScoringSettings, TrainerSettings, describe

    typer.echo("| variable | value | meaning |\n|---|---|---|")
    for model in (Settings(), ScoringSettings(), TrainerSettings()):
        for var, value, doc in describe(model):
            typer.echo(f"| `{var}` | `{value}` | {doc} |")


def _one_line(exc: BaseException) -> str | None:
    """What a failure a user can cause says, in one line; None for anything else (a bug keeps its traceback)."""
    import pydantic
    import redis.exceptions
    from kafka import errors as kafka_errors

    from streamrec.datasets import DatasetNotFound
    from streamrec.devtools.localstack import ServiceError

    prefixes = {"Settings": "STREAMREC_", "ScoringSettings": "STREAMREC_SCORING_"}
    if isinstance(exc, pydantic.ValidationError) and exc.title in prefixes:
        return "invalid setting: " + "; ".join(
            f"{prefixes[exc.title]}{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return f"Redis does not answer ({exc}); is it running, and is STREAMREC_REDIS_URL right?"
    if isinstance(exc, kafka_errors.KafkaConnectionError | kafka_errors.KafkaTimeoutError):
        return f"Kafka does not answer ({exc}); is STREAMREC_KAFKA_BOOTSTRAP right?"
    if isinstance(exc, ServiceError | DatasetNotFound):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror or exc}: {exc.filename}"
    return None


def _usage_failure(exc: typer.TyperException) -> int:
    """Say a usage error (bad option, missing argument) in one line; return its exit status.

    typer vendors click, so its exceptions are matched by click's class names, not imported.
    """
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "NoArgsIsHelpError" in names:
        return 2  # the help was shown already
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None and "UsageError" in names else ""
    message = (exc.format_message() if hasattr(exc, "format_message") else str(exc)).rstrip(".")
    typer.echo(f"error: {message}{hint}", err=True)
    return int(getattr(exc, "exit_code", 1))


def main(argv: list[str] | None = None) -> None:
    """The ``streamrec`` command. A failure the user can cause (a bad option or setting, a service that
    does not answer, a busy port, a missing file) is one line on stderr and a non-zero exit status."""
    import sys

    try:
        code = app(args=argv, prog_name="streamrec", standalone_mode=False)
    except typer.TyperException as exc:
        code = _usage_failure(exc)
    except typer.Abort:
        typer.echo("aborted", err=True)
        code = 1
    except Exception as exc:
        message = _one_line(exc)
        if message is None:
            raise
        typer.echo(f"error: {message}", err=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
