"""The Kafka client a shop backend (and the API, and the producer programs) publishes events with.

It lives in the shared package because both the API and the producer programs publish, and programs
must not import each other. It takes already-validated models: validation belongs to whoever builds the
``Event``, so that a bad event is refused where the caller can still be told.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.metrics.stats import Total
from tqdm import tqdm

from streamrec import metrics
from streamrec.contract import CatalogItem, Event, ItemDeletion, UserErasure
from streamrec.topics import Topics

log = logging.getLogger(__name__)

# Durable and ordered by default: every replica acknowledges, retries never reorder (idempotence),
# and a few milliseconds of linger buy real batches at replay rates without adding noticeable latency.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "retries": 5,
    "enable_idempotence": True,
    "max_in_flight_requests_per_connection": 5,
    "linger_ms": 5,
    "batch_size": 64 * 1024,
    "delivery_timeout_ms": 30_000,
    "request_timeout_ms": 15_000,
    "client_id": "streamrec-publisher",
}


class EventPublisher:
    """Publishes events (keyed by user) and catalog records (keyed by item); counts deliveries."""

    def __init__(self, bootstrap: str, topics: Topics, **producer_overrides: Any) -> None:
        self.topics = topics
        self.sent = 0
        self.failed = 0
        self._lock = threading.Lock()
        config = {**PRODUCER_DEFAULTS, **producer_overrides, "bootstrap_servers": bootstrap}
        self._producer = KafkaProducer(**config)
        self._closed = False
        self._metrics = metrics.producer()
        _count_retries(self._producer, self._metrics.retried)

    def publish_event(self, event: Event) -> Any:
        """Queue one event on the events topic; its user_id is the key so a user's events stay ordered.

        Returns the delivery future: ``.get(timeout)`` raises if the broker never acknowledged it.
        """
        return self.publish_raw(self.topics.events, event.user_id.encode(), event.to_json())

    def publish_item(self, item: CatalogItem) -> Any:
        """Queue one catalog record on the items topic, keyed by item_id; returns the delivery future."""
        return self.publish_raw(self.topics.items, item.item_id.encode(), item.to_json())

    def publish_deletion(self, deletion: ItemDeletion) -> Any:
        """Queue an item deletion on the items topic, keyed by item_id like the item's catalog records,
        so it is ordered after them; returns the delivery future."""
        return self.publish_raw(self.topics.items, deletion.item_id.encode(), deletion.to_json())

    def publish_erasure(self, erasure: UserErasure) -> Any:
        """Queue a user erasure on the events topic, keyed by the user like their events, so it is ordered
        after every event of theirs published before it; returns the delivery future."""
        return self.publish_raw(self.topics.events, erasure.erase_user.encode(), erasure.to_json())

    def publish_raw(self, topic: str, key: bytes | None, value: bytes) -> Any:
        """Queue bytes as they are: the escape hatch tests use to send what the contract would refuse."""
        try:
            future = self._producer.send(topic, key=key, value=value)
        except KafkaError:
            self._count(topic, failed=1)
            raise
        future.add_callback(self._on_sent, topic)
        future.add_errback(self._on_failed, topic)
        return future

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything queued so far is acknowledged or has failed."""
        self._producer.flush(timeout=timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush, then release the connection; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._producer.flush(timeout=timeout)
        finally:
            self._producer.close(timeout=timeout)

    def __enter__(self) -> EventPublisher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _on_sent(self, topic: str, _metadata: Any) -> None:
        self._count(topic, sent=1)

    def _on_failed(self, topic: str, exc: BaseException) -> None:
        self._count(topic, failed=1)
        log.warning("could not publish to %s: %s", topic, exc)

    def _count(self, topic: str, sent: int = 0, failed: int = 0) -> None:
        # Callbacks run on the producer's I/O thread while callers read the counters on theirs.
        with self._lock:
            self.sent += sent
            self.failed += failed
        kind = "events" if topic == self.topics.events else "items" if topic == self.topics.items else "other"
        if sent:
            self._metrics.sent.labels(kind).inc(sent)
        if failed:
            self._metrics.failed.labels(kind).inc(failed)


class _PrometheusTotal(Total):  # type: ignore[misc]
    """A kafka-python stat that also counts into a Prometheus counter (the client keeps only a rate)."""

    def __init__(self, counter: Any) -> None:
        super().__init__()
        self._counter = counter

    def record(self, config: Any, value: float, now: float) -> None:
        super().record(config, value, now)
        self._counter.inc(value)


def _count_retries(producer: KafkaProducer, counter: Any) -> None:
    """Hook the client's own retry sensor, which only offers a windowed rate, to a Prometheus counter."""
    registry = getattr(producer, "_metrics", None)
    sensor = registry.get_sensor("record-retries") if registry is not None else None
    if sensor is None:
        log.warning("this kafka-python has no record-retries sensor; producer retries are not counted")
        return
    name = registry.metric_name("record-retry-total", "producer-metrics", "Retried record sends (total).")
    sensor.add(name, _PrometheusTotal(counter))


@dataclass(frozen=True)
class PublishReport:
    """What one bulk publish did: how many events and catalog records, in how many seconds."""

    events: int
    items: int
    seconds: float
    failed: int = 0  # records the broker never acknowledged (flush() does not raise for them)


class Pacer:
    """Holds a loop to a steady rate by sleeping until each step's slot; None means no limit."""

    def __init__(self, rate: float | None, clock: Any = time.monotonic, sleep: Any = time.sleep) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._start: float | None = None
        self._steps = 0

    def wait(self) -> None:
        """Return when the next step is due (at once when unlimited or behind schedule)."""
        if self.rate is None:
            return
        now = self._clock()
        if self._start is None:
            self._start = now
        due = self._start + self._steps / self.rate
        self._steps += 1
        if due > now:
            self._sleep(due - now)


def publish_stream(
    publisher: EventPublisher,
    catalog: Iterable[CatalogItem],
    events: Iterable[Event],
    rate: float | None = None,
    progress: bool = True,
    total: int | None = None,
    desc: str = "events",
) -> PublishReport:
    """Publish a catalog, then events at ``rate`` per second, then flush: every producer program's loop."""
    started = time.monotonic()
    failed_before = publisher.failed
    n_items = 0
    for item in catalog:
        publisher.publish_item(item)
        n_items += 1
    publisher.flush()
    pacer = Pacer(rate)
    n_events = 0
    for event in _with_progress(events, progress, total, desc):
        pacer.wait()
        publisher.publish_event(event)
        n_events += 1
    publisher.flush()
    return PublishReport(
        events=n_events,
        items=n_items,
        seconds=time.monotonic() - started,
        failed=publisher.failed - failed_before,
    )


def _with_progress(events: Iterable[Event], progress: bool, total: int | None, desc: str) -> Iterator[Event]:
    if not progress:
        yield from events
        return
    with tqdm(events, total=total, desc=desc, unit="ev", smoothing=0.1) as bar:
        yield from bar
