"""Typed settings for every streamrec program, read from ``STREAMREC_*`` environment variables.

One object holds every knob so that the worker, the API, the producers and the tests agree on
topic names, key prefixes and scoring weights. Nothing is read at import: call ``Settings()``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamrec.contract import DEFAULT_MAX_FUTURE_SKEW_MS
from streamrec.event_types import TYPES, EventType
from streamrec.keys import Keys

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


class ScoringSettings(BaseSettings):
    """How events become scores: weights, windows, half-lives and bounds (the tunable model)."""

    model_config = SettingsConfigDict(env_prefix="STREAMREC_SCORING_", extra="ignore")

    weight_view: float = Field(
        TYPES[EventType.VIEW].weight, description="Weight of a view in preferences and popularity."
    )
    weight_add_to_cart: float = Field(
        TYPES[EventType.ADD_TO_CART].weight, description="Weight of an add-to-cart."
    )
    weight_remove_from_cart: float = Field(
        TYPES[EventType.REMOVE_FROM_CART].weight, description="Weight of a cart removal (negative feedback)."
    )
    weight_purchase: float = Field(TYPES[EventType.PURCHASE].weight, description="Weight of a purchase.")
    weight_search_click: float = Field(
        1.0, description="Weight of an action that follows a search, for terms."
    )

    history_len: int = Field(30, description="How many recent actions are kept per user.")
    cooc_window: int = Field(5, description="How many previous actions a new action is paired with.")
    cooc_position_decay: float = Field(0.7, description="Pair weight falls by this factor per step apart.")
    cooc_backward_weight: float = Field(
        0.3, description="Weight of the reverse direction (new item -> older)."
    )
    cooc_max_gap_ms: int = Field(DAY_MS, description="Actions further apart than this are not paired.")
    neighbours_max: int = Field(100, description="Neighbours kept per item (memory is O(items x this)).")
    neighbours_slack: int = Field(20, description="Extra neighbours allowed before a trim runs.")
    popularity_alpha: float = Field(0.5, description="Co-occurrence is divided by popularity^alpha.")
    neighbour_shrinkage: float = Field(
        100.0,
        ge=0.0,
        description="Pseudo-interactions added to a neighbour's count before dividing by it, so thinly supported items cannot outrank well-supported ones (0: none; chosen on validation).",
    )

    preference_halflife_ms: int = Field(30 * DAY_MS, description="Half-life of a user's item preferences.")
    preference_max: int = Field(50, description="Items kept in a user's preference set.")
    purchases_max: int = Field(200, description="Purchases remembered per user (to exclude).")
    popularity_halflife_ms: int = Field(7 * DAY_MS, description="Half-life of popularity.")
    trending_halflife_ms: int = Field(HOUR_MS, description="Half-life of the fast rate used for trending.")
    popular_max: int = Field(50_000, description="Items kept per popularity/trending set.")

    searches_max: int = Field(10, description="Recent search queries kept per user.")
    search_window_ms: int = Field(
        30 * 60_000, description="Actions within this time after a search count for it."
    )
    term_items_max: int = Field(200, description="Items kept per search term.")

    user_ttl_s: int = Field(
        90 * 86_400, description="A user's state expires this long after their last event."
    )
    term_ttl_s: int = Field(30 * 86_400, description="A search term's items expire this long after last use.")
    dedupe_window_s: int = Field(
        15 * 60,
        ge=1,
        description="A client's retry of an event_id within this window is folded once (broker redelivery is caught by offset watermarks, however late).",
    )
    cooc_halflife_ms: int = Field(
        90 * DAY_MS,
        ge=1,
        description="Half-life of co-occurrence and of the item counts it is normalised by.",
    )
    item_ttl_s: int = Field(
        30 * 86_400, description="An item's neighbours and activity expire this long after its last event."
    )
    outbox_ttl_s: int = Field(
        86_400,
        description="Redis Cluster only: effects a crash left between fold stages are kept this long for redelivery.",
    )
    forget_below: float = Field(
        0.01,
        gt=0,
        description="An item leaves the popularity and trending lists once its decayed weight falls below this.",
    )

    history_used: int = Field(10, description="Recent history items that seed personal recommendations.")
    history_position_decay: float = Field(0.7, description="Seed weight falls by this factor per step back.")
    search_blend: float = Field(0.5, description="Weight of search-term candidates in personal scores.")
    model_blend: float = Field(
        0.6,
        ge=0.0,
        le=1.0,
        description="Share of the active batch model in personal and similar-item scores (0 = live state only), for a model whose metadata records no share chosen by the trainer.",
    )
    exclude_seen: bool = Field(
        True, description="Leave items the user already interacted with out of answers."
    )
    repeat_blend: float = Field(
        2.0,
        ge=0.0,
        description="With exclude_seen off: weight of the user's own not-yet-bought items (cart, views) among candidates.",
    )

    def type_weights(self) -> dict[str, float]:
        """The weight of each event type, as the state script wants it."""
        return {t.value: getattr(self, f"weight_{t.value}") for t in EventType if TYPES[t].needs_item}


class TrainerSettings(BaseSettings):
    """How the batch trainer sizes its work (``streamrec train``, ``streamrec eval``)."""

    model_config = SettingsConfigDict(env_prefix="STREAMREC_TRAINER_", extra="ignore")

    memory_budget_mb: int = Field(
        4096,
        ge=64,
        description="Memory a model fit may use, in MiB: dense item x item families (EASE, SLIST) are tried only where they fit.",
    )

    max_blend: float = Field(
        0.9,
        ge=0.0,
        le=1.0,
        description="Largest blend share the trainer may give its model, so the live state keeps new items and new co-occurrences in answers before the next training.",
    )

    @property
    def budget_bytes(self) -> int:
        """The trainer's memory budget in bytes (``memory_budget_mb`` MiB)."""
        return self.memory_budget_mb << 20


