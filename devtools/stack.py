"""``streamrec up``: the whole local stack on loopback, then a replay of real data (or the built-in shop)
and live answers.

Every program runs as its own child process (exactly as in production), started in its own process
group so that Ctrl-C, SIGTERM or an error stops all of them. What is fed in is chosen and checked before
anything starts, so a missing dataset costs a second, not a whole stack's start.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from urllib.parse import urlparse

import redis

from streamrec.datasets import DatasetNotFound, dataset_names, datasets_dir, find_dataset
from streamrec.devtools.localstack import (
    LOOPBACK,
    ManagedProcess,
    ServiceError,
    consecutive_cluster_ports,
    free_port,
    spawn,
    start_broker,
    start_cluster,
    start_redis,
    wait_for_port,
)
from streamrec.fold import redis_client
from streamrec.keys import Keys
from streamrec.settings import Settings, keys_of
from streamrec.watermarks import forget_offsets

LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}
DEFAULT_DATASET = "movielens-100k"
# The built-in shop (``streamrec simulate``): big enough for neighbours and categories to show, small
# enough to fold in seconds.
SHOP_USERS, SHOP_ITEMS, SHOP_EVENTS = 500, 300, 10_000
# The worker metrics that say how far the workers got (names owned by ``streamrec.metrics``).
EVENTS_METRIC = "streamrec_worker_events_total"
DUPLICATES_METRIC = "streamrec_worker_dedupe_hits_total"
# The last line ``streamrec replay`` / ``simulate`` print: how many events the broker acknowledged.
PUBLISHED = re.compile(r"^(?:replayed|simulated) (\d+) events")


@dataclass(frozen=True)
class Feed:
    """What ``up`` publishes once the stack is up: the ``streamrec`` arguments that publish it."""

    label: str
    args: tuple[str, ...]  # empty: publish nothing
    note: str | None = None  # one line said before anything starts
    source: str = ""  # what it publishes ("shop" or the dataset's name), whatever the --limit


def choose_feed(dataset: str, limit: int | None) -> Feed:
    """The feed for ``--dataset``, checked on disk without reading a file.

    ``auto`` is MovieLens-100k when the datasets folder holds it, else the built-in shop; ``shop`` is the
    built-in shop; ``none`` publishes nothing; anything else is a dataset name or folder. Raises
    ``DatasetNotFound`` (a known dataset not there) or ``ValueError`` (no such dataset).
    """
    note = None
    if dataset == "auto":
        try:
            find_dataset(DEFAULT_DATASET)
            dataset = DEFAULT_DATASET
        except DatasetNotFound:
            dataset = "shop"
            note = (
                f"no datasets in {datasets_dir()}, so the built-in shop feeds the stack; for real data set "
                f"STREAMREC_DATASETS to a folder of datasets and pick one with --dataset "
                f"({', '.join(dataset_names())})"
            )
    if dataset == "none":
        return Feed("nothing", ())
    limit_args = ("--limit", str(limit)) if limit else ()
    if dataset == "shop":
        events = limit or SHOP_EVENTS
        return Feed(
            f"the built-in shop ({SHOP_USERS} shoppers, {SHOP_ITEMS} items, {events:,} events of every type)",
            (
                "simulate",
                "--users",
                str(SHOP_USERS),
                "--items",
                str(SHOP_ITEMS),
                "--events",
                str(events),
                "--no-ensure-topics",
            ),
            note,
            "shop",
        )
    name, _ = find_dataset(dataset)
    return Feed(name, ("replay", dataset, "--no-ensure-topics", *limit_args), note, name)


@dataclass(frozen=True)
class Progress:
    """How far the workers got, from their /metrics: events taken off the topic, and of those the ones
    whose event_id had been folded before (a replay of data the kept Redis state already holds)."""

    taken: int = 0
    folded: int = 0
    duplicates: int = 0

    @property
    def new(self) -> int:
        """Events that changed the state for the first time."""
        return max(self.folded - self.duplicates, 0)


def progress_from_metrics(pages: Sequence[str]) -> Progress:
    """Sum the workers' counters from their /metrics pages (Prometheus text format)."""
    from prometheus_client.parser import text_string_to_metric_families

    taken = folded = duplicates = 0.0
    for page in pages:
        for family in text_string_to_metric_families(page):
            for sample in family.samples:
                if sample.name == EVENTS_METRIC:
                    taken += sample.value
                    if sample.labels.get("outcome") == "folded":
                        folded += sample.value
                elif sample.name == DUPLICATES_METRIC:
                    duplicates += sample.value
    return Progress(int(taken), int(folded), int(duplicates))


