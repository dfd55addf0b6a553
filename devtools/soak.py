"""``streamrec soak``: a long steady stream through the real worker with production defaults, and what
Redis memory does meanwhile.

It starts its own Tansu and Redis (with AOF, as in production) on loopback, a worker and the simulated
shop (``streamrec simulate --rate``) as child processes, with every ``STREAMREC_SCORING_*`` setting at
its default (the dedupe window stays 15 minutes, TTLs stay days). Every ``sample_s`` it records Redis'
``used_memory``, its key counts and the worker's RSS; every ``census_s`` it measures each key family
(``bench.family_memory``: ``MEMORY USAGE`` samples scaled to the family). From those it reports bytes
per active user, per item, per search term and per event inside the dedupe window, the memory beyond
per-user and per-item state over time (it must level off once the window is full), and the steady state
at another rate from the measured parts (``projection``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from streamrec.devtools.bench import family_memory, memory_figures
from streamrec.devtools.localstack import (
    LOOPBACK,
    ManagedProcess,
    free_port,
    spawn,
    start_broker,
    start_redis,
)
from streamrec.keys import Keys
from streamrec.settings import ScoringSettings
from streamrec.state import applied_events

PREFIX = "soak"
MIB = 2**20

# Tansu's memory storage keeps each produced batch as an object and a fetch grows with a partition's
# objects: at the simulator's 5 ms linger and the worker's 20 ms fetch wait, four partitions stalled it
# after about 220,000 events (its fetches stopped answering). So the soak batches harder (``linger_ms``),
# fetches less often (``fetch_wait_ms``) and spreads the events over more partitions. These are broker
# settings; every scoring setting (windows, TTLs, bounds) stays at its default.


def simulate_child(
    bootstrap: str, prefix: str, users: int, items: int, events: int, rate: float, seed: int, linger_ms: int
) -> None:
    """The simulated shop, publishing with ``linger_ms`` (run as a child process by ``run``)."""
    from streamrec.producers.simulate import simulate
    from streamrec.publisher import EventPublisher
    from streamrec.topics import Topics

    with EventPublisher(bootstrap, Topics(prefix), linger_ms=linger_ms) as publisher:
        report = simulate(
            publisher, n_users=users, n_items=items, n_events=events, rate=rate, seed=seed, progress=False
        )
    print(f"simulated {report.events} events, {report.failed} failed", flush=True)
    sys.exit(1 if report.failed else 0)


@dataclass(frozen=True)
class SoakPlan:
    """How long, how fast and how big the simulated shop is; how often memory is sampled and measured."""

    minutes: float = 25.0
    rate: float = 500.0
    users: int = 100_000
    items: int = 10_000
    sample_s: float = 5.0
    census_s: float = 300.0
    seed: int = 7
    partitions: int = 16
    linger_ms: int = 200
    fetch_wait_ms: int = 250
    stall_s: float = 180.0
    log_dir: Path = Path(".streamrec/soak")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (``VmRSS`` in /proc), in bytes; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _sample(client: redis.Redis, keys: Keys, worker: ManagedProcess, t: float) -> dict[str, Any]:
    info = client.info("memory")
    space = client.info("keyspace").get("db0", {})
    return {
        "t_s": round(t, 1),
        "used_memory": int(info["used_memory"]),
        "keys": int(space.get("keys", 0)),
        "volatile_keys": int(space.get("expires", 0)),
        "worker_rss": rss_bytes(worker.proc.pid),
        "applied": applied_events(client, keys),
    }


def _expired(client: redis.Redis) -> int:
    return int(client.info("stats").get("expired_keys", 0))


def _census(client: redis.Redis, keys: Keys, t: float) -> dict[str, Any]:
    """Every family measured, and how many keys expired meanwhile (the SCANs remove keys that have
    expired and still wait for Redis' expiry cycle; the cycle itself runs meanwhile too)."""
    before = _expired(client)
    figures = memory_figures(family_memory(client, keys))
    figures.pop("families")
    beyond = figures["used_memory"] - (
        figures["bytes_per_user"] * figures["users"]
        + figures["bytes_per_item"] * figures["items"]
        + figures["bytes_per_term"] * figures["terms"]
        + figures["shard_bytes"]
    )
    return {
        "t_s": round(t, 1),
        **figures,
        "beyond_user_item_bytes": beyond,
        "expired_during_census": _expired(client) - before,
    }


# (name, user id length, event id length): the simulator's own ids, UUIDs, the contract's longest
ID_PROFILES = (("simulator", 6, 14), ("uuid", 36, 36), ("longest", 128, 64))


def probe_claims(
    client: redis.Redis, keys: Keys, window_s: int, n: int = 20_000
) -> dict[str, dict[str, float]]:
    """What one event costs in the dedupe window when its user has no other claim (the worst case): ``n``
    claims keys of one claim each, with their TTL, written and measured, then deleted, per id profile.

    ``memory_usage`` is ``MEMORY USAGE`` per key; ``used_memory_per_key`` is the rise of ``used_memory``
    per key, which adds the key's TTL entry and hash-table slots (a table that doubles meanwhile shows).
    """
    out: dict[str, dict[str, float]] = {}
    now = int(time.time() * 1000)
    for name, user_len, id_len in ID_PROFILES:
        names = [keys.claims(f"probe-{name}-{i}".ljust(user_len, "x")) for i in range(n)]
        before = int(client.info("memory")["used_memory"])
        pipe = client.pipeline(transaction=False)
        for i, key in enumerate(names):
            pipe.zadd(key, {f"e-{i}".ljust(id_len, "y"): now})
            pipe.expire(key, window_s)
            if i % 5000 == 4999:
                pipe.execute()
        pipe.execute()
        after = int(client.info("memory")["used_memory"])
        pipe = client.pipeline(transaction=False)
        for key in names[:500]:
            pipe.memory_usage(key, samples=0)
        sizes = [int(x or 0) for x in pipe.execute()]
        for start in range(0, n, 5000):
            client.delete(*names[start : start + 5000])
        out[name] = {
            "user_id_length": user_len,
            "event_id_length": id_len,
            "memory_usage": sum(sizes) / len(sizes),
            "used_memory_per_key": (after - before) / n,
        }
    return out


def projection(
    c: dict[str, Any], probes: dict[str, dict[str, float]], rate: float, window_s: int
) -> dict[str, Any]:
    """Memory beyond per-user and per-item state at ``rate`` events/s, from measured parts: a census
    ``c`` and the claims probes (``probe_claims``).

    The dedupe window holds ``rate x window_s`` claims. Worst case every event comes from a different
    user, so each has a claims key of its own: the probe's ``used_memory`` rise per key, for each id
    profile. With the soak's own mix of events per user: the measured claims bytes per claim plus, per
    claims key, what a key costs beyond ``MEMORY USAGE`` (the probe's rise minus its ``MEMORY USAGE``).
    Stats, watermarks and Redis' startup memory do not grow with rate or time; nothing here grows with
    how long it runs (claims leave with the window).
    """
    in_window = rate * window_s
    fixed = c["used_memory_startup"] + c["bookkeeping_bytes"]
    sim = probes["simulator"]
    per_key_extra = max(sim["used_memory_per_key"] - sim["memory_usage"], 0.0)
    keys_per_event = c["claims_keys"] / max(c["dedupe_claims"], 1)
    mix = in_window * (c["dedupe_bytes_per_event"] + keys_per_event * per_key_extra) + fixed
    return {
        "rate": rate,
        "window_s": window_s,
        "claims_in_window": in_window,
        "fixed_bytes": fixed,
        "beyond_bytes_soak_mix": mix,
        "beyond_bytes_worst": {
            name: in_window * p["used_memory_per_key"] + fixed for name, p in probes.items()
        },
    }


def _levels_off(censuses: list[dict[str, Any]], window_s: float) -> dict[str, Any]:
    """The memory beyond per-user and per-item state after the window first filled: its first and last
    census values and the largest, for the report."""
    full = [c for c in censuses if c["t_s"] >= window_s + 60]
    if len(full) < 2:
        return {"censuses_after_window": len(full)}
    values = [c["beyond_user_item_bytes"] for c in full]
    claims = [c["dedupe_claims"] for c in full]
    return {
        "censuses_after_window": len(full),
        "beyond_first": values[0],
        "beyond_last": values[-1],
        "beyond_max": max(values),
        "claims_first": claims[0],
        "claims_last": claims[-1],
        "growth_last_vs_first": values[-1] / values[0] if values[0] else float("nan"),
    }


def run(plan: SoakPlan, out_dir: Path, say: Callable[[str], None] = print) -> dict[str, Any]:
    """The soak; writes ``soak.json`` and ``soak.md`` (and ``soak.png`` with matplotlib) into ``out_dir``."""
    from streamrec.topics import Topics, ensure_topics

    scoring = ScoringSettings.model_construct()  # production defaults: no STREAMREC_* is passed on
    overridden = [k for k in os.environ if k.startswith("STREAMREC_SCORING_")]
    if overridden:
        say(f"note: STREAMREC_SCORING_* overrides in this shell are ignored by the soak: {overridden}")
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = Keys(PREFIX)
    total = int(plan.rate * plan.minutes * 60)
    tag = f"soak{uuid.uuid4().hex[:6]}"
    procs: list[ManagedProcess] = []
    with tempfile.TemporaryDirectory(prefix="streamrec-soak-") as tmp:
        root = Path(tmp)
        try:
            broker = start_broker(free_port(), root / "broker.log")
            procs.append(broker)
            server = start_redis(free_port(), root / "redis", root / "redis.log")
            procs.append(server)
            client = redis.Redis(host=LOOPBACK, port=server.port, socket_timeout=30)
            bootstrap = f"{LOOPBACK}:{broker.port}"
            ensure_topics(bootstrap, Topics(tag), plan.partitions)
            env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
            env.update(
                {
                    "STREAMREC_KAFKA_BOOTSTRAP": bootstrap,
                    "STREAMREC_REDIS_URL": f"redis://{LOOPBACK}:{server.port}/0",
                    "STREAMREC_TOPIC_PREFIX": tag,
                    "STREAMREC_REDIS_PREFIX": PREFIX,
                    "STREAMREC_WORKER_GROUP": f"group-{tag}",
                    "STREAMREC_WORKER_DATA_DIR": str(root / "worker"),
                    "STREAMREC_WORKER_METRICS_PORT": "0",
                    "STREAMREC_WORKER_FETCH_WAIT_MS": str(plan.fetch_wait_ms),
                    "STREAMREC_LOG_LEVEL": "WARNING",
                }
            )
            cli = [sys.executable, "-m", "streamrec.cli"]
            # the worker logs at INFO: its totals every 30 s and Faust's rebalances explain a stall
            worker = spawn(
                "worker", [*cli, "worker"], root / "worker.log", {**env, "STREAMREC_LOG_LEVEL": "INFO"}
            )
            procs.append(worker)
            call = (
                "from streamrec.devtools.soak import simulate_child; simulate_child("
                f"{bootstrap!r}, {tag!r}, {plan.users}, {plan.items}, {total}, {plan.rate}, {plan.seed}, {plan.linger_ms})"
            )
            sim = spawn("simulate", [sys.executable, "-c", call], root / "simulate.log", env)
            procs.append(sim)
            say(
                f"soak: {total:,} events at {plan.rate:,.0f}/s ({plan.minutes:g} min), {plan.users:,} shoppers, "
                f"{plan.items:,} items, production defaults (dedupe window {scoring.dedupe_window_s} s); "
                f"{plan.partitions} partitions, producer linger {plan.linger_ms} ms, worker fetch wait "
                f"{plan.fetch_wait_ms} ms (for Tansu)"
            )
            started = time.monotonic()
            samples: list[dict[str, Any]] = []
            censuses: list[dict[str, Any]] = []
            next_census = started + plan.census_s
            moved_at, last_applied = started, -1
            while True:
                now = time.monotonic()
                samples.append(_sample(client, keys, worker, now - started))
                if samples[-1]["applied"] != last_applied:
                    moved_at, last_applied = now, samples[-1]["applied"]
                elif now - moved_at > plan.stall_s:  # a hung worker; a slow one keeps moving
                    raise RuntimeError(
                        f"the worker folded nothing for {plan.stall_s:.0f} s while events kept coming "
                        f"({last_applied:,} folded; logs in {plan.log_dir})"
                    )
                if now >= next_census:
                    censuses.append(_census(client, keys, now - started))
                    c = censuses[-1]
                    say(
                        f"  {c['t_s'] / 60:5.1f} min: used_memory {c['used_memory'] / MIB:7.1f} MiB, "
                        f"{c['users']:,} users {c['bytes_per_user']:,.0f} B, {c['items']:,} items "
                        f"{c['bytes_per_item']:,.0f} B, claims {c['dedupe_claims']:,} "
                        f"({c['dedupe_bytes_per_event']:,.0f} B/event), beyond user/item state "
                        f"{c['beyond_user_item_bytes'] / MIB:.1f} MiB, worker RSS "
                        f"{samples[-1]['worker_rss'] / MIB:.0f} MiB"
                    )
                    next_census += plan.census_s
                if not worker.alive():
                    raise RuntimeError(f"the worker exited (log: {root / 'worker.log'})")
                if not sim.alive() and samples[-1]["applied"] >= total:
                    break
                if not sim.alive() and sim.proc.returncode != 0:
                    raise RuntimeError(f"the simulator failed (log: {root / 'simulate.log'})")
                time.sleep(max(0.0, plan.sample_s - (time.monotonic() - now)))
            elapsed = time.monotonic() - started
            censuses.append(_census(client, keys, elapsed))
            final = censuses[-1]
            window = scoring.dedupe_window_s
            say("probing the cost of one claim per user ...")
            probes = probe_claims(client, keys, window)
            figures = {
                "plan": {**asdict(plan), "log_dir": str(plan.log_dir)},
                "events": total,
                "seconds": round(elapsed, 1),
                "events_per_s": total / elapsed,
                "scoring_defaults": scoring.model_dump(),
                "final": final,
                "levels_off": _levels_off(censuses, window),
                "claims_probes": probes,
                "projection_1000": projection(final, probes, 1000.0, window),
                "worker_rss_first_last_max": _rss_figures(samples),
                "load_average_end": list(os.getloadavg()),
                "samples": samples,
                "censuses": censuses,
            }
        finally:
            for p in reversed(procs):
                p.stop()
            plan.log_dir.mkdir(parents=True, exist_ok=True)
            for name in ("worker.log", "redis.log", "broker.log", "simulate.log"):
                if (root / name).exists():
                    shutil.copy(root / name, plan.log_dir / name)
    (out_dir / "soak.json").write_text(json.dumps(figures, indent=1) + "\n")
    (out_dir / "soak.md").write_text(markdown(figures))
    _plot(figures, out_dir / "soak.png")
    return figures


def _rss_figures(samples: list[dict[str, Any]]) -> list[int]:
    """Worker RSS one minute in (after start-up), at the end, and the largest in the second half."""
    rss = [s["worker_rss"] for s in samples if s["worker_rss"] and s["t_s"] >= 60]
    half = rss[len(rss) // 2 :]
    return [rss[0], rss[-1], max(half)] if rss else []


def markdown(f: dict[str, Any]) -> str:
    """The soak's figures as Markdown: the per-owner costs, memory over time, and the projection."""
    final, p, lv = f["final"], f["projection_1000"], f["levels_off"]
    plan = f["plan"]
    lines = [
        f"Soak: {f['events']:,} simulated events at {plan['rate']:,.0f}/s for {plan['minutes']:g} minutes "
        f"({f['events_per_s']:,.0f}/s over the whole run, start-up included), {plan['users']:,} shoppers, "
        f"{plan['items']:,} items; production defaults (dedupe window "
        f"{f['scoring_defaults']['dedupe_window_s']} s); {plan['partitions']} partitions, producer linger "
        f"{plan['linger_ms']} ms and worker fetch wait {plan['fetch_wait_ms']} ms, for Tansu's memory storage.",
        "",
        "| measure | figure |",
        "|---|---|",
        f"| active users (a version key: an event within `user_ttl`) | {final['users']:,} × {final['bytes_per_user']:,.0f} B |",
        f"| items (catalog, activity, neighbours) | {final['items']:,} × {final['bytes_per_item']:,.0f} B |",
        f"| popularity/trending copies | {final['active_items']:,} active items × {final['shard_bytes_per_active_item']:,.0f} B |",
        f"| search terms | {final['terms']:,} × {final['bytes_per_term']:,.0f} B |",
        f"| dedupe claims inside the window | {final['dedupe_claims']:,} events × {final['dedupe_bytes_per_event']:,.1f} B "
        f"({final['claims_keys']:,} keys; fit: {final['dedupe_bytes_per_key']:,.0f} B per key + "
        f"{final['dedupe_bytes_per_claim']:,.1f} B per claim) |",
        f"| stats and watermarks | {final['bookkeeping_bytes']:,.0f} B |",
        f"| beyond MEMORY USAGE of the keys (TTL entries, hash tables, buffers) | "
        f"{final['residual_bytes'] / MIB:,.1f} MiB ({max(final['residual_bytes'], 0) / max(final['keys'], 1):,.0f} B per key) |",
        f"| Redis used_memory at the end | {final['used_memory'] / MIB:,.1f} MiB ({final['keys']:,} keys) |",
        "| worker RSS at 1 min / at the end / max in the second half | "
        + " / ".join(f"{x / MIB:,.0f} MiB" for x in f["worker_rss_first_last_max"])
        + " |",
        "",
        "Memory beyond per-user and per-item state (used_memory minus users, items, terms and copies, each "
        "at its measured cost) at each census:",
        "",
        "| t (min) | used_memory MiB | users | items | claims | beyond user/item MiB | keys expired during the census |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in f["censuses"]:
        lines.append(
            f"| {c['t_s'] / 60:.1f} | {c['used_memory'] / MIB:,.1f} | {c['users']:,} | {c['items']:,} | "
            f"{c['dedupe_claims']:,} | {c['beyond_user_item_bytes'] / MIB:,.1f} | {c['expired_during_census']:,} |"
        )
    if "beyond_first" in lv:
        lines += [
            "",
            f"After the window filled: beyond user/item state {lv['beyond_first'] / MIB:,.1f} → "
            f"{lv['beyond_last'] / MIB:,.1f} MiB (max {lv['beyond_max'] / MIB:,.1f}), claims "
            f"{lv['claims_first']:,} → {lv['claims_last']:,}.",
        ]
    lines += [
        "",
        "One claim per claims key (every event from a different user), measured on the soak's Redis:",
        "",
        "| ids (user / event characters) | MEMORY USAGE B | used_memory rise B per key | beyond user/item state at "
        f"{p['rate']:,.0f} events/s |",
        "|---|---|---|---|",
    ]
    for name, probe in f["claims_probes"].items():
        lines.append(
            f"| {name} ({probe['user_id_length']} / {probe['event_id_length']}) | {probe['memory_usage']:,.0f} | "
            f"{probe['used_memory_per_key']:,.0f} | {p['beyond_bytes_worst'][name] / MIB:,.1f} MiB |"
        )
    lines += [
        "",
        f"At {p['rate']:,.0f} events/s the window holds {p['claims_in_window']:,.0f} claims: beyond per-user and "
        f"per-item state = {p['claims_in_window']:,.0f} × (bytes per claim) + {p['fixed_bytes'] / MIB:,.1f} MiB "
        f"(Redis at start, stats, watermarks); with this shop's mix of events per user "
        f"{p['beyond_bytes_soak_mix'] / MIB:,.1f} MiB. The same after 30 days as after one hour: claims leave "
        "with the window, and nothing else in it grows with time.",
        "",
    ]
    return "\n".join(lines)


def _plot(f: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    s, c = f["samples"], f["censuses"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot([x["t_s"] / 60 for x in s], [x["used_memory"] / MIB for x in s], label="Redis used_memory")
    top.plot([x["t_s"] / 60 for x in s], [x["worker_rss"] / MIB for x in s], label="worker RSS")
    top.set_ylabel("MiB")
    top.legend()
    bottom.plot(
        [x["t_s"] / 60 for x in c],
        [x["beyond_user_item_bytes"] / MIB for x in c],
        "o-",
        label="beyond user/item state",
    )
    bottom.plot([x["t_s"] / 60 for x in c], [x["dedupe_bytes"] / MIB for x in c], "s-", label="dedupe claims")
    bottom.axvline(
        f["scoring_defaults"]["dedupe_window_s"] / 60, color="grey", linestyle=":", label="window full"
    )
    bottom.set_xlabel("minutes")
    bottom.set_ylabel("MiB")
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
