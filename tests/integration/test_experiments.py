"""A/B experiments on a real Redis (and the scripts on a real Redis Cluster): the admin endpoints, the split
of a placement's requests between variants (sticky across processes), exposures, and the worker's
credit of events to variants exactly once under redelivery and a crash between fold and credit."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from streamrec.api.app import create_app
from streamrec.api.extensions import exposures_of
from streamrec.contract import Event
from streamrec.devtools.localstack import LocalCluster, ManagedProcess
from streamrec.experiment_store import ExperimentCredits, ExperimentStore, credits_of
from streamrec.experiments import assign, experiment_recommendation_id, parse_experiment
from streamrec.fold import APPLIED, AsyncStateWriter, async_redis_client
from streamrec.fold import redis_client as client_for
from streamrec.keys import Keys
from streamrec.settings import Settings
from streamrec.stream_processor.fold import RawMessage
from streamrec.stream_processor.handler import BatchHandler
from tests.conftest import wait_until

pytestmark = pytest.mark.redis

ADMIN = "ak-" + uuid.uuid4().hex
AS_ADMIN = {"X-API-Key": ADMIN}
HOME = {"strategy": "popular"}
HOME_PERSONAL = {"strategy": "personal"}
AB = {
    "placement": "home",
    "variants": [
        {"name": "control", "weight": 1, "use": "home"},
        {"name": "personal", "weight": 1, "use": "home-personal"},
    ],
    "state": "running",
}


@pytest.fixture
def settings(redis_server: ManagedProcess, prefix: str) -> Settings:
    return Settings(
        redis_prefix=prefix,
        redis_url=f"redis://127.0.0.1:{redis_server.port}/0",
        api_keys=f"ops={ADMIN}:admin",
    )


def _app(settings: Settings) -> Flask:
    return create_app(settings)


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    app = _app(settings)
    yield app
    exposures_of(app).close()
    app.extensions["streamrec"].redis.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _setup(client: FlaskClient, experiment: dict[str, Any] = AB) -> dict[str, Any]:
    assert client.put("/v1/admin/placements/home", json=HOME, headers=AS_ADMIN).status_code == 201
    put = client.put("/v1/admin/placements/home-personal", json=HOME_PERSONAL, headers=AS_ADMIN)
    assert put.status_code == 201
    made = client.put("/v1/admin/experiments/home-ab", json=experiment, headers=AS_ADMIN)
    assert made.status_code == 201, made.json
    return made.json["data"]  # type: ignore[no-any-return]


def test_every_experiment_endpoint_needs_an_admin_key(client: FlaskClient) -> None:
    for method, path in [
        ("put", "/v1/admin/experiments/x"),
        ("get", "/v1/admin/experiments/x"),
        ("delete", "/v1/admin/experiments/x"),
        ("get", "/v1/admin/experiments"),
        ("get", "/v1/admin/experiments/x/report"),
    ]:
        assert getattr(client, method)(path, json={}).status_code == 401, (method, path)


def test_bad_documents_are_400_with_the_path_and_references_are_checked(client: FlaskClient) -> None:
    bad = {**AB, "variants": [{"name": "a", "weight": 0, "use": "home"}, AB["variants"][1]]}
    resp = client.put("/v1/admin/experiments/home-ab", json=bad, headers=AS_ADMIN)
    assert resp.status_code == 400 and resp.json["details"]["path"] == "$.variants[0].weight"
    assert resp.json["code"] == 1008
    one = {**AB, "variants": AB["variants"][:1]}
    assert client.put("/v1/admin/experiments/x", json=one, headers=AS_ADMIN).json["details"]["path"] == (
        "$.variants"
    )
    missing = client.put("/v1/admin/experiments/home-ab", json=AB, headers=AS_ADMIN)
    assert missing.status_code == 409 and "no placement 'home'" in missing.json["msg"]
    assert missing.json["details"]["path"] == "$.placement"
    assert client.put("/v1/admin/experiments/a.b", json=AB, headers=AS_ADMIN).status_code == 400
    assert client.get("/v1/admin/experiments/nope", headers=AS_ADMIN).status_code == 404
    assert client.get("/v1/admin/experiments/nope/report", headers=AS_ADMIN).status_code == 404
    assert client.get("/v1/admin/experiments", headers=AS_ADMIN).json["data"] == {"experiments": []}


def test_round_trip_conflict_and_delete(client: FlaskClient, redis_client: redis.Redis, prefix: str) -> None:
    made = _setup(client)
    assert made["experiment"] == AB and made["run"] == 1
    again = client.put("/v1/admin/experiments/home-ab", json={**AB, "state": "stopped"}, headers=AS_ADMIN)
    assert again.status_code == 200 and again.json["data"]["run"] == 1  # a replace keeps the run
    assert client.put("/v1/admin/experiments/home-ab", json=AB, headers=AS_ADMIN).status_code == 200
    rival = client.put("/v1/admin/experiments/rival", json=AB, headers=AS_ADMIN)
    assert rival.status_code == 409 and "home-ab" in rival.json["msg"]
    listed = client.get("/v1/admin/experiments", headers=AS_ADMIN).json["data"]["experiments"]
    assert [e["name"] for e in listed] == ["home-ab"]
    assert client.delete("/v1/admin/experiments/home-ab", headers=AS_ADMIN).status_code == 200
    assert redis_client.keys(f"{prefix}:{{x:home-ab}}*") == []
    remade = client.put("/v1/admin/experiments/home-ab", json=AB, headers=AS_ADMIN)
    assert remade.status_code == 201 and remade.json["data"]["run"] == 2  # a new run: old ids count nothing


def test_requests_are_split_sticky_across_processes_and_stopping_serves_the_placement(
    client: FlaskClient, settings: Settings
) -> None:
    _setup(client)
    experiment = parse_experiment("home-ab", AB, 1)
    other = _app(settings)  # a second API process: the same assignment, from nothing but the names
    try:
        seen = {}
        for n in range(40):
            user = f"shopper-{n}"
            a = client.get(f"/v1/users/{user}/recommendations?placement=home").json["data"]
            b = other.test_client().get(f"/v1/users/{user}/recommendations?placement=home").json["data"]
            expected = assign(experiment, user).name
            assert a["experiment"] == b["experiment"] == {"name": "home-ab", "variant": expected}
            assert a["recommendation_id"].endswith(f".1.home-ab.{expected}")
            if expected == "control":  # the control's placement is popular only (nothing is folded here)
                assert a["strategy"] in ("popular", "empty")
            seen[user] = expected
            listing = client.get(f"/v1/popular?placement=home&user_id={user}").json["data"]
            assert listing["experiment"]["variant"] == expected
        assert set(seen.values()) == {"control", "personal"}
        anonymous = client.get("/v1/popular?placement=home").json["data"]
        assert "experiment" not in anonymous and anonymous["placement"] == "home"
        # exposures: 40 shoppers, 120 answers from two processes, split as assigned
        exposures_of(client.application).flush()
        exposures_of(other).flush()
        report = client.get("/v1/admin/experiments/home-ab/report", headers=AS_ADMIN).json["data"]["report"]
        by_name = {v["name"]: v for v in report["variants"]}
        for name in ("control", "personal"):
            assert by_name[name]["exposed"] == sum(1 for v in seen.values() if v == name)
            assert by_name[name]["answers"] == 3 * by_name[name]["exposed"]
        stopped = client.put(
            "/v1/admin/experiments/home-ab", json={**AB, "state": "stopped"}, headers=AS_ADMIN
        )
        assert stopped.status_code == 200

        def served_plain() -> bool:
            got = other.test_client().get("/v1/users/shopper-1/recommendations?placement=home").json["data"]
            return "experiment" not in got and got["strategy"] in ("popular", "empty")

        wait_until(served_plain, timeout=2, what="the stopped experiment's placement served plain")
    finally:
        exposures_of(other).close()
        other.extensions["streamrec"].redis.close()


def _event(n: int, user: str, rec_id: str | None, kind: str = "purchase", **extra: Any) -> Event:
    fields: dict[str, Any] = {"item_id": f"sku-{n % 7}", **extra}
    return Event(
        event_id=f"e{n}-{uuid.uuid4().hex[:6]}", type=kind, user_id=user, recommendation_id=rec_id, **fields
    )


def _raw(events: list[Event], first_offset: int) -> list[RawMessage]:
    return [
        RawMessage("events", 0, first_offset + i, e.user_id.encode(), e.to_json())
        for i, e in enumerate(events)
    ]


def test_the_worker_credits_once_under_redelivery_and_a_crash_between_fold_and_credit(
    client: FlaskClient, settings: Settings, redis_client: redis.Redis, prefix: str
) -> None:
    _setup(client)
    keys = Keys(prefix)
    store = ExperimentStore(redis_client, keys)
    experiment = store.get("home-ab")
    assert experiment is not None
    users = [f"buyer-{n}" for n in range(12)]
    ids = {}
    for user in users:
        ids[user] = client.get(f"/v1/users/{user}/recommendations?placement=home").json["data"][
            "recommendation_id"
        ]
    exposures_of(client.application).flush()
    events = [_event(n, u, ids[u], price=10.0, quantity=2) for n, u in enumerate(users)]
    events += [_event(100 + n, u, ids[u], kind="view") for n, u in enumerate(users)]
    # not credited: no id, an id of no experiment, another shopper's answer (not in that variant),
    # an id of an earlier run, and a type that is not credited
    control_user = next(u for u in users if assign(experiment, u).name == "control")
    personal_user = next(u for u in users if assign(experiment, u).name == "personal")
    stray = [
        _event(200, "nobody", None),
        _event(201, users[0], "popular.0123456789abcdef0123456789abcdef"),
        _event(202, personal_user, ids[control_user]),
        _event(203, users[0], ids[users[0]].replace(".1.home-ab.", ".7.home-ab.")),
        _event(204, users[0], ids[users[0]], kind="search", query="socks", item_id=None),
    ]

    async def run() -> None:
        aclient = async_redis_client(settings.redis_url, False)
        writer = AsyncStateWriter(aclient, keys, settings.scoring)
        credits = ExperimentCredits(aclient, keys, 15 * 60 * 1000)
        sent = []

        async def send_dead(raw: RawMessage, record: bytes) -> None:
            sent.append(record)

        handler = BatchHandler(writer, send_dead, credits=credits)
        raw = _raw(events + stray, 0)
        # the worker folds the first half and dies before crediting it
        half = len(raw) // 2
        folded = await writer.apply(events[:half], [None] * half)
        assert set(folded.outcomes) == {APPLIED}
        await handler.handle(raw, "event")  # redelivered after the restart, with the rest
        await handler.handle(raw, "event")  # and once more
        retry = [e.model_copy(update={}) for e in events[:3]]  # a client's retry: same ids, new offsets
        await handler.handle(_raw(retry, 1000), "event")
        assert sent == []
        await aclient.aclose()

    before = {k for k in redis_client.scan_iter(match=f"{prefix}:{{x:*", count=1000)}
    asyncio.run(run())
    counts = {c.name: c for c in store.counts(experiment)}
    for name in ("control", "personal"):
        mine = [u for u in users if assign(experiment, u).name == name]
        c = counts[name]
        assert (c.purchases, c.views, c.converted, c.exposed) == (len(mine), len(mine), len(mine), len(mine))
        assert c.revenue == pytest.approx(20.0 * len(mine))
        assert c.revenue_sq == pytest.approx(400.0 * len(mine))
        assert c.carts == 0
    after = {k for k in redis_client.scan_iter(match=f"{prefix}:{{x:*", count=1000)}
    assert after - before <= {
        k.encode() for k in (keys.experiment_credited("home-ab"), keys.experiment_marks("home-ab"))
    } | {keys.experiment_buyers("home-ab", v).encode() for v in ("control", "personal")}


def test_credit_and_exposure_scripts_on_a_cluster(redis_cluster: LocalCluster) -> None:
    client = client_for(redis_cluster.url, cluster=True)
    keys = Keys(f"c{uuid.uuid4().hex[:8]}")
    try:
        store = ExperimentStore(client, keys)
        _, _, experiment = store.put(parse_experiment("ab", AB))
        from streamrec.experiment_store import Exposures

        exposures = Exposures(client, keys)
        users = [f"u{n}" for n in range(30)]
        for user in users:
            exposures.record(experiment, assign(experiment, user), user)
        assert exposures.flush() == 30
        rec = {u: f"personalized.{'ab' * 12}.{experiment.run}.ab.{assign(experiment, u).name}" for u in users}
        events = [_event(n, u, rec[u], price=5.0) for n, u in enumerate(users)]

        async def credit() -> list[int]:
            aclient = async_redis_client(redis_cluster.url, True)
            try:
                c = ExperimentCredits(aclient, keys, 60_000)
                credits = credits_of(events, [(0, n) for n in range(len(events))])
                first = await c.credit(credits)
                return first + await c.credit(credits)
            finally:
                await aclient.aclose()

        results = asyncio.run(credit())
        # the script's own assignment (redis.sha1hex, in Lua) agrees with Python's for every shopper
        assert results == [1] * 30 + [-1] * 30
        counts = store.counts(experiment)
        assert sum(c.exposed for c in counts) == 30 and sum(c.converted for c in counts) == 30
        assert sum(c.answers for c in counts) == 30
        assert store.memory_bytes(experiment) > 0
        assert store.delete("ab")
        assert orjson.loads(orjson.dumps(store.all())) == {}
    finally:
        client.close()


def test_the_cli_lists_and_reports(client: FlaskClient, settings: Settings, prefix: str) -> None:
    from typer.testing import CliRunner

    from streamrec.cli.main import app as cli

    _setup(client)
    for n in range(10):
        client.get(f"/v1/users/s{n}/recommendations?placement=home")
    exposures_of(client.application).flush()
    env = {"STREAMREC_REDIS_URL": settings.redis_url, "STREAMREC_REDIS_PREFIX": prefix}
    listed = CliRunner().invoke(cli, ["experiment", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    assert "home-ab" in listed.output and "personal 1 -> home-personal" in listed.output
    reported = CliRunner().invoke(cli, ["experiment", "report", "home-ab"], env=env)
    assert reported.exit_code == 0, reported.output
    assert "control" in reported.output and "personal" in reported.output and "SRM" in reported.output
    missing = CliRunner().invoke(cli, ["experiment", "report", "nope"], env=env)
    assert missing.exit_code == 2 and "no experiment 'nope'" in missing.output


def test_a_a_tests_are_significant_at_5_percent_in_at_most_2_of_20(
    redis_client: redis.Redis, settings: Settings, prefix: str
) -> None:
    """20 A/A experiments (seeds 0-19, none chosen), each through the real pieces: the hash assignment,
    the API's exposure script and the worker's credit script on a real Redis, and the report. Both
    variants serve the same placement; each shopper buys with a propensity drawn from hidden tastes
    (Beta(1, 12): about 8 % on average, very uneven), the same whichever variant they are in."""
    import random

    from streamrec.experiment_stats import report
    from streamrec.experiment_store import Exposures

    keys = Keys(prefix)
    store = ExperimentStore(redis_client, keys)
    exposures = Exposures(redis_client, keys)
    significant, srm = [], []
    for seed in range(20):
        rng = random.Random(seed)
        doc = {"placement": "home", "variants": [{"name": "a", "use": "home"}, {"name": "b", "use": "home"}]}
        _, _, experiment = store.put(parse_experiment(f"aa-{seed}", doc))
        events = []
        for n in range(2000):
            user = f"s{seed}-{n}"
            variant = assign(experiment, user)
            exposures.record(experiment, variant, user)
            if rng.random() < rng.betavariate(1, 12):
                rec = experiment_recommendation_id("personalized", uuid.uuid4().hex, experiment, variant)
                events.append(_event(n, user, rec, price=round(rng.uniform(5, 50), 2)))
        exposures.flush()

        async def credit(events: list[Event] = events) -> list[int]:
            aclient = async_redis_client(settings.redis_url, False)
            try:
                c = ExperimentCredits(aclient, keys, 60_000)
                return await c.credit(credits_of(events, [(0, n) for n in range(len(events))]))
            finally:
                await aclient.aclose()

        assert asyncio.run(credit()) == [1] * len(events)
        rep = report(store.counts(experiment))
        assert sum(v.exposed for v in rep.variants) == 2000
        significant.append(rep.variants[1].p_value < 0.05)  # type: ignore[operator]
        srm.append(rep.srm)
        store.delete(experiment.name)
    print(f"A/A: {sum(significant)} of 20 significant at 5 %, {sum(srm)} flagged for sample-ratio mismatch")
    assert sum(significant) <= 2, significant
    assert not any(srm)


def test_forgetting_offsets_forgets_the_experiments_credit_watermarks(
    redis_client: redis.Redis, settings: Settings, prefix: str
) -> None:
    """A broker that numbers records from 0 again (``streamrec up``'s Tansu after a restart, a recreated
    topic): without this, every event of the new run would look credited already (a new user found it)."""
    from streamrec.watermarks import forget_offsets, read_watermarks

    keys = Keys(prefix)
    store = ExperimentStore(redis_client, keys)
    _, _, experiment = store.put(parse_experiment("ab", AB))

    def events(run: str) -> list[Event]:
        out = []
        for n in range(6):
            user = f"{run}-{n}"
            rec = experiment_recommendation_id(
                "popular", uuid.uuid4().hex, experiment, assign(experiment, user)
            )
            out.append(_event(n, user, rec, kind="view"))
        return out

    async def credit(batch: list[Event]) -> list[int]:
        aclient = async_redis_client(settings.redis_url, False)
        try:
            c = ExperimentCredits(aclient, keys, 60_000)
            return await c.credit(credits_of(batch, [(0, 100 + n) for n in range(len(batch))]))
        finally:
            await aclient.aclose()

    assert asyncio.run(credit(events("first"))) == [1] * 6
    later = events("second")  # new events, at the offsets the old run used
    assert asyncio.run(credit(later)) == [-1] * 6  # what a kept watermark does to them
    found = read_watermarks(redis_client, keys)
    assert found.experiment_keys == [keys.experiment_marks("ab")]
    forget_offsets(redis_client, keys)
    assert read_watermarks(redis_client, keys).experiment_keys == []
    assert asyncio.run(credit(later)) == [1] * 6
    assert sum(c.views for c in store.counts(experiment)) == 12
