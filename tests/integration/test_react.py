"""Reacting shoppers on the real local stack (Tansu, Redis, a worker, the API under gunicorn): the warm-up
is folded before the first answer is asked for, every reaction cites an answer and lands in its shopper's
history; ``streamrec simulate --react`` prints its summary; a missing API is one line, before Kafka."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from streamrec.contract import Event
from streamrec.devtools.localstack import ManagedProcess, free_port
from streamrec.producers.react import FoldWatch, ReactError, RecommendationsApi, Shown, run_reactions
from streamrec.publisher import EventPublisher
from streamrec.state import parse_history
from streamrec.topics import Topics, ensure_topics
from tests.conftest import Namespace, make_namespace, wait_until
from tests.integration.test_cli_errors import one_line, streamrec

pytestmark = [pytest.mark.broker, pytest.mark.redis]

ADMIN = "ak-" + uuid.uuid4().hex
USERS, ITEMS, WARM_UP, SEED = 30, 80, 1_500, 11


class RecordingPublisher(EventPublisher):
    """A real publisher that keeps the events it was given."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.events: list[Event] = []

    def publish_event(self, event: Event) -> Any:
        self.events.append(event)
        return super().publish_event(event)


class RecordingApi(RecommendationsApi):
    """The real HTTP client that keeps every answer, by shopper."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.answers: dict[str, list[Shown]] = defaultdict(list)
        self._lock = threading.Lock()

    def __call__(self, user_id: str) -> Shown:
        shown = super().__call__(user_id)
        with self._lock:
            self.answers[user_id].append(shown)
        return shown


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
    extra = {"STREAMREC_API_KEYS": f"ops={ADMIN}:admin", "STREAMREC_PRODUCER_METRICS_PORT": "0"}
    with make_namespace(broker, url, redis_client, tmp_path, artifacts, request, **extra) as namespace:
        yield namespace


def _ready(api: str) -> bool:
    try:
        return requests.get(f"{api}/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _start(ns: Namespace) -> str:
    """The worker and the API, and a placement 'home' that shows personal answers; the API's URL."""
    ensure_topics(ns.settings.kafka_bootstrap, Topics(ns.settings.topic_prefix), 2)
    ns.start("worker", "worker")
    ns.start("api", "api")
    api = f"http://127.0.0.1:{ns.settings.api_port}"
    wait_until(lambda: _ready(api), 30, what="the API")
    put = requests.put(
        f"{api}/v1/admin/placements/home",
        json={"strategy": "personal"},
        headers={"X-API-Key": ADMIN},
        timeout=10,
    )
    assert put.status_code in (200, 201), put.text
    home = f"{api}/v1/users/nobody/recommendations?placement=home"
    wait_until(lambda: requests.get(home, timeout=5).status_code == 200, 10, what="the placement in the API")
    return api


def test_reactions_cite_their_answers_and_reach_the_shoppers_histories(ns: Namespace) -> None:
    api = _start(ns)
    with pytest.raises(ReactError, match="the API answered 404 to GET .*: no placement 'nope'"):
        RecommendationsApi(api, "nope").check()  # said before anything is published
    topics = Topics(ns.settings.topic_prefix)
    fetch = RecordingApi(api, "home", 10)
    fetch.check()
    lines: list[str] = []
    with RecordingPublisher(ns.settings.kafka_bootstrap, topics) as publisher:
        report = run_reactions(
            publisher,
            fetch,
            n_users=USERS,
            n_items=ITEMS,
            n_events=WARM_UP,
            seed=SEED,
            rounds=2,
            wait_folded=FoldWatch(ns.redis, ns.keys, timeout_s=90, stall_s=60),
            progress=False,
            say=lines.append,
        )
    assert report.failed == 0 and report.warmup.failed == 0
    assert report.behind == 0, lines  # the workers folded every reaction before it returned
    assert len(lines) == 2 and not any(line.startswith("warning") for line in lines), lines

    # every shopper was answered twice, through the placement, outside any experiment
    assert {u: len(a) for u, a in fetch.answers.items()} == {f"shopper-{u:05d}": 2 for u in range(USERS)}
    (variant,) = report.tally.variants
    assert variant == "-" and report.tally.variants["-"].answers == 2 * USERS
    answers = [a for shown in fetch.answers.values() for a in shown]
    # the warm-up was folded before the first answer was asked for: every shopper has a history
    assert sum(a.strategy == "personalized" for a in answers) >= 0.9 * len(answers)

    reactions = publisher.events[WARM_UP:]
    assert publisher.events[:WARM_UP] and not any(e.recommendation_id for e in publisher.events[:WARM_UP])
    assert sum(e.type == "view" for e in reactions) >= USERS  # about 2 views per answer are expected
    cited = {a.recommendation_id: {i.item_id for i in a.items} for a in answers}
    for e in reactions:
        assert e.item_id in cited[e.recommendation_id or ""], "a reaction is to an item its answer showed"

    # and they are in the state: each shopper's newest history entries are their reactions, newest first
    by_user: dict[str, list[Event]] = defaultdict(list)
    for e in reactions:
        by_user[e.user_id].append(e)
    keep = ns.settings.scoring.history_len
    for user, mine in by_user.items():
        expected = [(e.item_id, e.ts, e.type.value) for e in sorted(mine, key=lambda e: -e.ts)][:keep]
        history = parse_history(ns.redis.lrange(ns.keys.history(user), 0, -1))
        assert [(h.item_id, h.ts, h.type) for h in history[: len(expected)]] == expected, user

    # the command prints the same tally (one more round; the warm-up is the same events: duplicates)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamrec.cli",
            "simulate",
            "--react",
            "--users",
            str(USERS),
            "--items",
            str(ITEMS),
        ]
        + ["--events", str(WARM_UP), "--seed", str(SEED), "--rounds", "1", "--placement", "home"],
        capture_output=True,
        text=True,
        env=ns.env,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert "round 1/1: 30 answers," in done.stdout
    header = next(n for n, line in enumerate(out) if line.startswith("variant"))
    assert out[header + 1].split()[:3] == ["-", str(USERS), str(USERS)]
    assert out[-1].startswith("sent ") and "reaction events" in out[-1]


def test_no_api_is_one_line_before_kafka_is_touched() -> None:
    port = free_port()
    code, out, err, _ = streamrec(
        "simulate", "--react", "--events", "10", "--api", f"http://127.0.0.1:{port}"
    )
    assert code == 1 and out == ""
    line = one_line(err)
    assert line.startswith(f"error: the API does not answer at http://127.0.0.1:{port} (ConnectionError)")
    assert "streamrec up" in line


def test_reaction_options_need_react() -> None:
    code, _, err, _ = streamrec("simulate", "--rounds", "2", "--placement", "home")
    assert code == 2
    assert one_line(err) == "error: --placement, --rounds only apply with --react"
