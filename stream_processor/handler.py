"""What the worker does with one batch, apart from Faust: a plain class that tests drive directly.

A batch is acknowledged (its offsets become committable) only after ``handle`` returns, so it never lets
an exception out and never gives up on a write:

- a message that cannot be decoded, or an event the state script refuses on its own merits, goes to the
  dead-letter topic with the reason;
- a Redis condition (full, read-only, loading, busy, down, failing over, resharding) is waited out with
  backoff and jitter, never turned into dead letters (``streamrec.redis_conditions``); while it waits the
  worker's ``streamrec_worker_blocked{condition}`` is 1 and its log says why;
- a dead-letter topic that is unavailable is waited out the same way: a message is never dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from streamrec import metrics
from streamrec.contract import DEFAULT_TIME_POLICY, Event, Rejection, TimePolicy, UserErasure
from streamrec.event_types import ATTRIBUTED_TYPES
from streamrec.experiment_store import ExperimentCredits, credits_of
from streamrec.fold import APPLIED, DUPLICATE, ERASED, AsyncStateWriter, FoldResult, Refused, Source
from streamrec.redis_conditions import call_waiting, condition
from streamrec.stream_processor.fold import RawMessage, dead_letter, decode_batch

log = logging.getLogger("streamrec.worker")

SendDead = Callable[[RawMessage, bytes], Awaitable[None]]


@dataclass
class WorkerCounters:
    """Running totals of what this worker did, for its periodic log line."""

    batches: int = 0
    applied: int = 0
    duplicates: int = 0
    erased: int = 0
    dead_letters: int = 0
    items: int = 0
    retries: int = 0


def _declared(raw: RawMessage, field: str) -> Any:
    """A field of a message that failed validation, if it is a JSON object that has it."""
    try:
        value = orjson.loads(raw.value or b"")
    except orjson.JSONDecodeError:
        return None
    return value.get(field) if isinstance(value, dict) else None


def declared_type(raw: RawMessage) -> str:
    """The type a rejected message claimed to be, if any (for the events-by-type metric)."""
    return metrics.bounded(_declared(raw, "type"), metrics.EVENT_TYPES)


def declared_event_id(raw: RawMessage) -> str | None:
    """The event_id a rejected message claimed, if any (for its log line)."""
    event_id = _declared(raw, "event_id")
    return event_id[:64] if isinstance(event_id, str) else None


def observe_events(m: metrics.WorkerMetrics, events: Sequence[Event], now_ms: int) -> None:
    """Count folded events by type and their event-time lag; the gauge gets the newest event's lag."""
    newest = None
    for e in events:
        m.events.labels(e.type.value, "folded").inc()
        m.event_lag.observe(max(now_ms - e.ts, 0) / 1000)
        newest = e.ts if newest is None else max(newest, e.ts)
    if newest is not None:
        m.batch_lag.set(max(now_ms - newest, 0) / 1000)


def attributable(events: Sequence[Event]) -> list[Event]:
    """Events that act on a recommended item: they carry a recommendation_id and count for quality."""
    return [e for e in events if e.recommendation_id and e.type.value in ATTRIBUTED_TYPES]


