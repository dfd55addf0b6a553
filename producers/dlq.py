"""The dead-letter topic, read back: counts by reason, samples, and replay of the originals after a fix.

A dead letter (``stream_processor/fold.py``, ``dead_letter``) is a JSON record with the reason, the source
topic, partition and offset, the original's length and sha256, and the original itself up to 64 KiB (a
larger one keeps a 1 KiB prefix only, and is fetched back from its source offset on replay).

Replay re-publishes each original, with its original key, into the topic it came from (the events or
the items topic), where the worker folds it like any other record. It is idempotent in two ways:

- the worker folds an ``event_id`` once within ``STREAMREC_SCORING_DEDUPE_WINDOW_S`` (per-user claims),
  so a replayed event that was already applied comes out a duplicate;
- after publishing, replay writes a **marker** record on the dead-letter topic listing the dead letters
  it re-published; later replays skip them (``again=True`` overrides), however much later they run.

Reading stops after ``idle_s`` with no record, not at the broker's end offsets: Tansu's ListOffsets
answer can be too low (as in ``trainer/eventlog.py``).
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from streamrec.contract import Rejection, decode_event, decode_item
from streamrec.publisher import PRODUCER_DEFAULTS
from streamrec.topics import Topics

IDLE_S = 2.0
CONNECT_TIMEOUT_MS = 10_000  # an unreachable broker is reported after this, not kafka-python's 30 s
MARKER_KEY = b"streamrec.dlq.replayed"
MARKER_KIND = "replayed"
MARKER_MAX_ENTRIES = 1000  # dead letters named per marker record (keeps each record far below 1 MiB)
_EARLIEST_MS = 788_918_400_000  # 1995-01-01: an earlier "ms" value is probably seconds


class DlqError(Exception):
    """A dead-letter command cannot run: a bad argument, a missing topic, an unreachable broker."""


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter: where it sits on the dead-letter topic, why, and where its original came from.

    ``original`` holds the original bytes, or None when the dead letter kept only a prefix
    (``truncated``); ``source_*`` name the original's topic, partition and offset.
    """

    partition: int
    offset: int
    key: bytes | None
    reason: str
    source_topic: str
    source_partition: int
    source_offset: int
    rejected_at: int
    length: int
    sha256: str
    original: bytes | None
    prefix: bytes

    @property
    def truncated(self) -> bool:
        """Whether only a prefix of the original was kept (it was larger than the bound)."""
        return self.original is None

    @property
    def position(self) -> tuple[int, int]:
        """(partition, offset) of the dead letter on the dead-letter topic: its identity."""
        return (self.partition, self.offset)


@dataclass(frozen=True)
class Marker:
    """A replay's note on the dead-letter topic: these dead letters were re-published at ``at`` (ms)."""

    positions: list[tuple[int, int]]
    at: int


@dataclass(frozen=True)
class Unreadable:
    """A record of the dead-letter topic that is neither a dead letter nor a marker."""

    partition: int
    offset: int


def _original(record: dict[str, Any]) -> bytes | None:
    if isinstance(record.get("original"), str):
        return str(record["original"]).encode("utf-8")
    if isinstance(record.get("original_b64"), str):
        return base64.b64decode(record["original_b64"])
    return None


Record = DeadLetter | Marker | Unreadable


def parse_record(
    partition: int, offset: int, key: bytes | None, value: bytes | None, timestamp_ms: int
) -> Record:
    """One record of the dead-letter topic (at ``partition``, ``offset``) as a ``DeadLetter``, a replay's
    ``Marker``, or ``Unreadable`` when it is neither; ``timestamp_ms`` stands in for a missing
    ``rejected_at``."""
    try:
        record = orjson.loads(value or b"")
        if not isinstance(record, dict):
            return Unreadable(partition, offset)
        if record.get("kind") == MARKER_KIND and isinstance(record.get("letters"), list):
            return Marker([(int(p), int(o)) for p, o in record["letters"]], int(record.get("at", 0)))
        source = record.get("source")
        if not isinstance(source, dict) or not isinstance(record.get("reason"), str):
            return Unreadable(partition, offset)
        return _dead_letter(partition, offset, key, record, source, timestamp_ms)
    except (orjson.JSONDecodeError, TypeError, ValueError):  # not JSON, or fields of the wrong shape
        return Unreadable(partition, offset)


