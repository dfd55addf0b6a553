"""``streamrec dlq`` against a real Tansu, Redis and worker: dead letters the worker really wrote are counted,
shown and replayed after a fix; a replay folds each event once however often it runs; a truncated
original is read back from its source offset; bad arguments and a missing topic give one-line errors."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
import uuid
from collections import Counter

import orjson
import pytest
from kafka import KafkaProducer

from streamrec.producers.dlq import DeadLetter, read_topic
from streamrec.state import applied_events
from streamrec.topics import Topics, ensure_topics
from tests.conftest import Namespace, wait_until
from tests.state_snapshot import item_occurrences

pytestmark = [pytest.mark.broker, pytest.mark.redis]


def cli(ns: Namespace, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``streamrec <args>`` in this test's namespace; output captured."""
    return subprocess.run(
        [sys.executable, "-m", "streamrec.cli", *args],
        env={**ns.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def dead_letters(ns: Namespace) -> list[DeadLetter]:
    topic = Topics(ns.settings.topic_prefix).dlq
    return [
        r for r in read_topic(ns.settings.kafka_bootstrap, topic, idle_s=1.0) if isinstance(r, DeadLetter)
    ]


def view(user: str, item: str, ts: int, tag: str) -> bytes:
    return orjson.dumps(
        {"event_id": f"{tag}-{user}-{item}", "type": "view", "user_id": user, "item_id": item, "ts": ts}
    )


def test_dead_letters_are_counted_shown_and_replayed_once_after_a_fix(namespace: Namespace) -> None:
    ns = namespace
    topics = Topics(ns.settings.topic_prefix)
    ensure_topics(ns.settings.kafka_bootstrap, topics, 2)
    ns.start("worker", "worker")
    # a broken key refuses every view of this user in the state script: real dead letters, reason WRONGTYPE
    ns.redis.set(ns.keys.prefs("victim"), "not a sorted set")
    producer = KafkaProducer(bootstrap_servers=ns.settings.kafka_bootstrap, acks="all")
    tag, ts = uuid.uuid4().hex[:6], int(time.time() * 1000) - 60_000
    items = ["a", "b", "c", "d", "e"]
    for n, item in enumerate(items):
        producer.send(topics.events, key=b"victim", value=view("victim", item, ts + n, tag))
        producer.send(topics.events, key=b"fine", value=view("fine", item, ts + n, tag))
    producer.flush()
    wait_until(lambda: len(dead_letters(ns)) >= 5, 60, interval=0.5, what="five dead letters")
    wait_until(lambda: applied_events(ns.redis, ns.keys) == 5, 30, what="the good user's events")
    assert not ns.redis.exists(ns.keys.history("victim"))

    stats = cli(ns, "dlq", "stats", "--json", "--idle", "1")
    assert stats.returncode == 0, stats.stderr
    figures = orjson.loads(stats.stdout)
    assert figures["total"] == 5 and figures["replayed"] == 0 and figures["truncated"] == 0
    [group] = figures["by_reason"]
    assert "WRONGTYPE" in group["reason"] and group["count"] == 5 and group["source_topic"] == topics.events
    shown = cli(ns, "dlq", "show", "--reason", "wrongtype", "--limit", "2", "--idle", "1")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("reason: state update failed: WRONGTYPE") == 2
    assert f'"event_id":"{tag}-victim-a"' in shown.stdout.replace(" ", "")
    assert "2 shown" in shown.stdout
    dry = cli(ns, "dlq", "replay", "--reason", "WRONGTYPE", "--dry-run", "--idle", "1")
    assert dry.returncode == 0 and "would replay 5 of 5" in dry.stdout, dry.stdout + dry.stderr

    # the fix, then the replay: every refused event folds, once
    ns.redis.delete(ns.keys.prefs("victim"))
    first = cli(ns, "dlq", "replay", "--reason", "WRONGTYPE", "--idle", "1")
    assert first.returncode == 0 and "replayed 5 of 5" in first.stdout, first.stdout + first.stderr
    wait_until(lambda: applied_events(ns.redis, ns.keys) == 10, 30, what="the replayed events folded")
    assert item_occurrences(ns.redis, ns.keys) == dict.fromkeys(items, 2)

    # a second replay sends nothing (the first one's marker), and one forced with --again folds nothing
    second = cli(ns, "dlq", "replay", "--reason", "WRONGTYPE", "--idle", "1")
    assert (
        second.returncode == 0
        and "replayed 0 of 5" in second.stdout
        and "5 already replayed" in second.stdout
    )
    forced = cli(ns, "dlq", "replay", "--again", "--idle", "1")
    assert forced.returncode == 0 and "replayed 5 of 5" in forced.stdout, forced.stdout + forced.stderr
    # a later event of the same user (same partition) is folded only after the forced replay's records
    producer.send(topics.events, key=b"victim", value=view("victim", "f", ts + 10, tag)).get(10)
    wait_until(lambda: applied_events(ns.redis, ns.keys) == 11, 30, what="the event after the replay")
    assert item_occurrences(ns.redis, ns.keys) == {**dict.fromkeys(items, 2), "f": 1}
    assert len(dead_letters(ns)) == 5  # no new dead letters: the forced replay's events were duplicates
    after = orjson.loads(cli(ns, "dlq", "stats", "--json", "--idle", "1").stdout)
    assert after["total"] == 5 and after["replayed"] == 5
    producer.close()


def test_a_truncated_original_is_read_back_from_its_source_offset(namespace: Namespace) -> None:
    ns = namespace
    topics = Topics(ns.settings.topic_prefix)
    ensure_topics(ns.settings.kafka_bootstrap, topics, 2)
    ns.start("worker", "worker")
    big = b"{" + b"x" * 200_000  # not JSON, and over the dead letter's 64 KiB bound
    producer = KafkaProducer(
        bootstrap_servers=ns.settings.kafka_bootstrap, acks="all", max_request_size=2**21
    )
    sent = producer.send(topics.events, key=b"big", value=big).get(10)
    producer.close()
    wait_until(lambda: dead_letters(ns), 60, interval=0.5, what="the dead letter")
    [letter] = dead_letters(ns)
    assert letter.truncated and letter.length == len(big)
    assert (letter.source_partition, letter.source_offset) == (sent.partition, sent.offset)

    # still invalid under this version: left where it is unless asked
    kept = cli(ns, "dlq", "replay", "--idle", "1")
    assert kept.returncode == 0 and "replayed 0 of 1" in kept.stdout and "1 still invalid" in kept.stdout
    sent_anyway = cli(ns, "dlq", "replay", "--include-invalid", "--idle", "1")
    assert sent_anyway.returncode == 0 and "replayed 1 of 1" in sent_anyway.stdout, sent_anyway.stderr
    # the worker refuses the re-published original again: the same bytes (sha256), a new source offset
    wait_until(
        lambda: len(dead_letters(ns)) == 2, 60, interval=0.5, what="the replayed original's dead letter"
    )
    again = dead_letters(ns)[1]
    assert again.sha256 == hashlib.sha256(big).hexdigest() and again.length == len(big)
    assert again.source_partition == sent.partition and again.source_offset > sent.offset
    assert again.key == b"big"
    figures = orjson.loads(cli(ns, "dlq", "stats", "--json", "--idle", "1").stdout)
    assert (figures["total"], figures["truncated"], figures["replayed"]) == (2, 2, 1)
    assert Counter(r["source_topic"] for r in figures["by_reason"]) == {topics.events: 1}


def test_bad_arguments_and_missing_topics_give_one_line_errors(namespace: Namespace) -> None:
    ns = namespace
    bad_time = cli(ns, "dlq", "stats", "--since", "last tuesday")
    assert bad_time.returncode == 2
    assert bad_time.stderr.strip().splitlines() == [
        "error: 'last tuesday' is neither epoch milliseconds nor an ISO 8601 time"
    ]
    backwards = cli(ns, "dlq", "replay", "--since", "2026-11-30", "--until", "2026-11-29")
    assert (
        backwards.returncode == 2 and backwards.stderr.strip() == "error: --until must be later than --since"
    )
    missing = cli(
        ns, "dlq", "stats", "--idle", "1", env={"STREAMREC_TOPIC_PREFIX": "nothing-" + uuid.uuid4().hex[:6]}
    )
    assert missing.returncode == 1
    [line] = missing.stderr.strip().splitlines()
    assert line.startswith("error: topic") and "does not exist" in line
    nobody = cli(ns, "dlq", "stats", env={"STREAMREC_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert nobody.returncode == 1
    [line] = nobody.stderr.strip().splitlines()
    assert line.startswith("error: cannot reach Kafka at 127.0.0.1:1")
