"""``streamrec up``: the whole local stack on loopback, then a replay of real data and live answers.

Every program runs as its own child process (exactly as in production), started in its own process
group so that Ctrl-C, SIGTERM or an error stops all of them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlparse

import redis

from streamrec.devtools.localstack import (
    LOOPBACK,
    ManagedProcess,
    ServiceError,
    consecutive_cluster_ports,
    spawn,
    start_broker,
    start_cluster,
    start_redis,
    wait_for_port,
)
from streamrec.fold import redis_client
from streamrec.keys import Keys
from streamrec.settings import Settings, keys_of
from streamrec.state import applied_events

LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}


def _loopback_port(what: str, host: str | None, port: int | None) -> int:
    if host not in LOOPBACK_NAMES or port is None:
        raise ServiceError(f"{what} must be a loopback host:port for the local stack, got {host}:{port}")
    return port


def _ensure_free(port: int, env_var: str) -> None:
    import socket

    with socket.socket() as sock:
        if sock.connect_ex((LOOPBACK, port)) == 0:
            raise ServiceError(f"port {port} is already in use; pick another with {env_var}")


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback URL we built
        return json.loads(resp.read())


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _get_json(url)
            return
        except OSError:
            time.sleep(0.2)
    raise ServiceError(f"{url} did not answer within {timeout}s")


def wait_caught_up(
    client: redis.Redis, keys: Keys, timeout: float, quiet_for: float = 3.0
) -> tuple[int, float]:
    """Wait until the workers stop applying new events; return (events applied, when the last one landed)."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        applied = applied_events(client, keys)
        if applied != last:
            last, since = applied, time.monotonic()
        elif applied > 0 and time.monotonic() - since >= quiet_for:
            break
        time.sleep(0.1)
    return max(last, 0), since


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


def run_stack(
    settings: Settings, dataset: str, limit: int | None, workers: int, data_dir: Path, exit_after_demo: bool
) -> int:
    """Start everything, replay, demo, then wait for Ctrl-C. Returns the exit code."""
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
    }
    me = [sys.executable, "-m", "streamrec.cli"]

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM stops the stack exactly as Ctrl-C does

    signal.signal(signal.SIGTERM, on_signal)
    procs: list[ManagedProcess] = []
    with ExitStack() as stack:
        stack.callback(lambda: [p.stop() for p in reversed(procs)])
        try:
            where = (
                f"a Redis Cluster on {LOOPBACK}:{cluster_ports[0]}-{cluster_ports[-1]} (3 masters, 3 replicas)"
                if cluster_ports
                else f"Redis on {LOOPBACK}:{redis_port}"
            )
            print(f"starting Tansu broker on {LOOPBACK}:{kafka_port} and {where} (logs in {data_dir})")
            procs.append(start_broker(kafka_port, data_dir / "broker.log"))
            if cluster_ports:
                procs.extend(start_cluster(cluster_ports, data_dir / "redis-cluster", 1, data_dir).nodes)
            else:
                procs.append(start_redis(redis_port, data_dir / "redis", data_dir / "redis.log"))
            from streamrec.topics import Topics, ensure_topics

            ensure_topics(
                env["STREAMREC_KAFKA_BOOTSTRAP"], Topics(settings.topic_prefix), settings.partitions
            )
            for n in range(workers):
                procs.append(spawn(f"worker-{n}", [*me, "worker"], data_dir / f"worker-{n}.log", env))
            api_proc = spawn("api", [*me, "api"], data_dir / "api.log", env)
            procs.append(api_proc)
            wait_for_port(settings.api_port, 30, api_proc.proc)
            wait_http(f"{api_url}/healthz", 30)
            print(f"API listening on {api_url}")
            client = redis_client(settings.redis_url, settings.redis_cluster)
            keys = keys_of(settings)
            if dataset != "none":
                argv = [*me, "replay", dataset, "--no-ensure-topics"] + (
                    ["--limit", str(limit)] if limit else []
                )
                started = time.monotonic()
                if subprocess.run(argv, env=env, check=False).returncode != 0:
                    print("replay failed; see the output above", file=sys.stderr)
                    return 1
                print("waiting for the workers to fold the replay into Redis ...")
                applied, done = wait_caught_up(client, keys, timeout=600)
                took = max(done - started, 1e-3)
                print(
                    f"{applied} events folded into Redis {took:.1f}s after the replay started ({applied / took:,.0f} events/s end to end)"
                )
            _demo(api_url, client, keys)
            print(
                f"\nThe API is at {api_url}. Try:\n  curl '{api_url}/v1/popular?k=5'\n  curl '{api_url}/v1/trending?k=5'"
            )
            print(f"\nThe storefront is at {api_url}/shop/ (open it in a browser)")
            if exit_after_demo:
                return 0
            print("Press Ctrl-C to stop everything.")
            while all(p.alive() for p in procs):
                time.sleep(0.5)
            dead = [p.name for p in procs if not p.alive()]
            print(f"stopping: {', '.join(dead)} exited (see its log in {data_dir})", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\nstopping every process ...")
            return 0
        except ServiceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
