"""The experiments' Prometheus series on the API's /metrics, read from a real Redis at scrape time: per
experiment and variant, the same numbers as the admin report, gone once the experiment is deleted, and
nothing (but a working /metrics) while Redis cannot be read."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from streamrec import experiment_stats, metrics
from streamrec.api.app import create_app
from streamrec.api.extensions import exposures_of
from streamrec.contract import Event
from streamrec.devtools.localstack import ManagedProcess, free_port
from streamrec.experiment_stats import VariantCounts
from streamrec.experiment_store import ExperimentCredits, ExperimentStore, credits_of
from streamrec.experiments import Experiment, assign, parse_experiment
from streamrec.fold import async_redis_client
from streamrec.keys import Keys
from streamrec.settings import Settings

ADMIN = "ak-" + uuid.uuid4().hex
AS_ADMIN = {"X-API-Key": ADMIN}
AB = {
    "placement": "home",
    "variants": [
        {"name": "control", "weight": 1, "use": "home"},
        {"name": "personal", "weight": 1, "use": "home-personal"},
    ],
    "state": "running",
}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def settings(redis_server: ManagedProcess, prefix: str) -> Settings:
    return Settings(
        redis_prefix=prefix,
        redis_url=f"redis://127.0.0.1:{redis_server.port}/0",
        api_keys=f"ops={ADMIN}:admin",
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    app = create_app(settings)
    yield app
    exposures_of(app).close()
    app.extensions["streamrec"].redis.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def experiment_series(client: FlaskClient) -> Samples:
    """Every ``streamrec_experiment_*`` sample of the app's /metrics, keyed by (name, sorted labels)."""
    resp = client.get("/metrics")
    assert resp.status_code == 200, resp.text[:200]
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
        if s.name.startswith("streamrec_experiment_")
    }


