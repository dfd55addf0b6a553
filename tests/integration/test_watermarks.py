"""``streamrec state offsets`` and ``forget-offsets`` against a real Redis: after a topic is recreated, its
offsets restart below the watermarks and its events are skipped as folded ones until the watermarks are
forgotten; the claims window still stops a client's retry afterwards."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from streamrec.contract import Event
from streamrec.devtools.localstack import ManagedProcess
from streamrec.event_types import EventType
from streamrec.fold import APPLIED, DUPLICATE, Source, StateWriter
from streamrec.keys import Keys
from streamrec.settings import ScoringSettings
from streamrec.watermarks import forget_offsets, read_watermarks

pytestmark = pytest.mark.redis


def view(user: str, item: str) -> Event:
    return Event(
        event_id=uuid.uuid4().hex, type=EventType.VIEW, user_id=user, item_id=item, ts=int(time.time() * 1000)
    )


@pytest.fixture
def keys(redis_client: redis.Redis) -> Iterator[Keys]:
    k = Keys(f"t{uuid.uuid4().hex[:8]}")
    yield k
    for key in redis_client.scan_iter(match=k.pattern(), count=1000):
        redis_client.delete(key)


def test_a_recreated_topic_folds_again_once_its_offsets_are_forgotten(
    redis_client: redis.Redis, redis_server: ManagedProcess, keys: Keys
) -> None:
    writer = StateWriter(redis_client, keys, ScoringSettings())
    old = [view("u", f"i{n}") for n in range(10)]
    assert writer.apply(old, [Source(0, n) for n in range(10)]).outcomes == [APPLIED] * 10
    assert writer.apply([view("v", "x")], [Source(1, 4)]).outcomes == [APPLIED]
    assert read_watermarks(redis_client, keys).offsets == {"ev:0": 9, "ev:1": 4}

    # the topic is deleted and created again: a new event arrives at offset 3 of partition 0
    fresh = view("w", "new")
    assert writer.apply([fresh], [Source(0, 3)]).outcomes == [DUPLICATE]  # taken for a folded one

    env = {
        "PATH": "/usr/bin:/bin",
        "STREAMREC_REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0",
        "STREAMREC_REDIS_PREFIX": keys.prefix,
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streamrec.cli", "state", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    shown = cli("offsets")
    assert shown.returncode == 0, shown.stderr
    assert "ev:0\t9" in shown.stdout and "ev:1\t4" in shown.stdout
    asked = cli("forget-offsets")
    assert asked.returncode == 0 and "would forget 2 watermarks" in asked.stdout and "--yes" in asked.stdout
    assert read_watermarks(redis_client, keys).offsets  # nothing happened without --yes
    done = cli("forget-offsets", "--yes")
    assert done.returncode == 0, done.stderr
    assert "forgot 2 watermarks (ev:0=9, ev:1=4)" in done.stdout
    assert read_watermarks(redis_client, keys).offsets == {}

    assert writer.apply([fresh], [Source(0, 3)]).outcomes == [APPLIED]
    # a client's retry of an event folded before is still caught by its claim, within the window
    assert writer.apply([old[0]], [Source(0, 4)]).outcomes == [DUPLICATE]
    assert read_watermarks(redis_client, keys).offsets == {"ev:0": 4}


def test_forgetting_clears_the_per_slot_watermarks_and_the_stats_marks(
    redis_client: redis.Redis, keys: Keys
) -> None:
    # what the cluster schedule leaves (written by hand here: one Redis has no slots to spread them over)
    slots = [keys.slot_watermark(s) for s in (0, 777, 16383)]
    for n, name in enumerate(slots):
        redis_client.hset(name, mapping={"u:0": 10 + n, "i:0": 5, "guard": 1})
    redis_client.hset(keys.stats("ev", 0), mapping={"applied:view": 7, "wm:0": 12})
    found = read_watermarks(redis_client, keys)
    assert found.offsets == {"u:0": 12, "i:0": 5} and sorted(found.keys) == sorted(slots)
    assert found.stats_fields == 1
    forget_offsets(redis_client, keys)
    assert not any(redis_client.exists(name) for name in slots)
    assert redis_client.hgetall(keys.stats("ev", 0)) == {b"applied:view": b"7"}  # counters stay
