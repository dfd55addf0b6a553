"""Every Prometheus metric streamrec exports, in one module: names, help texts, labels and buckets.

Names follow ``streamrec_<part>_<name>_<unit>`` (parts: ``api``, ``worker``, ``producer``; the trainer's
go under ``streamrec_trainer_`` and the A/B experiments' under ``streamrec_experiment_``, both read from
Redis at scrape time by the collectors at the end). Every label takes values from a fixed set: the
helpers here map anything else to ``other``, so no request or event can create series; the experiment
labels are the names of the experiments that exist, of which there are few (``ExperimentCollector``).

Defining a metric does no I/O. prometheus-client chooses between in-process values and gunicorn's
multiprocess files when it is first imported (it reads ``PROMETHEUS_MULTIPROC_DIR`` then), so the API
server sets that variable before anything imports this module (``api/server.py``).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from streamrec.event_types import ATTRIBUTED_TYPES, EVENT_TYPE_NAMES
from streamrec.redis_conditions import CONDITIONS

if TYPE_CHECKING:
    from streamrec.experiment_stats import VariantCounts
    from streamrec.experiments import Experiment

log = logging.getLogger(__name__)

OTHER = "other"

# What the recommender reports as an answer's strategy (``Answer.strategy``); an answer's
# recommendation_id starts with it, so events that cite the id can be credited to the strategy.
STRATEGIES = ("personalized", "item_to_item", "category_popular", "popular", "trending", "empty")
EVENT_TYPES = EVENT_TYPE_NAMES
TOPIC_KINDS = ("events", "items", OTHER)
RECOMMENDATION_ENDPOINTS = ("recommendations", "similar", "popular", "trending")
RETRY_OPERATIONS = ("apply_events", "upsert_items", "dead_letter", "credit_experiments")
# why a partition waits at a record batch the worker cannot decode (``stream_processor.batches``)
DECODE_CONDITIONS = ("codec_unavailable", "undecodable_batch")
# <strategy>.<hex>, and inside an experiment .<run>.<experiment>.<variant> after it (streamrec.experiments)
RECOMMENDATION_ID = re.compile(
    r"^([a-z_]{1,32})\.[0-9a-f]{8,64}(?:\.[0-9]{1,12}\.[A-Za-z0-9_-]{1,40}\.[A-Za-z0-9_-]{1,32})?$"
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000)
LAG_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    3600.0,
    86400.0,
)


def bounded(value: str | None, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``, else ``other``: label values never come from input."""
    return value if value in allowed else OTHER


def recommendation_id(strategy: str, token: str) -> str:
    """The id of a recommendation answer: ``<strategy>.<hex>``, so later events can name the strategy."""
    return f"{strategy}.{token}"


def strategy_of(rec_id: str | None) -> str:
    """The strategy a recommendation_id was served by; ``other`` for ids streamrec did not make."""
    match = RECOMMENDATION_ID.match(rec_id or "")
    return bounded(match.group(1) if match else None, STRATEGIES)


# --- API (``streamrec api``; gunicorn workers share values through PROMETHEUS_MULTIPROC_DIR) ---------


@dataclass(frozen=True)
class ApiMetrics:
    """The API's series: requests and their latency by endpoint, recommendations and their items by strategy, empty answers, Redis time."""

    requests: Counter
    request_duration: Histogram
    recommendations: Counter
    recommended_items: Counter
    empty_answers: Counter
    redis_duration: Histogram
    change_feed: Gauge
    changed_items: Counter


