"""The whole pipeline on a real Redis Cluster (3 masters, 3 replicas on loopback) with 4 partitions and
2 workers, fed by a plain kafka-python producer: fresh answers, dead letters, idempotent replays, state
spread over every master, and the API's cluster-only paths (readiness, catalog search)."""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import requests
from kafka import KafkaProducer

from streamrec.devtools.localstack import LOOPBACK, LocalCluster
from streamrec.state import applied_events
from streamrec.topics import Topics, ensure_topics
from tests.conftest import Namespace, needs_dataset, wait_until
from tests.integration.test_eval import movielens_slice, streamrec
from tests.integration.test_pipeline import _dlq_records
from tests.state_snapshot import snapshot, state_only

pytestmark = [pytest.mark.e2e, pytest.mark.broker, pytest.mark.redis]

GROUPS = 4  # shoppers of group g view g's items in order: a known co-occurrence pattern


def _history(n_users: int, ts0: int) -> list[dict[str, Any]]:
    rows = []
    for u in range(n_users):
        g = u % GROUPS
        for j in range(4):
            rows.append(
                {
                    "event_id": f"h-{u}-{j}",
                    "type": "view" if j < 3 else "add_to_cart",
                    "user_id": f"shopper-{u}",
                    "item_id": f"g{g}-item-{j}",
                    "ts": ts0 + u * 1000 + j,
                }
            )
    return rows