def forget_broker(client: redis.Redis, keys: Keys) -> str | None:
    """Forget the offset watermarks an earlier run's broker left in the kept Redis state.

    ``up``'s Tansu keeps its topics in memory, so every run numbers records from offset 0 again; left in
    place, the old watermarks would make the workers skip the new run's first events as already folded
    (docs/GUARANTEES.md, recreated topics). Call it before any worker starts. Returns one line saying
    what was forgotten, or None for a fresh state. Raises ``redis.RedisError`` when Redis cannot be read.
    """
    gone = forget_offsets(client, keys)
    if not gone.offsets and not gone.experiment_keys:
        return None
    return f"its {len(gone.offsets)} offset watermarks are forgotten, since this broker numbers records from 0 again"


def fold_summary(progress: Progress, seconds: float, data_dir: Path) -> str:
    """One line on what the feed changed: new events and their rate, or that it was all folded before."""
    if progress.new == 0 and progress.duplicates > 0:
        return (
            f"the feed was already folded into Redis: its {progress.duplicates:,} events were skipped as "
            f"duplicates (state kept in {data_dir}; delete that folder to start afresh)"
        )
    if progress.duplicates > 0:
        return (
            f"{progress.new:,} events newly folded into Redis and {progress.duplicates:,} skipped as already "
            f"folded, {seconds:.1f}s after the feed started"
        )
    return (
        f"{progress.new:,} events folded into Redis {seconds:.1f}s after the feed started "
        f"({progress.new / max(seconds, 1e-3):,.0f} events/s end to end)"
    )


def _loopback_port(what: str, host: str | None, port: int | None) -> int:
    if host not in LOOPBACK_NAMES or port is None:
        raise ServiceError(f"{what} must be a loopback host:port for the local stack, got {host}:{port}")
    return port


def _ensure_free(port: int, env_var: str) -> None:
    with socket.socket() as sock:
        if sock.connect_ex((LOOPBACK, port)) == 0:
            raise ServiceError(f"port {port} is already in use; pick another with {env_var}")


