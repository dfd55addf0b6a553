"""An A/B test on the built-in shop through the real stack (Tansu, Redis, a worker, the API under gunicorn):
personal recommendations against popular only, shown to simulated shoppers who react to what they see
with probabilities from their hidden tastes (``streamrec simulate --react``). The report must show the
personal variant ahead with p < 0.01, and a split that passes the sample-ratio test."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from streamrec.devtools.localstack import ManagedProcess
from streamrec.producers.react import FoldWatch, RecommendationsApi, run_reactions
from streamrec.publisher import EventPublisher
from streamrec.topics import Topics, ensure_topics
from tests.conftest import Namespace, make_namespace, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.broker, pytest.mark.redis]

ADMIN = "ak-" + uuid.uuid4().hex
AS_ADMIN = {"X-API-Key": ADMIN}
SHOPPERS, ITEMS, WARM_UP, ROUNDS = 400, 300, 12_000, 2
EXPERIMENT = {
    "placement": "home",
    "variants": [
        {"name": "popular", "weight": 1, "use": "home"},
        {"name": "personal", "weight": 1, "use": "home-personal"},
    ],
}


@pytest.fixture
def ns(
    broker: ManagedProcess,
    redis_server: ManagedProcess,
    redis_client: redis.Redis,
    tmp_path: Path,
    artifacts: Path,
    request: pytest.FixtureRequest,
) -> Any:
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    extra = {
        "STREAMREC_API_KEYS": f"ops={ADMIN}:admin",
        "STREAMREC_API_WORKERS": "2",
        "STREAMREC_PRODUCER_METRICS_PORT": "0",
    }
    with make_namespace(broker, url, redis_client, tmp_path, artifacts, request, **extra) as namespace:
        yield namespace


def _ready(api: str) -> bool:
    try:
        return requests.get(f"{api}/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_personal_beats_popular_only_with_a_fair_split(ns: Namespace) -> None:
    ensure_topics(ns.settings.kafka_bootstrap, Topics(ns.settings.topic_prefix), 2)
    ns.start("worker", "worker")
    ns.start("api", "api")
    api = f"http://127.0.0.1:{ns.settings.api_port}"
    wait_until(lambda: _ready(api), 30, what="the API")
    for name, strategy in (("home", "popular"), ("home-personal", "personal")):
        put = requests.put(
            f"{api}/v1/admin/placements/{name}", json={"strategy": strategy}, headers=AS_ADMIN, timeout=10
        )
        assert put.status_code == 201, put.text
    made = requests.put(f"{api}/v1/admin/experiments/home-ab", json=EXPERIMENT, headers=AS_ADMIN, timeout=10)
    assert made.status_code == 201, made.text

    def split() -> bool:
        got = requests.get(f"{api}/v1/users/probe/recommendations?placement=home", timeout=5).json()
        return "experiment" in got["data"]

    wait_until(split, 5, what="every API process to split the placement")
    fetch = RecommendationsApi(api, "home", 10)
    fetch.check()
    lines: list[str] = []
    with EventPublisher(ns.settings.kafka_bootstrap, Topics(ns.settings.topic_prefix)) as publisher:
        run = run_reactions(
            publisher,
            fetch,
            n_users=SHOPPERS,
            n_items=ITEMS,
            n_events=WARM_UP,
            seed=5,
            rounds=ROUNDS,
            wait_folded=FoldWatch(ns.redis, ns.keys, timeout_s=180, stall_s=60),
            progress=False,
            say=lines.append,
        )
    assert run.failed == 0 and run.behind == 0, lines
    assert set(run.tally.variants) == {"popular", "personal"}

    sent = run.tally.variants

    def reported() -> dict[str, Any] | None:
        """The report once it holds every exposure (API processes send theirs every 200 ms) and every
        credit (the worker credits an event just after folding it: the fold's watermark, which the
        runner waited for, can be ahead of the credit by a moment)."""
        got = requests.get(f"{api}/v1/admin/experiments/home-ab/report", headers=AS_ADMIN, timeout=30)
        report: dict[str, Any] = got.json()["data"]["report"]
        if sum(v["exposed"] for v in report["variants"]) != SHOPPERS + 1:  # the probe shopper too
            return None
        credited = {v["name"]: v["views"] + v["carts"] + v["purchases"] for v in report["variants"]}
        return report if credited == {n: sum(t.events.values()) for n, t in sent.items()} else None

    report = wait_until(reported, 20, interval=0.5, what="every exposure and credit in the report")
    assert isinstance(report, dict)
    popular, personal = report["variants"]
    assert (popular["name"], personal["name"]) == ("popular", "personal")
    answers = sum(v["answers"] for v in report["variants"])
    assert answers >= SHOPPERS * ROUNDS
    # every reaction the runner sent cites an answer of its shopper's variant: all are credited, once
    for v in (popular, personal):
        assert v["purchases"] == sent[v["name"]].events["purchase"], (v, sent[v["name"]])
        assert v["views"] == sent[v["name"]].events["view"]
        assert v["carts"] == sent[v["name"]].events["add_to_cart"]
        assert v["revenue"] == pytest.approx(sent[v["name"]].revenue, rel=1e-6)
    assert personal["conversion"] > popular["conversion"]
    assert personal["lift"] > 0 and personal["lift_ci"][0] > 0
    assert personal["p_value"] < 0.01, report
    assert report["srm"] is False and report["srm_p_value"] > 0.001, report