class BatchHandler:
    """Decode, dead-letter and fold one batch of raw messages (events or catalog records).

    ``writer`` folds into Redis; ``send_dead(message, record)`` publishes a dead letter and raises if the
    topic did not take it (it is then retried until it does).
    """

    def __init__(
        self,
        writer: AsyncStateWriter,
        send_dead: SendDead,
        worker_metrics: metrics.WorkerMetrics | None = None,
        counters: WorkerCounters | None = None,
        policy: TimePolicy = DEFAULT_TIME_POLICY,
        credits: ExperimentCredits | None = None,
    ) -> None:
        self.writer = writer
        self.policy = policy
        self.credits = credits
        self._send_dead = send_dead
        self.m = worker_metrics or metrics.worker()
        self.counters = counters or WorkerCounters()
        self.waiting: str | None = None  # the condition being waited out now, for /readyz

    # --- waiting out conditions
    def _blocked(self, operation: str) -> Callable[[str, BaseException, float], None]:
        def on_wait(name: str, exc: BaseException, seconds: float) -> None:
            self.counters.retries += 1
            self.m.retries.labels(operation).inc()
            self.m.blocked.labels(metrics.bounded(name, metrics.CONDITIONS)).set(1)
            self.waiting = name

        return on_wait

    def _unblocked(self) -> None:
        self.waiting = None
        for name in (*metrics.CONDITIONS, metrics.OTHER):
            self.m.blocked.labels(name).set(0)

    async def _waiting(self, what: str, operation: str, action: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await call_waiting(what, action, self._blocked(operation))
        finally:
            self._unblocked()

    async def send_dead(self, raw: RawMessage, rejection: Rejection, kind: str, cause: str) -> None:
        """Publish one dead letter, waiting until the dead-letter topic takes it."""
        record = dead_letter(raw, rejection)
        log.warning(
            "dead letter from %s[%d]@%d: %s",
            raw.topic,
            raw.partition,
            raw.offset,
            rejection.reason,
            extra={"event_id": declared_event_id(raw), "reason": rejection.reason},
        )
        try:
            await call_waiting(
                "sending a dead letter",
                lambda: self._send_dead(raw, record),
                self._blocked("dead_letter"),
                transient=lambda exc: "dead_letter_topic",
            )
        finally:
            self._unblocked()
        self.counters.dead_letters += 1
        topic = "items" if kind == "item" else "events"
        self.m.dead_letters.labels(topic, cause).inc()
        if kind == "item":
            self.m.catalog_records.labels("dead_letter").inc()
        else:
            self.m.events.labels(declared_type(raw), "dead_letter").inc()

    # --- batches
    async def handle(self, raw: Sequence[RawMessage], kind: str) -> None:
        """Process one batch of the events topic (``kind`` "event") or the items topic ("item")."""
        started = time.perf_counter()
        decoded = decode_batch(raw, kind, self.policy)
        for msg, rejection in decoded.dead:
            await self.send_dead(msg, rejection, kind, "invalid")
        if kind == "item":
            await self._items(decoded.good, decoded.sources)
        else:
            await self._events(decoded.good, decoded.sources)
        self.counters.batches += 1
        topic = "items" if kind == "item" else "events"
        self.m.batch_size.labels(topic).observe(len(raw))
        self.m.batch_duration.labels(topic).observe(time.perf_counter() - started)

    async def _items(self, records: list[Any], sources: list[RawMessage]) -> None:
        if not records:
            return
        # a batch may mix partitions; each partition's records go together (they carry its stats)
        written = 0
        for partition in sorted({s.partition for s in sources}):
            part = [(r, s.offset) for r, s in zip(records, sources, strict=True) if s.partition == partition]
            written += await self._waiting(
                "upserting catalog records",
                "upsert_items",
                lambda p=part, n=partition: self.writer.upsert_items([r for r, _ in p], n, [o for _, o in p]),
            )
        self.counters.items += written
        self.m.catalog_records.labels("upserted").inc(written)
        self.m.catalog_records.labels("stale").inc(len(records) - written)

    async def _fold(self, events: list[Event | UserErasure], sources: list[RawMessage]) -> FoldResult:
        """Fold events, waiting out Redis conditions. If the whole call fails for another reason (not one
        event's: the script refuses single events itself), fold them one at a time so that only the
        events that fail alone are refused."""
        srcs = [Source(s.partition, s.offset) for s in sources]
        try:
            return await self._waiting(
                "folding events", "apply_events", lambda: self.writer.apply(events, srcs)
            )
        except Exception as exc:  # not a condition (those are waited out above): a failure of this input
            log.error("state script failed on a batch of %d (%s); folding one by one", len(events), exc)
        outcomes: list[Any] = []
        for event, src in zip(events, srcs, strict=True):
            try:
                one = await self._waiting(
                    "folding an event", "apply_events", lambda e=event, s=src: self.writer.apply([e], [s])
                )
                outcomes.append(one.outcomes[0])
            except Exception as exc:
                if condition(exc) is not None:  # pragma: no cover - waited out above
                    raise
                outcomes.append(Refused(f"state update failed: {exc}"))
        return FoldResult(outcomes)

    async def _credit(self, events: list[Any], sources: list[RawMessage], outcomes: Sequence[Any]) -> None:
        """Credit the folded events that cite an experiment answer to its variant (``ExperimentCredits``).

        A redelivered event is folded as a duplicate but still offered: if the worker stopped between its
        fold and its credit, this is when it is credited; if not, the credit script knows it already."""
        if self.credits is None:
            return
        offered = [
            (e, (raw.partition, raw.offset))
            for e, raw, o in zip(events, sources, outcomes, strict=True)
            if o in (APPLIED, DUPLICATE)
        ]
        credits = credits_of([e for e, _ in offered], [src for _, src in offered])
        if credits:
            credit = self.credits.credit
            await self._waiting("crediting experiments", "credit_experiments", lambda: credit(credits))

    async def _events(self, events: list[Any], sources: list[RawMessage]) -> None:
        if not events:
            return
        result = await self._fold(events, sources)
        await self._credit(events, sources, result.outcomes)
        folded: list[Event] = []
        for event, raw, outcome in zip(events, sources, result.outcomes, strict=True):
            if isinstance(outcome, Refused):
                await self.send_dead(raw, Rejection(outcome.reason, []), "event", "refused")
                continue
            if outcome == APPLIED:
                self.counters.applied += 1
            elif outcome == DUPLICATE:
                self.counters.duplicates += 1
                self.m.dedupe_hits.inc()
            elif outcome == ERASED:
                self.counters.erased += 1
            if isinstance(event, Event):
                folded.append(event)
                # only a first delivery counts for quality: the script says which one that is
                if outcome == APPLIED and event in attributable([event]):
                    self.m.attributed.labels(
                        metrics.strategy_of(event.recommendation_id), event.type.value
                    ).inc()
        observe_events(self.m, folded, int(time.time() * 1000))
