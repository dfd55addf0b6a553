"""The ``streamrec`` command: one entry point, a subcommand per program.

This module is the composition root: it is the one place that imports the programs (lazily, inside each
subcommand), so the programs never import each other.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from streamrec.settings import Settings

if TYPE_CHECKING:
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
    from stream_processor.agents import run

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
    from api.server import serve

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
    from producers.replay import replay as run_replay

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
    from producers.simulate import simulate as run_simulate

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
    from streamrec.stack import run_stack

    raise typer.Exit(run_stack(_settings(), dataset, limit, workers, data_dir, exit_after_demo))


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
