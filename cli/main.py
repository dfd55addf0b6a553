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


def _settings() -> Settings:
    from streamrec import logs

    settings = Settings()
    logs.configure(settings.log_level, settings.log_format)
    return settings


@contextmanager
def _publisher(ensure_topics: bool) -> Iterator[EventPublisher]:
    """A publisher for the configured topics (created first if asked), flushed and closed at the end."""
    from streamrec.publisher import EventPublisher
    from streamrec.topics import Topics
    from streamrec.topics import ensure_topics as create

    settings = _settings()
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
            help="A dataset name in ../shared/datasets (amazon-beauty, movielens-100k, yoochoose-100k, beibei, diginetica-sample)."
        ),
    ],
    limit: Annotated[
        int | None, typer.Option(help="Stop after about this many events (whole users).")
    ] = None,
    rate: Annotated[
        float | None, typer.Option(help="Events per second (default: as fast as possible).")
    ] = None,
    ensure_topics: Annotated[bool, typer.Option(help="Create the topics if they are missing.")] = True,
) -> None:
    """Stream a real dataset into Kafka as events, each user's in order, catalog first."""
    from streamrec.producers.replay import replay as run_replay

    with _publisher(ensure_topics) as publisher:
        report = run_replay(publisher, dataset, limit=limit, rate=rate)
    typer.echo(f"replayed {report.events} events and {report.items} catalog records in {report.seconds:.1f}s")
    _fail_on_undelivered(report.failed)


@app.command()
def simulate(
    users: Annotated[int, typer.Option(help="Shoppers.")] = 500,
    items: Annotated[int, typer.Option(help="Catalog size.")] = 300,
    events: Annotated[int, typer.Option(help="Events to publish.")] = 20_000,
    rate: Annotated[
        float | None, typer.Option(help="Events per second (default: as fast as possible).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same shop).")] = 7,
    ensure_topics: Annotated[bool, typer.Option(help="Create the topics if they are missing.")] = True,
) -> None:
    """Drive a synthetic shop: a generated catalog and shoppers who search, view, add to cart and buy."""
    from streamrec.producers.simulate import simulate as run_simulate

    with _publisher(ensure_topics) as publisher:
        report = run_simulate(publisher, n_users=users, n_items=items, n_events=events, rate=rate, seed=seed)
    typer.echo(f"simulated {report.events} events over {report.items} catalog items in {report.seconds:.1f}s")
    _fail_on_undelivered(report.failed)


@app.command()
def up(
    dataset: Annotated[
        str, typer.Option(help="Dataset replayed once the stack is up ('none' to skip).")
    ] = "movielens-100k",
    limit: Annotated[int | None, typer.Option(help="Events replayed from it (default: all of it).")] = None,
    workers: Annotated[int, typer.Option(help="Stream-processor worker processes.")] = 1,
    data_dir: Annotated[
        Path, typer.Option(help="Where Redis keeps its AOF and every process its log.")
    ] = Path(".streamrec"),
    exit_after_demo: Annotated[
        bool, typer.Option(help="Stop everything after printing the demo (for scripts).")
    ] = False,
) -> None:
    """Start the whole local stack on loopback (Tansu, Redis, workers, API), replay real data, show live answers.

    Ctrl-C stops every process it started.
    """
    from streamrec.devtools.stack import run_stack

    raise typer.Exit(run_stack(_settings(), dataset, limit, workers, data_dir, exit_after_demo))


