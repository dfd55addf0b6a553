"""``streamrec bench``: throughput, freshness, API latency, memory and scale, measured on this machine.

Everything runs on a stack the bench starts itself on loopback (Tansu, Redis, workers and the API as
child processes, exactly as ``streamrec up`` runs them), so that the figures are the real pipeline's. Each
figure sits beside this machine's ceiling for the same work, measured in the same run: the broker's raw
consuming rate and the state script's rate with no Kafka in front of it for ingest; a trivial JSON
endpoint on the same gunicorn for the API. Repeated measures are quoted as medians.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests

from streamrec.contract import CatalogItem, Event
from streamrec.devtools.localstack import (
    LOOPBACK,
    ManagedProcess,
    ServiceError,
    free_port,
    spawn,
    start_broker,
    start_redis,
)
from streamrec.fold import redis_client
from streamrec.keys import Keys
from streamrec.settings import ScoringSettings, Settings
from streamrec.state import StateReader, applied_events

PREFIX = "bench"
TARGETS = {
    "ingest_per_worker": 10_000.0,
    "freshness_p99_ms": 250.0,
    "recs_p99_ms": 20.0,
    "recs_share_of_trivial": 0.5,
    "bytes_per_user": 1024.0,
}


@dataclass(frozen=True)
class Plan:
    """How much work each measure does: ``full`` for the published figures, ``quick`` for the test."""

    repeats: int
    ingest_events: int
    freshness_probes: int
    background_rate: float
    api_seconds: float
    memory_events: int | None
    scale_sizes: tuple[int, ...]
    dataset: str = "amazon-beauty"

    @classmethod
    def full(cls) -> Plan:
        """The published run: 3 rounds, 50,000 events, 40 freshness probes under 1,000 events/s, 5 s of wrk,
        scale points 10k, 100k, 300k."""
        return cls(3, 50_000, 40, 1000.0, 5.0, None, (10_000, 100_000, 300_000))

    @classmethod
    def quick(cls) -> Plan:
        """A short run for tests: 1 round, 2,000 events, 4 probes under 200 events/s, 1 s of wrk."""
        return cls(1, 2_000, 4, 200.0, 1.0, 3_000, (1_000, 3_000))


def say(msg: str) -> None:
    """Print one progress line at once (flushed)."""
    print(msg, flush=True)


def median(values: Sequence[float]) -> float:
    """The median of ``values``, NaN for none."""
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (with few samples p99 is the largest one, and is reported as such)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return float(ordered[rank - 1])


@dataclass
class Stack:
    """Broker and Redis for the whole bench; workers and the API started per phase, all on loopback."""

    root: Path
    broker: ManagedProcess
    redis_server: ManagedProcess
    client: redis.Redis
    procs: list[ManagedProcess] = field(default_factory=list)
    api_url: str = ""

    @property
    def bootstrap(self) -> str:
        """The broker's bootstrap address (host:port)."""
        return f"{LOOPBACK}:{self.broker.port}"

    def env(self, tag: str, **extra: str) -> dict[str, str]:
        """The environment of a program of this stack: its broker, Redis and prefix, plus ``extra``."""
        return {
            **os.environ,
            "STREAMREC_KAFKA_BOOTSTRAP": self.bootstrap,
            "STREAMREC_REDIS_URL": f"redis://{LOOPBACK}:{self.redis_server.port}/0",
            "STREAMREC_TOPIC_PREFIX": tag,
            "STREAMREC_REDIS_PREFIX": PREFIX,
            "STREAMREC_WORKER_GROUP": f"group-{tag}",
            "STREAMREC_WORKER_DATA_DIR": str(self.root / tag / "worker"),
            "STREAMREC_PARTITIONS": "2",
            "STREAMREC_WRITE_RATE_PER_S": "0",
            "STREAMREC_LOG_LEVEL": "WARNING",
            **extra,
        }

    def start(self, name: str, env: dict[str, str], *args: str) -> ManagedProcess:
        """Start ``streamrec <args>`` as a process of this stack named ``name``, its log beside the others."""
        proc = spawn(name, [sys.executable, "-m", "streamrec.cli", *args], self.root / f"{name}.log", env)
        self.procs.append(proc)
        return proc

    def stop(self, proc: ManagedProcess) -> None:
        """Stop one of this stack's processes."""
        proc.stop()
        self.procs.remove(proc)

    def applied(self) -> int:
        """Events folded so far (the stats' applied counter)."""
        return applied_events(self.client, Keys(PREFIX))


@contextmanager
def local_stack() -> Iterator[Stack]:
    """A throwaway Tansu and Redis on free loopback ports under a temporary folder; every process stopped on exit."""
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="streamrec-bench-")))
        broker = start_broker(free_port(), root / "broker.log")
        stack.callback(broker.stop)
        server = start_redis(free_port(), root / "redis", root / "redis.log", appendonly=False)
        stack.callback(server.stop)
        # the client the API and the worker make (RESP2 on one Redis), so in-process figures are theirs
        client = redis_client(f"redis://{LOOPBACK}:{server.port}/0", False)
        s = Stack(root, broker, server, client)
        stack.callback(lambda: [p.stop() for p in reversed(s.procs)])
        yield s