@cache
def api() -> ApiMetrics:
    """The API's metrics, created (at zero where labels are known) the first time a process asks."""
    m = ApiMetrics(
        requests=Counter(
            "streamrec_api_requests_total",
            "HTTP requests answered, by endpoint (the URL rule, not the path), method and status.",
            ["endpoint", "method", "status"],
        ),
        request_duration=Histogram(
            "streamrec_api_request_duration_seconds",
            "Time from a request's arrival to its answer, by endpoint, method and status.",
            ["endpoint", "method", "status"],
            buckets=LATENCY_BUCKETS,
        ),
        recommendations=Counter(
            "streamrec_api_recommendations_total",
            "Recommendation answers served (impressions), by endpoint and strategy ('empty': no items).",
            ["endpoint", "strategy"],
        ),
        recommended_items=Counter(
            "streamrec_api_recommended_items_total",
            "Items shown in recommendation answers, by strategy.",
            ["strategy"],
        ),
        empty_answers=Counter(
            "streamrec_api_empty_answers_total",
            "Recommendation answers with no items at all, by endpoint.",
            ["endpoint"],
        ),
        redis_duration=Histogram(
            "streamrec_api_redis_duration_seconds",
            "Time of one state read (one pipelined Redis round trip), by reader operation.",
            ["operation"],
            buckets=REDIS_BUCKETS,
        ),
        change_feed=Gauge(
            "streamrec_api_change_feed_subscribed",
            "1 while an API process follows the worker's change feed (its caches are then exact); 0 while "
            "it does not (cached values are then kept 500 ms at most). The minimum over processes.",
            multiprocess_mode="min",
        ),
        changed_items=Counter(
            "streamrec_api_changed_items_total",
            "Item changes the API's processes heard of on the change feed (each drops what was cached of "
            "the item).",
        ),
    )
    for endpoint in RECOMMENDATION_ENDPOINTS:
        m.empty_answers.labels(endpoint)
        for strategy in STRATEGIES:
            # at zero from the start, so that rate() sees a strategy's first impression too
            m.recommendations.labels(endpoint, strategy)
    for strategy in STRATEGIES:
        m.recommended_items.labels(strategy)
    producer()
    return m


# --- Worker (``streamrec worker``; one process each, its own /metrics port) ---------------------------


@dataclass(frozen=True)
class WorkerMetrics:
    """The worker's series: events, duplicates, catalog records, dead letters, batch sizes and times,
    lag, retries, attributed conversions and whether folding is blocked (by Redis condition)."""

    events: Counter
    dedupe_hits: Counter
    catalog_records: Counter
    dead_letters: Counter
    batch_size: Histogram
    batch_duration: Histogram
    event_lag: Histogram
    batch_lag: Gauge
    retries: Counter
    attributed: Counter
    blocked: Gauge


