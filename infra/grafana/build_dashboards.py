"""Write streamrec's Grafana dashboards (``dashboards/*.json``) from the panel lists below.

Run ``python infra/grafana/build_dashboards.py`` after changing a panel; tests/unit/test_infra.py fails
while the JSON in the repo differs from what this script writes, and tests/e2e/test_dashboards.py runs
every panel's queries against a real Prometheus scraping real parts.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}  # the uid provisioning/datasources gives it
R = "$__rate_interval"


@dataclass(frozen=True)
class Panel:
    """One dashboard panel: its PromQL targets as (expression, legend) pairs, Grafana unit and panel type;
    ``defaults`` adds to its field defaults (thresholds, axis scale), ``extra`` to the panel itself."""

    title: str
    targets: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"
    extra: dict = field(default_factory=dict)
    defaults: dict = field(default_factory=dict)


def q(expr: str, legend: str = "") -> tuple[str, str]:
    """One Prometheus query target: the PromQL expression and its legend."""
    return (expr, legend)


def quantiles(metric: str, by: str, legend: str, where: str = "") -> list[tuple[str, str]]:
    """p50 and p99 of a histogram, per ``by``."""
    sel = f"{metric}_bucket{{{where}}}" if where else f"{metric}_bucket"
    return [
        q(
            f"histogram_quantile({p}, sum by (le{', ' + by if by else ''}) (rate({sel}[{R}])))",
            f"p{int(p * 100)} {legend}".strip(),
        )
        for p in (0.5, 0.99)
    ]


PIPELINE = [
    Panel(
        "Workers up",
        [q('sum(up{job="streamrec-worker"})', "workers up")],
        kind="stat",
        description="Worker processes Prometheus scrapes successfully.",
    ),
    Panel(
        "Events folded per second, by type",
        [q(f'sum by (type) (rate(streamrec_worker_events_total{{outcome="folded"}}[{R}]))', "{{type}}")],
        "ops",
        "Events the state script took (applied or recognised as duplicates).",
    ),
    Panel(
        "Dead letters per second",
        [q(f"sum by (topic, cause) (rate(streamrec_worker_dead_letters_total[{R}]))", "{{topic}} {{cause}}")],
        "ops",
        "Records sent to <prefix>.events.dlq: invalid input, or refused by the state script.",
    ),
    Panel(
        "Dead-letter share",
        [
            q(
                f"sum(rate(streamrec_worker_dead_letters_total[{R}])) / (sum(rate(streamrec_worker_events_total[{R}])) + sum(rate(streamrec_worker_catalog_records_total[{R}])))",
                "dead-lettered",
            )
        ],
        "percentunit",
        "Of all records taken off the topics; StreamrecDeadLetterRate fires above 1%.",
    ),
    Panel(
        "Duplicates skipped per second (dedupe hits)",
        [q(f"sum(rate(streamrec_worker_dedupe_hits_total[{R}]))", "duplicates")],
        "ops",
        "Redeliveries and replays the event_id claim turned away.",
    ),
    Panel(
        "Event-time lag (newest event of the latest batch)",
        [q("max by (instance) (streamrec_worker_batch_lag_seconds)", "{{instance}}")],
        "s",
        "Wall clock minus the event ts when folded; StreamrecWorkerLagGrowing watches it grow.",
    ),
    Panel("Event-time lag distribution", quantiles("streamrec_worker_event_lag_seconds", "", ""), "s"),
    Panel(
        "Batch size",
        quantiles("streamrec_worker_batch_size_records", "topic", "{{topic}}"),
        "short",
        "Records per batch (up to STREAMREC_WORKER_BATCH).",
    ),
    Panel(
        "Batch processing time",
        quantiles("streamrec_worker_batch_duration_seconds", "topic", "{{topic}}"),
        "s",
        "Decode, dead letters and the Redis script, per batch.",
    ),
    Panel(
        "Catalog records per second",
        [q(f"sum by (outcome) (rate(streamrec_worker_catalog_records_total[{R}]))", "{{outcome}}")],
        "ops",
    ),
    Panel(
        "Worker retries per second",
        [q(f"sum by (operation) (rate(streamrec_worker_retries_total[{R}]))", "{{operation}}")],
        "ops",
        "Writes retried while Redis or the dead-letter topic is unreachable.",
    ),
    Panel(
        "Producer records acknowledged per second",
        [q(f"sum by (job, topic) (rate(streamrec_producer_records_sent_total[{R}]))", "{{job}} {{topic}}")],
        "ops",
        "The API's POST /v1/events and the simulator/replay.",
    ),
    Panel(
        "Producer failures and retries per second",
        [
            q(f"sum by (job) (rate(streamrec_producer_records_failed_total[{R}]))", "failed {{job}}"),
            q(f"sum by (job) (rate(streamrec_producer_records_retried_total[{R}]))", "retried {{job}}"),
        ],
        "ops",
    ),
]

API = [
    Panel("API up", [q('sum(up{job="streamrec-api"})', "replicas up")], kind="stat"),
    Panel(
        "Requests per second, by endpoint",
        [q(f"sum by (endpoint) (rate(streamrec_api_requests_total[{R}]))", "{{endpoint}}")],
        "reqps",
    ),
    Panel(
        "Requests per second, by status",
        [q(f"sum by (status) (rate(streamrec_api_requests_total[{R}]))", "{{status}}")],
        "reqps",
    ),
    Panel(
        "Server error share (5xx)",
        [
            q(
                f'(sum(rate(streamrec_api_requests_total{{status=~"5.."}}[{R}])) or vector(0)) / sum(rate(streamrec_api_requests_total[{R}]))',
                "5xx",
            )
        ],
        "percentunit",
        "StreamrecApiErrorRate fires above 5%.",
    ),
    Panel(
        "Latency p50 by endpoint",
        [
            q(
                f'histogram_quantile(0.5, sum by (le, endpoint) (rate(streamrec_api_request_duration_seconds_bucket{{endpoint!="/metrics"}}[{R}])))',
                "{{endpoint}}",
            )
        ],
        "s",
    ),
    Panel(
        "Latency p99 by endpoint",
        [
            q(
                f'histogram_quantile(0.99, sum by (le, endpoint) (rate(streamrec_api_request_duration_seconds_bucket{{endpoint!="/metrics"}}[{R}])))',
                "{{endpoint}}",
            )
        ],
        "s",
        "StreamrecApiLatencyHigh fires above 500 ms for 10 minutes.",
    ),
    Panel(
        "Redis read latency (one round trip)",
        quantiles("streamrec_api_redis_duration_seconds", "operation", "{{operation}}"),
        "s",
        "Each state read the API makes is one pipelined Redis round trip.",
    ),
    Panel(
        "Recommendation answers per second, by strategy",
        [q(f"sum by (strategy) (rate(streamrec_api_recommendations_total[{R}]))", "{{strategy}}")],
        "ops",
    ),
    Panel(
        "Empty answers per second",
        [q(f"sum by (endpoint) (rate(streamrec_api_empty_answers_total[{R}]))", "{{endpoint}}")],
        "ops",
        "Answers with no item at all (a new shop, or filters nothing passes).",
    ),
]

QUALITY = [
    Panel(
        "Impressions per second, by strategy",
        [q("strategy:streamrec_impressions:rate5m", "{{strategy}}")],
        "ops",
        "Each non-empty answer served is one impression of its strategy (recording rule, 5 m).",
    ),
    Panel(
        "Click-through rate, by strategy",
        [q("strategy:streamrec_ctr:ratio_rate5m", "{{strategy}}")],
        "percentunit",
        "Views that carry a recommendation_id, per impression of the strategy that served it.",
    ),
    Panel(
        "Cart rate, by strategy",
        [q("strategy:streamrec_cart_rate:ratio_rate5m", "{{strategy}}")],
        "percentunit",
    ),
    Panel(
        "Conversion rate, by strategy",
        [q("strategy:streamrec_conversion:ratio_rate5m", "{{strategy}}")],
        "percentunit",
        "Purchases that carry a recommendation_id, per impression.",
    ),
    Panel(
        "Attributed events per second",
        [
            q(
                f"sum by (strategy, type) (rate(streamrec_worker_attributed_events_total[{R}]))",
                "{{strategy}} {{type}}",
            )
        ],
        "ops",
    ),
    Panel(
        "Items per answer, by strategy",
        [
            q(
                f"sum by (strategy) (rate(streamrec_api_recommended_items_total[{R}])) / sum by (strategy) (rate(streamrec_api_recommendations_total[{R}]))",
                "{{strategy}}",
            )
        ],
        "short",
    ),
]

# A/B experiments: read from Redis by every API replica's /metrics, so the same value comes from each
# replica and is taken once (max), never summed. Cumulative since the experiment's run began.
VARIANT = "{{experiment}} {{variant}}"
SRM_ALPHA = 0.001  # experiment_stats.SRM_ALPHA; StreamrecExperimentSampleRatioMismatch fires below it
EXPERIMENTS = [
    Panel(
        "Experiments: conversion, by variant",
        [
            q(
                "max by (experiment, variant) (streamrec_experiment_converted_shoppers)"
                " / (max by (experiment, variant) (streamrec_experiment_exposed_shoppers) > 0)",
                VARIANT,
            )
        ],
        "percentunit",
        "Exposed shoppers with at least one attributed purchase, over exposed shoppers, since the run began. "
        "Intervals, lift and p-values: GET /v1/admin/experiments/{name}/report.",
    ),
    Panel(
        "Experiments: revenue per exposed shopper, by variant",
        [
            q(
                "max by (experiment, variant) (streamrec_experiment_revenue_total)"
                " / (max by (experiment, variant) (streamrec_experiment_exposed_shoppers) > 0)",
                VARIANT,
            )
        ],
        "short",
        "Attributed revenue over exposed shoppers (those who bought nothing count as 0), since the run began.",
    ),
    Panel(
        "Experiments: exposed shoppers, by variant",
        [q("max by (experiment, variant) (streamrec_experiment_exposed_shoppers)", VARIANT)],
        "short",
        "Distinct shoppers shown at least one answer of the variant; their shares should follow the weights "
        "(streamrec_experiment_weight).",
    ),
    Panel(
        "Experiments: sample-ratio-mismatch p-value",
        [q("clamp_min(max by (experiment) (streamrec_experiment_srm_p_value), 1e-12)", "{{experiment}}")],
        "short",
        f"Chi-square test of exposed shoppers against the weights (log scale; below 1e-12 drawn at 1e-12). "
        f"Under the red line ({SRM_ALPHA:g}) the split is broken and the experiment's results are not to be "
        "trusted; StreamrecExperimentSampleRatioMismatch fires after 15 minutes there.",
        defaults={
            "min": 1e-12,
            "max": 1,
            "custom": {"scaleDistribution": {"type": "log", "log": 10}, "thresholdsStyle": {"mode": "line"}},
            "thresholds": {
                "mode": "absolute",
                "steps": [{"color": "red", "value": None}, {"color": "green", "value": SRM_ALPHA}],
            },
        },
    ),
]

REDIS = [
    Panel(
        "Memory used",
        [q("redis_memory_used_bytes", "used"), q("redis_memory_used_rss_bytes", "rss")],
        "bytes",
        "Recommendation state is bounded per user and per item (README, Bounded memory).",
    ),
    Panel("Memory limit", [q("redis_memory_max_bytes", "maxmemory (0: none)")], "bytes", kind="stat"),
    Panel("Keys", [q("sum by (db) (redis_db_keys)", "{{db}}")], "short"),
    Panel("Fragmentation ratio", [q("redis_mem_fragmentation_ratio", "fragmentation")], "short"),
    Panel("Commands per second", [q(f"sum(rate(redis_commands_processed_total[{R}]))", "commands")], "ops"),
    Panel(
        "Evicted and expired keys per second",
        [
            q(f"rate(redis_evicted_keys_total[{R}])", "evicted"),
            q(f"rate(redis_expired_keys_total[{R}])", "expired"),
        ],
        "ops",
        "Evictions mean maxmemory is too small for the state.",
    ),
]

DASHBOARDS = {
    "streamrec-pipeline": ("streamrec: pipeline health", PIPELINE),
    "streamrec-api": ("streamrec: API latency and throughput", API),
    "streamrec-quality": ("streamrec: online quality", QUALITY + EXPERIMENTS),
    "streamrec-redis": ("streamrec: Redis memory", REDIS),
}


def panel_json(panel: Panel, pid: int) -> dict:
    """One panel's Grafana JSON; panel ``pid`` (from 1) goes left or right, eight grid rows per row of two."""
    x, y = ((pid - 1) % 2) * 12, ((pid - 1) // 2) * 8
    return {
        "id": pid,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit, **panel.defaults}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
        if panel.kind == "timeseries"
        else {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(panel.targets)
        ],
        **panel.extra,
    }


def dashboard(uid: str, title: str, panels: list[Panel]) -> dict:
    """A Grafana dashboard model (schemaVersion 39): ``panels`` laid out two to a row, UTC, refreshed every 10 s."""
    return {
        "uid": uid,
        "title": title,
        "tags": ["streamrec"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "panels": [panel_json(p, i) for i, p in enumerate(panels, start=1)],
        "templating": {"list": []},
        "annotations": {"list": []},
    }


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {
        f"{uid}.json": json.dumps(dashboard(uid, title, panels), indent=2) + "\n"
        for uid, (title, panels) in DASHBOARDS.items()
    }


def main() -> int:
    """Write every dashboard's JSON under ``dashboards/`` (what Grafana provisioning loads); returns the exit code."""
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