class Settings(BaseSettings):
    """Connection and process settings shared by every program."""

    model_config = SettingsConfigDict(env_prefix="STREAMREC_", extra="ignore")

    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]."
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis connection URL.")
    topic_prefix: str = Field("streamrec", description="Prefix of every Kafka topic name.")
    redis_prefix: str = Field("sr", description="Prefix of every Redis key.")
    redis_cluster: bool = Field(
        False, description="Redis is a Redis Cluster (STREAMREC_REDIS_URL names any one node)."
    )
    redis_shards: int = Field(
        8,
        ge=1,
        description="Shards of the popularity and trending lists (fixed for a deployment's lifetime).",
    )
    partitions: int = Field(4, description="Partitions of the events topic when streamrec creates it.")

    api_host: str = Field("127.0.0.1", description="Address the API binds to.")
    api_port: int = Field(8000, description="Port the API listens on.")
    api_workers: int = Field(2, ge=1, description="Gunicorn worker processes.")
    api_threads: int = Field(4, ge=1, description="Threads per gunicorn worker (gthread workers only).")
    api_worker_class: Literal["gthread", "sync"] = Field(
        "sync",
        description="Gunicorn worker class (sync: one request at a time per worker, no keep-alive; gthread: STREAMREC_API_THREADS each, for an API that takes many writes, each of which waits for Kafka's acknowledgement).",
    )
    api_cache_ttl_ms: int = Field(
        500,
        ge=0,
        description="How stale an API process's cached state may be, in ms (active model version, catalog fields, popularity tops, trending; never a user's own state; a cached answer's catalog fields are checked by the catalog generation instead); 0 disables the whole cache.",
    )
    api_cache_neighbours_ttl_ms: int = Field(
        60_000,
        ge=0,
        description="How stale an API process's normalised neighbour lists and the counts they divide by may be, in ms: other shoppers' co-occurrence (the user's own history, which picks the seeds, is read on every answer); 0 keeps none.",
    )
    api_cache_answers_ttl_ms: int = Field(
        240_000,
        ge=0,
        description="How long an API process may serve an answer (personal, or similar items) again, in ms, while the user's state (their version, if there is a user), the catalog (its generation) and the active model are as they were: counted from when the oldest neighbour list it was ranked from was read, so what other shoppers did shows in it within this bound; 0 keeps none.",
    )
    api_change_feed: bool = Field(
        True,
        description="Follow the worker's change feed (a Redis Pub/Sub channel) in each API process: cached neighbour lists, catalog records and answers are kept while the items they depend on are unchanged, counts are taken from the feed's messages, and a change reaches every answer within STREAMREC_API_CACHE_TTL_MS (the freshness contract, docs/GUARANTEES.md); while the feed is lost, cached values are kept 500 ms at most. false loosens the contract: other shoppers' co-occurrence then reaches answers only within STREAMREC_API_CACHE_NEIGHBOURS_TTL_MS and …_ANSWERS_TTL_MS.",
    )
    api_cache_answers: int = Field(
        20_000,
        ge=0,
        description="Most answers (personal, or similar items) cached in an API process, one per request; the one computed longest ago is evicted.",
    )
    api_cache_items: int = Field(
        20_000,
        ge=0,
        description="Most entries of each per-item cache in an API process (catalog records, counts, neighbour lists, model rows); the entry read longest ago is evicted (model rows: least recently used).",
    )
    api_cache_lists: int = Field(
        4096, ge=1, description="Most popularity tops and trending lists cached in an API process."
    )
    max_batch: int = Field(1000, description="Most events accepted in one POST /v1/events.")
    default_k: int = Field(10, description="Items returned when the request does not say k.")
    max_k: int = Field(100, description="Most items one request may ask for.")
    max_future_skew_ms: int = Field(
        DEFAULT_MAX_FUTURE_SKEW_MS,
        ge=0,
        description="How far ahead of this receiver's clock an event or catalog 'ts' may be, in ms (API and worker).",
    )

    worker_group: str = Field(
        "streamrec-worker", description="Kafka consumer group (Faust app id) of workers."
    )
    worker_batch: int = Field(500, description="Most events the worker folds into Redis in one script call.")
    worker_batch_wait_s: float = Field(0.01, description="Longest wait to fill a batch, in seconds.")
    worker_fetch_wait_ms: int = Field(
        20, description="Longest a fetch waits for new events (latency vs. idle polling)."
    )
    worker_blocked_retry_s: float = Field(
        1.0,
        gt=0,
        description="First delay (s) before a partition blocked at a record batch the worker cannot decode "
        "(a missing compression library, a corrupt batch) is fetched again; each next one doubles, up to 16x.",
    )
    worker_session_timeout_s: float = Field(6.0, description="Consumer session timeout (short suits Tansu).")
    worker_data_dir: str = Field(".streamrec/worker", description="Faust's data directory.")
    worker_metrics_port: int = Field(
        9101, description="Port of the worker's Prometheus /metrics (0: none; one port per worker process)."
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="Address the worker's and producers' /metrics listen on (0.0.0.0 in containers).",
    )
    producer_metrics_port: int = Field(
        0, description="Port of replay's and simulate's Prometheus /metrics (0: none)."
    )
    api_metrics_dir: str = Field(
        "",
        description="Directory gunicorn workers share metric files in (PROMETHEUS_MULTIPROC_DIR); empty: a fresh temporary one.",
    )

    api_keys: SecretStr = Field(
        SecretStr(""),
        description="API keys, 'name=secret[:role]' (role events, write or admin) separated by commas (empty: writes open, admin closed).",
    )
    api_keys_file: str = Field(
        "", description="A file (mounted secret) with more API keys, one entry per line."
    )
    cors_origins: str = Field(
        "", description="Origins whose pages may call the API, comma-separated ('*': any; empty: none)."
    )
    write_rate_per_s: float = Field(
        100.0, description="Writes a second allowed per API key, per API process (0: unlimited)."
    )
    write_burst: int = Field(200, description="Writes a key may send at once before the rate applies.")

    log_level: str = Field("INFO", description="Log level of every program.")
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text, or as one JSON object per line (with request and event ids)."
    )

    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    trainer: TrainerSettings = Field(default_factory=TrainerSettings)


def keys_of(settings: Settings) -> Keys:
    """The deployment's key builder: its prefix and its number of popularity shards."""
    return Keys(settings.redis_prefix, settings.redis_shards)


def describe(model: BaseSettings) -> list[tuple[str, Any, str]]:
    """(environment variable, current value, description) for each plain field of a settings object."""
    prefix = model.model_config.get("env_prefix", "")
    return [
        (f"{prefix}{name}".upper(), getattr(model, name), field.description or "")
        for name, field in type(model).model_fields.items()
        if not isinstance(getattr(model, name), BaseSettings)
    ]
