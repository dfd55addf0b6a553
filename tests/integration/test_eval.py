"""``streamrec eval``, ``tune`` and ``train`` end to end on a slice of real data, over real Redis (and Kafka)."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from kafka import KafkaProducer

from streamrec.datasets import datasets_dir
from streamrec.event_types import EventType
from streamrec.keys import Keys
from streamrec.modelstore import ModelStore
from streamrec.settings import ScoringSettings
from streamrec.trainer import evaluate as offline
from streamrec.trainer.splits import Split, leave_last_out, load_split
from tests.conftest import Namespace, needs_dataset

pytestmark = pytest.mark.redis

BEAUTY = datasets_dir() / "amazon-beauty" / "Beauty.txt"
MOVIELENS = datasets_dir() / "movielens-100k" / "ml-100k.inter"


def movielens_slice(tmp_path: Path, rows: int = 20_000) -> Path:
    """The first ``rows`` MovieLens ratings (459 users, 1,410 films): small enough for every baseline in seconds."""
    with open(MOVIELENS, encoding="utf-8") as f:
        lines = [next(f) for _ in range(rows + 1)]
    path = tmp_path / "ml-slice.inter"
    path.write_text("".join(lines))
    return path


def beauty_slice(tmp_path: Path, users: int = 1500) -> Path:
    """The first ``users`` shoppers of Amazon Beauty, in the seq format."""
    with open(BEAUTY, encoding="utf-8") as f:
        lines = [next(f) for _ in range(users)]
    path = tmp_path / "beauty-slice.txt"
    path.write_text("".join(lines))
    return path


def streamrec(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "streamrec.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@needs_dataset("movielens-100k")
def test_eval_reports_every_model_and_two_runs_agree(
    tmp_path: Path, redis_server, redis_client: redis.Redis
) -> None:
    data = movielens_slice(tmp_path)
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    runs = []
    for n in range(2):
        out = tmp_path / f"run{n}.json"
        printed = streamrec(
            "eval",
            "--dataset",
            str(data),
            "--format",
            "movielens",
            "--json",
            str(out),
            "--redis-url",
            url,
            "--no-progress",
        )
        runs.append(json.loads(out.read_text()))
    assert "| model | HR@10 | NDCG@10 | coverage | tail<5 | seconds |" in printed
    assert "held-out items with fewer than 5 training interactions: " in printed
    by_model = {r["model"]: r for r in runs[0]["results"]}
    held_out = len(load_split(data, "movielens").targets)
    assert set(by_model) == {
        "streamrec",
        "streamrec-live",
        "popularity",
        "bm25",
        "cosine",
        "als",
        "ease",
        "slist",
    }
    assert runs[0]["dataset"] == str(data) and 0 < runs[0]["held_out_tail_share"] < 1
    for r in runs[0]["results"]:
        assert set(r) == {"model", "hr_at_10", "ndcg_at_10", "coverage", "seconds", "users", "tail_share"}
        assert 0 <= r["ndcg_at_10"] <= r["hr_at_10"] <= 1 and r["users"] == held_out
    # no long-tail noise: the served answers show no more thinly supported items than shoppers really pick
    for model in ("streamrec", "streamrec-live"):
        assert by_model[model]["tail_share"] <= runs[0]["held_out_tail_share"]
    # the streaming model learns something real, and the served blend beats every baseline on this slice
    assert by_model["streamrec-live"]["hr_at_10"] > 1.3 * by_model["popularity"]["hr_at_10"]
    baselines = ("popularity", "bm25", "cosine", "als", "ease")
    assert by_model["streamrec"]["hr_at_10"] > max(by_model[b]["hr_at_10"] for b in baselines)

    def figures(run: dict) -> dict:
        return {
            r["model"]: (r["hr_at_10"], r["ndcg_at_10"], r["coverage"], r["tail_share"])
            for r in run["results"]
        }

    assert figures(runs[0]) == figures(runs[1])
    assert not list(redis_client.scan_iter(match="eval-*", count=1000))  # its keyspace is cleaned up


def test_eval_explains_bad_arguments(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.txt"  # the sequence format: a user, then their items in order
    tiny.write_text("u1 1 2 3\nu2 2 3 4\nu3 1 3 4\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamrec.cli",
            "eval",
            "--dataset",
            str(tmp_path / "nope.txt"),
            "--format",
            "seq",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamrec.cli",
            "eval",
            "--dataset",
            str(tiny),
            "--format",
            "seq",
            "--models",
            "sasrec",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "unknown model(s) sasrec" in proc.stderr


@pytest.mark.broker
@needs_dataset("amazon-beauty")
def test_train_from_the_event_log_publishes_and_rolls_back(namespace: Namespace, tmp_path: Path) -> None:
    """Events on Kafka -> ``streamrec train`` -> an active model the API reports; rollback restores the previous."""
    lines = BEAUTY.read_text().splitlines()[:400]
    producer = KafkaProducer(bootstrap_servers=namespace.settings.kafka_bootstrap, acks="all")
    topic = f"{namespace.settings.topic_prefix}.events"
    ts = 1_760_000_000_000
    sent = 0
    for line in lines:
        user, *items = line.split()
        for item in items:
            event = {
                "event_id": f"e{sent}",
                "type": "purchase",
                "user_id": user,
                "item_id": item,
                "ts": ts + sent,
            }
            producer.send(topic, key=user.encode(), value=json.dumps(event).encode())
            sent += 1
    producer.send(topic, key=b"x", value=b"{not json")  # skipped, counted
    producer.flush()
    producer.close()
    out = streamrec("train", env=namespace.env)
    assert f"read {sent:,} events from {topic} (1 invalid skipped)" in out
    store = ModelStore(namespace.redis, namespace.keys)
    first = store.active()
    assert first is not None and f"model {first} active" in out
    infos = store.versions()
    assert infos[0].meta["events"] == sent and infos[0].meta["family"] in {"slist", "ease", "bm25", "cosine"}
    assert 0 < infos[0].meta["test"]["hr_at_10"] <= 1 and infos[0].meta["validation"]
    # the blend share was chosen on validation (the live state folded by the real script) and recorded
    assert 0 <= infos[0].meta["blend"] <= 0.9 and len(infos[0].meta["blend_validation"]) > 1
    assert infos[0].meta["peak_rss_mb"] > 0 and "peak RSS" in out
    # the recorded duration (exported as streamrec_trainer_run_duration_seconds) is the whole run's,
    # reading the log and folding the validation events included, not only the fits after them
    total = float(re.search(r"items in ([0-9.]+)s, peak RSS", out).group(1))  # type: ignore[union-attr]
    assert infos[0].meta["train_seconds"] >= 0.8 * total

    second_out = streamrec(
        "train", "--dataset", str(beauty_slice(tmp_path, 300)), "--format", "seq", env=namespace.env
    )
    second = store.active()
    assert second != first and f"model {second} active" in second_out
    listed = streamrec("model", "list", env=namespace.env)
    assert f"* {second}" in listed and f"  {first}" in listed
    assert f"active model: {first}" in streamrec("model", "rollback", env=namespace.env)
    assert store.active() == first
    assert f"active model: {second}" in streamrec("model", "activate", second, env=namespace.env)


def _keyspace(client: redis.Redis, keys: Keys) -> dict[str, object]:
    """Every key of ``keys``' deployment, by name without the prefix, as comparable Python values."""
    out: dict[str, object] = {}
    for raw in client.scan_iter(match=keys.pattern(), count=1000):
        key = raw.decode()
        kind = client.type(key).decode()
        name = key[len(keys.prefix) :]
        if kind == "zset":
            members = client.zrange(key, 0, -1, withscores=True)
            # claims hold event ids (numbered per fold) scored by the fold's wall clock: only their number
            # is the same
            out[name] = len(members) if name.endswith(":e") else {m: pytest.approx(s) for m, s in members}
        elif kind == "hash":
            out[name] = {
                f: (pytest.approx(float(v)) if v.replace(b".", b"").lstrip(b"-").isdigit() else v)
                for f, v in client.hgetall(key).items()
            }
        elif kind == "list":
            out[name] = client.lrange(key, 0, -1)
        else:
            out[name] = client.get(key)
    return out