@cache
def worker() -> WorkerMetrics:
    """The worker's metrics, every known label combination created at zero so that dashboards and
    alerts see the series before the first event."""
    m = WorkerMetrics(
        events=Counter(
            "streamrec_worker_events_total",
            "Events taken off the events topic, by type and outcome (folded by the state script, or dead_letter).",
            ["type", "outcome"],
        ),
        dedupe_hits=Counter(
            "streamrec_worker_dedupe_hits_total",
            "Folded events whose event_id had been applied before, so they changed nothing (redeliveries, replays).",
        ),
        catalog_records=Counter(
            "streamrec_worker_catalog_records_total",
            "Catalog records taken off the items topic, by outcome (upserted, stale: an older ts lost, dead_letter).",
            ["outcome"],
        ),
        dead_letters=Counter(
            "streamrec_worker_dead_letters_total",
            "Records sent to the dead-letter topic, by source topic and cause (invalid, refused by the state script).",
            ["topic", "cause"],
        ),
        batch_size=Histogram(
            "streamrec_worker_batch_size_records",
            "Records per batch the worker processed, by topic.",
            ["topic"],
            buckets=BATCH_SIZE_BUCKETS,
        ),
        batch_duration=Histogram(
            "streamrec_worker_batch_duration_seconds",
            "Time to process one batch (decode, dead letters, Redis), by topic.",
            ["topic"],
            buckets=LATENCY_BUCKETS,
        ),
        event_lag=Histogram(
            "streamrec_worker_event_lag_seconds",
            "Event-time lag of each folded event: the wall clock when folded minus the event's ts.",
            buckets=LAG_BUCKETS,
        ),
        batch_lag=Gauge(
            "streamrec_worker_batch_lag_seconds",
            "Event-time lag of the newest event in the latest batch: how far behind now the worker is.",
        ),
        retries=Counter(
            "streamrec_worker_retries_total",
            "Retried writes (Redis while it is unreachable, dead-letter sends), by operation.",
            ["operation"],
        ),
        blocked=Gauge(
            "streamrec_worker_blocked",
            "While the worker waits out a condition instead of folding, by condition: 1 for a Redis "
            "condition (full, read-only, loading, down, resharding) or the dead-letter topic unavailable; "
            "for a record batch it cannot decode (codec_unavailable, undecodable_batch), the number of "
            "partitions waiting at one. 0 otherwise.",
            ["condition"],
            multiprocess_mode="max",
        ),
        attributed=Counter(
            "streamrec_worker_attributed_events_total",
            "Applied events that carry a recommendation_id, by the strategy that served it and event type "
            "(view: a click; add_to_cart; purchase: a conversion).",
            ["strategy", "type"],
        ),
    )
    for event_type in (*EVENT_TYPES, OTHER):
        for outcome in ("folded", "dead_letter"):
            m.events.labels(event_type, outcome)
    for outcome in ("upserted", "stale", "dead_letter"):
        m.catalog_records.labels(outcome)
    for topic in ("events", "items"):
        m.batch_size.labels(topic)
        m.batch_duration.labels(topic)
        for cause in ("invalid", "refused"):
            m.dead_letters.labels(topic, cause)
    for operation in RETRY_OPERATIONS:
        m.retries.labels(operation)
    for name in (*CONDITIONS, *DECODE_CONDITIONS, OTHER):
        m.blocked.labels(name).set(0)
    for strategy in (*STRATEGIES, OTHER):
        for event_type in ATTRIBUTED_TYPES:
            m.attributed.labels(strategy, event_type)
    return m


# --- Producers (EventPublisher: in the API, ``streamrec replay`` and ``streamrec simulate``) ----------


@dataclass(frozen=True)
class ProducerMetrics:
    """The producers' series: records sent, failed for good, and retried (by topic)."""

    sent: Counter
    failed: Counter
    retried: Counter


@cache
def producer() -> ProducerMetrics:
    """The publisher's metrics (every process that publishes: the API, replay, simulate)."""
    m = ProducerMetrics(
        sent=Counter(
            "streamrec_producer_records_sent_total",
            "Records Kafka acknowledged, by topic (events, items, other).",
            ["topic"],
        ),
        failed=Counter(
            "streamrec_producer_records_failed_total",
            "Records Kafka never acknowledged (or that could not be queued), by topic.",
            ["topic"],
        ),
        retried=Counter(
            "streamrec_producer_records_retried_total",
            "Record sends the Kafka client retried after a transient broker error.",
        ),
    )
    for topic in TOPIC_KINDS:
        m.sent.labels(topic)
        m.failed.labels(topic)
    return m


# --- Trainer (a batch job: its figures live with the model it published in Redis, and the API exports
# them on every scrape, so they survive the job and need no push gateway) ---------------------------------


