"""Shared fixtures: a real Tansu broker, a real Redis server and a real Redis Cluster (3 masters, 3
replicas) on free loopback ports, a per-test namespace (topic prefix, Redis prefix, consumer group) so
tests never see each other's data, and a per-test tag in the environment by which every process a test
started is found and stopped after it, passed or failed."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from streamrec.datasets import datasets_dir
from streamrec.devtools.localstack import (
    LocalCluster,
    ManagedProcess,
    free_cluster_ports,
    free_port,
    spawn,
    start_broker,
    start_cluster,
    start_redis,
)
from streamrec.fold import redis_client as client_for
from streamrec.keys import Keys
from streamrec.settings import Settings

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def pytest_configure(config: pytest.Config) -> None:
    """A background thread of an app an earlier test made (a change feed, an exposure writer) may log
    after pytest closed that test's captured stream. logging then prints "--- Logging error ---" with a
    traceback, and formatting a traceback parses source with ``ast`` in that thread, which CPython 3.11
    does not allow while the main thread parses too (werkzeug compiling a URL rule raised "SystemError:
    AST constructor recursion depth mismatch" in a CI run). Errors of logging itself are dropped here."""
    logging.raiseExceptions = False


TEST_TAG = "STREAMREC_TEST_TAG"


def wait_until(
    condition: Callable[[], object], timeout: float, interval: float = 0.02, what: str = "condition"
) -> object:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def needs_dataset(name: str) -> pytest.MarkDecorator:
    """Skip a test that reads a shared dataset when its folder is absent (a clone without ../shared),
    saying which dataset and where it was looked for."""
    folder = datasets_dir() / name
    return pytest.mark.skipif(
        not folder.is_dir(),
        reason=f"needs the shared dataset {name}, not found at {folder} (set STREAMREC_DATASETS)",
    )


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def tagged_processes(tag: str) -> dict[int, str]:
    """Processes whose environment carries ``STREAMREC_TEST_TAG=<tag>`` (inherited from the test that
    started them, however deep, even once orphaned): pid -> command line."""
    needle = f"{TEST_TAG}={tag}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone, or not ours to read
    return found


def reap(tag: str) -> dict[int, str]:
    """SIGKILL the process group of every process carrying ``tag`` (never pytest's own group, whose
    members are killed one by one); return what was still running."""
    left = tagged_processes(tag)
    own = os.getpgrp()
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            group = os.getpgid(pid)
            if group != own:
                os.killpg(group, signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)
    return left


@pytest.fixture(autouse=True)
def stop_what_the_test_started(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[str]:
    """Tag the environment every process of this test inherits; after the test, kill what still runs.

    Session fixtures (the shared broker and Redis) start before this one, so they carry no test's tag.
    What is reaped here is a leak (a test or a program that did not stop its children), so it is logged
    in ``test-artifacts/reaped.log``.
    """
    tag = uuid.uuid4().hex
    monkeypatch.setenv(TEST_TAG, tag)
    yield tag
    left = reap(tag)
    if left:
        ARTIFACTS.mkdir(exist_ok=True)
        with open(ARTIFACTS / "reaped.log", "a", encoding="utf-8") as log:
            for pid, cmd in left.items():
                log.write(f"{request.node.nodeid}: killed {pid} {cmd}\n")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory, artifacts: Path) -> Iterator[ManagedProcess]:
    proc = start_redis(free_port(), tmp_path_factory.mktemp("redis"), artifacts / "redis.log")
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def broker(artifacts: Path) -> Iterator[ManagedProcess]:
    proc = start_broker(free_port(), artifacts / "broker.log")
    yield proc
    proc.stop()


@pytest.fixture
def redis_client(redis_server: ManagedProcess) -> Iterator[redis.Redis]:
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    yield client
    client.close()


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A fresh Redis key prefix on the session's Redis; its keys are deleted after the test."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    yield prefix
    for key in redis_client.scan_iter(match=f"{prefix}:*", count=1000):
        redis_client.delete(key)


@contextmanager
def local_cluster(
    data_dir: Path, log_dir: Path, masters: int = 3, replicas: int = 1
) -> Iterator[LocalCluster]:
    """A Redis Cluster on free loopback ports, stopped at the end."""
    cluster = start_cluster(
        free_cluster_ports(masters * (replicas + 1)), data_dir, replicas, log_dir, appendonly=False
    )
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory, artifacts: Path) -> Iterator[LocalCluster]:
    """3 masters and 3 replicas shared by the session: tests that kill nodes start their own instead."""
    log_dir = artifacts / "redis-cluster"
    log_dir.mkdir(exist_ok=True)
    with local_cluster(tmp_path_factory.mktemp("cluster"), log_dir) as cluster:
        yield cluster


