"""What the crash tests share: SIGKILL a worker at random marks of a replay, and count what it turned away."""

from __future__ import annotations

import os
import random
import re
import signal
import time
from collections.abc import Callable
from typing import Any

import requests

from streamrec.devtools.localstack import ManagedProcess
from tests.conftest import wait_until

Worker = tuple[ManagedProcess, int]  # a worker process and the port of its /metrics


def dedupe_hits(port: int) -> int:
    """The worker's count of redelivered events its claims turned away (0 if it cannot be scraped)."""
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except requests.RequestException:
        return 0
    found = re.search(r"^streamrec_worker_dedupe_hits_total (\S+)$", text, re.M)
    return int(float(found.group(1))) if found else 0


def kill_at_random_marks(
    worker: Worker,
    start_worker: Callable[[], Worker],
    applied: Callable[[], int],
    n_events: int,
    kills: int,
    started: float,
    timeout: float,
) -> tuple[Worker, list[dict[str, Any]], int]:
    """SIGKILL the worker ``kills`` times, each once the pass is past a random mark (5 % to 90 % of
    ``n_events``; seed ``STREAMREC_CRASH_SEED``, else the time) and the worker has folded something itself
    (it has joined the group and is busy: Tansu can wedge a group whose member dies during a join), and
    start a new one each time. Returns the last worker, each kill (mark, events applied at the kill,
    seconds since ``started``) and the redelivered events the killed workers had turned away."""
    rng = random.Random(int(os.environ.get("STREAMREC_CRASH_SEED", time.time_ns())))
    marks = sorted(rng.sample(range(n_events // 20, n_events * 9 // 10), kills))
    done: list[dict[str, Any]] = []
    redelivered = 0
    for mark in marks:
        proc, port = worker
        floor = applied()
        wait_until(
            lambda m=mark, f=floor: applied() >= max(m, f + 1),
            timeout,
            interval=0.005,
            what=f"folding past {mark}",
        )
        redelivered += dedupe_hits(port)
        at = applied()
        proc.signal(signal.SIGKILL)
        proc.proc.wait(10)
        done.append({"mark": mark, "applied_at_kill": at, "t": round(time.monotonic() - started, 1)})
        worker = start_worker()
    return worker, done, redelivered