class TrainerCollector:
    """``streamrec_trainer_*`` gauges read from the model store at scrape time.

    ``versions`` returns the published models (``ModelStore.versions``): newest first, each with
    ``version``, ``published_ms``, ``active`` and ``meta``. Only the active model carries a version label,
    so the series stay bounded however many models are trained.
    """

    def __init__(self, versions: Any) -> None:
        self.versions = versions

    def collect(self) -> Any:
        """Yield the trainer's gauges (last run time, its figures, the active version) from ``versions()``; nothing when Redis cannot be read."""
        from prometheus_client.core import GaugeMetricFamily

        try:
            infos = list(self.versions())
        except Exception as exc:  # a scrape must not fail because Redis is down; the API's own metrics say so
            log.warning("trainer metrics unavailable: %s", exc)
            return
        last_run = GaugeMetricFamily(
            "streamrec_trainer_last_run_timestamp_seconds", "When the newest model was published (Unix time)."
        )
        duration = GaugeMetricFamily(
            "streamrec_trainer_run_duration_seconds", "How long the newest model's training run took."
        )
        active = GaugeMetricFamily(
            "streamrec_trainer_active_model_info",
            "1 for the model the API blends in, labelled with its version and family.",
            labels=["version", "family"],
        )
        offline = GaugeMetricFamily(
            "streamrec_trainer_offline_metric_ratio",
            "The active model's held-out figures from its training run (HR@10, NDCG@10).",
            labels=["metric"],
        )
        published = GaugeMetricFamily("streamrec_trainer_models_published", "Model versions kept in Redis.")
        published.add_metric([], len(infos))
        if infos:
            last_run.add_metric([], infos[0].published_ms / 1000)
            duration.add_metric([], float(infos[0].meta.get("train_seconds", 0.0)))
        for info in infos:
            if info.active:
                active.add_metric([info.version, str(info.meta.get("family", ""))], 1)
                test = info.meta.get("test") or {}
                for name in ("hr_at_10", "ndcg_at_10"):
                    if name in test:
                        offline.add_metric([name], float(test[name]))
        yield from (last_run, duration, active, offline, published)


# --- Experiments (A/B tests on placements: their counts live in Redis, shared by every API process and
# worker, and the API exports them on every scrape) ----------------------------------------------------

# the attributed event types an experiment's counts keep, and the VariantCounts field of each
EXPERIMENT_EVENT_FIELDS = (("view", "views"), ("add_to_cart", "carts"), ("purchase", "purchases"))