def _get_text(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback URL we built
        return resp.read().decode()


def _get_json(url: str) -> dict:
    return json.loads(_get_text(url))


def wait_http(url: str, timeout: float) -> None:
    """Wait until ``url`` answers 2xx; raises ServiceError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _get_json(url)
            return
        except OSError:
            time.sleep(0.2)
    raise ServiceError(f"{url} did not answer within {timeout}s")


def wait_folded(
    metrics_urls: Sequence[str],
    expected: int | None,
    timeout: float,
    services: Sequence[ManagedProcess],
    quiet_for: float = 1.0,
) -> tuple[Progress, float]:
    """Wait until the workers have taken ``expected`` events (or, unknown, until they stop taking any)
    and then nothing changes for ``quiet_for`` seconds; return the progress and when it last changed.

    Raises ``ServiceError`` when one of ``services`` exits meanwhile, or at the timeout.
    """
    deadline = time.monotonic() + timeout
    last, since = Progress(), time.monotonic()
    while time.monotonic() < deadline:
        dead = [p.name for p in services if not p.alive()]
        if dead:
            raise ServiceError(f"{', '.join(dead)} exited while the feed was being folded; see its log")
        try:
            now = progress_from_metrics([_get_text(u, timeout=2) for u in metrics_urls])
        except OSError:
            now = last  # a worker's /metrics is not up yet
        if now != last:
            last, since = now, time.monotonic()
        reached = last.taken >= expected if expected is not None else last.taken > 0
        if reached and time.monotonic() - since >= quiet_for:
            return last, since
        time.sleep(0.1)
    want = f"{expected:,}" if expected is not None else "any"
    raise ServiceError(f"the workers took {last.taken:,} of {want} events within {timeout:.0f}s")


def _demo(api: str, client: redis.Redis, keys: Keys) -> None:
    """Print a few live answers from the running API."""
    popular = _get_json(f"{api}/v1/popular?k=5")["data"]
    print("\nPopular now:")
    for row in popular["items"]:
        print(f"  {row['item_id']:>8}  {row['title'] or ''}")
    if popular["items"]:
        top = popular["items"][0]["item_id"]
        similar = _get_json(f"{api}/v1/items/{top}/similar?k=5&explain=true")["data"]
        print(f"\nShoppers who engaged with {top} also engaged with ({similar['strategy']}):")
        for row in similar["items"]:
            print(f"  {row['item_id']:>8}  {row['title'] or ''}  [{row['reason']}]")
    head, tail = keys.history("\0").split("\0")
    user = next(
        (k.decode()[len(head) : -len(tail)] for k in client.scan_iter(match=keys.history("*"), count=500)),
        None,
    )
    if user:
        recs = _get_json(f"{api}/v1/users/{user}/recommendations?k=5&explain=true")["data"]
        print(
            f"\nRecommended for user {user} ({recs['strategy']}, recommendation_id {recs['recommendation_id']}):"
        )
        for row in recs["items"]:
            print(f"  {row['item_id']:>8}  {row['title'] or ''}  [{row['reason']}]")


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the stack exactly as Ctrl-C does


def take_signals() -> None:
    """Make Ctrl-C and SIGTERM stop the stack whatever the parent did with them.

    A background job of a non-interactive shell starts with SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler; a parent may also have blocked either signal. Both are undone here.
    """
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)


def _stop_all(procs: list[ManagedProcess]) -> None:
    """Stop every process group, newest first, with Ctrl-C and SIGTERM held off so none is left behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        for p in reversed(procs):
            try:
                p.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                print(f"could not stop {p.name}: {exc}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _publish(
    feed: Feed, me: list[str], env: dict[str, str], procs: list[ManagedProcess]
) -> tuple[int | None, float]:
    """Run the feed's command in its own process group, its output shown; return (events it published,
    when it started)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [*me, *feed.args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    procs.append(ManagedProcess("feed", proc))
    published = None
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        if match := PUBLISHED.match(line):
            published = int(match.group(1))
    if proc.wait() != 0:
        raise ServiceError(f"publishing {feed.label} failed (exit status {proc.returncode}; see above)")
    return published, started


def run_stack(
    settings: Settings, dataset: str, limit: int | None, workers: int, data_dir: Path, exit_after_demo: bool
) -> int:
    """Check the feed and the ports, start everything, publish the feed, demo, then wait for Ctrl-C.

    Returns the exit code: 0 after Ctrl-C or SIGTERM (or the demo, with ``exit_after_demo``), 1 when a
    service failed or a port is taken, 2 for a dataset that is not there. Every failure is one line on
    stderr.
    """
    take_signals()
    try:
        feed = choose_feed(dataset, limit)
    except DatasetNotFound as exc:
        print(f"error: {exc} (or feed the built-in shop: --dataset shop)", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    services: list[ManagedProcess] = []
    helpers: list[ManagedProcess] = []
    try:
        return _run(settings, feed, workers, data_dir, exit_after_demo, services, helpers)
    except KeyboardInterrupt:
        print("\nstopping every process ...", flush=True)
        return 0
    except (ServiceError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        _stop_all(services + helpers)
        if services:
            print("every process stopped", flush=True)


def _run(
    settings: Settings,
    feed: Feed,
    workers: int,
    data_dir: Path,
    exit_after_demo: bool,
    services: list[ManagedProcess],
    helpers: list[ManagedProcess],
) -> int:
    bootstrap = settings.kafka_bootstrap.split(",")[0].strip()
    b_host, _, b_port = bootstrap.rpartition(":")
    kafka_port = _loopback_port(
        "STREAMREC_KAFKA_BOOTSTRAP", b_host, int(b_port) if b_port.isdigit() else None
    )
    parsed = urlparse(settings.redis_url)
    redis_port = _loopback_port("STREAMREC_REDIS_URL", parsed.hostname, parsed.port or 6379)
    api_url = f"http://{LOOPBACK}:{settings.api_port}"
    for port, var in (
        (kafka_port, "STREAMREC_KAFKA_BOOTSTRAP"),
        (redis_port, "STREAMREC_REDIS_URL"),
        (settings.api_port, "STREAMREC_API_PORT"),
    ):
        _ensure_free(port, var)
    # a local cluster: 3 masters and 3 replicas on the URL's port and the five after it
    cluster_ports = consecutive_cluster_ports(redis_port, 6) if settings.redis_cluster else []
    if feed.note:
        print(feed.note)
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "STREAMREC_KAFKA_BOOTSTRAP": f"{LOOPBACK}:{kafka_port}",
        "STREAMREC_REDIS_URL": settings.redis_url,
        "STREAMREC_API_PORT": str(settings.api_port),
        "STREAMREC_API_HOST": LOOPBACK,
        "STREAMREC_WORKER_DATA_DIR": str(data_dir / "worker"),
        "STREAMREC_REDIS_CLUSTER": "1" if settings.redis_cluster else "0",
        "STREAMREC_PRODUCER_METRICS_PORT": "0",
    }
    me = [sys.executable, "-m", "streamrec.cli"]
    where = (
        f"a Redis Cluster on {LOOPBACK}:{cluster_ports[0]}-{cluster_ports[-1]} (3 masters, 3 replicas)"
        if cluster_ports
        else f"Redis on {LOOPBACK}:{redis_port}"
    )
    print(f"starting Tansu broker on {LOOPBACK}:{kafka_port} and {where} (logs in {data_dir})")
    services.append(start_broker(kafka_port, data_dir / "broker.log"))
    if cluster_ports:
        services.extend(start_cluster(cluster_ports, data_dir / "redis-cluster", 1, data_dir).nodes)
    else:
        services.append(start_redis(redis_port, data_dir / "redis", data_dir / "redis.log"))
    client = redis_client(settings.redis_url, settings.redis_cluster)
    keys = keys_of(settings)
    kept = forget_broker(client, keys)
    if kept:
        print(f"state kept in {data_dir} from an earlier run; {kept}")
    from streamrec.topics import Topics, ensure_topics

    ensure_topics(env["STREAMREC_KAFKA_BOOTSTRAP"], Topics(settings.topic_prefix), settings.partitions)
    metrics_urls = []
    for n in range(workers):
        port = free_port()
        metrics_urls.append(f"http://{LOOPBACK}:{port}/metrics")
        worker_env = {**env, "STREAMREC_WORKER_METRICS_PORT": str(port)}
        services.append(spawn(f"worker-{n}", [*me, "worker"], data_dir / f"worker-{n}.log", worker_env))
    api_proc = spawn("api", [*me, "api"], data_dir / "api.log", env)
    services.append(api_proc)
    wait_for_port(settings.api_port, 30, api_proc.proc)
    wait_http(f"{api_url}/healthz", 30)
    print(f"API listening on {api_url}")
    before = client.hget(keys.local_feeds(), feed.source) if feed.args else None
    if before is not None:
        print(
            f"{feed.label} was already folded into this state ({int(before):,} events), so it is not "
            f"published again (delete {data_dir} to start afresh)"
        )
    elif feed.args:
        print(f"publishing {feed.label} ...", flush=True)
        published, started = _publish(feed, me, env, helpers)
        print("waiting for the workers to fold it into Redis ...", flush=True)
        progress, done = wait_folded(metrics_urls, published, timeout=600, services=services)
        client.hset(keys.local_feeds(), feed.source, progress.taken)
        print(fold_summary(progress, done - started, data_dir))
    _demo(api_url, client, keys)
    print(
        f"\nThe API is at {api_url}. Try:\n  curl '{api_url}/v1/popular?k=5'\n  curl '{api_url}/v1/trending?k=5'"
    )
    print(f"\nThe storefront is at {api_url}/shop/ (open it in a browser)")
    if exit_after_demo:
        return 0
    print("Press Ctrl-C to stop everything.", flush=True)
    while all(p.alive() for p in services):
        time.sleep(0.5)
    dead = [p.name for p in services if not p.alive()]
    print(f"error: {', '.join(dead)} exited; see its log in {data_dir}", file=sys.stderr)
    return 1
