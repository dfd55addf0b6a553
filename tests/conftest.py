"""Shared fixtures: a real Tansu broker and a real Redis server on free loopback ports, and a per-test
namespace (topic prefix, Redis prefix, consumer group) so tests never see each other's data."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from streamrec.devtools.localstack import ManagedProcess, free_port, spawn, start_broker, start_redis
from streamrec.keys import Keys
from streamrec.settings import Settings

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


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


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


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


@dataclass
class Namespace:
    """One test's slice of the shared services, and the programs it started."""

    settings: Settings
    env: dict[str, str]
    keys: Keys
    redis: redis.Redis
    log_dir: Path
    procs: list[ManagedProcess] = field(default_factory=list)

    def start(self, name: str, *args: str) -> ManagedProcess:
        """Run ``streamrec <args>`` as a child process with this namespace's environment."""
        proc = spawn(
            name, [sys.executable, "-m", "streamrec.cli", *args], self.log_dir / f"{name}.log", self.env
        )
        self.procs.append(proc)
        return proc


@pytest.fixture
def namespace(
    broker: ManagedProcess,
    redis_server: ManagedProcess,
    redis_client: redis.Redis,
    tmp_path: Path,
    artifacts: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Namespace]:
    tag = f"t{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "STREAMREC_KAFKA_BOOTSTRAP": f"127.0.0.1:{broker.port}",
        "STREAMREC_REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0",
        "STREAMREC_TOPIC_PREFIX": tag,
        "STREAMREC_REDIS_PREFIX": tag,
        "STREAMREC_WORKER_GROUP": f"group-{tag}",
        "STREAMREC_WORKER_DATA_DIR": str(tmp_path / "worker"),
        "STREAMREC_PARTITIONS": "2",
        "STREAMREC_API_PORT": str(free_port()),
        "STREAMREC_API_WORKERS": "1",
    }
    settings = Settings(
        **{k.removeprefix("STREAMREC_").lower(): v for k, v in env.items() if k.startswith("STREAMREC_")}
    )
    log_dir = artifacts / request.node.name
    log_dir.mkdir(parents=True, exist_ok=True)
    ns = Namespace(settings, env, Keys(tag), redis_client, log_dir)
    yield ns
    for proc in reversed(ns.procs):
        proc.stop()
