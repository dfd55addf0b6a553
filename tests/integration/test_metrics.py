"""Every part's /metrics, scraped over HTTP from real processes: the worker and the API under gunicorn
(two workers, multiprocess mode) against the session's Tansu broker and Redis, and a real publisher."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import orjson
import pytest
import requests
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from streamrec import metrics
from streamrec.devtools.localstack import free_port
from streamrec.publisher import EventPublisher
from streamrec.topics import Topics, ensure_topics
from tests.conftest import Namespace, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.redis]


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page, keyed by (name, sorted labels)."""
    resp = requests.get(url, timeout=5)
    assert resp.status_code == 200, resp.text[:200]
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def started(ns: Namespace, worker_port: int, api_workers: int = 2) -> str:
    ns.env["STREAMREC_WORKER_METRICS_PORT"] = str(worker_port)
    ns.env["STREAMREC_API_WORKERS"] = str(api_workers)
    ensure_topics(ns.settings.kafka_bootstrap, Topics(ns.settings.topic_prefix), 2)
    ns.start("worker", "worker")
    ns.start("api", "api")
    api = f"http://127.0.0.1:{ns.settings.api_port}"
    wait_until(lambda: _ok(f"{api}/readyz"), 30, what="the API to be ready")
    return api


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:  # not listening yet, or too busy starting to answer
        return False


def test_worker_counts_events_dedupe_dead_letters_lag_and_attribution(namespace: Namespace) -> None:
    ns, port = namespace, free_port()
    api = started(ns, port)
    worker_metrics = f"http://127.0.0.1:{port}/metrics"
    wait_until(lambda: _ok(worker_metrics), 30, what="the worker's /metrics")
    before = scrape(worker_metrics)
    # every known series exists at zero before the first event, so dashboards never start empty
    assert ("streamrec_worker_attributed_events_total", (("strategy", "popular"), ("type", "view"))) in before

    ts = int(time.time() * 1000)
    history = [
        {"event_id": f"h{i}", "type": "view", "user_id": f"u{i}", "item_id": "sku-1", "ts": ts - 1000}
        for i in range(3)
    ]
    resp = requests.post(f"{api}/v1/events", json=history, timeout=10)
    assert resp.status_code == 202, resp.text
    rec = wait_until(
        lambda: (d := requests.get(f"{api}/v1/users/new-user/recommendations", timeout=5).json()["data"])[
            "items"
        ]
        and d,
        30,
        interval=0.1,
        what="the history folded in",
    )
    assert isinstance(rec, dict)
    assert rec["strategy"] == "popular" and rec["recommendation_id"].startswith("popular.")
    cited = [
        {"event_id": "c1", "type": "view", "user_id": "new-user", "item_id": "sku-1"},
        {"event_id": "c2", "type": "add_to_cart", "user_id": "new-user", "item_id": "sku-1"},
        {"event_id": "c3", "type": "purchase", "user_id": "new-user", "item_id": "sku-1"},
        {"event_id": "c4", "type": "view", "user_id": "other-user", "item_id": "sku-1"},  # not cited
    ]
    for row in cited[:3]:
        row["recommendation_id"] = rec["recommendation_id"]
    cited.append({**cited[0], "event_id": "c5", "recommendation_id": "made-up-id"})
    cited.append(dict(cited[0]))  # the same event twice in one batch
    assert requests.post(f"{api}/v1/events", json=cited, timeout=10).status_code == 202
    # a redelivery of c1 (same event_id) and a malformed record straight onto the topic
    assert requests.post(f"{api}/v1/events", json=[cited[0]], timeout=10).status_code == 202
    with EventPublisher(ns.settings.kafka_bootstrap, Topics(ns.settings.topic_prefix)) as pub:
        pub.publish_raw(Topics(ns.settings.topic_prefix).events, b"x", b'{"type": "view", "oops": 1}')

    def settled() -> dict | None:
        now = scrape(worker_metrics)
        folded = sum(
            value(now, "streamrec_worker_events_total", type=t, outcome="folded") for t in metrics.EVENT_TYPES
        )
        dead = value(now, "streamrec_worker_dead_letters_total", topic="events", cause="invalid")
        return now if folded == 10 and dead == 1 else None

    after = wait_until(settled, 30, interval=0.2, what="10 folded events and 1 dead letter")
    assert isinstance(after, dict)
    assert value(after, "streamrec_worker_events_total", type="view", outcome="folded") == 8
    assert value(after, "streamrec_worker_events_total", type="view", outcome="dead_letter") == 1
    assert value(after, "streamrec_worker_dedupe_hits_total") == 2
    for event_type in ("view", "add_to_cart", "purchase"):
        # the redelivered view is not counted twice; the made-up id goes to 'other'
        assert (
            value(after, "streamrec_worker_attributed_events_total", strategy="popular", type=event_type) == 1
        )
    assert value(after, "streamrec_worker_attributed_events_total", strategy="other", type="view") == 1
    assert value(after, "streamrec_worker_event_lag_seconds_count") == 10
    assert 0 <= value(after, "streamrec_worker_batch_lag_seconds") < 60
    assert value(after, "streamrec_worker_batch_size_records_count", topic="events") >= 1
    assert value(after, "streamrec_worker_batch_duration_seconds_count", topic="events") >= 1


