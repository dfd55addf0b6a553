"""Outages of the services underneath: Redis killed and restarted (AOF), the broker frozen and thawed,
the broker killed and started again. Each test runs its own Redis or broker, so the shared ones stay
up for the other tests.

What is checked: no acknowledged event is lost or counted twice (every event applied exactly once,
item counts exact), the worker and the API carry on without being restarted, and /readyz reports the
outage while it lasts. Tansu keeps topics in memory, so a broker *restart* loses every record it held:
that case only checks that the API reconnects and reports the outage (docs/GUARANTEES.md).
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import redis
import requests

from streamrec.contract import Event
from streamrec.devtools.localstack import free_port, start_broker, start_redis
from streamrec.event_types import EventType
from streamrec.keys import Keys
from streamrec.publisher import EventPublisher, publish_stream
from streamrec.state import applied_events
from streamrec.topics import Topics, ensure_topics
from tests.conftest import Namespace, wait_until
from tests.state_snapshot import item_occurrences

pytestmark = [pytest.mark.e2e, pytest.mark.broker, pytest.mark.redis, pytest.mark.slow]


def _events(n: int, tag: str) -> list[Event]:
    ts0 = int(time.time() * 1000) - 3_600_000
    return [
        Event(
            event_id=f"{tag}-{k}",
            type=EventType.PURCHASE if k % 7 == 0 else EventType.VIEW,
            user_id=f"u{k % 97}",
            item_id=f"i{(k * 31) % 53}",
            ts=ts0 + k,
        )
        for k in range(n)
    ]


def _applied(client: redis.Redis, keys: Keys) -> int:
    try:
        return applied_events(client, keys)
    except redis.RedisError:
        return -1


def _counts_match(client: redis.Redis, keys: Keys, events: list[Event]) -> None:
    want = Counter(e.item_id for e in events)
    got = item_occurrences(client, keys)
    assert got == dict(want)


def _get(url: str) -> requests.Response | None:
    try:
        return requests.get(url, timeout=3)
    except requests.RequestException:
        return None


def _status(url: str) -> int:
    resp = _get(url)
    return resp.status_code if resp is not None else 0


class Replay:
    """Publish events at a steady rate from a thread; ``sent`` counts what was handed to the producer."""

    def __init__(self, bootstrap: str, topics: Topics, events: list[Event], rate: float) -> None:
        self.events, self.sent, self.report = events, 0, None
        self.publisher = EventPublisher(bootstrap, topics)
        self.thread = threading.Thread(target=self._run, args=(rate,), daemon=True)
        self.thread.start()

    def _counted(self):  # type: ignore[no-untyped-def]
        for event in self.events:
            self.sent += 1
            yield event

    def _run(self, rate: float) -> None:
        self.report = publish_stream(self.publisher, [], self._counted(), rate=rate, progress=False)

    def finish(self, timeout: float) -> None:
        self.thread.join(timeout)
        self.publisher.close()
        assert self.report is not None, "the replay did not finish"
        assert self.report.failed == 0 and self.report.events == len(self.events)


def test_redis_killed_mid_stream_comes_back_from_aof_and_nothing_is_lost_or_doubled(
    namespace: Namespace, tmp_path: Path
) -> None:
    ns = namespace
    port = free_port()
    data = tmp_path / "redis-data"
    server = start_redis(port, data, ns.log_dir / "own-redis.log")
    ns.procs.append(server)
    ns.env["STREAMREC_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    topics = Topics(ns.settings.topic_prefix)
    ensure_topics(ns.settings.kafka_bootstrap, topics, 2)
    worker = ns.start("worker", "worker")
    api_proc = ns.start("api", "api")
    api = f"http://127.0.0.1:{ns.settings.api_port}"
    wait_until(lambda: _status(f"{api}/readyz") == 200, 30, what="the API to be ready")

    events = _events(3000, uuid.uuid4().hex[:8])
    replay = Replay(ns.settings.kafka_bootstrap, topics, events, rate=600)
    wait_until(lambda: _applied(client, ns.keys) >= 600, 30, what="the worker to fold a first part")
    server.signal(signal.SIGKILL)  # a crash, not a shutdown: only what AOF already holds survives
    server.proc.wait(5)
    killed_at = time.monotonic()

    # while Redis is down: readiness says so, reads answer 503 with a message, writes still reach Kafka
    wait_until(lambda: _status(f"{api}/readyz") == 503, 10, what="readiness to report Redis")
    ready = _get(f"{api}/readyz").json()  # type: ignore[union-attr]
    assert "redis" in ready["msg"] and ready["details"]["kafka"] == "ok"
    popular = _get(f"{api}/v1/popular")
    assert popular is not None and popular.status_code == 503 and popular.json()["code"] == 1503
    during = _events(50, "outage-" + uuid.uuid4().hex[:6])
    posted = requests.post(
        f"{api}/v1/events", json=[e.model_dump(mode="json", by_alias=True) for e in during], timeout=15
    )
    assert posted.status_code == 202, posted.text
    wait_until(lambda: replay.sent >= 1800, 30, what="the replay to go on while Redis is down")

    server = start_redis(port, data, ns.log_dir / "own-redis.log")
    ns.procs.append(server)
    outage_s = time.monotonic() - killed_at
    wait_until(lambda: _status(f"{api}/readyz") == 200, 20, what="readiness after the restart")
    replay.finish(60)
    everything = events + during
    wait_until(
        lambda: _applied(client, ns.keys) == len(everything), 60, interval=0.1, what="every event folded"
    )
    _counts_match(client, ns.keys, everything)
    assert _status(f"{api}/v1/popular") == 200
    assert worker.alive() and api_proc.alive()  # nobody restarted them
    (ns.log_dir / "outage.txt").write_text(
        f"redis down {outage_s:.1f}s; {len(everything)} events, each once\n"
    )
    client.close()


def test_a_frozen_broker_loses_no_acknowledged_event(namespace: Namespace) -> None:
    ns = namespace
    broker = start_broker(free_port(), ns.log_dir / "own-broker.log")
    ns.procs.append(broker)
    bootstrap = f"127.0.0.1:{broker.port}"
    ns.env["STREAMREC_KAFKA_BOOTSTRAP"] = bootstrap
    topics = Topics(ns.settings.topic_prefix)
    ensure_topics(bootstrap, topics, 2)
    worker = ns.start("worker", "worker")
    ns.start("api", "api")
    api = f"http://127.0.0.1:{ns.settings.api_port}"
    wait_until(lambda: _status(f"{api}/readyz") == 200, 30, what="the API to be ready")

    events = _events(2000, uuid.uuid4().hex[:8])
    warm, rest = events[:100], events[100:]
    # the worker has joined its group once it folds these: a slow start could outlast the whole replay
    # below, and the freeze must come while it is still sending
    Replay(bootstrap, topics, warm, rate=1000).finish(30)
    wait_until(lambda: _applied(ns.redis, ns.keys) == len(warm), 60, what="the worker to fold a first part")
    replay = Replay(bootstrap, topics, rest, rate=400)
    wait_until(lambda: _applied(ns.redis, ns.keys) >= 300, 30, what="the worker to fold the stream")
    broker.signal(signal.SIGSTOP)  # a hiccup: the broker answers nothing (a long pause, a partition)
    try:
        # the outage's length is the scenario (3 s, half the consumer session timeout); it ends no
        # sooner than a send was attempted into it (the producer then blocks or buffers and retries)
        before, ends = replay.sent, time.monotonic() + 3.0
        wait_until(
            lambda: time.monotonic() >= ends and replay.sent > before, 15, what="a send during the freeze"
        )
    finally:
        broker.signal(signal.SIGCONT)
    replay.finish(90)  # every record acknowledged, none failed
    wait_until(
        lambda: _applied(ns.redis, ns.keys) == len(events), 90, interval=0.1, what="every event folded"
    )
    _counts_match(ns.redis, ns.keys, events)

    # a broker that is gone: readiness says so and writes answer 503; a new one on the same address is
    # used without restarting the API (memory storage: the new broker starts empty)
    worker.stop()  # its part is done; a worker whose broker is gone takes long to stop
    one = [events[0].model_dump(mode="json", by_alias=True) | {"event_id": "after-" + uuid.uuid4().hex}]
    assert requests.post(f"{api}/v1/events", json=one, timeout=30).status_code == 202  # connected
    broker.stop()
    wait_until(lambda: _status(f"{api}/readyz") == 503, 10, what="readiness to report Kafka")
    body = _get(f"{api}/readyz").json()  # type: ignore[union-attr]
    assert body["details"] == {"redis": "ok", "kafka": "unavailable"}
    asked = time.monotonic()
    refused = requests.post(f"{api}/v1/events", json=one, timeout=60)
    assert refused.status_code == 503 and "Kafka" in refused.json()["msg"]
    (ns.log_dir / "outage.txt").write_text(
        f"POST while Kafka is down: 503 after {time.monotonic() - asked:.1f}s\n"
    )
    again = start_broker(broker.port, ns.log_dir / "own-broker.log")  # type: ignore[arg-type]
    ns.procs.append(again)
    ensure_topics(bootstrap, topics, 2)
    wait_until(lambda: _status(f"{api}/readyz") == 200, 20, what="readiness after the broker is back")
    wait_until(
        lambda: requests.post(f"{api}/v1/events", json=one, timeout=60).status_code == 202,
        60,
        interval=1,
        what="the API to publish to the new broker",
    )
