"""Soak, short: the simulator streams a steady rate into a real worker for about a minute with production
defaults (nothing shortened); Redis memory and the worker's RSS must level off, and every structure must
stay within its bound.

The only thing that grows during the run is the dedupe claims: one per event, kept for the dedupe window
(15 minutes by default), so within a one-minute run every claim is still there. The test therefore
measures the claims exactly (``MEMORY USAGE`` of every claims key, each sample) and asks the rest of
Redis to level off, the claims to be exactly the events folded (at most rate x window) and every claims
key to expire with the window. That the claims themselves level off once the window is full takes
more than 15 minutes: ``streamrec soak`` shows it (docs/operations/soak-and-sizing.md).
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
WARM_UP_S = 20  # the catalog is known and every shopper has been seen


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _applied(ns: Namespace) -> int:
    return applied_events(ns.redis, ns.keys)


def _claims(ns: Namespace) -> tuple[int, int, int]:
    """(claims keys, claimed events, their bytes by MEMORY USAGE), over every claims key."""
    names = list(ns.redis.scan_iter(match=ns.keys.claims("*"), count=2000))
    pipe = ns.redis.pipeline(transaction=False)
    for name in names:
        pipe.zcard(name)
        pipe.memory_usage(name, samples=0)
    replies = pipe.execute()
    return len(names), sum(replies[0::2]), sum(int(x or 0) for x in replies[1::2])


def test_memory_levels_off_under_a_steady_stream(namespace: Namespace, tmp_path: Path) -> None:
    ns = namespace
    # its own Redis: used_memory is the whole server's, and the shared one holds other tests' keys
    server = start_redis(free_port(), tmp_path / "redis", ns.log_dir / "own-redis.log")
    ns.procs.append(server)
    ns.env["STREAMREC_REDIS_URL"] = f"redis://127.0.0.1:{server.port}/0"
    ns.redis = redis.Redis(host="127.0.0.1", port=server.port)
    assert not any(k.startswith("STREAMREC_SCORING_") for k in ns.env), "the soak runs on production defaults"
    window_s = ns.settings.scoring.dedupe_window_s
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
    # (t, used_memory, used_memory without the claims, worker rss, keys, claimed events)
    samples: list[tuple[float, int, int, int, int, int]] = []

    def sample() -> bool:
        used = int(ns.redis.info("memory")["used_memory"])
        _, claimed, claim_bytes = _claims(ns)
        samples.append(
            (
                time.monotonic() - started,
                used,
                used - claim_bytes,
                _rss_bytes(worker.proc.pid),
                ns.redis.dbsize(),
                claimed,
            )
        )
        return not sim.alive()

    # one sample a second until the simulator has published everything (a condition with a deadline)
    wait_until(sample, SECONDS + 60, interval=1.0, what="the simulator to finish")
    assert sim.proc.returncode == 0
    wait_until(lambda: _applied(ns) == total, 60, interval=0.2, what="every simulated event folded")

    lines = ["t_s used_memory_bytes without_claims_bytes worker_rss_bytes keys claims"] + [
        " ".join(f"{x:.0f}" for x in s) for s in samples
    ]
    (ns.log_dir / "soak.txt").write_text("\n".join(lines) + "\n")

    # after warm-up, compare the middle third of the run with the last third: a leak would keep
    # climbing, a plateau does not
    run = [s for s in samples if s[0] >= WARM_UP_S]
    assert len(run) >= 30, f"too few samples after warm-up: {len(run)}"
    middle, last = run[: len(run) // 2], run[len(run) // 2 :]
    for index, what, slack in (
        (2, "Redis used_memory without the claims", 1.15),
        (3, "worker RSS", 1.10),
        (4, "Redis keys", 1.10),
    ):
        before, after = max(s[index] for s in middle), max(s[index] for s in last)
        assert after <= before * slack, f"{what} still climbing: {before} -> {after}"

    # within the window every event keeps its claim, and no more: bounded by rate x window
    claims_keys, claims, claim_bytes = _claims(ns)
    assert claims == total <= RATE * window_s
    for name in ns.redis.scan_iter(match=ns.keys.claims("*"), count=2000):
        assert 0 < ns.redis.ttl(name) <= window_s, name
    # every per-user and per-term key will expire; item keys are bounded per item and expire too
    scoring = ns.settings.scoring
    for key in ns.redis.scan_iter(match=f"{ns.keys.prefix}:{{u:*", count=2000):
        assert ns.redis.ttl(key) > 0, key
    for key in ns.redis.scan_iter(match=ns.keys.history("*"), count=2000):
        assert ns.redis.llen(key) <= scoring.history_len
    pairs = 0
    for key in ns.redis.scan_iter(match=ns.keys.neighbours("*"), count=2000):
        pairs += (n := ns.redis.zcard(key))
        assert n <= scoring.neighbours_max + scoring.neighbours_slack
        assert 0 < ns.redis.ttl(key) <= scoring.item_ttl_s
    for key in ns.redis.scan_iter(match=ns.keys.activity("*"), count=2000):
        assert 0 < ns.redis.ttl(key) <= scoring.item_ttl_s
    first, end = run[0], run[-1]
    (ns.log_dir / "soak-summary.txt").write_text(
        f"{total} events at {RATE}/s, production defaults (dedupe window {window_s} s); after warm-up Redis "
        f"used_memory {first[1]} -> {end[1]} bytes, without the claims {first[2]} -> {end[2]} (max "
        f"{max(s[2] for s in run)}), worker RSS {first[3]} -> {end[3]} (max {max(s[3] for s in run)}), keys "
        f"{first[4]} -> {end[4]}; claims at the end {claims} in {claims_keys} keys, {claim_bytes} bytes "
        f"({claim_bytes / max(claims, 1):.1f} B/event); neighbour entries {pairs} "
        f"(bound: 150 items x {scoring.neighbours_max + scoring.neighbours_slack})\n"
    )
