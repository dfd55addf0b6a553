"""``streamrec up --redis-cluster``: the local stack on a Redis Cluster of 3 masters and 3 replicas instead
of one Redis, on real data, and nothing left running after it."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from streamrec.devtools.localstack import ServiceError, consecutive_cluster_ports, free_port
from tests.conftest import needs_dataset

pytestmark = [pytest.mark.e2e]


def _cluster_base() -> int:
    """A port P with P..P+5 and their bus ports P+10000.. free."""
    for _ in range(200):
        base = random.randrange(20_000, 29_990)
        try:
            return consecutive_cluster_ports(base, 6)[0]
        except ServiceError:
            continue
    raise AssertionError("no six consecutive free ports for a cluster")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@needs_dataset("movielens-100k")
def test_up_on_a_local_redis_cluster_replays_and_answers(tmp_path: Path, artifacts: Path) -> None:
    base = _cluster_base()
    env = {
        **os.environ,
        "STREAMREC_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "STREAMREC_REDIS_URL": f"redis://127.0.0.1:{base}/0",
        "STREAMREC_API_PORT": str(free_port()),
        "STREAMREC_API_WORKERS": "1",
    }
    argv = ["up", "--redis-cluster", "--dataset", "movielens-100k", "--limit", "2000", "--exit-after-demo"]
    done = subprocess.run(
        [sys.executable, "-m", "streamrec.cli", *argv, "--data-dir", str(tmp_path / "stack")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = done.stdout + done.stderr
    (artifacts / "streamrec-up-cluster.txt").write_text(output)
    assert done.returncode == 0, output
    assert f"a Redis Cluster on 127.0.0.1:{base}-{base + 5} (3 masters, 3 replicas)" in output
    assert "Recommended for user" in output and "Popular now:" in output
    assert not any(_listening(p) for p in range(base, base + 6)), "a cluster node was left running"
