"""``streamrec bench --experiments``: what an A/B experiment costs (issue 29).

- **Speed**: answers of a placement inside a running experiment against the same placement outside one,
  measured back to back in alternating rounds on the same warmed API (the experiment is stopped and
  started between rounds, so only its machinery differs: assignment, the variant's id, the exposure).
- **Memory**: every key of one experiment after ``MEMORY_SHOPPERS`` distinct exposed shoppers (and one in
  twenty of them with an attributed purchase), measured by Redis (``MEMORY USAGE``), then deleted.

Writes experiments.json and experiments.md into the output folder.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from streamrec.contract import Event
from streamrec.devtools.bench import (
    PREFIX,
    SERVING_USERS,
    Stack,
    api_paths,
    beauty_shoppers,
    fold_with_a_worker,
    local_stack,
    say,
    start_api,
    wrk,
)
from streamrec.experiment_store import ExperimentCredits, ExperimentStore, Exposures, credits_of
from streamrec.experiments import Experiment, assign, experiment_recommendation_id, parse_experiment
from streamrec.keys import Keys
from streamrec.placement_store import PlacementStore
from streamrec.placements import parse_placement

MEMORY_SHOPPERS = 1_000_000
ROUNDS = 5
HOME = "bench-home"
AB = "bench-ab"
SPEED_TARGET = 0.9  # req/s inside an experiment ÷ the same placement outside one


def _experiment(state: str) -> Experiment:
    return parse_experiment(
        AB,
        {
            "placement": HOME,
            "variants": [{"name": "a", "weight": 1, "use": HOME}, {"name": "b", "weight": 1, "use": HOME}],
            "state": state,
        },
    )


def speed(stack: Stack, paths: list[str], seconds: float, warm_up_s: float) -> dict[str, Any]:
    """Alternating rounds of wrk on ``paths`` with ``placement=bench-home``: the experiment stopped
    (outside) and running (inside), ``ROUNDS`` pairs, the order flipped every round so that a drift of the
    machine does not favour one side; medians, the median of the pairs' ratios, and the exposures
    counted."""
    keys = Keys(PREFIX)
    PlacementStore(stack.client, keys).put(parse_placement(HOME, {"strategy": "personal"}))
    store = ExperimentStore(stack.client, keys)
    placed = [f"{p}&placement={HOME}" for p in paths]
    store.put(_experiment("running"))
    time.sleep(0.6)
    wrk(placed, stack.api_url, warm_up_s, stack.root)  # warmed inside and (same answers) outside
    rounds: dict[str, list[dict[str, float]]] = {"outside": [], "inside": []}
    pairs = (("outside", "stopped"), ("inside", "running"))
    for n in range(ROUNDS):
        for where, state in pairs if n % 2 == 0 else pairs[::-1]:
            store.put(_experiment(state))
            time.sleep(0.6)  # every API process follows within 250 ms
            f = wrk(placed, stack.api_url, seconds, stack.root)
            rounds[where].append(f)
            say(f"  round {n + 1} {where}: {f['requests_per_s']:,.0f} req/s, p99 {f['p99_ms']:.1f} ms")
    time.sleep(0.5)  # the API processes send their last exposures within 200 ms
    experiment = store.get(AB)
    assert experiment is not None
    counts = store.counts(experiment)
    med = {
        where: {
            "requests_per_s": statistics.median(f["requests_per_s"] for f in fs),
            "p50_ms": statistics.median(f["p50_ms"] for f in fs),
            "p99_ms": statistics.median(f["p99_ms"] for f in fs),
            "errors": sum(f["errors"] for f in fs),
        }
        for where, fs in rounds.items()
    }
    ratio = statistics.median(
        i["requests_per_s"] / o["requests_per_s"]
        for o, i in zip(rounds["outside"], rounds["inside"], strict=True)
    )
    return {
        "rounds": rounds,
        "median": med,
        "ratio": round(ratio, 3),
        "target": SPEED_TARGET,
        "met": ratio >= SPEED_TARGET,
        "exposed": {c.name: c.exposed for c in counts},
        "answers": {c.name: c.answers for c in counts},
    }


def memory(client: redis.Redis, url: str, shoppers: int = MEMORY_SHOPPERS) -> dict[str, Any]:
    """The Redis memory of one two-variant experiment after ``shoppers`` distinct exposed shoppers, one
    in twenty with an attributed purchase credited by the worker's script; the keys left once deleted."""
    from streamrec.fold import async_redis_client

    keys = Keys(f"xm{uuid.uuid4().hex[:6]}")
    store = ExperimentStore(client, keys)
    _, _, experiment = store.put(_experiment("running"))
    exposures = Exposures(client, keys)
    started = time.monotonic()
    for n in range(shoppers):
        user = f"shopper-{n}"
        exposures.record(experiment, assign(experiment, user), user)
        if n % 20_000 == 19_999:
            exposures.flush()
    exposures.flush()
    exposed_s = time.monotonic() - started
    buyers = [f"shopper-{n}" for n in range(0, shoppers, 20)]

    async def credit() -> None:
        aclient = async_redis_client(url, False)
        try:
            credits = ExperimentCredits(aclient, keys, 15 * 60 * 1000)
            for start in range(0, len(buyers), 5000):
                events = [
                    Event(
                        event_id=f"m{n}",
                        type="purchase",
                        user_id=u,
                        item_id="sku-1",
                        price=19.99,
                        recommendation_id=experiment_recommendation_id(
                            "personalized", uuid.uuid4().hex, experiment, assign(experiment, u)
                        ),
                    )
                    for n, u in enumerate(buyers[start : start + 5000], start=start)
                ]
                await credits.credit(credits_of(events, [(0, start + i) for i in range(len(events))]))
        finally:
            await aclient.aclose()

    asyncio.run(credit())
    counts = store.counts(experiment)
    used = store.memory_bytes(experiment)
    store.delete(AB)
    left = list(client.scan_iter(match=f"{keys.prefix}:{{x:*", count=1000))  # the experiment's own keys
    return {
        "shoppers": shoppers,
        "buyers": len(buyers),
        "exposed": sum(c.exposed for c in counts),
        "converted": sum(c.converted for c in counts),
        "mib": round(used / 2**20, 1),
        "bytes_per_shopper": round(used / shoppers, 1),
        "exposure_seconds": round(exposed_s, 1),
        "keys_left_after_delete": len(left),
    }


