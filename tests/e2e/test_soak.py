"""Soak: the simulator streams a steady rate into a real worker for about a minute; Redis memory and the
worker's RSS must level off, and every structure must stay within its bound.

What grows with time is only the dedupe claims, one per event until its TTL ends it: they are bounded
by rate x ``STREAMREC_SCORING_DEDUPE_WINDOW_S``. The test shortens that TTL to 15 s so the plateau is
reached inside the run (the default, 7 days, bounds them at rate x 7 days). Users and search terms are
bounded per key and expire; items (neighbours, catalog, counts) have no TTL: they grow with the
catalog, O(items x neighbours_max), not with time.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from streamrec.devtools.localstack import free_port, start_redis
from streamrec.state import applied_events
from streamrec.topics import Topics, ensure_topics
from tests.conftest import Namespace, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.broker, pytest.mark.redis, pytest.mark.slow]

RATE = 400  # events a second
SECONDS = 70
DEDUPE_TTL_S = 15


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _applied(ns: Namespace) -> int:
    return applied_events(ns.redis, ns.keys)


def test_memory_levels_off_under_a_steady_stream(namespace: Namespace, tmp_path: Path) -> None:
    ns = namespace
    # its own Redis: used_memory is the whole server's, and the shared one holds other tests' keys
    server = start_redis(free_port(), tmp_path / "redis", ns.log_dir / "own-redis.log")
    ns.procs.append(server)
    ns.env["STREAMREC_REDIS_URL"] = f"redis://127.0.0.1:{server.port}/0"
    ns.redis = redis.Redis(host="127.0.0.1", port=server.port)
    ns.env["STREAMREC_SCORING_DEDUPE_WINDOW_S"] = str(DEDUPE_TTL_S)
    ensure_topics(ns.settings.kafka_bootstrap, Topics(ns.settings.topic_prefix), 2)
    worker = ns.start("worker", "worker")
    total = RATE * SECONDS
    sim = ns.start(
        "simulate",
        "simulate",
        *("--users", "200", "--items", "150", "--events", str(total), "--rate", str(RATE), "--seed", "11"),
    )
    wait_until(lambda: _applied(ns) > 0, 60, what="the first events folded")
    started = time.monotonic()
    samples: list[tuple[float, int, int, int]] = []  # (t, used_memory, worker rss, keys)

    def sample() -> bool:
        info = ns.redis.info("memory")
        samples.append(
            (
                time.monotonic() - started,
                int(info["used_memory"]),
                _rss_bytes(worker.proc.pid),
                ns.redis.dbsize(),
            )
        )
        return not sim.alive()

    # one sample a second until the simulator has published everything (a condition with a deadline)
    wait_until(sample, SECONDS + 60, interval=1.0, what="the simulator to finish")
    assert sim.proc.returncode == 0
    wait_until(lambda: _applied(ns) == total, 60, interval=0.2, what="every simulated event folded")

    lines = ["t_s used_memory_bytes worker_rss_bytes keys"] + [
        f"{t:.0f} {m} {r} {k}" for t, m, r, k in samples
    ]
    (ns.log_dir / "soak.txt").write_text("\n".join(lines) + "\n")

    # after warm-up (the first dedupe claims have expired, the catalog is known), compare the middle
    # third of the run with the last third: a leak would keep climbing, a plateau does not
    run = [s for s in samples if s[0] >= DEDUPE_TTL_S + 10]
    assert len(run) >= 30, f"too few samples after warm-up: {len(run)}"
    middle, last = run[: len(run) // 2], run[len(run) // 2 :]
    for index, what, slack in (
        (1, "Redis used_memory", 1.15),
        (2, "worker RSS", 1.10),
        (3, "Redis keys", 1.10),
    ):
        before, after = max(s[index] for s in middle), max(s[index] for s in last)
        assert after <= before * slack, f"{what} still climbing: {before} -> {after}"

    # dedupe claims are bounded by rate x TTL (with the expiry cycle's lag)
    claims = sum(ns.redis.zcard(k) for k in ns.redis.scan_iter(match=ns.keys.claims("*"), count=2000))
    assert claims <= RATE * (DEDUPE_TTL_S + 10), claims
    # every per-user and per-term key will expire; item keys are bounded per item
    scoring = ns.settings.scoring
    for key in ns.redis.scan_iter(match=f"{ns.keys.prefix}:{{u:*", count=2000):
        assert ns.redis.ttl(key) > 0, key
    for key in ns.redis.scan_iter(match=ns.keys.history("*"), count=2000):
        assert ns.redis.llen(key) <= scoring.history_len
    pairs = 0
    for key in ns.redis.scan_iter(match=ns.keys.neighbours("*"), count=2000):
        pairs += (n := ns.redis.zcard(key))
        assert n <= scoring.neighbours_max + scoring.neighbours_slack
    first, end = run[0], run[-1]
    (ns.log_dir / "soak-summary.txt").write_text(
        f"{total} events at {RATE}/s; after warm-up Redis used_memory {first[1]} -> {end[1]} bytes "
        f"(max {max(s[1] for s in run)}), worker RSS {first[2]} -> {end[2]} (max {max(s[2] for s in run)}), "
        f"keys {first[3]} -> {end[3]}; dedupe claims at the end {claims}; neighbour entries {pairs} "
        f"(bound: 150 items x {scoring.neighbours_max + scoring.neighbours_slack})\n"
    )