def _wait(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise ServiceError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def dataset_records(name: str, limit: int | None) -> tuple[list[CatalogItem], list[Event]]:
    """The catalog and events of a dataset in the datasets folder, at most ``limit`` events (None: all)."""
    from streamrec.datasets import dataset_events

    catalog, events = dataset_events(name, limit=limit)
    return catalog, list(events)


def simulated_records(n_events: int, seed: int = 7) -> tuple[list[CatalogItem], list[Event]]:
    """A simulated shop sized with the event count (about 10 events per shopper, 1 item per 10 events)."""
    from streamrec.contract import now_ms
    from streamrec.producers.simulate import make_catalog, simulate_events

    start = now_ms() - 86_400_000
    catalog = make_catalog(max(n_events // 10, 50), seed, ts_ms=start)
    events = list(simulate_events(catalog, max(n_events // 10, 10), n_events, seed, start))
    return catalog, events


def _publisher(bootstrap: str, tag: str):  # type: ignore[no-untyped-def]
    from streamrec.publisher import EventPublisher
    from streamrec.topics import Topics

    return EventPublisher(bootstrap, Topics(tag))


WARM_UP = 20


def ingest_end_to_end(
    stack: Stack, catalog: Sequence[CatalogItem], events: Sequence[Event]
) -> dict[str, Any]:
    """A worker that has joined its group (it folded the first events), then the rest published flat out:
    events/s from the first send to the last fold, with producer, broker, worker and Redis sharing the cores.
    """
    from streamrec.topics import Topics, ensure_topics

    stack.client.flushall()
    tag = f"b{uuid.uuid4().hex[:8]}"
    topic = Topics(tag).events
    ensure_topics(stack.bootstrap, Topics(tag), 2)
    procs = [stack.start(f"worker-{tag}", stack.env(tag), "worker")]
    warm, rest = events[:WARM_UP], events[WARM_UP:]
    with _publisher(stack.bootstrap, tag) as pub:
        for item in catalog:
            pub.publish_item(item)
        for e in warm:
            pub.publish_raw(topic, e.user_id.encode(), e.to_json())
    _wait(lambda: stack.applied() >= len(warm), 60, "the worker to fold the first events")
    payloads = [(e.user_id.encode(), e.to_json()) for e in rest]
    started = time.monotonic()
    with _publisher(stack.bootstrap, tag) as pub:
        for key, value in payloads:
            pub.publish_raw(topic, key, value)
        pub.flush()
        published = time.monotonic()
    _wait(lambda: stack.applied() >= len(events), 600, f"{len(events)} events to be folded", interval=0.01)
    done = time.monotonic()
    return {
        "tag": tag,
        "procs": procs,
        "events": len(rest),
        "producer_events_per_s": len(rest) / (published - started),
        "events_per_s": len(rest) / (done - started),
    }


def ingest_drain(
    stack: Stack, workers: int, catalog: Sequence[CatalogItem], events: Sequence[Event], null: bool = False
) -> dict[str, Any]:
    """A backlog published first, then ``workers`` started together: events/s from their first fold to the last.

    This is the workers' own rate (the producer is not competing for the two cores meanwhile).
    """
    from streamrec.topics import Topics, ensure_topics

    stack.client.flushall()
    tag = f"b{uuid.uuid4().hex[:8]}"
    topics = Topics(tag)
    ensure_topics(stack.bootstrap, topics, 2)
    with _publisher(stack.bootstrap, tag) as pub:
        for item in catalog:
            pub.publish_item(item)
        for e in events:
            pub.publish_raw(topics.events, e.user_id.encode(), e.to_json())
    env = stack.env(tag)
    if null:
        argv = ["-c", "from streamrec.devtools.bench import faust_null_worker; faust_null_worker()"]
        procs = [spawn(f"faust-null-{tag}", [sys.executable, *argv], stack.root / "faust-null.log", env)]
        stack.procs.extend(procs)
    else:
        procs = [stack.start(f"worker-{tag}-{n}", env, "worker") for n in range(workers)]
    deadline = time.monotonic() + 120
    while (first := stack.applied()) == 0:
        if time.monotonic() > deadline:
            raise ServiceError("the workers folded nothing within 120s")
        time.sleep(0.005)
    started = time.monotonic()
    _wait(lambda: stack.applied() >= len(events), 600, "the backlog to be folded", interval=0.01)
    rate = (len(events) - first) / (time.monotonic() - started)
    for p in procs:
        stack.stop(p)
    return {"tag": tag, "events_per_s": rate}


def faust_null_worker() -> None:
    """A Faust worker built like the real one (same transport and consumer settings) whose agent only counts.

    Its drain rate is Faust's own ceiling on this machine: what a worker could reach if folding were free.
    """
    from pathlib import Path

    import faust
    import redis.asyncio

    from streamrec.settings import keys_of
    from streamrec.stream_processor.transport import ConsumerThread
    from streamrec.topics import Topics

    s = Settings()
    Path(s.worker_data_dir).mkdir(parents=True, exist_ok=True)
    ConsumerThread.fetch_max_wait_ms = s.worker_fetch_wait_ms
    app = faust.App(
        s.worker_group,
        broker=[f"streamrec-kafka://{hp.strip()}" for hp in s.kafka_bootstrap.split(",")],
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        web_enabled=False,
        datadir=s.worker_data_dir,
        broker_session_timeout=s.worker_session_timeout_s,
        broker_heartbeat_interval=max(s.worker_session_timeout_s / 3, 1.0),
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,
        topic_disable_leader=True,
        broker_commit_every=500,
        broker_commit_interval=1.0,
    )
    client = redis.asyncio.Redis.from_url(s.redis_url)
    stats = keys_of(s).stats("ev", 0)
    topic = app.topic(Topics(s.topic_prefix).events, value_serializer="raw", key_serializer="raw")

    @app.agent(topic, name="bench-count")
    async def count(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(s.worker_batch, within=s.worker_batch_wait_s):
            await client.hincrby(stats, "applied:view", len(batch))

    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn"]
    app.main()


def broker_raw_rate(stack: Stack, tag: str, n: int) -> float:
    """kafka-python reading the events topic from the start with no processing: the broker's delivery rate."""
    from kafka import KafkaConsumer

    from streamrec.topics import Topics

    consumer = KafkaConsumer(
        Topics(tag).events,
        bootstrap_servers=stack.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=10_000,
        max_poll_records=5000,
        fetch_max_bytes=50 * 1024 * 1024,
    )
    try:
        seen, started = 0, None
        for _ in consumer:
            if started is None:
                started = time.monotonic()
            seen += 1
            if seen >= n:
                break
        return seen / max(time.monotonic() - (started or time.monotonic()), 1e-6)
    finally:
        consumer.close()


def redis_raw_rate(stack: Stack, events: Sequence[Event], batch: int = 500) -> float:
    """The state script alone, in process, in the worker's batch size: Redis's rate for the same writes."""
    from streamrec.fold import StateWriter

    stack.client.flushall()
    writer = StateWriter(stack.client, Keys(PREFIX), ScoringSettings())
    started = time.monotonic()
    for i in range(0, len(events), batch):
        writer.apply(events[i : i + batch])
    return len(events) / (time.monotonic() - started)


def start_api(stack: Stack, tag: str = "api", **extra: str) -> ManagedProcess:
    """The API under gunicorn (2 workers unless ``extra`` says otherwise) on a free loopback port."""
    port = free_port()
    env = stack.env(
        tag,
        **{
            "STREAMREC_API_PORT": str(port),
            "STREAMREC_API_HOST": LOOPBACK,
            "STREAMREC_API_WORKERS": "2",
            **extra,
        },
    )
    proc = stack.start(f"api-{uuid.uuid4().hex[:6]}", env, "api")
    stack.api_url = f"http://{LOOPBACK}:{port}"

    def up() -> bool:
        if not proc.alive():
            raise ServiceError("the API exited; see its log")
        try:
            return requests.get(f"{stack.api_url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    _wait(up, 60, "the API")
    return proc


def freshness(stack: Stack, tag: str, plan: Plan) -> dict[str, Any]:
    """Publish one view by a new user; time until the API's answer for that user turns personal.

    Runs while ``streamrec simulate`` publishes ``plan.background_rate`` events/s from its own process.
    """
    from kafka import KafkaProducer

    from streamrec.topics import Topics

    seeds = StateReader(stack.client, Keys(PREFIX), ScoringSettings()).popular_ids(50)
    seeds = [s for s in seeds if stack.client.zcard(Keys(PREFIX).neighbours(s))] or seeds
    duration = int(plan.freshness_probes * 0.6 + 10)
    background = stack.start(
        f"simulate-{tag}",
        stack.env(tag),
        "simulate",
        "--rate",
        str(plan.background_rate),
        "--events",
        str(int(plan.background_rate * duration)),
        "--users",
        "2000",
        "--items",
        "1000",
        "--no-ensure-topics",
    )
    producer = KafkaProducer(bootstrap_servers=stack.bootstrap, acks="all", linger_ms=0)
    session = requests.Session()
    topic = Topics(tag).events
    latencies: list[float] = []
    try:
        start_applied = stack.applied()
        _wait(lambda: stack.applied() > start_applied + plan.background_rate, 30, "the background load")
        for n in range(plan.freshness_probes):
            user = f"fresh-{tag}-{n}"
            event = {
                "event_id": f"f-{user}",
                "type": "view",
                "user_id": user,
                "item_id": random.choice(seeds),
            }
            url = f"{stack.api_url}/v1/users/{user}/recommendations?k=10"
            sent = time.monotonic()
            producer.send(topic, key=user.encode(), value=json.dumps(event).encode())
            producer.flush()
            while True:
                if session.get(url, timeout=5).json()["data"]["strategy"] == "personalized":
                    break
                if time.monotonic() - sent > 10:
                    raise ServiceError(f"{user}'s view never showed in the API")
            latencies.append((time.monotonic() - sent) * 1000)
            time.sleep(0.3)
    finally:
        producer.close()
        session.close()
        stack.stop(background)
    return {
        "probes": len(latencies),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
        "background_rate": plan.background_rate,
    }


_WRK_LINE = re.compile(r"^\s*(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(
    url_paths: Sequence[str],
    base: str,
    seconds: float,
    root: Path,
    connections: int = 16,
    threads: int = 2,
) -> dict[str, float]:
    """Load from Debian's wrk (a separate process), each request on a random one of ``url_paths``; its p50,
    p99 (ms), requests/s and the count of non-2xx answers and socket errors."""
    binary = shutil.which("wrk")
    if not binary:
        raise ServiceError("the API bench needs wrk (Debian: apt-get install wrk)")
    script = root / f"paths-{uuid.uuid4().hex[:6]}.lua"
    quoted = ",".join(json.dumps(p) for p in url_paths)
    script.write_text(
        f"local paths = {{{quoted}}}\nlocal threads = 0\n"
        "function setup(thread)\n  threads = threads + 1\n  thread:set('id', threads)\nend\n"
        "function init(args)\n  math.randomseed(os.time() * 100 + id)\nend\n"
        "request = function()\n  return wrk.format('GET', paths[math.random(#paths)])\nend\n"
        "local non2xx = 0\n"
        "response = function(status, headers, body)\n"
        "  if status < 200 or status > 299 then non2xx = non2xx + 1 end\nend\n"
        "done = function(summary, latency, requests)\n"
        "  io.write(string.format('errors %d %d %d %d %d\\n', summary.errors.status, summary.errors.connect,"
        " summary.errors.read, summary.errors.write, summary.errors.timeout))\nend\n"
    )
    argv = [
        binary,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(int(seconds), 1)}s",
        "--latency",
        "-s",
        str(script),
        base,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    found = {q: float(v) * _UNIT_MS[u] for q, v, u in _WRK_LINE.findall(out)}
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"errors (\d+) (\d+) (\d+) (\d+) (\d+)", out)
    if not rate or "50" not in found or "99" not in found:
        raise ServiceError(f"could not read wrk's output:\n{out}")
    return {
        "p50_ms": found["50"],
        "p99_ms": found["99"],
        "requests_per_s": float(rate.group(1)),
        "errors": sum(int(x) for x in errors.groups()) if errors else 0,
    }


def api_paths(stack: Stack, events: Sequence[Event]) -> dict[str, list[str]]:
    """Random users' recommendations, random items' similar, popular, trending and /healthz."""
    users = list(dict.fromkeys(e.user_id for e in events))[:3000]
    items = StateReader(stack.client, Keys(PREFIX), ScoringSettings()).popular_ids(3000)
    return {
        "recommendations": [f"/v1/users/{u}/recommendations?k=10" for u in users],
        "similar": [f"/v1/items/{i}/similar?k=10" for i in items],
        "popular": ["/v1/popular?k=10"],
        "trending": ["/v1/trending?k=10"],
        "trivial (/healthz)": ["/healthz"],
    }


def api_bench(stack: Stack, paths: dict[str, list[str]], seconds: float) -> dict[str, dict[str, float]]:
    """Run wrk on each named path list of the stack's API for ``seconds``: name -> its req/s and latency percentiles (ms)."""
    return {name: wrk(p, stack.api_url, seconds, stack.root) for name, p in paths.items()}


# Key families by owner (docs/STATE.md). ``shared`` keys are few and measured whole; the others are
# sampled. A more specific pattern comes first: ``popular_cat`` keys also match ``popular``'s pattern.
FAMILIES = {
    "user": ("history", "prefs", "bought", "searches", "version", "erased", "outbox"),
    "item": ("neighbours", "catalog", "activity"),
    "term": ("term",),
    "event": ("claims",),
    "shards": ("popular_cat", "popular", "trending_cat", "trending"),
    "bookkeeping": ("stats", "watermark", "slot_watermark", "catalog_generation"),
}
EXACT = ("shards", "bookkeeping")


def _fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least squares ``y = a + b x`` (``a`` 0 and ``b`` the mean ratio when every x is the same)."""
    n = len(xs)
    if n == 0:
        return 0.0, 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0, my / mx if mx else 0.0
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
    return my - b * mx, b


def family_memory(client: redis.Redis, keys: Keys, sample: int = 300, seed: int = 0) -> dict[str, Any]:
    """Redis bytes of each key family of a deployment: ``MEMORY USAGE`` (the key, its value and its entry
    in the keyspace) of up to ``sample`` keys per family scaled to the family's key count; shards and
    bookkeeping keys measured whole.

    Returns per family ``{"keys", "bytes"}``; the claims' entry count and a least-squares split of a
    claims key's bytes into a fixed part per key and a part per claimed event (``claims_fit``:
    ``{"per_key", "per_event"}``); and Redis' own ``used_memory``, ``used_memory_startup``, keys and
    keys with a TTL. A SCAN with a pattern also removes the keys of that pattern that have expired and
    were still waiting for Redis' expiry cycle.
    """
    templates = keys.templates()
    rnd = random.Random(seed)
    seen: set[bytes] = set()
    families: dict[str, dict[str, float]] = {}
    claims_fit: dict[str, float] = {"per_key": 0.0, "per_event": 0.0}
    claims = 0
    for group, names in FAMILIES.items():
        for name in names:
            found = [
                k
                for k in client.scan_iter(match=templates[name].replace("%s", "*"), count=5000)
                if k not in seen
            ]
            seen.update(found)
            picked = found if group in EXACT else rnd.sample(found, min(sample, len(found)))
            pipe = client.pipeline(transaction=False)
            for k in picked:
                pipe.memory_usage(k, samples=0)
            sizes = [int(x or 0) for x in pipe.execute()]
            families[name] = {
                "keys": len(found),
                "bytes": (sum(sizes) / len(sizes) * len(found)) if sizes else 0.0,
            }
            if name == "claims":
                pipe = client.pipeline(transaction=False)
                for k in picked:
                    pipe.zcard(k)
                counts = [int(x) for x in pipe.execute()]
                a, b = _fit_line(counts, sizes)
                claims_fit = {"per_key": a, "per_event": b}
                pipe = client.pipeline(transaction=False)
                for k in found:
                    pipe.zcard(k)
                claims = sum(int(x) for x in pipe.execute())
    info = client.info("memory")
    space = client.info("keyspace").get("db0", {})
    return {
        "families": families,
        "claims": claims,
        "claims_fit": claims_fit,
        "used_memory": int(info["used_memory"]),
        "used_memory_startup": int(info.get("used_memory_startup", 0)),
        "used_memory_dataset": int(info.get("used_memory_dataset", 0)),
        "keys": int(space.get("keys", 0)),
        "volatile_keys": int(space.get("expires", 0)),
    }


def _group_bytes(families: dict[str, dict[str, float]], group: str) -> float:
    return sum(families[n]["bytes"] for n in FAMILIES[group])


def memory_figures(measured: dict[str, Any]) -> dict[str, Any]:
    """Per-owner figures from ``family_memory``: bytes per active user (a user with a version key: one
    event folded within ``user_ttl``), per item (catalog, activity, neighbours, over the larger of the
    catalog and the active items), per search term, per claimed event inside the dedupe window; shard
    copies per active item; bookkeeping; and what ``used_memory`` holds beyond every measured key."""
    fam = measured["families"]
    users = int(fam["version"]["keys"])
    active_items = int(fam["activity"]["keys"])
    items = max(int(fam["catalog"]["keys"]), active_items)
    terms = int(fam["term"]["keys"])
    measured_bytes = sum(f["bytes"] for f in fam.values())
    residual = measured["used_memory"] - measured["used_memory_startup"] - measured_bytes
    return {
        "users": users,
        "items": items,
        "active_items": active_items,
        "terms": terms,
        "bytes_per_user": _group_bytes(fam, "user") / max(users, 1),
        "bytes_per_item": _group_bytes(fam, "item") / max(items, 1),
        "bytes_per_term": _group_bytes(fam, "term") / max(terms, 1),
        "dedupe_claims": measured["claims"],
        "dedupe_bytes": _group_bytes(fam, "event"),
        "dedupe_bytes_per_event": _group_bytes(fam, "event") / max(measured["claims"], 1),
        "dedupe_bytes_per_key": measured["claims_fit"]["per_key"],
        "dedupe_bytes_per_claim": measured["claims_fit"]["per_event"],
        "claims_keys": int(fam["claims"]["keys"]),
        "shard_bytes": _group_bytes(fam, "shards"),
        "shard_bytes_per_active_item": _group_bytes(fam, "shards") / max(active_items, 1),
        "bookkeeping_bytes": _group_bytes(fam, "bookkeeping"),
        "shared_bytes": _group_bytes(fam, "shards") + _group_bytes(fam, "bookkeeping"),
        "residual_bytes": residual,
        "used_memory": measured["used_memory"],
        "used_memory_startup": measured["used_memory_startup"],
        "used_memory_dataset": measured["used_memory_dataset"],
        "keys": measured["keys"],
        "volatile_keys": measured["volatile_keys"],
        "families": fam,
    }


def memory(stack: Stack, sample: int = 300) -> dict[str, Any]:
    """Bytes per user and per item: MEMORY USAGE of a sample of each key family, scaled to the family's size."""
    return memory_figures(family_memory(stack.client, Keys(PREFIX), sample))


def replay_in_process(stack: Stack, catalog: Sequence[CatalogItem], events: Sequence[Event]) -> None:
    """Fold ``catalog`` and ``events`` into the stack's Redis with the worker's own StateWriter, in this process (no Kafka)."""
    from streamrec.fold import StateWriter

    stack.client.flushall()
    writer = StateWriter(stack.client, Keys(PREFIX), ScoringSettings())
    for i in range(0, len(catalog), 500):
        writer.upsert_items(catalog[i : i + 500])
    for i in range(0, len(events), 500):
        writer.apply(events[i : i + 500])


def run(plan: Plan, out_dir: Path) -> dict[str, Any]:
    """Every measure; writes bench.json, bench.md and scale.png into ``out_dir`` and returns the figures."""
    out_dir.mkdir(parents=True, exist_ok=True)
    load_before = list(os.getloadavg())  # another program busy on the cores skews every figure
    say(f"loading {plan.dataset} ...")
    catalog, events = dataset_records(plan.dataset, plan.ingest_events)
    runs: dict[str, list[Any]] = {
        k: []
        for k in ("ingest_1", "drain_1", "drain_2", "faust", "producer", "broker", "redis", "fresh", "api")
    }
    started = time.monotonic()
    with local_stack() as stack:
        start_api(stack)
        for r in range(plan.repeats):
            say(f"repeat {r + 1}/{plan.repeats}: ingest, 1 worker ({len(events):,} events)")
            one = ingest_end_to_end(stack, catalog, events)
            runs["ingest_1"].append(one["events_per_s"])
            runs["producer"].append(one["producer_events_per_s"])
            say(f"  {one['events_per_s']:,.0f} events/s end to end; freshness under load")
            runs["fresh"].append(freshness(stack, one["tag"], plan))
            say(f"  freshness p50 {runs['fresh'][-1]['p50_ms']:.0f} ms; API under wrk")
            runs["api"].append(api_bench(stack, api_paths(stack, events), plan.api_seconds))
            say("  broker raw rate")
            runs["broker"].append(broker_raw_rate(stack, one["tag"], len(events)))
            for p in one["procs"]:
                stack.stop(p)
            for workers in (1, 2):
                say(f"  backlog drain, {workers} worker(s)")
                runs[f"drain_{workers}"].append(ingest_drain(stack, workers, catalog, events)["events_per_s"])
            say("  backlog drain, Faust alone (an agent that only counts)")
            runs["faust"].append(ingest_drain(stack, 1, catalog, events, null=True)["events_per_s"])
            say("  state script alone")
            runs["redis"].append(redis_raw_rate(stack, events))
        say(f"memory: {plan.dataset} replayed through the state script")
        mem_catalog, mem_events = dataset_records(plan.dataset, plan.memory_events)
        replay_in_process(stack, mem_catalog, mem_events)
        mem = memory(stack)
        mem["events"] = len(mem_events)
        mem["dataset"] = plan.dataset
        scale = []
        for size in plan.scale_sizes:
            say(f"scale: {size:,} simulated events")
            s_catalog, s_events = simulated_records(size)
            res = ingest_end_to_end(stack, s_catalog, s_events)
            paths = api_paths(stack, s_events)
            recs = wrk(paths["recommendations"], stack.api_url, plan.api_seconds, stack.root)
            for p in res["procs"]:
                stack.stop(p)
            m = memory(stack)
            scale.append(
                {
                    "events": size,
                    "users": m["users"],
                    "items": m["items"],
                    "ingest_events_per_s": res["events_per_s"],
                    "recs_p50_ms": recs["p50_ms"],
                    "recs_p99_ms": recs["p99_ms"],
                    "recs_per_s": recs["requests_per_s"],
                    "used_memory": m["used_memory"],
                    "bytes_per_user": m["bytes_per_user"],
                }
            )
    figures = summarise(plan, runs, mem, scale, len(events))
    figures["seconds"] = round(time.monotonic() - started, 1)
    figures["machine"]["load_average_before_after"] = [load_before, list(os.getloadavg())]
    (out_dir / "bench.json").write_text(json.dumps(figures, indent=2) + "\n")
    (out_dir / "bench.md").write_text(markdown(figures))
    plot_scale(scale, out_dir / "scale.png")
    return figures


def summarise(
    plan: Plan, runs: dict[str, list[Any]], mem: dict[str, Any], scale: list[dict[str, Any]], n: int
) -> dict[str, Any]:
    """Medians over the runs of every measure, the memory figures and the scale series, with each target checked."""
    api = {
        name: {
            k: median([r[name][k] for r in runs["api"]])
            for k in ("p50_ms", "p99_ms", "requests_per_s", "errors")
        }
        for name in runs["api"][0]
    }
    trivial = api["trivial (/healthz)"]["requests_per_s"]
    ingest = {
        "events": n,
        "dataset": plan.dataset,
        "end_to_end_one_worker_events_per_s": median(runs["ingest_1"]),
        "one_worker_events_per_s": median(runs["drain_1"]),
        "two_workers_events_per_s": median(runs["drain_2"]),
        "producer_events_per_s": median(runs["producer"]),
        "broker_raw_events_per_s": median(runs["broker"]),
        "state_script_events_per_s": median(runs["redis"]),
        "faust_alone_events_per_s": median(runs["faust"]),
    }
    fresh = {k: median([r[k] for r in runs["fresh"]]) for k in ("p50_ms", "p99_ms", "max_ms")}
    fresh["probes_per_run"] = plan.freshness_probes
    fresh["background_events_per_s"] = plan.background_rate
    recs = api["recommendations"]
    checks = {
        "ingest_per_worker": ingest["one_worker_events_per_s"] >= TARGETS["ingest_per_worker"],
        "freshness_p99_ms": fresh["p99_ms"] <= TARGETS["freshness_p99_ms"],
        "recs_p99_ms": recs["p99_ms"] <= TARGETS["recs_p99_ms"],
        "recs_share_of_trivial": recs["requests_per_s"] >= TARGETS["recs_share_of_trivial"] * trivial,
        "bytes_per_user": mem["bytes_per_user"] <= TARGETS["bytes_per_user"],
    }
    return {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "plan": plan.__dict__ | {"scale_sizes": list(plan.scale_sizes)},
        "ingest": ingest,
        "freshness": fresh,
        "api": api,
        "memory": mem,
        "scale": scale,
        "targets": TARGETS,
        "met": checks,
        "runs": {k: v for k, v in runs.items() if k not in ("api", "fresh")}
        | {"fresh": runs["fresh"], "api": runs["api"]},
    }


def markdown(f: dict[str, Any]) -> str:
    """The figures ``f`` (from ``summarise``) as the README's Markdown table, each target marked met or missed."""
    ing, fr, api, mem = f["ingest"], f["freshness"], f["api"], f["memory"]
    met = {k: "met" if v else "**missed**" for k, v in f["met"].items()}
    trivial = api["trivial (/healthz)"]["requests_per_s"]
    lines = [
        f"Medians of {f['plan']['repeats']} runs on this {f['machine']['cpus']}-core machine "
        f"(Python {f['machine']['python']}).",
        "",
        "| measure | figure | ceiling on this machine | target |",
        "|---|---|---|---|",
        f"| ingest, 1 worker ({ing['events']:,} {ing['dataset']} events from a backlog: Tansu → worker → Redis) | "
        f"{ing['one_worker_events_per_s']:,.0f} events/s | state script alone {ing['state_script_events_per_s']:,.0f}/s "
        f"({ing['one_worker_events_per_s'] / ing['state_script_events_per_s']:.0%}); broker raw "
        f"{ing['broker_raw_events_per_s']:,.0f}/s ({ing['one_worker_events_per_s'] / ing['broker_raw_events_per_s']:.0%}); "
        f"Faust alone (agent only counts) {ing['faust_alone_events_per_s']:,.0f}/s "
        f"({ing['one_worker_events_per_s'] / ing['faust_alone_events_per_s']:.0%}) "
        f"| ≥ 10,000/s per worker: {met['ingest_per_worker']} |",
        f"| ingest, 2 workers (same backlog, 2 partitions) | {ing['two_workers_events_per_s']:,.0f} events/s "
        f"({ing['two_workers_events_per_s'] / 2:,.0f} per worker) | 2 cores shared by broker, Redis and both workers | |",
        f"| ingest end to end, 1 worker (kafka-python producer publishing flat out meanwhile) | "
        f"{ing['end_to_end_one_worker_events_per_s']:,.0f} events/s | producer alone {ing['producer_events_per_s']:,.0f}/s | |",
        f"| freshness (publish → personal answer from the API, at {fr['background_events_per_s']:,.0f} events/s) | "
        f"p50 {fr['p50_ms']:.0f} ms, p99 {fr['p99_ms']:.0f} ms ({fr['probes_per_run']} probes a run) | | p99 ≤ 250 ms: {met['freshness_p99_ms']} |",
    ]
    for name in ("recommendations", "similar", "popular", "trending"):
        a = api[name]
        target = ""
        if name == "recommendations":
            target = f"p99 ≤ 20 ms: {met['recs_p99_ms']}; ≥ 50% of trivial: {met['recs_share_of_trivial']}"
        lines.append(
            f"| API {name} (gunicorn, 2 workers × 4 threads, wrk 2 threads, 16 connections) | p50 {a['p50_ms']:.1f} ms, "
            f"p99 {a['p99_ms']:.1f} ms, {a['requests_per_s']:,.0f} req/s | {a['requests_per_s'] / trivial:.0%} of trivial | {target} |"
        )
    t = api["trivial (/healthz)"]
    lines += [
        f"| API trivial JSON (/healthz) | p50 {t['p50_ms']:.1f} ms, p99 {t['p99_ms']:.1f} ms, {t['requests_per_s']:,.0f} req/s | the framework's ceiling | |",
        f"| Redis memory ({mem['events']:,} {mem['dataset']} events: {mem['users']:,} users, {mem['items']:,} items) | "
        f"{mem['bytes_per_user']:,.0f} B/user, {mem['bytes_per_item']:,.0f} B/item; dedupe claims "
        f"{mem['dedupe_bytes_per_event']:,.0f} B/event inside the dedupe window | used_memory {mem['used_memory'] / 2**20:,.1f} MiB | ≤ 1 KiB/user: {met['bytes_per_user']} |",
        "",
        "Scale (simulator, 1 worker, one run per size):",
        "",
        "| events | users | items | ingest events/s | recommendations p50 / p99 ms | req/s | Redis used_memory MiB | B/user |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in f["scale"]:
        lines.append(
            f"| {s['events']:,} | {s['users']:,} | {s['items']:,} | {s['ingest_events_per_s']:,.0f} | "
            f"{s['recs_p50_ms']:.1f} / {s['recs_p99_ms']:.1f} | {s['recs_per_s']:,.0f} | {s['used_memory'] / 2**20:,.1f} | {s['bytes_per_user']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot_scale(scale: list[dict[str, Any]], path: Path) -> None:
    """Draw ingest events/s, recommendations latency (ms) and Redis MiB against the simulated event count into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [s["events"] for s in scale]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    axes[0].plot(xs, [s["ingest_events_per_s"] for s in scale], "o-")
    axes[0].set_title("ingest, 1 worker (events/s)")
    axes[1].plot(xs, [s["recs_p50_ms"] for s in scale], "o-", label="p50")
    axes[1].plot(xs, [s["recs_p99_ms"] for s in scale], "s-", label="p99")
    axes[1].set_title("recommendations latency (ms)")
    axes[1].legend()
    axes[2].plot(xs, [s["used_memory"] / 2**20 for s in scale], "o-")
    axes[2].set_title("Redis used_memory (MiB)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("simulated events")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- Redis Cluster beside one Redis (issue 16) ---------------------------------------------------------
# Kept apart from the measures above: the same Tansu feeds a standalone Redis and a local Redis Cluster
# (3 masters, 3 replicas) in the same run, 4 partitions each, so the two columns differ only in the state.

SCALE_PARTITIONS = 4
CLUSTER_SHARDS = 3


@dataclass(frozen=True)
class ClusterPlan:
    """How much work ``cluster_vs_standalone`` does: ``full`` for the published figures, ``quick`` to check it."""

    events: int
    workers: tuple[int, ...]
    api_seconds: float
    dataset: str = "amazon-beauty"

    @classmethod
    def full(cls) -> ClusterPlan:
        """The published run: 10,000 events, 1, 2 and 4 workers, 5 s of wrk per endpoint."""
        return cls(10_000, (1, 2, 4), 5.0)

    @classmethod
    def quick(cls) -> ClusterPlan:
        """A short run for tests: 2,000 events, 1 and 2 workers, 1 s of wrk."""
        return cls(2_000, (1, 2), 1.0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and every descendant still alive (from /proc; 0 if gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total


def _redis_cpu(ports: Sequence[int]) -> dict[int, float]:
    """used_cpu_user + used_cpu_sys of each Redis node (INFO cpu), by port."""
    out = {}
    for port in ports:
        with redis.Redis(host=LOOPBACK, port=port) as node:
            info = node.info("cpu")
        out[port] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return out


def _masters(client: Any, ports: Sequence[int]) -> list[int]:
    """The ports of the nodes that serve slots (one port for a standalone Redis)."""
    if len(ports) == 1:
        return list(ports)
    out = []
    for port in ports:
        with redis.Redis(host=LOOPBACK, port=port) as node:
            if node.info("replication")["role"] == "master":
                out.append(port)
    return out


def _logs_say(paths: Sequence[Path], text: str) -> bool:
    return all(p.exists() and text in p.read_text(errors="replace") for p in paths)


def scaled_drain(
    stack: Stack,
    target: dict[str, Any],
    workers: int,
    catalog: Sequence[CatalogItem],
    events: Sequence[Event],
) -> dict[str, Any]:
    """A backlog on 4 partitions, then ``workers`` started together; events/s once every worker has joined.

    Measured from the moment the last worker reports ready (its group's last rebalance is done) to the
    last fold, so neither start-up nor rebalancing is in the figure. Also the CPU seconds the workers and
    each Redis master spent on that window: events per CPU-second is what one worker or one shard folds
    with a core of its own, which this shared 2-core machine cannot give each of them.
    """
    from streamrec.topics import Topics, ensure_topics

    client = target["client"]
    client.flushall()
    tag = f"c{uuid.uuid4().hex[:8]}"
    topics = Topics(tag)
    ensure_topics(stack.bootstrap, topics, SCALE_PARTITIONS)
    with _publisher(stack.bootstrap, tag) as pub:
        for item in catalog:
            pub.publish_item(item)
        for e in events:
            pub.publish_raw(topics.events, e.user_id.encode(), e.to_json())
    env = stack.env(tag, **target["env"], STREAMREC_LOG_LEVEL="INFO")
    procs = [stack.start(f"worker-{tag}-{n}", env, "worker") for n in range(workers)]
    logs = [stack.root / f"worker-{tag}-{n}.log" for n in range(workers)]
    applied = lambda: applied_events(client, Keys(PREFIX))  # noqa: E731
    _wait(lambda: _logs_say(logs, "Worker ready"), 120, f"{workers} worker(s) to join")
    time.sleep(1.0)  # the last rebalance's recovery
    first, started = applied(), time.monotonic()
    masters = _masters(client, target["ports"])
    redis_before = _redis_cpu(masters)
    workers_before = [cpu_seconds(p.proc.pid) for p in procs]
    _wait(lambda: applied() >= len(events), 900, "the backlog to be folded", interval=0.01)
    took = time.monotonic() - started
    worker_cpu = sum(cpu_seconds(p.proc.pid) for p in procs) - sum(workers_before)
    redis_after = _redis_cpu(masters)
    for p in procs:
        stack.stop(p)
    folded = len(events) - first
    shard_cpu = {port: redis_after[port] - redis_before[port] for port in masters}
    return {
        "workers": workers,
        "events_measured": folded,
        "events_per_s": folded / took,
        "events_per_worker_cpu_s": folded / max(worker_cpu, 1e-6),
        "redis_cpu_s_by_master": shard_cpu,
        "events_per_busiest_shard_cpu_s": folded / max(max(shard_cpu.values()), 1e-6),
        "events_per_shard_cpu_s": per_shard_rate(folded, shard_cpu),
    }


def per_shard_rate(events: int, shard_cpu: dict[Any, float]) -> float:
    """Events/s one master takes per core of its own: events ÷ (masters × the busiest master's CPU
    seconds). With M masters the state takes M times this before its busiest master saturates a core."""
    return events / max(len(shard_cpu) * max(shard_cpu.values()), 1e-6)


def scaled_api(
    stack: Stack, target: dict[str, Any], events: Sequence[Event], seconds: float
) -> dict[str, Any]:
    """The API (gunicorn, 2 workers) on ``target``'s state under wrk: latency, req/s, and req/s per API
    CPU-second (the rate one API core gives when it has the core to itself)."""
    port = free_port()
    env = stack.env(
        "api",
        **target["env"],
        STREAMREC_API_PORT=str(port),
        STREAMREC_API_HOST=LOOPBACK,
        STREAMREC_API_WORKERS="2",
    )
    proc = stack.start(f"api-{target['name']}", env, "api")
    stack.api_url = f"http://{LOOPBACK}:{port}"
    _wait(lambda: _answers(f"{stack.api_url}/healthz", proc), 60, "the API")
    saved, stack.client = stack.client, target["client"]
    try:
        paths = api_paths(stack, events)
    finally:
        stack.client = saved
    out = {}
    for name in ("recommendations", "similar", "popular"):
        before = cpu_seconds(proc.proc.pid)
        figures = wrk(paths[name], stack.api_url, seconds, stack.root, connections=8, threads=1)
        used = cpu_seconds(proc.proc.pid) - before
        figures["requests_per_api_cpu_s"] = figures["requests_per_s"] * seconds / max(used, 1e-6)
        out[name] = figures
    stack.stop(proc)
    return out


def _answers(url: str, proc: ManagedProcess) -> bool:
    if not proc.alive():
        raise ServiceError("the API exited; see its log")
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def cluster_vs_standalone(plan: ClusterPlan, out_dir: Path) -> dict[str, Any]:
    """Ingest with each of ``plan.workers`` workers, API latency and memory per user/item/event, on one
    Redis and on a 3-master Redis Cluster in the same run; writes bench-cluster.json and bench-cluster.md
    into ``out_dir`` and returns the figures. Raises ``ServiceError`` if a service fails."""
    from streamrec.devtools.localstack import free_cluster_ports, start_cluster

    out_dir.mkdir(parents=True, exist_ok=True)
    load_before = list(os.getloadavg())
    say(f"loading {plan.dataset} ({plan.events:,} events) ...")
    catalog, events = dataset_records(plan.dataset, plan.events)
    started = time.monotonic()
    results: dict[str, Any] = {}
    with local_stack() as stack, ExitStack() as more:
        say("starting a Redis Cluster (3 masters, 3 replicas) beside the standalone Redis")
        cluster = start_cluster(
            free_cluster_ports(2 * CLUSTER_SHARDS), stack.root / "cluster", 1, stack.root, appendonly=False
        )
        more.callback(cluster.stop)
        cluster_client = redis_client(cluster.url, cluster=True)
        more.callback(cluster_client.close)
        targets = [
            {"name": "standalone", "client": stack.client, "ports": [stack.redis_server.port], "env": {}},
            {
                "name": "cluster",
                "client": cluster_client,
                "ports": cluster.ports,
                "env": {"STREAMREC_REDIS_URL": cluster.url, "STREAMREC_REDIS_CLUSTER": "1"},
            },
        ]
        for target in targets:
            target["env"] = {**target["env"], "STREAMREC_PARTITIONS": str(SCALE_PARTITIONS)}
            name = target["name"]
            res: dict[str, Any] = {"ingest": []}
            for workers in plan.workers:
                say(f"{name}: backlog drain, {workers} worker(s), {SCALE_PARTITIONS} partitions")
                drained = scaled_drain(stack, target, workers, catalog, events)
                say(f"  {drained['events_per_s']:,.0f} events/s")
                res["ingest"].append(drained)
            say(f"{name}: API under wrk")
            if name == "standalone":  # the same keys and sizes on a cluster; memory() reads one server's INFO
                res["memory"] = memory(stack)
            res["api"] = scaled_api(stack, target, events, plan.api_seconds)
            results[name] = res
    figures = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "plan": plan.__dict__ | {"workers": list(plan.workers), "partitions": SCALE_PARTITIONS},
        "shards": {"standalone": 1, "cluster": CLUSTER_SHARDS},
        "results": results,
        "seconds": round(time.monotonic() - started, 1),
        "load_average_before_after": [load_before, list(os.getloadavg())],
    }
    write_cluster_report(figures, out_dir)
    return figures


def write_cluster_report(figures: dict[str, Any], out_dir: Path) -> None:
    """bench-cluster.json (the figures) and bench-cluster.md (their tables and the capacity model's)."""
    (out_dir / "bench-cluster.json").write_text(json.dumps(figures, indent=2) + "\n")
    (out_dir / "bench-cluster.md").write_text(
        cluster_markdown(figures)
        + "\nThe capacity model on these figures (docs/SCALING.md):\n\n"
        + capacity_table(capacity_inputs(figures))
    )


def cluster_markdown(f: dict[str, Any]) -> str:
    """The cluster-beside-standalone figures as Markdown tables (ingest, API, memory)."""
    res = f["results"]
    names = list(res)
    lines = [
        f"{f['plan']['events']:,} {f['plan']['dataset']} events from a backlog on {f['plan']['partitions']} "
        f"partitions, one run, on this {f['machine']['cpus']}-core machine (load average before "
        f"{f['load_average_before_after'][0][0]:.1f}); standalone = one Redis, cluster = 3 masters + 3 replicas.",
        "",
        "| state | workers | events/s | events per worker CPU-second | events per master CPU-second "
        "(÷ masters × busiest master's CPU) |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        for r in res[name]["ingest"]:
            lines.append(
                f"| {name} | {r['workers']} | {r['events_per_s']:,.0f} | {r['events_per_worker_cpu_s']:,.0f} | "
                f"{per_shard_rate(r['events_measured'], r['redis_cpu_s_by_master']):,.0f} |"
            )
    lines += [
        "",
        "| state | API path (gunicorn, 2 workers, wrk 8 connections) | p50 ms | p99 ms | req/s | req per API CPU-second |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        for path, a in res[name]["api"].items():
            lines.append(
                f"| {name} | {path} | {a['p50_ms']:.1f} | {a['p99_ms']:.1f} | {a['requests_per_s']:,.0f} | "
                f"{a['requests_per_api_cpu_s']:,.0f} |"
            )
    lines += ["", "| state | users | items | B/user | B/item | dedupe B/event |", "|---|---|---|---|---|---|"]
    for name in [n for n in names if "memory" in res[n]]:
        m = res[name]["memory"]
        lines.append(
            f"| {name} | {m['users']:,} | {m['items']:,} | {m['bytes_per_user']:,.0f} | {m['bytes_per_item']:,.0f} | "
            f"{m['dedupe_bytes_per_event']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


# --- The capacity model of docs/SCALING.md -------------------------------------------------------------

HEADROOM = 0.5  # plan each process to half its measured ceiling: peaks, rebalances, catch-up after failover
SHARD_DATA_BYTES = 25 * 2**30  # data per Redis master: a 64 GiB machine keeps room for the fork of a rewrite
MIN_CLUSTER_MASTERS = 3  # a Redis Cluster needs a majority of masters to fail a master over


@dataclass(frozen=True)
class CapacityInputs:
    """Measured per-unit figures (``streamrec bench --redis-cluster``) the capacity model scales.

    Rates are per CPU-second of one process (a worker, a Redis master, an API process), i.e. what one of
    them does with a core to itself, for one Redis (``standalone_*``: one script per batch) and for a
    cluster (one script per slot and stage); bytes are Redis memory per unit (the same keys on both).
    """

    bytes_per_user: float
    bytes_per_item: float
    dedupe_bytes_per_event: float
    events_per_worker_cpu_s: float
    events_per_shard_cpu_s: float
    requests_per_api_cpu_s: float
    standalone_events_per_worker_cpu_s: float
    standalone_events_per_shard_cpu_s: float
    standalone_requests_per_api_cpu_s: float
    dedupe_window_s: int = 900
    requests_per_event: float = 1.0  # one recommendations answer per event a shop publishes


def capacity(inputs: CapacityInputs, users: int, items: int, events_per_s: float) -> dict[str, Any]:
    """Partitions, workers, Redis masters and API processes for one case, and what sets the masters.

    Memory = users × B/user + items × B/item + events/s × dedupe window × B/event. One Redis (with a
    replica) while memory fits one master (25 GiB) and the events/s are at most half its measured rate per
    core; else a cluster of the larger of memory / 25 GiB and events/s / (half the rate one master takes
    per core), at least 3. Workers = events/s / (half a worker's rate in that mode); partitions = the power
    of two at least twice the workers (room to double them without re-partitioning), at least 4; API
    processes = requests/s / (half an API process's rate in that mode).
    """
    import math

    memory_bytes = (
        users * inputs.bytes_per_user
        + items * inputs.bytes_per_item
        + events_per_s * inputs.dedupe_window_s * inputs.dedupe_bytes_per_event
    )
    by_memory = math.ceil(memory_bytes / SHARD_DATA_BYTES)
    one = by_memory <= 1 and events_per_s <= inputs.standalone_events_per_shard_cpu_s * HEADROOM
    if one:
        by_cpu, masters, limit = 1, 1, "fits one Redis"
        worker_rate, api_rate = (
            inputs.standalone_events_per_worker_cpu_s,
            inputs.standalone_requests_per_api_cpu_s,
        )
    else:
        by_cpu = math.ceil(events_per_s / (inputs.events_per_shard_cpu_s * HEADROOM))
        masters = max(by_memory, by_cpu, MIN_CLUSTER_MASTERS)
        limit = "memory" if by_memory >= by_cpu else "Redis CPU"
        worker_rate, api_rate = inputs.events_per_worker_cpu_s, inputs.requests_per_api_cpu_s
    workers = math.ceil(events_per_s / (worker_rate * HEADROOM))
    partitions = max(4, 2 ** math.ceil(math.log2(2 * workers)))
    api = math.ceil(events_per_s * inputs.requests_per_event / (api_rate * HEADROOM))
    return {
        "users": users,
        "items": items,
        "events_per_s": events_per_s,
        "memory_gib": memory_bytes / 2**30,
        "cluster": not one,
        "masters": masters,
        "masters_by_memory": by_memory,
        "masters_by_cpu": by_cpu,
        "limit": limit,
        "workers": workers,
        "partitions": partitions,
        "api_processes": api,
    }


CASES_USERS = (1_000_000, 10_000_000, 100_000_000)
CASES_ITEMS = (100_000, 1_000_000)
CASES_RATES = (1_000, 10_000, 100_000)


def capacity_inputs(figures: dict[str, Any]) -> CapacityInputs:
    """The model's inputs from ``cluster_vs_standalone``'s figures: bytes from the standalone Redis (the
    same keys on a cluster), each mode's rates from its slowest run (to stay on the safe side)."""
    res = figures["results"]
    mem = res["standalone"]["memory"]

    def rates(name: str) -> tuple[float, float, float]:
        runs = res[name]["ingest"]
        return (
            min(r["events_per_worker_cpu_s"] for r in runs),
            min(per_shard_rate(r["events_measured"], r["redis_cpu_s_by_master"]) for r in runs),
            res[name]["api"]["recommendations"]["requests_per_api_cpu_s"],
        )

    worker, shard, api = rates("cluster")
    one_worker, one_shard, one_api = rates("standalone")
    return CapacityInputs(
        bytes_per_user=mem["bytes_per_user"],
        bytes_per_item=mem["bytes_per_item"],
        dedupe_bytes_per_event=mem["dedupe_bytes_per_event"],
        events_per_worker_cpu_s=worker,
        events_per_shard_cpu_s=shard,
        requests_per_api_cpu_s=api,
        standalone_events_per_worker_cpu_s=one_worker,
        standalone_events_per_shard_cpu_s=one_shard,
        standalone_requests_per_api_cpu_s=one_api,
    )


def capacity_table(inputs: CapacityInputs) -> str:
    """Every case of docs/SCALING.md (users × items × events/s) as a Markdown table."""
    lines = [
        "| users | items | events/s | Redis data GiB | Redis masters (by memory / by CPU) | workers | partitions | API processes | sets the masters |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for users in CASES_USERS:
        for items in CASES_ITEMS:
            for rate in CASES_RATES:
                c = capacity(inputs, users, items, rate)
                lines.append(
                    f"| {users:,} | {items:,} | {rate:,} | {c['memory_gib']:,.0f} | {c['masters']} "
                    f"({c['masters_by_memory']} / {c['masters_by_cpu']}) | {c['workers']} | {c['partitions']} | "
                    f"{c['api_processes']} | {c['limit']} |"
                )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ serving: issue 15's measurement

SERVING_USERS = 3000
SERVING_ORDER = ("recommendations", "trivial (/healthz)", "similar", "popular", "trending")
# the endpoints whose answers an API process keeps (personal and similar items): warmed up together, so
# that each is measured in its steady state, not the other's cold start
WARMED = ("recommendations", "similar")


@dataclass(frozen=True)
class Server:
    """One way of serving the API: gunicorn's worker class, workers, threads, and the cache's staleness
    (by default the API's own default: sync, 2 workers)."""

    worker_class: str = "sync"
    workers: int = 2
    threads: int = 1
    cache_ttl_ms: int = 500
    change_feed: bool = True

    def env(self) -> dict[str, str]:
        """The STREAMREC_API_* variables that start the API with this shape."""
        return {
            "STREAMREC_API_WORKER_CLASS": self.worker_class,
            "STREAMREC_API_WORKERS": str(self.workers),
            "STREAMREC_API_THREADS": str(self.threads),
            "STREAMREC_API_CACHE_TTL_MS": str(self.cache_ttl_ms),
            "STREAMREC_API_CHANGE_FEED": "true" if self.change_feed else "false",
        }

    @property
    def label(self) -> str:
        """The server shape as the tables print it, e.g. 'gthread, 2 workers × 4 threads, cache 500 ms'."""
        threads = f" × {self.threads} threads" if self.worker_class == "gthread" else ""
        cache = f"cache {self.cache_ttl_ms} ms" if self.cache_ttl_ms else "no cache"
        feed = "" if self.change_feed else ", no change feed (the old default caches)"
        return f"{self.worker_class}, {self.workers} workers{threads}, {cache}{feed}"

    @classmethod
    def parse(cls, text: str) -> Server:
        """``gthread:2x4``, ``sync:3``, ``gthread:2x4:0`` (the third field: the cache's general bound in
        ms), ``sync:2:500:feed`` (following the change feed, the default) or ``sync:2:1000:nofeed``
        (without it: other shoppers' co-occurrence then waits for the neighbours' and answers' bounds)."""
        try:
            kind, shape, *rest = text.split(":")
            workers, _, threads = shape.partition("x")
            feed = "nofeed" not in rest
            ttl = [r for r in rest if r not in ("feed", "nofeed")]
            return cls(kind, int(workers), int(threads or 1), int(ttl[0]) if ttl else cls.cache_ttl_ms, feed)
        except ValueError:
            raise ValueError(
                f"a server is worker-class:workers[xthreads][:cache ms][:feed|nofeed], not {text!r}"
            ) from None


def beauty_shoppers(users: int) -> tuple[list[CatalogItem], list[Event]]:
    """The first ``users`` shoppers of Amazon Beauty (every review a purchase) and the items they bought."""
    from streamrec.datasets import datasets_dir, read_seq

    n_events = 0
    for n, (_, items) in enumerate(read_seq(datasets_dir() / "amazon-beauty" / "Beauty.txt")):
        if n >= users:
            break
        n_events += len(items)
    return dataset_records("amazon-beauty", n_events)


def _gunicorn_workers(arbiter: int) -> list[int]:
    path = Path(f"/proc/{arbiter}/task/{arbiter}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


# py-spy names files relative to sys.path: the project's folders and the libraries an answer goes through
_PROFILED = re.compile(
    r"\((?:.*/)?(streamrec|api|stream_processor|redis|flask|werkzeug|prometheus_client)/[^/]+\.py:\d+\)$"
)


def profile_worker(pid: int, seconds: float, out: Path) -> list[tuple[str, float, float]]:
    """py-spy samples one gunicorn worker for ``seconds`` (collapsed stacks written to ``out``): the 15
    functions with the most samples, as (function, share of samples on the stack, share as the leaf)."""
    binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    argv = [
        binary,
        "record",
        "-p",
        str(pid),
        "-d",
        str(int(seconds)),
        "-r",
        "200",
        "-f",
        "raw",
        "-o",
        str(out),
    ]
    subprocess.run(argv, capture_output=True, check=True, timeout=seconds + 60)
    inclusive: dict[str, int] = {}
    leaf: dict[str, int] = {}
    total = 0
    wanted: set[str] = set()
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = []
        for raw in stack.split(";"):
            frame = re.sub(r" \((.*/)?([^/]+):\d+\)$", r" (\2)", raw)
            frames.append(frame)
            if _PROFILED.search(raw):
                wanted.add(frame)  # the project's frames and the libraries an answer goes through
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
        leaf[frames[-1]] = leaf.get(frames[-1], 0) + n
    top = sorted((f for f in inclusive if f in wanted), key=lambda f: -inclusive[f])[:15]
    return [(f, inclusive[f] / max(total, 1), leaf.get(f, 0) / max(total, 1)) for f in top]


# answers a second per API process when each is computed (about 350/s over 2 workers under wrk)
ANSWER_RATE = 175.0


def cache_warm_up_s() -> float:
    """How long ``answer_cost`` warms its in-process cache first, in seconds: the longest staleness bound
    of the defaults (``STREAMREC_API_CACHE_ANSWERS_TTL_MS``), after which the first entries leave, as they
    do all day in a shop without a change feed (``answer_cost`` runs none)."""
    settings = Settings()
    bounds = (
        settings.api_cache_answers_ttl_ms,
        settings.api_cache_neighbours_ttl_ms,
        settings.api_cache_ttl_ms,
    )
    return max(bounds) / 1000.0


# the serving bench's passes (issue 27): cold at once after the feed, warm after a warm-up, live while
# events keep arriving for the same shoppers
SERVING_WARM_UP_S = 60.0
LIVE_RATE = 500.0
LIVE_ENDPOINTS = ("recommendations", "trivial (/healthz)")
FRESHNESS_TRIALS = 5
FRESHNESS_DEADLINE_S = 10.0  # a trial not shown by then counts as "> 10 s"


class LiveLoad:
    """Views by ``users`` of random ``items`` published at ``rate`` events/s with a plain kafka-python
    producer from a thread of this process, until the block ends (``with LiveLoad(...) as load``);
    ``sent`` and ``seconds`` give the rate reached."""

    def __init__(
        self, bootstrap: str, topic: str, users: Sequence[str], items: Sequence[str], rate: float
    ) -> None:
        from kafka import KafkaProducer

        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5)
        self.topic, self.users, self.items, self.rate = topic, list(users), list(items), rate
        self.sent = 0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-load", daemon=True)

    def _run(self) -> None:
        rng = random.Random(27)
        started = time.monotonic()
        while not self._stop.is_set():
            due = int((time.monotonic() - started) * self.rate)
            while self.sent < due:
                user = rng.choice(self.users)
                event = {
                    "event_id": f"live-{uuid.uuid4().hex}",
                    "type": "view",
                    "user_id": user,
                    "item_id": rng.choice(self.items),
                }
                self.producer.send(self.topic, key=user.encode(), value=json.dumps(event).encode())
                self.sent += 1
            time.sleep(0.002)
        self.seconds = time.monotonic() - started

    def __enter__(self) -> LiveLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.producer.flush()
        self.producer.close()

    @property
    def events_per_s(self) -> float:
        """The rate reached (events a second) once the block ended."""
        return self.sent / self.seconds if self.seconds else 0.0


def freshness_trials(stack: Stack, tag: str, own_item: str, trials: int) -> dict[str, Any]:
    """``trials`` of each of the four probes of other shoppers' actions (``devtools.freshness_probes``),
    and as many of a shopper's own view of ``own_item``: seconds from Kafka's acknowledgement until every
    read shows the change, per kind (each trial, the median and the maximum)."""
    from streamrec.devtools.freshness_probes import KINDS, Probe, ProbeTimeout

    probe = Probe(stack.api_url, stack.bootstrap, tag, deadline_s=FRESHNESS_DEADLINE_S)

    def trial(run: Callable[[], float]) -> float | None:
        try:
            return run()
        except (ProbeTimeout, requests.RequestException):
            return None  # not shown within the deadline, or the API did not answer a read in time

    def summary(seconds: list[float | None]) -> dict[str, Any]:
        known = [math.inf if x is None else x for x in seconds]
        mid, worst = median(known), max(known)
        return {
            "seconds": [None if x is None else round(x, 3) for x in seconds],
            "median_s": None if math.isinf(mid) else mid,
            "max_s": None if math.isinf(worst) else worst,
        }

    out: dict[str, Any] = {}
    try:
        for kind in KINDS:
            out[kind] = summary(
                [
                    trial(lambda k=kind, n=n: probe.run(k, f"{k}{n}-{uuid.uuid4().hex[:6]}"))
                    for n in range(trials)
                ]
            )
        out["own"] = summary(
            [trial(lambda n=n: probe.own(f"own{n}-{uuid.uuid4().hex[:6]}", own_item)) for n in range(trials)]
        )
    finally:
        probe.close()
    return out


def answer_cost(
    client: redis.Redis,
    users: Sequence[str],
    rate: float = ANSWER_RATE,
    seconds: float = 10.0,
    seed: int = 1,
    warm_up_s: float | None = None,
    cached_answers: bool = True,
) -> dict[str, Any]:
    """What one personal answer costs in one process, without HTTP: the API's ``Recommender`` with the
    API's cache (``STREAMREC_API_CACHE_*`` defaults; without whole answers unless ``cached_answers``, so
    that every answer is computed) on a clock that moves ``1 / rate`` s per answer, so the cache ages as
    it does under ``rate`` answers a second; random ``users``, ``warm_up_s`` of warm-up on that clock
    (default ``cache_warm_up_s()``), then ``seconds`` measured. Returns the median, mean and p99 (ms) of
    one answer's wall time, its CPU time (ms, the mean), Redis commands per answer (``INFO
    commandstats``, which it resets) and the cache's hit rate per kind."""
    from streamrec.api.cache import ProcessCache
    from streamrec.recommend import Recommender

    now = [0.0]
    settings = Settings() if cached_answers else Settings(api_cache_answers_ttl_ms=0)
    cache = ProcessCache.from_settings(settings, clock=lambda: now[0])
    rec = Recommender(StateReader(client, Keys(PREFIX), ScoringSettings()), ScoringSettings(), cache=cache)
    rng = random.Random(seed)
    warm_up_s = cache_warm_up_s() if warm_up_s is None else warm_up_s
    for _ in range(int(rate * warm_up_s)):
        now[0] += 1 / rate
        rec.for_user(rng.choice(users), 10)
    client.config_resetstat()
    before = cache.stats()
    took = []
    cpu = time.process_time()
    for _ in range(int(rate * seconds)):
        now[0] += 1 / rate
        started = time.perf_counter()
        rec.for_user(rng.choice(users), 10)
        took.append((time.perf_counter() - started) * 1000)
    cpu = time.process_time() - cpu
    calls = sum(v["calls"] for k, v in client.info("commandstats").items() if k != "cmdstat_config")
    after = cache.stats()
    hits = {
        kind: round(h / (h + m), 3)
        for kind in after
        if (h := after[kind]["hits"] - before[kind]["hits"])
        + (m := after[kind]["misses"] - before[kind]["misses"])
    }
    return {
        "cached_answers": cached_answers,
        "rate_per_s": rate,
        "warm_up_s": warm_up_s,
        "answers": len(took),
        "cpu_ms": round(cpu * 1000 / len(took), 2),
        "median_ms": round(statistics.median(took), 2),
        "mean_ms": round(statistics.mean(took), 2),
        "p99_ms": round(percentile(took, 99), 2),
        "redis_commands_per_answer": round(calls / len(took), 1),
        "cache_hit_rate": hits,
    }


PLACED = "bench-every-rule"  # the placement the serving bench measures answers with


def every_rule(catalog: Sequence[CatalogItem]) -> dict[str, Any]:
    """A placement document that uses every rule on ``catalog`` (Beauty has categories, no prices): a
    filter that leaves out its rarest category, a boost of its most common one, a promotion of its second,
    a pin of its first item and a diversity cap of 4 per category."""
    counts: dict[str, int] = {}
    for item in catalog:
        if item.category:
            counts[item.category] = counts.get(item.category, 0) + 1
    ranked = sorted(counts, key=lambda c: (-counts[c], c)) or ["none"]
    return {
        "filter": {"category": {"$nin": [ranked[-1]]}},
        "boost": [{"if": {"category": ranked[0]}, "multiply": 1.5}],
        "pin": [{"item_id": catalog[0].item_id, "position": 1}],
        "promote": {"if": {"category": ranked[1 % len(ranked)]}, "share": 0.2},
        "diversity": {"field": "category", "max_per_value": 4},
    }


def placement_pass(
    stack: Stack, paths: dict[str, list[str]], seconds: float, catalog: Sequence[CatalogItem]
) -> dict[str, dict[str, Any]]:
    """Issue 28's speed check: personal answers and popular, each without and then with a placement that
    uses every rule (``every_rule``, stored straight into the placements' keys), back to back, after the
    placed paths were warmed as long as the plain ones had been (``SERVING_WARM_UP_S`` on personal
    answers: each shopper's placed answer is an answer of its own)."""
    from streamrec.placement_store import PlacementStore
    from streamrec.placements import parse_placement

    PlacementStore(stack.client, Keys(PREFIX)).put(parse_placement(PLACED, every_rule(catalog)))
    time.sleep(1.0)  # every API process has it within 1 s
    placed_paths = [f"{p}&placement={PLACED}" for name in ("recommendations", "popular") for p in paths[name]]
    wrk(placed_paths, stack.api_url, SERVING_WARM_UP_S, stack.root)  # warmed as the plain paths were
    out: dict[str, dict[str, Any]] = {}
    for name in ("recommendations", "popular"):
        plain = wrk(paths[name], stack.api_url, seconds, stack.root)
        placed = wrk([f"{p}&placement={PLACED}" for p in paths[name]], stack.api_url, seconds, stack.root)
        out[name] = {"plain": plain, "placed": placed}
    return out


CACHE_SHOPPERS = 100_000  # distinct shoppers ``cache_memory`` answers


def cache_memory(
    client: redis.Redis, users: Sequence[str], items: Sequence[str], shoppers: int = CACHE_SHOPPERS
) -> dict[str, Any]:
    """Issue 27's memory check: what one API process's cache holds once ``shoppers`` distinct shoppers
    were answered (``users`` with state, the rest unknown to it, as a shop's first visitors are) and every
    item of ``items`` had its similar items asked for, under the default settings (the change feed's
    bounds: every kind bounded in entries). Measured with tracemalloc around a cache made for it: the bytes
    it still holds (MiB), its entries per kind, and its bounds."""
    import tracemalloc

    from streamrec.api.cache import ProcessCache
    from streamrec.recommend import Recommender

    settings = Settings()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cache = ProcessCache.from_settings(settings)
        rec = Recommender(
            StateReader(client, Keys(PREFIX), ScoringSettings()), ScoringSettings(), cache=cache
        )
        started = time.monotonic()
        for n in range(shoppers):
            rec.for_user(users[n] if n < len(users) else f"visitor-{n}", 10)
        for item in items:
            rec.similar(item, 10)
        took = time.monotonic() - started
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return {
        "shoppers": shoppers,
        "with_state": min(len(users), shoppers),
        "similar_items": len(items),
        "seconds": round(took, 1),
        "mib": round(held / 2**20, 1),
        "entries": {kind: s["entries"] for kind, s in cache.stats().items() if s["entries"]},
        "bounds": {
            "answers": settings.api_cache_answers,
            "per item kind": settings.api_cache_items,
            "lists": settings.api_cache_lists,
        },
    }


def fold_with_a_worker(
    stack: Stack, tag: str, catalog: Sequence[CatalogItem], events: Sequence[Event]
) -> ManagedProcess:
    """Create ``tag``'s topics (2 partitions), start a worker, publish ``catalog`` and ``events`` with a
    plain kafka-python producer and wait until every event is folded; returns the worker (still running).
    Raises ``ServiceError`` when they are not folded within 10 minutes."""
    from kafka import KafkaProducer

    from streamrec.topics import Topics, ensure_topics

    topics = Topics(tag)
    ensure_topics(stack.bootstrap, topics, 2)
    worker = stack.start(f"worker-{tag}", stack.env(tag), "worker")
    producer = KafkaProducer(bootstrap_servers=stack.bootstrap, acks="all", linger_ms=5)
    for item in catalog:
        producer.send(topics.items, key=item.item_id.encode(), value=item.to_json())
    for e in events:
        producer.send(topics.events, key=e.user_id.encode(), value=e.to_json())
    producer.flush()
    producer.close()
    _wait(lambda: stack.applied() >= len(events), 600, f"{len(events):,} events to be folded", 0.1)
    say(f"folded {len(events):,} events")
    return worker


def serving(
    out_dir: Path,
    servers: Sequence[Server] = (Server(),),
    seconds: float = 10.0,
    users: int = SERVING_USERS,
    profile: bool = False,
    warm_up_s: float | None = None,
) -> dict[str, Any]:
    """Issues 15 and 27's measurement of serving: speed cold, warm and live, and freshness.

    ``users`` Amazon Beauty shoppers are published with a plain kafka-python producer and folded by a real
    worker; then, for each server, three passes of wrk (2 threads, 16 connections, ``seconds`` per
    endpoint), each on recommendations of random shoppers and on /healthz measured in the same conditions:

    - cold: at once after the API started, nothing warmed;
    - warm: after ``warm_up_s`` (default ``SERVING_WARM_UP_S``) of wrk on recommendations and similar items
      together (``WARMED``), not counted; similar items, popular and trending are measured here too;
    - live: while ``LIVE_RATE`` views a second arrive for the same shoppers (``LiveLoad``).

    With the live load still on, ``FRESHNESS_TRIALS`` trials of each freshness probe: the four kinds of
    other shoppers' actions and a shopper's own view (``freshness_trials``). Writes serving.json and
    serving.md into ``out_dir``."""
    from streamrec.topics import Topics

    warm_up_s = SERVING_WARM_UP_S if warm_up_s is None else warm_up_s

    out_dir.mkdir(parents=True, exist_ok=True)
    load_before = list(os.getloadavg())
    catalog, events = beauty_shoppers(users)
    shoppers = len({e.user_id for e in events})
    say(f"{shoppers:,} Amazon Beauty shoppers, {len(events):,} events, {len(catalog):,} items")
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    with local_stack() as stack:
        tag = f"s{uuid.uuid4().hex[:8]}"
        topics = Topics(tag)
        worker = fold_with_a_worker(stack, tag, catalog, events)
        paths = api_paths(stack, events)
        user_ids = list(dict.fromkeys(e.user_id for e in events))
        costs = [answer_cost(stack.client, user_ids, cached_answers=c) for c in (True, False)]
        for cost in costs:
            say(
                f"one answer in process at {cost['rate_per_s']:.0f}/s"
                f"{'' if cost['cached_answers'] else ', every answer computed'}: median "
                f"{cost['median_ms']:.2f} ms, CPU {cost['cpu_ms']:.2f} ms, p99 {cost['p99_ms']:.2f} ms, "
                f"{cost['redis_commands_per_answer']:.1f} Redis commands"
            )
        item_ids = [p.split("/")[3] for p in paths["similar"]]
        own_item = item_ids[0]
        memory = cache_memory(stack.client, user_ids, item_ids)
        say(
            f"one API process's cache after {memory['shoppers']:,} shoppers and {memory['similar_items']:,} "
            f"items' similar: {memory['mib']} MiB, entries {memory['entries']}"
        )
        for server in servers:
            api = start_api(stack, tag, **server.env())
            passes: dict[str, Any] = {}
            say(f"{server.label}: cold, at once, nothing warmed")
            passes["cold"] = {
                name: wrk(paths[name], stack.api_url, seconds, stack.root) for name in LIVE_ENDPOINTS
            }
            say(f"{server.label}: warm-up on {' and '.join(WARMED)} ({warm_up_s:.0f} s, not counted)")
            wrk([p for name in WARMED for p in paths[name]], stack.api_url, warm_up_s, stack.root)
            figures: dict[str, Any] = {}
            for name in SERVING_ORDER:
                if profile and name == "recommendations":
                    pid = _gunicorn_workers(api.proc.pid)[0]
                    with ThreadPoolExecutor(1) as pool:
                        spy = pool.submit(profile_worker, pid, seconds - 2, out_dir / "serving-profile.txt")
                        figures[name] = wrk(paths[name], stack.api_url, seconds, stack.root)
                        figures["profile"] = spy.result()
                else:
                    figures[name] = wrk(paths[name], stack.api_url, seconds, stack.root)
                f = figures[name]
                say(
                    f"  {name}: {f['requests_per_s']:,.0f} req/s, p50 {f['p50_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms"
                )
            passes["warm"] = {name: figures[name] for name in LIVE_ENDPOINTS}
            placed = placement_pass(stack, paths, seconds, catalog)
            for name, pair in placed.items():
                say(
                    f"  {name} with a placement using every rule: {pair['placed']['requests_per_s']:,.0f} "
                    f"req/s, p99 {pair['placed']['p99_ms']:.1f} ms (without: "
                    f"{pair['plain']['requests_per_s']:,.0f} req/s, p99 {pair['plain']['p99_ms']:.1f} ms)"
                )
            say(f"{server.label}: live, while {LIVE_RATE:.0f} events/s arrive for the same shoppers")
            with LiveLoad(stack.bootstrap, topics.events, user_ids, item_ids, LIVE_RATE) as load:
                passes["live"] = {
                    name: wrk(paths[name], stack.api_url, seconds, stack.root) for name in LIVE_ENDPOINTS
                }
                say(f"{server.label}: freshness, {FRESHNESS_TRIALS} trials of each kind, the live load on")
                fresh = freshness_trials(stack, tag, own_item, FRESHNESS_TRIALS)
            passes["live"]["events_per_s"] = load.events_per_s
            for name, p in passes.items():
                r = p["recommendations"]
                say(f"  {name}: recommendations {r['requests_per_s']:,.0f} req/s, p99 {r['p99_ms']:.1f} ms")
            for kind, f in fresh.items():
                say(f"  freshness {kind}: median {_seconds(f['median_s'])}, max {_seconds(f['max_s'])}")
            stack.stop(api)
            results.append(
                {
                    "server": server.__dict__,
                    "label": server.label,
                    "api": figures,
                    "passes": passes,
                    "placements": placed,
                    "freshness": fresh,
                }
            )
        stack.stop(worker)
    report = {
        "shoppers": shoppers,
        "events": len(events),
        "items": len(catalog),
        "wrk": {
            "threads": 2,
            "connections": 16,
            "seconds": seconds,
            "warm_up_s": warm_up_s,
            "warm_up_on": list(WARMED),
        },
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "load_average_before_after": [load_before, list(os.getloadavg())],
        "seconds": round(time.monotonic() - started, 1),
        "answer_cost": costs[0],
        "answer_cost_computed": costs[1],
        "cache_memory": memory,
        "results": results,
    }
    (out_dir / "serving.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "serving.md").write_text(serving_markdown(report))
    return report


def _seconds(value: float | None) -> str:
    """Seconds as the freshness tables print them; None: not shown within the probes' deadline."""
    return f"> {FRESHNESS_DEADLINE_S:g} s" if value is None else f"{value:.3f} s"


def serving_markdown(report: dict[str, Any]) -> str:
    """One table row per server and endpoint, with issue 15's targets checked on recommendations."""
    lines = [
        f"{report['shoppers']:,} Amazon Beauty shoppers ({report['events']:,} events) through a kafka-python "
        f"producer and a real worker; wrk {report['wrk']['threads']} threads, {report['wrk']['connections']} "
        f"connections, {report['wrk']['seconds']:.0f} s per endpoint after "
        f"{report['wrk'].get('warm_up_s', 2):.0f} s of warm-up on "
        f"{' and '.join(report['wrk'].get('warm_up_on', ['recommendations']))}; load average before/after "
        + " / ".join(f"{a[0]:.1f}" for a in report["load_average_before_after"])
        + f" on {report['machine']['cpus']} cores.",
        "",
        "| server | endpoint | req/s | p50 | p99 | non-2xx + errors | share of /healthz | targets |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        trivial = r["api"]["trivial (/healthz)"]["requests_per_s"]
        for name in SERVING_ORDER:
            a = r["api"][name]
            share = a["requests_per_s"] / trivial if trivial else float("nan")
            target = ""
            if name == "recommendations":
                met = a["p99_ms"] <= TARGETS["recs_p99_ms"] and share >= TARGETS["recs_share_of_trivial"]
                met = met and a["errors"] == 0
                target = "p99 ≤ 20 ms, ≥ 50 %, 0 non-2xx: " + ("met" if met else "**missed**")
            lines.append(
                f"| {r['label']} | {name} | {a['requests_per_s']:,.0f} | {a['p50_ms']:.1f} ms | "
                f"{a['p99_ms']:.1f} ms | {a['errors']:.0f} | {share:.2f} | {target} |"
            )
    lines += [
        "",
        "Recommendations in three passes (each against /healthz in the same pass; targets: p99 ≤ 20 ms, "
        "≥ 0.5 of /healthz, 0 non-2xx):",
        "",
        "| server | pass | req/s | p50 | p99 | non-2xx + errors | share of /healthz | /healthz req/s | targets |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        for name, p in r.get("passes", {}).items():
            a, h = p["recommendations"], p["trivial (/healthz)"]
            share = a["requests_per_s"] / h["requests_per_s"] if h["requests_per_s"] else float("nan")
            met = a["p99_ms"] <= TARGETS["recs_p99_ms"] and share >= TARGETS["recs_share_of_trivial"]
            met = met and a["errors"] == 0
            label = f"{name} ({p['events_per_s']:.0f} events/s)" if "events_per_s" in p else name
            lines.append(
                f"| {r['label']} | {label} | {a['requests_per_s']:,.0f} | {a['p50_ms']:.1f} ms | "
                f"{a['p99_ms']:.1f} ms | {a['errors']:.0f} | {share:.2f} | {h['requests_per_s']:,.0f} | "
                + ("met" if met else "**missed**")
                + " |"
            )
    for r in report["results"]:
        if r.get("placements"):
            lines += [
                "",
                f"Placements ({r['label']}, warm): each endpoint without and then with a placement that uses "
                "every rule (filter, boost, pin, promote, diversity), back to back; targets: ≥ 0.8 of the "
                "req/s and p99 ≤ 1.25× without.",
                "",
                "| endpoint | req/s without | with | ratio | p99 without | with | ratio | non-2xx with | targets |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for name, pair in r["placements"].items():
                a, b = pair["plain"], pair["placed"]
                speed = b["requests_per_s"] / a["requests_per_s"] if a["requests_per_s"] else float("nan")
                tail = b["p99_ms"] / a["p99_ms"] if a["p99_ms"] else float("nan")
                met = speed >= 0.8 and tail <= 1.25 and b["errors"] == 0
                lines.append(
                    f"| {name} | {a['requests_per_s']:,.0f} | {b['requests_per_s']:,.0f} | {speed:.2f} | "
                    f"{a['p99_ms']:.1f} ms | {b['p99_ms']:.1f} ms | {tail:.2f} | {b['errors']:.0f} | "
                    + ("met" if met else "**missed**")
                    + " |"
                )
    for r in report["results"]:
        if r.get("freshness"):
            lines += [
                "",
                f"Freshness ({r['label']}, during the live load): seconds from Kafka's acknowledgement until "
                "every read shows the change, 4 reads in a row; each answer read once before the change.",
                "",
                "| what changed | trials (s) | median | max | contract |",
                "|---|---|---|---|---|",
            ]
            names = {
                "similar": "3 shoppers view D then E → E in similar items of D",
                "personal": "3 shoppers view D then F → F for a shopper who viewed D",
                "popular": "30 shoppers view H → H in popular and trending of its category",
                "stock": "G sold out → gone from popular, trending, similar, personal",
                "own": "a shopper's own view → their answer turns personal",
            }
            for kind, f in r["freshness"].items():
                bound = 0.25 if kind == "own" else 1.0
                ok = "met" if f["max_s"] is not None and f["max_s"] <= bound else "**missed**"
                trials = ", ".join(
                    f"> {FRESHNESS_DEADLINE_S:g}" if x is None else f"{x:.2f}" for x in f["seconds"]
                )
                lines.append(
                    f"| {names.get(kind, kind)} | {trials} | {_seconds(f['median_s'])} | "
                    f"{_seconds(f['max_s'])} | ≤ {bound:g} s: {ok} |"
                )
    if report.get("cache_memory"):
        m = report["cache_memory"]
        entries = ", ".join(f"{kind} {n:,}" for kind, n in m["entries"].items())
        lines += [
            "",
            f"One API process's cache (default settings) after {m['shoppers']:,} distinct shoppers "
            f"({m['with_state']:,} with state, the rest new to it) and similar items of {m['similar_items']:,} "
            f"items: **{m['mib']} MiB** (tracemalloc); entries: {entries}; bounds: "
            f"{m['bounds']['answers']:,} answers, {m['bounds']['per item kind']:,} per item kind, "
            f"{m['bounds']['lists']:,} lists.",
        ]
    for cost in filter(None, (report.get("answer_cost"), report.get("answer_cost_computed"))):
        how = "and cache" if cost.get("cached_answers", True) else "and cache, without cached answers"
        lines += [
            "",
            f"One personal answer in one process, without HTTP (the API's Recommender {how}, the cache "
            f"ageing as under {cost['rate_per_s']:.0f} answers/s, {cost['answers']:,} random shoppers): "
            f"median {cost['median_ms']:.2f} ms, mean {cost['mean_ms']:.2f} ms, p99 {cost['p99_ms']:.2f} ms, "
            f"CPU {cost.get('cpu_ms', float('nan')):.2f} ms, "
            f"{cost['redis_commands_per_answer']:.1f} Redis commands per answer; cache hit rates "
            + ", ".join(f"{k} {v:.0%}" for k, v in cost["cache_hit_rate"].items())
            + ".",
        ]
    for r in report["results"]:
        if r["api"].get("profile"):
            lines += ["", f"py-spy, one gunicorn worker under recommendations ({r['label']}):", ""]
            lines += ["| function | on the stack | leaf |", "|---|---|---|"]
            lines += [f"| `{f}` | {inc:.0%} | {own:.0%} |" for f, inc, own in r["api"]["profile"]]
    return "\n".join(lines) + "\n"