def _dead_letter(
    partition: int, offset: int, key: bytes | None, record: dict[str, Any], source: dict[str, Any], ts: int
) -> DeadLetter:
    original = _original(record)
    prefix = base64.b64decode(record.get("original_prefix_b64") or "") if original is None else original
    return DeadLetter(
        partition=partition,
        offset=offset,
        key=key,
        reason=record["reason"],
        source_topic=str(source.get("topic", "")),
        source_partition=int(source.get("partition", -1)),
        source_offset=int(source.get("offset", -1)),
        rejected_at=int(record.get("rejected_at") or ts),
        length=int(record.get("original_length", len(original or b""))),
        sha256=str(record.get("original_sha256") or hashlib.sha256(original or b"").hexdigest()),
        original=original,
        prefix=prefix[:1024],
    )


def _consumer(bootstrap: str, idle_s: float) -> KafkaConsumer:
    try:
        return KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            consumer_timeout_ms=int(idle_s * 1000),
            max_poll_records=2000,
            fetch_max_bytes=8 * 1024 * 1024,
            bootstrap_timeout_ms=CONNECT_TIMEOUT_MS,
        )
    except KafkaError as exc:
        raise DlqError(f"cannot reach Kafka at {bootstrap}: {exc}") from None


def read_topic(
    bootstrap: str,
    topic: str,
    idle_s: float = IDLE_S,
    progress: Callable[[int], None] | None = None,
) -> Iterator[Record]:
    """Every record of the dead-letter ``topic`` from the beginning, parsed, until ``idle_s`` pass with none.

    ``progress(n)`` is called with the running count. Raises ``DlqError`` if the topic does not exist.
    """
    consumer = _consumer(bootstrap, idle_s)
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise DlqError(f"topic {topic!r} does not exist on {bootstrap}")
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        for n, message in enumerate(consumer, 1):
            yield parse_record(
                message.partition, message.offset, message.key, message.value, message.timestamp
            )
            if progress:
                progress(n)
    finally:
        consumer.close()


# ------------------------------------------------------------------------------------------ filters