def run(
    out_dir: Path, seconds: float = 10.0, users: int = SERVING_USERS, warm_up_s: float = 30.0
) -> dict[str, Any]:
    """The whole measurement on a local stack of its own; writes experiments.json and experiments.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    catalog, events = beauty_shoppers(users)
    started = time.monotonic()
    with local_stack() as stack:
        tag = f"x{uuid.uuid4().hex[:8]}"
        worker = fold_with_a_worker(stack, tag, catalog, events)
        paths = api_paths(stack, events)["recommendations"]
        api = start_api(stack, tag)
        say(f"speed: {ROUNDS} rounds outside/inside the experiment, {seconds:.0f} s each (sync:2)")
        fast = speed(stack, paths, seconds, warm_up_s)
        stack.stop(api)
        stack.stop(worker)
        say(f"memory: {MEMORY_SHOPPERS:,} exposed shoppers")
        mem = memory(stack.client, f"redis://127.0.0.1:{stack.redis_server.port}/0")
    report = {"speed": fast, "memory": mem, "seconds": round(time.monotonic() - started)}
    (out_dir / "experiments.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "experiments.md").write_text(markdown(report))
    return report


def markdown(r: dict[str, Any]) -> str:
    """The report as Markdown (experiments.md)."""
    s, m = r["speed"], r["memory"]
    o, i = s["median"]["outside"], s["median"]["inside"]
    verdict = "met" if s["met"] else "missed"
    return (
        "# Experiments: speed and memory (`streamrec bench --experiments`)\n\n"
        f"Personal answers of a placement, {ROUNDS} alternating rounds (medians):\n\n"
        "| | req/s | p50 ms | p99 ms |\n|---|---|---|---|\n"
        f"| outside an experiment | {o['requests_per_s']:,.0f} | {o['p50_ms']:.1f} | {o['p99_ms']:.1f} |\n"
        f"| inside a running experiment | {i['requests_per_s']:,.0f} | {i['p50_ms']:.1f} | {i['p99_ms']:.1f} |\n\n"
        f"Ratio (median of the {ROUNDS} pairs' ratios) {s['ratio']:.2f} (target ≥ {s['target']}: {verdict}). Exposures counted: "
        f"{s['exposed']} shoppers, {s['answers']} answers.\n\n"
        f"Memory of one experiment at {m['shoppers']:,} exposed shoppers ({m['buyers']:,} with a purchase): "
        f"**{m['mib']} MiB**, {m['bytes_per_shopper']} bytes per exposed shopper (Redis `MEMORY USAGE`); "
        f"{m['keys_left_after_delete']} keys left after `DELETE`. Run took {r['seconds']} s.\n"
    )