def gunicorn_workers(arbiter: int) -> list[int]:
    """The pids of the gunicorn workers the arbiter (``streamrec api``) has forked."""
    path = Path(f"/proc/{arbiter}/task/{arbiter}/children")
    return [int(pid) for pid in path.read_text().split()]


def served_per_process(metrics_dir: Path, rule: str) -> list[float]:
    """Recommendation requests each gunicorn worker counted, read from its own multiprocess file."""
    counts = []
    for path in sorted(metrics_dir.glob("counter_*.db")):
        total = 0.0
        for key, val, _ts, _pos in MmapedDict.read_all_values_from_file(str(path)):
            name, _sample, labels, _help = orjson.loads(key)
            if name == "streamrec_api_requests" and labels.get("endpoint") == rule:
                total += val
        counts.append(total)
    return counts


def test_api_metrics_combine_gunicorn_workers_and_label_by_url_rule(
    namespace: Namespace, tmp_path: Path
) -> None:
    ns = namespace
    ns.env["STREAMREC_API_METRICS_DIR"] = str(tmp_path / "api-metrics")
    api = started(ns, free_port(), api_workers=2)
    rule = "/v1/users/<user_id>/recommendations"
    users: list[str] = []

    def both_workers_answered() -> bool:
        # a new connection each time; the kernel hands each to whichever gunicorn worker accepts first
        for _ in range(10):
            users.append(f"user-{uuid.uuid4().hex[:6]}")
            resp = requests.get(
                f"{api}/v1/users/{users[-1]}/recommendations", timeout=5, headers={"Connection": "close"}
            )
            assert resp.status_code == 200
        return sum(1 for n in served_per_process(tmp_path / "api-metrics", rule) if n) == 2

    wait_until(both_workers_answered, 60, interval=0, what="requests answered by both gunicorn workers")
    n = len(users)
    assert sum(served_per_process(tmp_path / "api-metrics", rule)) == n
    assert requests.get(f"{api}/v1/popular", params={"k": "zero"}, timeout=5).status_code == 400
    assert (
        requests.post(f"{api}/v1/events", json=[{"event_id": "e", "type": "view"}], timeout=5).status_code
        == 400
    )
    resp = requests.post(
        f"{api}/v1/events",
        json=[{"event_id": "ok-1", "type": "view", "user_id": "u", "item_id": "i"}],
        timeout=10,
    )
    assert resp.status_code == 202

    samples = scrape(f"{api}/metrics")  # both workers' counts, combined
    assert value(samples, "streamrec_api_requests_total", endpoint=rule, method="GET", status="200") == n
    assert not any(user in str(key) for key in samples for user in users), "a raw path leaked into a label"
    assert (
        value(
            samples, "streamrec_api_request_duration_seconds_count", endpoint=rule, method="GET", status="200"
        )
        == n
    )
    assert (
        value(samples, "streamrec_api_requests_total", endpoint="/v1/popular", method="GET", status="400")
        == 1
    )
    assert (
        value(samples, "streamrec_api_requests_total", endpoint="/v1/events", method="POST", status="400")
        == 1
    )
    # nothing was folded yet for these users: every answer is the empty fallback
    assert (
        value(samples, "streamrec_api_recommendations_total", endpoint="recommendations", strategy="empty")
        == n
    )
    assert value(samples, "streamrec_api_empty_answers_total", endpoint="recommendations") == n
    assert value(samples, "streamrec_api_redis_duration_seconds_count", operation="user_reply") == n
    assert value(samples, "streamrec_producer_records_sent_total", topic="events") == 1
    assert value(samples, "streamrec_producer_records_failed_total", topic="events") == 0
    # the request id comes back, and a caller's own id is kept
    resp = requests.get(f"{api}/healthz", headers={"X-Request-ID": "req-42"}, timeout=5)
    assert resp.headers["X-Request-ID"] == "req-42"
    log = (ns.log_dir / "api.log").read_text()
    assert "req-42" in log

    # a gunicorn worker that ends (and is replaced) takes none of the counts with it
    arbiter = ns.procs[-1].proc.pid
    before = gunicorn_workers(arbiter)
    assert len(before) == 2, before
    os.kill(before[0], signal.SIGTERM)
    wait_until(
        lambda: len(now := gunicorn_workers(arbiter)) == 2 and before[0] not in now,
        30,
        interval=0.1,
        what="gunicorn to replace the worker",
    )
    samples = scrape(f"{api}/metrics")
    assert value(samples, "streamrec_api_requests_total", endpoint=rule, method="GET", status="200") == n


def test_publisher_counts_sends_and_the_clients_retries(namespace: Namespace) -> None:
    topics = Topics(namespace.settings.topic_prefix)
    ensure_topics(namespace.settings.kafka_bootstrap, topics, 1)
    m = metrics.producer()
    sent = m.sent.labels("events")._value.get()
    retried = m.retried._value.get()
    with EventPublisher(namespace.settings.kafka_bootstrap, topics) as pub:
        futures = [pub.publish_raw(topics.events, b"k", orjson.dumps({"n": n})) for n in range(5)]
        pub.flush(10)
        for f in futures:
            f.get(10)
        # the client records retries on this sensor when the broker answers with a retriable error
        pub._producer._metrics.get_sensor("record-retries").record(2)
    assert m.sent.labels("events")._value.get() - sent == 5
    assert m.retried._value.get() - retried == 2