@contextmanager
def _usage_errors() -> Iterator[None]:
    """A ValueError (bad file, format, model name or version) becomes 'error: …' and exit status 2."""
    try:
        yield
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@contextmanager
def _eval_redis(url: str | None) -> Iterator[tuple[redis.Redis, Keys]]:
    """An empty keyspace: a throwaway local redis-server, or a fresh prefix on ``url`` (deleted after)."""
    import signal
    import sys
    import tempfile
    import uuid

    import redis as redis_lib

    from streamrec.devtools.localstack import LOOPBACK, free_port, start_redis
    from streamrec.keys import Keys

    if url:
        client = redis_lib.Redis.from_url(url)
        keys = Keys(f"eval-{uuid.uuid4().hex[:8]}")
        try:
            yield client, keys
        finally:
            for batch in _chunks(client.scan_iter(keys.pattern(), count=1000), 1000):
                client.delete(*batch)
        return
    # SIGTERM unwinds like Ctrl-C, so the throwaway server below is stopped, not left running
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
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
        typer.Option(help="Comma-separated: streamrec, streamrec-live, popularity, bm25, cosine, als, ease."),
    ] = ",".join(("streamrec", "streamrec-live", "popularity", "bm25", "cosine", "als", "ease")),
    redis_url: Annotated[
        str | None,
        typer.Option(
            help="Use this Redis (a fresh key prefix, deleted after) instead of a throwaway local one."
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Offline evaluation: hold out each user's last action, rank every item, report HR@10, NDCG@10, coverage.

    Formats: seq = 'user item1 item2 ...' per line in time order; movielens = a RecBole .inter file;
    session = TSV 'SessionId ItemId Time' with a header; multi = a Beibei-style folder with train.txt
    (purchases), cart.txt (cart adds) and test.txt (held-out purchases).
    """
    import json

    from streamrec.trainer import evaluate as offline
    from streamrec.trainer.ranking_metrics import table
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
    with _eval_redis(redis_url) as (client, keys):
        results = offline.run(split, client, keys, settings.scoring, wanted, say=typer.echo, bar=progress)
    typer.echo("\n" + table(results))
    typer.echo(f"\ntotal {time.perf_counter() - started:.1f}s")
    if json_out:
        json_out.write_text(
            json.dumps({"dataset": str(dataset), "results": [r.as_dict() for r in results]}, indent=2) + "\n"
        )


@app.command()
def tune(
    dataset: Annotated[Path, typer.Option(help="The interaction file (or, for 'multi', its folder).")],
    format: Annotated[str, typer.Option("--format", help="seq | movielens | session | multi.")],
    redis_url: Annotated[
        str | None, typer.Option(help="Use this Redis (fresh key prefixes) instead of a throwaway local one.")
    ] = None,
) -> None:
    """Tune the streaming model's settings on a validation split carved from the training data."""
    from streamrec.trainer.splits import load_split
    from streamrec.trainer.tune import tune as run_tune

    settings = _settings()
    with _usage_errors():
        split = load_split(dataset, format)
    rows = run_tune(split, settings.scoring, lambda: _eval_redis(redis_url), say=typer.echo)
    best, result = rows[0]
    typer.echo(f"best: {best} (validation HR@10 {result.hr_at_10:.4f}, NDCG@10 {result.ndcg_at_10:.4f})")


@app.command()
def train(
    dataset: Annotated[
        Path | None,
        typer.Option(help="Train from this file instead of the event log (see 'streamrec eval')."),
    ] = None,
    format: Annotated[str, typer.Option("--format", help="The dataset's format, with --dataset.")] = "seq",
    activate: Annotated[bool, typer.Option(help="Switch the API to the new model at once.")] = True,
) -> None:
    """Build a batch model from the event log (Kafka, from the beginning) or a dataset, and publish it to Redis."""
    from streamrec.topics import Topics
    from streamrec.trainer import eventlog
    from streamrec.trainer.splits import leave_last_out, load_split
    from streamrec.trainer.train import train_and_publish

    settings = _settings()
    with _usage_errors():
        if dataset is not None:
            split = load_split(dataset, format)
        else:
            topic = Topics(settings.topic_prefix).events
            with tqdm_bar("read event log", "ev") as bar:
                users, rejected = eventlog.read_actions(settings.kafka_bootstrap, topic, on_batch=bar)
            typer.echo(
                f"read {sum(len(a) for a in users.values()):,} events from {topic} ({rejected} invalid skipped)"
            )
            split = leave_last_out(topic, users.items())
        if not split.targets:
            raise ValueError("no user has two or more actions yet: nothing to choose a model on")
    report = train_and_publish(
        split, _store(settings), settings.scoring, activate=activate, progress=typer.echo
    )
    state = "active" if report.activated else "published (not active)"
    typer.echo(
        f"model {report.version} {state}: {report.config.name}, held-out HR@10 {report.test.hr_at_10:.4f} "
        f"NDCG@10 {report.test.ndcg_at_10:.4f}, trained on {report.events:,} events"
    )


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
    """The deployment's model store (Redis URL and key prefix from the settings)."""
    import redis as redis_lib

    from streamrec.modelstore import ModelStore

    settings = settings or _settings()
    return ModelStore(redis_lib.Redis.from_url(settings.redis_url), keys_of(settings))


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
    serving: Annotated[
        bool,
        typer.Option(
            help="Only the API: 3,000 Amazon Beauty shoppers folded, then wrk on recommendations, /healthz, similar, popular and trending (serving.json, serving.md)."
        ),
    ] = False,
    server: Annotated[
        list[str] | None,
        typer.Option(
            help="With --serving: a server to measure, worker-class:workers[xthreads][:cache ms] (e.g. gthread:2x4, sync:3, gthread:2x4:0); repeat to compare."
        ),
    ] = None,
    seconds: Annotated[float, typer.Option(help="With --serving: wrk's duration per endpoint.")] = 10.0,
    profile: Annotated[
        bool, typer.Option(help="With --serving: py-spy on one gunicorn worker under recommendations.")
    ] = False,
) -> None:
    """Measure ingest, freshness, API latency, memory and scale on a local stack of its own (Tansu, Redis, workers, API)."""
    import dataclasses

    from streamrec.devtools import bench as perf

    if serving:
        try:
            servers = [perf.Server.parse(s) for s in server or ["gthread:2x4"]]
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
    from streamrec.settings import ScoringSettings, describe

    typer.echo("| variable | value | meaning |\n|---|---|---|")
    for model in (Settings(), ScoringSettings()):
        for var, value, doc in describe(model):
            typer.echo(f"| `{var}` | `{value}` | {doc} |")


def main() -> None:
    app()