@dataclass
class Namespace:
    """One test's slice of the shared services, and the programs it started."""

    settings: Settings
    env: dict[str, str]
    keys: Keys
    redis: Any  # redis.Redis, or redis.cluster.RedisCluster for a namespace on the cluster
    log_dir: Path
    procs: list[ManagedProcess] = field(default_factory=list)

    def start(self, name: str, *args: str) -> ManagedProcess:
        """Run ``streamrec <args>`` as a child process with this namespace's environment."""
        proc = spawn(
            name, [sys.executable, "-m", "streamrec.cli", *args], self.log_dir / f"{name}.log", self.env
        )
        self.procs.append(proc)
        return proc


@contextmanager
def make_namespace(
    broker: ManagedProcess,
    redis_url: str,
    client: Any,
    tmp_path: Path,
    artifacts: Path,
    request: pytest.FixtureRequest,
    **extra_env: str,
) -> Iterator[Namespace]:
    """A namespace on ``broker`` and the Redis at ``redis_url`` (``client`` talks to it); ``extra_env``
    adds or overrides ``STREAMREC_*`` settings. The programs it started are stopped at the end."""
    tag = f"t{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "STREAMREC_KAFKA_BOOTSTRAP": f"127.0.0.1:{broker.port}",
        "STREAMREC_REDIS_URL": redis_url,
        "STREAMREC_TOPIC_PREFIX": tag,
        "STREAMREC_REDIS_PREFIX": tag,
        "STREAMREC_WORKER_GROUP": f"group-{tag}",
        "STREAMREC_WORKER_DATA_DIR": str(tmp_path / "worker"),
        "STREAMREC_PARTITIONS": "2",
        "STREAMREC_API_PORT": str(free_port()),
        "STREAMREC_API_WORKERS": "1",
        **extra_env,
    }
    settings = Settings(
        **{k.removeprefix("STREAMREC_").lower(): v for k, v in env.items() if k.startswith("STREAMREC_")}
    )
    log_dir = artifacts / request.node.name
    log_dir.mkdir(parents=True, exist_ok=True)
    ns = Namespace(settings, env, Keys(tag), client, log_dir)
    try:
        yield ns
    finally:
        errors = []
        for proc in reversed(ns.procs):
            try:
                proc.stop()
            except Exception as exc:  # noqa: BLE001 - stop the others first, then report
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def namespace(
    broker: ManagedProcess,
    redis_server: ManagedProcess,
    redis_client: redis.Redis,
    tmp_path: Path,
    artifacts: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Namespace]:
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    with make_namespace(broker, url, redis_client, tmp_path, artifacts, request) as ns:
        yield ns


@pytest.fixture
def cluster_namespace(
    broker: ManagedProcess,
    redis_cluster: LocalCluster,
    tmp_path: Path,
    artifacts: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Namespace]:
    """A namespace on the session's Redis Cluster: ``STREAMREC_REDIS_CLUSTER=1``, 4 partitions, a
    ``RedisCluster`` client."""
    client = client_for(redis_cluster.url, cluster=True)
    try:
        with make_cluster_namespace(broker, redis_cluster.url, client, tmp_path, artifacts, request) as ns:
            yield ns
    finally:
        client.close()


def make_cluster_namespace(
    broker: ManagedProcess,
    url: str,
    client: Any,
    tmp_path: Path,
    artifacts: Path,
    request: pytest.FixtureRequest,
) -> AbstractContextManager[Namespace]:
    """``make_namespace`` on the Redis Cluster at ``url``: ``STREAMREC_REDIS_CLUSTER=1``, 4 partitions."""
    return make_namespace(
        broker,
        url,
        client,
        tmp_path,
        artifacts,
        request,
        STREAMREC_REDIS_CLUSTER="1",
        STREAMREC_PARTITIONS="4",
    )