def at(samples: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"no {name}{labels} in {sorted(samples)}"
    return samples[key]


def _setup(client: FlaskClient, experiment: dict[str, Any] = AB) -> None:
    for placement, document in (
        ("home", {"strategy": "popular"}),
        ("home-personal", {"strategy": "personal"}),
    ):
        assert (
            client.put(f"/v1/admin/placements/{placement}", json=document, headers=AS_ADMIN).status_code
            == 201
        )
    made = client.put("/v1/admin/experiments/home-ab", json=experiment, headers=AS_ADMIN)
    assert made.status_code == 201, made.json


def _purchase(n: int, user: str, rec_id: str, kind: str = "purchase") -> Event:
    extra: dict[str, Any] = {"price": 10.0, "quantity": 2} if kind == "purchase" else {}
    return Event(
        event_id=f"e{n}-{uuid.uuid4().hex[:6]}",
        type=kind,
        user_id=user,
        item_id=f"sku-{n % 5}",
        recommendation_id=rec_id,
        **extra,
    )


def _credit(settings: Settings, keys: Keys, events: list[Event]) -> list[int]:
    async def run() -> list[int]:
        aclient = async_redis_client(settings.redis_url, False)
        try:
            return await ExperimentCredits(aclient, keys, 15 * 60 * 1000).credit(credits_of(events))
        finally:
            await aclient.aclose()

    return asyncio.run(run())


@pytest.mark.redis
def test_metrics_show_each_variant_as_the_report_does_and_forget_a_deleted_experiment(
    client: FlaskClient, settings: Settings, redis_client: redis.Redis, prefix: str
) -> None:
    assert experiment_series(client) == {}  # no experiment, no series
    _setup(client)
    store = ExperimentStore(redis_client, Keys(prefix))
    experiment = store.get("home-ab")
    assert experiment is not None
    users = [f"shopper-{n}" for n in range(40)]
    ids = {
        u: client.get(f"/v1/users/{u}/recommendations?placement=home").json["data"]["recommendation_id"]
        for u in users
    }
    exposures_of(client.application).flush()
    buyers = users[:8]
    events = [_purchase(n, u, ids[u]) for n, u in enumerate(buyers)]
    events += [_purchase(100 + n, u, ids[u], kind="view") for n, u in enumerate(buyers)]
    assert _credit(settings, Keys(prefix), events) == [1] * len(events)

    samples = experiment_series(client)
    rep = experiment_stats.report(store.counts(experiment))
    assert at(samples, "streamrec_experiment_running", experiment="home-ab") == 1
    for variant in ("control", "personal"):
        mine = [u for u in users if assign(experiment, u).name == variant]
        bought = [u for u in buyers if u in mine]
        shown = next(v for v in rep.variants if v.name == variant)
        xv = {"experiment": "home-ab", "variant": variant}
        assert at(samples, "streamrec_experiment_exposed_shoppers", **xv) == len(mine) == shown.exposed
        assert at(samples, "streamrec_experiment_answers_total", **xv) == len(mine) == shown.answers
        assert at(samples, "streamrec_experiment_converted_shoppers", **xv) == len(bought) == shown.converted
        assert at(samples, "streamrec_experiment_revenue_total", **xv) == pytest.approx(20.0 * len(bought))
        assert at(samples, "streamrec_experiment_weight", **xv) == 1
        for kind, n in (("view", len(bought)), ("add_to_cart", 0), ("purchase", len(bought))):
            assert at(samples, "streamrec_experiment_attributed_events_total", **xv, type=kind) == n
    assert rep.srm_p_value is not None
    assert at(samples, "streamrec_experiment_srm_p_value", experiment="home-ab") == pytest.approx(
        rep.srm_p_value, rel=1e-12
    )
    # bounded: one series per experiment (and per variant, and per type), nothing else
    assert {dict(labels).get("experiment") for _, labels in samples} == {"home-ab"}
    assert len(samples) == 2 + 2 * (5 + 3)

    stopped = client.put("/v1/admin/experiments/home-ab", json={**AB, "state": "stopped"}, headers=AS_ADMIN)
    assert stopped.status_code == 200
    assert at(experiment_series(client), "streamrec_experiment_running", experiment="home-ab") == 0

    assert client.delete("/v1/admin/experiments/home-ab", headers=AS_ADMIN).status_code == 200
    assert experiment_series(client) == {}


@pytest.mark.redis
def test_weights_changed_during_a_run_show_as_a_sample_ratio_mismatch(
    client: FlaskClient, redis_client: redis.Redis, prefix: str
) -> None:
    _setup(client)
    store = ExperimentStore(redis_client, Keys(prefix))
    experiment = store.get("home-ab")
    assert experiment is not None
    exposures = exposures_of(client.application)
    for n in range(300):
        user = f"u{n}"
        exposures.record(experiment, assign(experiment, user), user)
    exposures.flush()
    split = at(experiment_series(client), "streamrec_experiment_srm_p_value", experiment="home-ab")
    assert split > 0.001  # 300 shoppers split 1:1 as the weights say
    # the same run with new weights: the exposed counts gathered under 1:1 are now tested against 1:9
    skewed = {**AB, "variants": [AB["variants"][0], {**AB["variants"][1], "weight": 9}]}
    assert client.put("/v1/admin/experiments/home-ab", json=skewed, headers=AS_ADMIN).status_code == 200
    samples = experiment_series(client)
    assert at(samples, "streamrec_experiment_weight", experiment="home-ab", variant="personal") == 9
    assert at(samples, "streamrec_experiment_srm_p_value", experiment="home-ab") < 1e-6


def test_metrics_answer_without_experiment_series_while_redis_is_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = Settings(
        redis_prefix=f"t{uuid.uuid4().hex[:8]}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        api_change_feed=False,
    )
    app = create_app(down)
    try:
        with caplog.at_level(logging.WARNING, logger="streamrec.metrics"):
            resp = app.test_client().get("/metrics")
        assert resp.status_code == 200
        assert "streamrec_api_requests_total" in resp.text
        assert experiment_series(app.test_client()) == {}
        assert any("experiment metrics unavailable" in r.getMessage() for r in caplog.records)
    finally:
        exposures_of(app).close()
        app.extensions["streamrec"].redis.close()


def _counts(name: str, weight: float, exposed: int) -> VariantCounts:
    return VariantCounts(name, weight, exposed, exposed, 0, 0, 0, 0.0, 0, 0.0)


def test_the_srm_p_value_is_the_reports_and_is_left_out_while_nobody_is_exposed() -> None:
    experiment = parse_experiment(
        "ab", {**AB, "variants": [*AB["variants"], {**AB["variants"][0], "name": "third", "weight": 2}]}, 3
    )
    cases: list[tuple[Experiment, list[VariantCounts]]] = [
        (experiment, [_counts("control", 1, 510), _counts("personal", 1, 430), _counts("third", 2, 1100)]),
    ]
    nobody = parse_experiment("empty", AB, 4)
    cases.append((nobody, [_counts("control", 1, 0), _counts("personal", 1, 0)]))
    families = {f.name: f for f in metrics.ExperimentCollector(lambda: cases).collect()}
    srm = {s.labels["experiment"]: s.value for s in families["streamrec_experiment_srm_p_value"].samples}
    expected = experiment_stats.report(cases[0][1]).srm_p_value
    assert expected is not None and expected < 0.01
    assert srm == {"ab": pytest.approx(expected, rel=1e-12)}
    running = {s.labels["experiment"]: s.value for s in families["streamrec_experiment_running"].samples}
    assert running == {"ab": 1, "empty": 1}


def test_a_failing_read_exports_nothing(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> list[Any]:
        raise redis.exceptions.ConnectionError("Redis is gone")

    with caplog.at_level(logging.WARNING, logger="streamrec.metrics"):
        assert list(metrics.ExperimentCollector(broken).collect()) == []
    assert "Redis is gone" in caplog.text
