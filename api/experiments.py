"""The experiment admin endpoints: ``PUT/GET/DELETE /v1/admin/experiments/{name}``,
``GET /v1/admin/experiments`` and ``GET /v1/admin/experiments/{name}/report`` (an admin key is required:
``api.security`` checks it for every endpoint of this blueprint).

``init_app`` also gives the app its per-process ``ExperimentCache`` (``experiments_of``), read by the
recommendation endpoints to split a placement's requests, and its ``Exposures`` writer
(``exposures_of``). A change made here is in effect in every API process within 250 ms plus one Redis
round trip, as for placements.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask

from streamrec import experiment_stats
from streamrec.api.errors import CONFLICT, INVALID_EXPERIMENT, INVALID_PARAMETER, NOT_FOUND, ApiError
from streamrec.api.extensions import (
    EXPERIMENTS,
    EXPOSURES,
    experiments_of,
    exposures_of,
    placements_of,
    services,
)
from streamrec.api.views import _json_body, _redis_guard, ok
from streamrec.experiment_store import ExperimentCache, ExperimentsFull, ExperimentStore, Exposures
from streamrec.experiments import Experiment, experiment_name_problem, parse_experiment
from streamrec.keys import Keys
from streamrec.placements import PlacementError
from streamrec.settings import keys_of

bp = Blueprint("admin_experiments", __name__)


def _store() -> ExperimentStore:
    store: ExperimentStore = experiments_of().store
    return store


def _check_name(name: str) -> None:
    problem = experiment_name_problem(name)
    if problem:
        raise ApiError(400, INVALID_PARAMETER, f"name: {problem}")


def _unknown(name: str) -> ApiError:
    return ApiError(404, NOT_FOUND, f"no experiment {name!r} (GET /v1/admin/experiments lists them)")


def _invalid(path: str, problem: str) -> ApiError:
    return ApiError(400, INVALID_EXPERIMENT, f"{path}: {problem}", {"path": path, "problem": problem})


def _missing(path: str, name: str) -> ApiError:
    """A valid document naming a placement that does not exist: it conflicts with the current state."""
    problem = f"no placement {name!r} (create it first with PUT /v1/admin/placements/{name})"
    return ApiError(409, CONFLICT, f"{path}: {problem}", {"path": path, "problem": problem})


def _check_references(experiment: Experiment) -> None:
    """Every placement the experiment names exists (else 409), and no other running experiment splits
    its placement (two would each claim the same requests: 409)."""
    placements = placements_of().store.all()
    if experiment.placement not in placements:
        raise _missing("$.placement", experiment.placement)
    for i, v in enumerate(experiment.variants):
        if v.use not in placements:
            raise _missing(f"$.variants[{i}].use", v.use)
    if not experiment.running:
        return
    for name, stored in _store().all().items():
        other = stored["document"]
        same = name != experiment.name and other.get("placement") == experiment.placement
        if same and other.get("state", "running") == "running":
            raise ApiError(
                409,
                CONFLICT,
                f"experiment {name!r} is running on placement {experiment.placement!r}; stop or "
                "delete it first",
            )


def _shown(experiment: Experiment) -> dict[str, Any]:
    return {"name": experiment.name, "run": experiment.run, "experiment": experiment.document()}


@bp.put("/v1/admin/experiments/<name>")
@_redis_guard
def put_experiment(name: str):  # type: ignore[no-untyped-def]
    """Create or replace an experiment; in effect in every API process within 1 s."""
    _check_name(name)
    try:
        experiment = parse_experiment(name, _json_body())
    except PlacementError as exc:
        raise _invalid(exc.path, exc.problem) from None
    _check_references(experiment)
    try:
        created, version, stored = _store().put(experiment)
    except ExperimentsFull as exc:
        raise ApiError(409, CONFLICT, str(exc)) from None
    return ok({**_shown(stored), "version": version}, 201 if created else 200)


@bp.get("/v1/admin/experiments/<name>")
@_redis_guard
def get_experiment(name: str):  # type: ignore[no-untyped-def]
    """One experiment's document and run."""
    _check_name(name)
    experiment = _store().get(name)
    if experiment is None:
        raise _unknown(name)
    return ok(_shown(experiment))


@bp.delete("/v1/admin/experiments/<name>")
@_redis_guard
def delete_experiment(name: str):  # type: ignore[no-untyped-def]
    """Delete an experiment and all its counts; its placement is served as it is within 1 s."""
    _check_name(name)
    if not _store().delete(name):
        raise _unknown(name)
    return ok({"name": name, "deleted": True})


@bp.get("/v1/admin/experiments")
@_redis_guard
def list_experiments():  # type: ignore[no-untyped-def]
    """Every experiment with its document, by name."""
    rows = [{"name": n, "run": s["run"], "experiment": s["document"]} for n, s in _store().all().items()]
    return ok({"experiments": rows})


@bp.get("/v1/admin/experiments/<name>/report")
@_redis_guard
def report(name: str):  # type: ignore[no-untyped-def]
    """Per variant: exposed shoppers, answers, attributed events and revenue, conversion with its
    interval, lift against the first variant with its interval and p-values; the sample-ratio test."""
    _check_name(name)
    experiment = _store().get(name)
    if experiment is None:
        raise _unknown(name)
    exposures_of().flush()  # this process's last 200 ms; other processes send theirs within 200 ms
    rep = experiment_stats.report(_store().counts(experiment))
    return ok({**_shown(experiment), "report": rep.to_json()})


def init_app(app: Flask, keys: Keys | None = None) -> None:
    """Register the endpoints; give the app its per-process experiment cache and exposure writer."""
    svc = services(app)
    k = keys or keys_of(svc.settings)
    app.extensions[EXPERIMENTS] = ExperimentCache(ExperimentStore(svc.redis, k))
    app.extensions[EXPOSURES] = Exposures(svc.redis, k)
    app.register_blueprint(bp)
