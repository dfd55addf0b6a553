"""The capacity model of docs/SCALING.md (streamrec.devtools.bench.capacity): its arithmetic and bounds."""

from __future__ import annotations

import math

from streamrec.devtools.bench import (
    HEADROOM,
    MIN_CLUSTER_MASTERS,
    SHARD_DATA_BYTES,
    CapacityInputs,
    capacity,
    capacity_inputs,
    capacity_table,
)

INPUTS = CapacityInputs(
    bytes_per_user=1000.0,
    bytes_per_item=2000.0,
    dedupe_bytes_per_event=100.0,
    events_per_worker_cpu_s=500.0,
    events_per_shard_cpu_s=1_000.0,
    requests_per_api_cpu_s=50.0,
    standalone_events_per_worker_cpu_s=1_000.0,
    standalone_events_per_shard_cpu_s=2_000.0,
    standalone_requests_per_api_cpu_s=100.0,
)


def test_a_small_shop_runs_on_one_redis_at_its_rates() -> None:
    plan = capacity(INPUTS, 100_000, 10_000, 1_000)  # 1,000 events/s = half one Redis's 2,000 per core
    assert not plan["cluster"] and plan["masters"] == 1 and plan["limit"] == "fits one Redis"
    assert plan["workers"] == math.ceil(1_000 / (1_000 * HEADROOM)) == 2 and plan["partitions"] == 4
    assert plan["api_processes"] == math.ceil(1_000 / (100 * HEADROOM))


def test_memory_sets_the_masters_for_many_users_at_a_low_rate() -> None:
    plan = capacity(INPUTS, 100_000_000, 1_000_000, 100)
    want_bytes = 100_000_000 * 1000 + 1_000_000 * 2000 + 100 * 900 * 100
    assert math.isclose(plan["memory_gib"], want_bytes / 2**30)
    assert plan["cluster"] and plan["masters"] == math.ceil(want_bytes / SHARD_DATA_BYTES)
    assert plan["limit"] == "memory"
    assert plan["workers"] == 1  # 100 events/s at the cluster rate of 500 per worker core, half used


def test_the_event_rate_sets_a_clusters_masters_workers_partitions_and_api_processes() -> None:
    plan = capacity(INPUTS, 1_000_000, 100_000, 100_000)
    assert plan["cluster"] and plan["limit"] == "Redis CPU"
    assert plan["masters"] == plan["masters_by_cpu"] == math.ceil(100_000 / (1_000 * HEADROOM))
    assert plan["workers"] == math.ceil(100_000 / (500 * HEADROOM))
    assert plan["partitions"] >= 2 * plan["workers"] and plan["partitions"] & (plan["partitions"] - 1) == 0
    assert plan["api_processes"] == math.ceil(100_000 / (50 * HEADROOM))


def test_a_cluster_has_at_least_three_masters() -> None:
    plan = capacity(INPUTS, 40_000_000, 100_000, 100)  # about 2 masters' worth of memory
    assert plan["masters_by_memory"] == 2 and plan["masters"] == MIN_CLUSTER_MASTERS
    assert capacity(INPUTS, 100_000, 10_000, 1_500)["masters"] == MIN_CLUSTER_MASTERS  # past one Redis's rate


def test_the_table_has_every_case_and_takes_the_inputs_from_the_bench_figures() -> None:
    # 30,000 events on 3 masters whose busiest spent 1 CPU-second: 10,000 events/s per master core
    run = {
        "events_per_worker_cpu_s": 2000.0,
        "events_measured": 30_000,
        "redis_cpu_s_by_master": {1: 1.0, 2: 0.9, 3: 0.8},
    }
    one = {"events_per_worker_cpu_s": 4000.0, "events_measured": 30_000, "redis_cpu_s_by_master": {1: 1.5}}
    api = {"recommendations": {"requests_per_api_cpu_s": 400.0}}
    figures = {
        "results": {
            "standalone": {
                "memory": {
                    "bytes_per_user": 1000.0,
                    "bytes_per_item": 2000.0,
                    "dedupe_bytes_per_event": 100.0,
                },
                "ingest": [one],
                "api": api,
            },
            "cluster": {"ingest": [run, {**run, "events_per_worker_cpu_s": 1500.0}], "api": api},
        }
    }
    inputs = capacity_inputs(figures)
    assert inputs.events_per_worker_cpu_s == 1500.0  # the slowest run's
    assert inputs.events_per_shard_cpu_s == 10_000.0
    assert inputs.standalone_events_per_shard_cpu_s == 20_000.0
    rows = capacity_table(inputs).splitlines()[2:]
    assert len(rows) == 3 * 2 * 3 and rows[-1].startswith("| 100,000,000 | 1,000,000 | 100,000 |")