def test_folding_the_validation_split_first_then_the_rest_gives_the_one_pass_state(
    redis_client: redis.Redis,
) -> None:
    """``eval`` folds the validation split's events, reads their live table, then folds only the rest."""
    rng = random.Random(11)
    users = []
    for u in range(150):
        ts = 1_700_000_000_000 + rng.randrange(3_600_000)
        actions = []
        for _ in range(rng.randint(2, 12)):
            ts += rng.randrange(1, 600_000)
            etype = rng.choice((EventType.VIEW, EventType.ADD_TO_CART, EventType.PURCHASE))
            actions.append((etype, f"i{rng.randrange(60)}", ts))
        users.append((f"u{u}", actions))
    split = leave_last_out("synthetic", users)
    valid = split.validation()
    later = offline.later_part(split, valid)
    assert later is not None and sum(len(a) for a in later.train.values()) == len(valid.targets) > 100
    # no neighbour list reaches its bound here: trims keep the strongest members at the time they run,
    # so with them the two orders may keep different weak members
    scoring = ScoringSettings(neighbours_max=10_000)
    one, two = Keys("fold-one"), Keys("fold-two")
    try:
        offline.fold(split, redis_client, one, scoring, False)
        offline.fold(valid, redis_client, two, scoring, False)
        offline.fold(later, redis_client, two, scoring, False, id_prefix="eval-later")
        assert _keyspace(redis_client, two) == _keyspace(redis_client, one)
    finally:
        for k in (one, two):
            for key in redis_client.scan_iter(match=k.pattern(), count=1000):
                redis_client.delete(key)


def test_a_validation_split_that_is_not_a_prefix_is_folded_on_its_own() -> None:
    """Where validation holds out an action that is not the user's last (``multi``: the last purchase,
    with cart adds after it), no fold order gives the test state, and ``later_part`` says so."""
    actions = [(EventType.PURCHASE, "a", 1), (EventType.PURCHASE, "b", 2), (EventType.ADD_TO_CART, "c", 3)]
    split = Split("multi", {"u": actions}, {"u": ["d"]}, {"u": {"a", "b"}}, EventType.PURCHASE)
    valid = split.validation()
    assert valid.targets == {"u": ["b"]}
    assert offline.later_part(split, valid) is None
    prefix = Split("seq", {"u": actions}, {"u": ["d"]}, {"u": {"a", "b", "c"}})
    later = offline.later_part(prefix, prefix.validation())
    assert later is not None and later.train == {"u": [(EventType.ADD_TO_CART, "c", 3)]}