class ExperimentCollector:
    """``streamrec_experiment_*`` series read from Redis at scrape time, by experiment and variant.

    ``read`` returns every experiment that exists now with its counts: ``(experiment, counts)`` pairs of
    an ``experiments.Experiment`` and its ``experiment_stats.VariantCounts`` (``ExperimentStore.counts``).

    Labels are bounded by construction: ``experiment`` and ``variant`` are names the store validated (at
    most ``experiment_store.MAX_EXPERIMENTS`` experiments of at most ``experiments.MAX_VARIANTS``
    variants each: 100 x 10 x 8 + 100 x 2 = 8,200 series at most), never request input, and only those
    that exist at the scrape are exported: a deleted experiment's series vanish on the next scrape
    (Prometheus marks them stale). A re-created experiment (a new run) starts its counters again from 0,
    which ``rate()`` reads as a reset.

    The values are the deployment's, not this process's: every API replica exports the same numbers, so
    dashboards and alerts aggregate them with ``max by (experiment, variant)``, never ``sum``. They count
    since the run began (cumulative, like the admin report), and exposures reach Redis within 200 ms of
    an answer (``experiment_store.FLUSH_EVERY_S``).
    """

    def __init__(self, read: Callable[[], Iterable[tuple[Experiment, Sequence[VariantCounts]]]]) -> None:
        self.read = read

    def collect(self) -> Any:
        """Yield the experiments' series from ``read()``; nothing when Redis cannot be read."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        try:
            experiments = [(experiment, list(counts)) for experiment, counts in self.read()]
        except Exception as exc:  # a scrape must not fail because Redis is down; the API's own metrics say so
            log.warning("experiment metrics unavailable: %s", exc)
            return
        by_variant = ["experiment", "variant"]
        exposed = GaugeMetricFamily(
            "streamrec_experiment_exposed_shoppers",
            "Distinct shoppers shown at least one answer of the variant (or credited an event of it) since "
            "the experiment's run began.",
            labels=by_variant,
        )
        answers = CounterMetricFamily(
            "streamrec_experiment_answers_total",
            "Answers served under the variant (impressions of a whole answer).",
            labels=by_variant,
        )
        attributed = CounterMetricFamily(
            "streamrec_experiment_attributed_events_total",
            "Events credited to the variant (they cite one of its answers' recommendation_id and their "
            "shopper is assigned to it), by type (view: a click; add_to_cart; purchase).",
            labels=[*by_variant, "type"],
        )
        converted = GaugeMetricFamily(
            "streamrec_experiment_converted_shoppers",
            "Distinct exposed shoppers with at least one purchase credited to the variant; conversion is "
            "this over streamrec_experiment_exposed_shoppers.",
            labels=by_variant,
        )
        revenue = CounterMetricFamily(
            "streamrec_experiment_revenue_total",
            "Price times quantity of the purchases credited to the variant (the shop's currency).",
            labels=by_variant,
        )
        weight = GaugeMetricFamily(
            "streamrec_experiment_weight",
            "The variant's weight in the experiment document (its expected share is weight / sum of weights).",
            labels=by_variant,
        )
        running = GaugeMetricFamily(
            "streamrec_experiment_running",
            "1 while the experiment splits its placement's requests, 0 once it is stopped.",
            labels=["experiment"],
        )
        srm = GaugeMetricFamily(
            "streamrec_experiment_srm_p_value",
            "Sample-ratio-mismatch test: chi-square p-value of exposed shoppers against the weights (absent "
            "while nobody is exposed). Below 0.001 the split is broken and the results are not to be trusted.",
            labels=["experiment"],
        )
        for experiment, counts in experiments:
            name = experiment.name
            running.add_metric([name], 1 if experiment.running else 0)
            for c in counts:
                labels = [name, c.name]
                exposed.add_metric(labels, c.exposed)
                answers.add_metric(labels, c.answers)
                for event_type, field in EXPERIMENT_EVENT_FIELDS:
                    attributed.add_metric([*labels, event_type], getattr(c, field))
                converted.add_metric(labels, c.converted)
                revenue.add_metric(labels, c.revenue)
                weight.add_metric(labels, c.weight)
            p_value = _srm_p_value(counts)
            if p_value is not None:
                srm.add_metric([name], p_value)
        yield from (exposed, answers, attributed, converted, revenue, weight, running, srm)


def _srm_p_value(counts: Sequence[VariantCounts]) -> float | None:
    """The sample-ratio-mismatch p-value of ``experiment_stats.report`` (the same test: SciPy's
    chi-square goodness of fit of exposed shoppers against the weights), without the rest of the report:
    a scrape of 100 experiments of 10 variants takes milliseconds instead of a second. None when nobody is
    exposed, there is a single variant, or the p-value is not a finite number."""
    total = sum(c.exposed for c in counts)
    if total == 0 or len(counts) < 2:
        return None
    from scipy import stats  # imported on the first scrape that needs it: about 1 s, once per process

    weights = sum(c.weight for c in counts)
    expected = [total * c.weight / weights for c in counts]
    p_value = float(stats.chisquare([c.exposed for c in counts], expected).pvalue)
    return p_value if math.isfinite(p_value) else None


def multiprocess_dir() -> str | None:
    """The directory gunicorn workers share metric files in, when the API runs under gunicorn."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition(*extra: Any) -> bytes:
    """This process's metrics in the text format; under gunicorn, every worker's values combined.

    ``extra`` collectors (read at scrape time, such as ``TrainerCollector``) are appended.
    """
    directory = multiprocess_dir()
    if directory is None:
        text = generate_latest(REGISTRY)
    else:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        text = generate_latest(registry)
    if extra:
        registry = CollectorRegistry()
        for collector in extra:
            registry.register(collector)
        text += generate_latest(registry)
    return text


def serve(host: str, port: int, what: str) -> None:
    """Serve this process's /metrics on ``port`` from a background thread (0: not at all).

    A busy port is logged, not fatal: folding events matters more than being scraped, and Prometheus
    reports the target down, which alerts.
    """
    if not port:
        return
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.error("the %s's /metrics could not listen on %s:%d: %s", what, host, port, exc)
        return
    log.info("%s metrics on http://%s:%d/metrics", what, host, port)