def _send(producer: KafkaProducer, topic: str, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        producer.send(topic, key=row["user_id"].encode(), value=orjson.dumps(row))
    producer.flush()


def _recs(api: str, user: str) -> dict[str, Any]:
    resp = requests.get(f"{api}/v1/users/{user}/recommendations", params={"k": 5}, timeout=5)
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()["data"]
    return data


def _ready(api: str) -> bool:
    try:
        return requests.get(f"{api}/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _keys_per_master(cluster: LocalCluster, ns: Namespace) -> dict[int, Counter[str]]:
    """Per master: how many of this namespace's keys of each group (u, i, g, st, ...) it holds."""
    out: dict[int, Counter[str]] = {}
    for port in cluster.masters():
        node = redis.Redis(host=LOOPBACK, port=port)
        groups: Counter[str] = Counter()
        for key in node.scan_iter(match=ns.keys.pattern(), count=1000):
            found = re.search(rb"\{(\w+)", key)
            groups[found.group(1).decode() if found else "untagged"] += 1
        node.close()
        out[port] = groups
    return out


def _state(ns: Namespace) -> dict[bytes, Any]:
    return state_only(snapshot(ns.redis, ns.keys.pattern()), ns.keys)


def test_two_workers_on_a_cluster_fold_fresh_dead_letter_bad_input_and_ignore_replays(
    cluster_namespace: Namespace, redis_cluster: LocalCluster
) -> None:
    ns, topics = cluster_namespace, Topics(cluster_namespace.settings.topic_prefix)
    partitions = ns.settings.partitions
    assert partitions == 4 and ns.settings.redis_cluster
    ensure_topics(ns.settings.kafka_bootstrap, topics, partitions)
    workers = [ns.start("worker-a", "worker"), ns.start("worker-b", "worker")]
    ns.start("api", "api")
    api = f"http://127.0.0.1:{ns.settings.api_port}"
    wait_until(lambda: _ready(api), 30, what="the API to be ready on the cluster")

    producer = KafkaProducer(bootstrap_servers=ns.settings.kafka_bootstrap, acks="all", linger_ms=0)
    history = _history(120, int(time.time() * 1000) - 3_600_000)
    _send(producer, topics.events, history)
    wait_until(lambda: applied_events(ns.redis, ns.keys) == len(history), 60, what="the history folded")

    # both workers joined the group and own partitions of the events topic
    owned = re.compile(rf"\| {re.escape(topics.events)}\s+\| \{{\d")
    assert all(owned.search((ns.log_dir / f"worker-{x}.log").read_text()) for x in "ab")

    # users, items, popularity shards and stats are spread over every master
    spread = _keys_per_master(redis_cluster, ns)
    assert len(spread) == 3
    for port, groups in spread.items():
        assert groups["u"] > 0 and groups["i"] > 0, f"master {port} holds {dict(groups)}"
    assert sum(g["g"] for g in spread.values()) > 0 and sum(g["st"] for g in spread.values()) > 0

    # a new user's view, published with plain kafka-python, changes their answer within a second
    user = f"new-{uuid.uuid4().hex[:6]}"
    assert _recs(api, user)["strategy"] == "popular"
    fresh = {"event_id": f"f-{user}", "type": "view", "user_id": user, "item_id": "g1-item-0"}
    _send(producer, topics.events, [fresh])
    sent = time.monotonic()
    after = wait_until(
        lambda: (r := _recs(api, user))["strategy"] == "personalized" and r,
        5,
        interval=0.01,
        what="personalised recommendations",
    )
    elapsed = time.monotonic() - sent
    (ns.log_dir / "freshness.txt").write_text(f"view -> changed recommendations: {elapsed * 1000:.0f} ms\n")
    assert elapsed < 1.0, f"the view took {elapsed:.3f}s to show"
    assert [row["item_id"] for row in after["items"][:3]] == ["g1-item-1", "g1-item-2", "g1-item-3"]
    wait_until(lambda: applied_events(ns.redis, ns.keys) == len(history) + 1, 10, what="the view counted")
    first = _state(ns)

    # every event again (same ids), then malformed input on every partition: its dead letters arrive
    # after the replay was read, and nothing in the state has changed
    _send(producer, topics.events, [*history, fresh])
    bad = [b"{not json", orjson.dumps({"event_id": "x1", "type": "teleport", "user_id": "u"})]
    for partition in range(partitions):
        producer.send(topics.events, key=b"bad", value=bad[partition % 2], partition=partition)
    producer.flush()
    dead = _dlq_records(ns, partitions, timeout=30)
    assert len(dead) == partitions
    reasons = " | ".join(d["reason"] for d in dead)
    assert "not valid JSON" in reasons and "type" in reasons
    assert sorted(d["source"]["partition"] for d in dead) == list(range(partitions))
    assert _state(ns) == first
    assert applied_events(ns.redis, ns.keys) == len(history) + 1
    assert all(w.alive() for w in workers)
    producer.close()


def test_catalog_search_and_model_rows_on_a_cluster(cluster_namespace: Namespace) -> None:
    """Catalog search scans every master; a published model is read back through the API's store."""
    from streamrec.api.app import create_app
    from streamrec.api.catalog_search import CatalogSearch
    from streamrec.contract import CatalogItem
    from streamrec.fold import StateWriter
    from streamrec.modelstore import ModelStore

    ns = cluster_namespace
    writer = StateWriter(ns.redis, ns.keys, ns.settings.scoring, cluster=True)
    items = [
        CatalogItem(item_id=f"lamp-{n}", title=f"Desk lamp {n}", category="home", ts=1_760_000_000_000)
        for n in range(60)
    ]
    assert writer.upsert_items(items) == 60
    app = create_app(ns.settings)  # its own cluster client, built from the settings as in production
    search = CatalogSearch(ns.redis, ns.keys, app.extensions["streamrec"].recommender)
    found = search.search("desk lamp", 100)
    assert sorted(p.item_id for p in found) == sorted(i.item_id for i in items)

    store = ModelStore(ns.redis, ns.keys)
    table = {f"lamp-{n}": ([f"lamp-{(n + 1) % 60}"], [0.5]) for n in range(60)}
    store.publish("v1", table, {"family": "test"})
    store.activate("v1")
    version, rows = store.neighbours(["lamp-3", "lamp-59", "nope"])
    assert version == "v1" and rows == {"lamp-3": {"lamp-4": 0.5}, "lamp-59": {"lamp-0": 0.5}}
    with app.test_client() as http:
        ready = http.get("/readyz").get_json()
    assert ready["data"]["checks"]["redis"] == "ok"


@needs_dataset("movielens-100k")
def test_eval_train_and_model_commands_on_a_cluster(
    redis_cluster: LocalCluster, redis_server: Any, tmp_path: Path
) -> None:
    """``eval --redis-url <node> --redis-cluster`` folds through the cluster schedule and ranks as on one
    Redis; ``train`` publishes to the cluster and ``model`` commands switch it."""
    data = movielens_slice(tmp_path, rows=2000)
    figures = {}
    for name, url, flag in (
        ("cluster", redis_cluster.url, "--redis-cluster"),
        ("standalone", f"redis://127.0.0.1:{redis_server.port}/0", "--no-redis-cluster"),
    ):
        out = tmp_path / f"{name}.json"
        args = ["eval", "--dataset", str(data), "--format", "movielens", "--models", "streamrec-live"]
        streamrec(*args, "--json", str(out), "--redis-url", url, flag, "--no-progress")
        (result,) = json.loads(out.read_text())["results"]
        figures[name] = result
    # the same events folded by the two schedules: equal but for neighbour lists trimmed at batch ends
    assert figures["cluster"]["hr_at_10"] == pytest.approx(figures["standalone"]["hr_at_10"], abs=0.01)
    assert figures["cluster"]["ndcg_at_10"] == pytest.approx(figures["standalone"]["ndcg_at_10"], abs=0.01)
    client = redis.cluster.RedisCluster.from_url(redis_cluster.url)
    assert not list(client.scan_iter(match="eval-*")), "eval left keys on the cluster"

    env = {
        **os.environ,
        "STREAMREC_REDIS_URL": redis_cluster.url,
        "STREAMREC_REDIS_CLUSTER": "1",
        "STREAMREC_REDIS_PREFIX": f"m{uuid.uuid4().hex[:8]}",
    }
    trained = streamrec("train", "--dataset", str(data), "--format", "movielens", env=env)
    version = re.search(r"model (\S+) active", trained)
    assert version, trained
    listed = streamrec("model", "list", env=env)
    assert f"* {version.group(1)}" in listed
    assert "no active model" in streamrec("model", "off", env=env)
    assert f"active model: {version.group(1)}" in streamrec("model", "activate", version.group(1), env=env)
    client.close()


def test_the_trainer_reads_catalog_features_across_the_clusters_slots(redis_cluster: LocalCluster) -> None:
    """Catalog records live in each item's own hash slot; the trainer's pipelined read gathers them."""
    from streamrec.contract import CatalogItem, now_ms
    from streamrec.fold import StateWriter
    from streamrec.keys import Keys
    from streamrec.settings import ScoringSettings
    from streamrec.trainer import features

    client = redis.cluster.RedisCluster.from_url(redis_cluster.url)
    keys = Keys(f"f{uuid.uuid4().hex[:8]}")
    items = [f"item-{n}" for n in range(60)]
    writer = StateWriter(client, keys, ScoringSettings(), cluster=True)
    writer.upsert_items(
        [CatalogItem(item_id=i, category=f"c{n % 3}", ts=now_ms()) for n, i in enumerate(items)]
    )
    slots = {client.keyslot(keys.catalog(i)) for i in items}
    assert len({client.get_node_from_key(keys.catalog(i)).name for i in items}) == 3 and len(slots) > 3
    found = features.read_catalog_features(client, keys, [*items, "nowhere"])
    assert found == {i: (f"category=c{n % 3}",) for n, i in enumerate(items)}
    client.close()