def parse_time(text: str) -> int:
    """A time given as epoch milliseconds or ISO 8601 (``2026-11-30``, ``2026-11-30T04:00:00Z``; no zone
    means UTC) as epoch milliseconds. Raises ``DlqError`` for anything else, or for a number that looks
    like seconds (before 1995 as milliseconds)."""
    text = text.strip()
    if text.isdigit():
        ms = int(text)
        if ms < _EARLIEST_MS:
            raise DlqError(f"{text} is before 1995 as milliseconds (seconds? multiply by 1000)")
        return ms
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise DlqError(f"{text!r} is neither epoch milliseconds nor an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


@dataclass(frozen=True)
class Filter:
    """Which dead letters a command takes: ``reason`` is a case-insensitive substring of the reason;
    ``since_ms`` and ``until_ms`` bound the time the dead letter was written (inclusive, exclusive)."""

    reason: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def __post_init__(self) -> None:
        if self.since_ms is not None and self.until_ms is not None and self.until_ms <= self.since_ms:
            raise DlqError("--until must be later than --since")

    def matches(self, letter: DeadLetter) -> bool:
        """Whether ``letter`` passes every given condition."""
        if self.reason and self.reason.lower() not in letter.reason.lower():
            return False
        if self.since_ms is not None and letter.rejected_at < self.since_ms:
            return False
        return self.until_ms is None or letter.rejected_at < self.until_ms


_NUMBER = re.compile(r"\d+")


def reason_group(reason: str, width: int = 120) -> str:
    """The reason with its numbers masked (``line N column N``) and cut to ``width``, for counting."""
    return _NUMBER.sub("N", reason.splitlines()[0] if reason else "")[:width]


# ------------------------------------------------------------------------------------------ stats


@dataclass
class Stats:
    """Counts of the dead letters that passed a filter: by (reason group, source topic), and totals."""

    total: int = 0
    truncated: int = 0
    replayed: int = 0
    unreadable: int = 0
    by_reason: Counter[tuple[str, str]] = field(default_factory=Counter)
    first_ms: int | None = None
    last_ms: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The figures as plain JSON-able data."""
        return {
            "total": self.total,
            "truncated": self.truncated,
            "replayed": self.replayed,
            "unreadable": self.unreadable,
            "first_ms": self.first_ms,
            "last_ms": self.last_ms,
            "by_reason": [
                {"reason": r, "source_topic": t, "count": n} for (r, t), n in self.by_reason.most_common()
            ],
        }


def stats(records: Iterator[Record], flt: Filter | None = None) -> Stats:
    """Count the dead letters among ``records`` that pass ``flt``; ``replayed`` counts those a marker names."""
    flt = flt or Filter()
    out = Stats()
    replayed: set[tuple[int, int]] = set()
    matched: set[tuple[int, int]] = set()
    for rec in records:
        if isinstance(rec, Marker):
            replayed.update(rec.positions)
        elif isinstance(rec, Unreadable):
            out.unreadable += 1
        elif flt.matches(rec):
            matched.add(rec.position)
            out.total += 1
            out.truncated += rec.truncated
            out.by_reason[(reason_group(rec.reason), rec.source_topic)] += 1
            out.first_ms = rec.rejected_at if out.first_ms is None else min(out.first_ms, rec.rejected_at)
            out.last_ms = rec.rejected_at if out.last_ms is None else max(out.last_ms, rec.rejected_at)
    out.replayed = len(matched & replayed)
    return out


def samples(records: Iterator[Record], flt: Filter | None = None, limit: int = 10) -> list[DeadLetter]:
    """The first ``limit`` dead letters that pass ``flt``, in topic order."""
    flt = flt or Filter()
    out: list[DeadLetter] = []
    for rec in records:
        if isinstance(rec, DeadLetter) and flt.matches(rec):
            out.append(rec)
            if len(out) >= limit:
                break
    return out


def describe(letter: DeadLetter, width: int = 300) -> str:
    """A dead letter for a person: where, when, why, and the original (or its prefix), on a few lines."""
    when = datetime.fromtimestamp(letter.rejected_at / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    head = (
        f"dlq[{letter.partition}]@{letter.offset}  {when}  from {letter.source_topic}"
        f"[{letter.source_partition}]@{letter.source_offset}  key={(letter.key or b'').decode('utf-8', 'replace')!r}"
    )
    body = letter.original if letter.original is not None else letter.prefix
    text = body.decode("utf-8", "replace")
    shown = text if len(text) <= width else text[:width] + f"... ({len(body):,} bytes kept)"
    size = f"{letter.length:,} bytes, sha256 {letter.sha256[:16]}…"
    kept = f"truncated ({size}; prefix shown)" if letter.truncated else size
    return f"{head}\n  reason: {letter.reason}\n  original: {kept}\n  {shown}"


# ------------------------------------------------------------------------------------------ replay


@dataclass
class ReplayReport:
    """What a replay did. ``published`` lists (topic, partition, offset) of each re-published original."""

    matched: int = 0
    published: list[tuple[str, int, int]] = field(default_factory=list)
    already_replayed: int = 0
    still_invalid: int = 0
    unknown_topic: int = 0
    gone: int = 0
    failed: int = 0
    unmarked: int = 0
    dry_run: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every dead letter that was to be replayed was (skipped ones by choice do not count)."""
        return self.gone == 0 and self.failed == 0 and self.unmarked == 0

    def summary(self) -> str:
        """One line for a person."""
        verb = "would replay" if self.dry_run else "replayed"
        parts = [f"{verb} {len(self.published)} of {self.matched} matching dead letters"]
        for n, what in (
            (self.already_replayed, "already replayed (--again to send again)"),
            (self.still_invalid, "still invalid under this version (--include-invalid to send anyway)"),
            (self.unknown_topic, "from a topic that is not this deployment's events or items topic"),
            (self.gone, "whose original is no longer in its source topic (or changed)"),
            (self.failed, "not acknowledged by Kafka"),
            (self.unmarked, "sent but not marked as replayed (the claims window still catches a repeat)"),
        ):
            if n:
                parts.append(f"{n} {what}")
        return "; ".join(parts)


def fetch_original(
    bootstrap: str, letters: Sequence[DeadLetter], timeout_s: float = 10.0
) -> dict[tuple[int, int], bytes | None]:
    """The whole originals of truncated dead letters, read from their source topic, partition and offset.

    Returns dead-letter position -> bytes, or None when the source no longer holds that offset or holds
    different bytes there (its sha256 differs: the topic was recreated).
    """
    out: dict[tuple[int, int], bytes | None] = {}
    if not letters:
        return out
    consumer = _consumer(bootstrap, 1.0)
    try:
        for letter in letters:
            tp = TopicPartition(letter.source_topic, letter.source_partition)
            consumer.assign([tp])
            consumer.seek(tp, letter.source_offset)
            found: bytes | None = None
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and found is None:
                batch = consumer.poll(timeout_ms=500, max_records=1)
                msgs = batch.get(tp, [])
                if not msgs:
                    continue
                msg = msgs[0]
                if msg.offset == letter.source_offset and msg.value is not None:
                    found = msg.value
                break  # the next record is another one: the wanted offset is gone
            if found is not None and hashlib.sha256(found).hexdigest() != letter.sha256:
                found = None
            out[letter.position] = found
    finally:
        consumer.close()
    return out


def _valid(topic: str, topics: Topics, original: bytes) -> bool:
    decode = decode_event if topic == topics.events else decode_item
    return not isinstance(decode(original), Rejection)


def replay(
    bootstrap: str,
    topics: Topics,
    records: Iterator[Record],
    flt: Filter | None = None,
    dry_run: bool = False,
    include_invalid: bool = False,
    again: bool = False,
) -> ReplayReport:
    """Re-publish the originals of the dead letters that pass ``flt`` into their source topic.

    Skipped: dead letters a marker names (unless ``again``), originals the current contract still refuses
    (unless ``include_invalid``), sources that are not ``topics.events``/``topics.items``, truncated
    originals whose source record is gone. Each original goes out with its original key (so to its
    user's or item's partition), ``acks=all``; once every one is acknowledged a marker naming them is
    written on the dead-letter topic. ``dry_run`` publishes nothing and writes no marker.
    """
    flt = flt or Filter()
    report = ReplayReport(dry_run=dry_run)
    replayed: set[tuple[int, int]] = set()
    wanted: list[DeadLetter] = []
    for rec in records:
        if isinstance(rec, Marker):
            replayed.update(rec.positions)
        elif isinstance(rec, DeadLetter) and flt.matches(rec):
            wanted.append(rec)
    report.matched = len(wanted)
    todo: list[DeadLetter] = []
    for letter in wanted:
        if letter.position in replayed and not again:
            report.already_replayed += 1
        elif letter.source_topic not in (topics.events, topics.items):
            report.unknown_topic += 1
            report.problems.append(
                f"dlq@{letter.offset}: source topic {letter.source_topic!r} is not replayed"
            )
        else:
            todo.append(letter)
    fetched = fetch_original(bootstrap, [x for x in todo if x.truncated])
    sends: list[tuple[DeadLetter, bytes]] = []
    for letter in todo:
        original = letter.original if letter.original is not None else fetched.get(letter.position)
        if original is None:
            report.gone += 1
            report.problems.append(
                f"dlq@{letter.offset}: {letter.source_topic}[{letter.source_partition}]@{letter.source_offset} "
                "no longer holds the original"
            )
        elif not include_invalid and not _valid(letter.source_topic, topics, original):
            report.still_invalid += 1
        else:
            sends.append((letter, original))
    if dry_run:
        report.published = [(x.source_topic, x.source_partition, -1) for x, _ in sends]
        return report
    if not sends:
        return report
    try:
        producer = KafkaProducer(
            **{**PRODUCER_DEFAULTS, "client_id": "streamrec-dlq-replay"},
            bootstrap_servers=bootstrap,
            bootstrap_timeout_ms=CONNECT_TIMEOUT_MS,
        )
    except KafkaError as exc:
        raise DlqError(f"cannot reach Kafka at {bootstrap}: {exc}") from None
    try:
        futures = [(x, producer.send(x.source_topic, key=x.key, value=v)) for x, v in sends]
        producer.flush()
        done: list[DeadLetter] = []
        for letter, future in futures:
            try:
                meta = future.get(timeout=30)
            except KafkaError as exc:
                report.failed += 1
                report.problems.append(f"dlq@{letter.offset}: not acknowledged: {exc}")
                continue
            done.append(letter)
            report.published.append((meta.topic, meta.partition, meta.offset))
        for start in range(0, len(done), MARKER_MAX_ENTRIES):
            part = done[start : start + MARKER_MAX_ENTRIES]
            marker = {
                "kind": MARKER_KIND,
                "letters": [list(x.position) for x in part],
                "at": int(time.time() * 1000),
            }
            try:
                producer.send(topics.dlq, key=MARKER_KEY, value=orjson.dumps(marker)).get(timeout=30)
            except KafkaError as exc:  # sent but not marked: a later replay sends them again
                report.unmarked += len(part)
                report.problems.append(f"{len(part)} replayed dead letters not marked as replayed: {exc}")
    finally:
        producer.close()
    return report
