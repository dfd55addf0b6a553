"""Record batches the worker cannot decode: a partition waits, the worker keeps running.

aiokafka decodes a fetched partition's record batches (decompression, CRC, record framing) while the
worker takes records off it. A batch it cannot decode used to raise out of the fetcher and crash the
whole worker, on every restart, on every partition. Here such a fault stops only its own partition:

- the records before the faulty batch are handed on as usual; the partition's position stays at the
  faulty batch, so nothing after it is skipped and nothing is lost;
- the partition is paused and ``streamrec_worker_blocked{condition}`` is 1 (``codec_unavailable`` when a
  compression library is missing, ``undecodable_batch`` otherwise), the worker's ``/readyz`` answers 503
  naming the partition, offset and cause, and a log line names the codec or the error;
- the fetch is retried with backoff (``Settings.worker_blocked_retry_s``, doubling up to 16 times that); a
  missing compression library is imported again before each retry, so installing it resumes the
  worker without a restart (a restart works too);
- the other partitions keep folding.

A record that decodes but is not a valid event or catalog record is not a fault of this kind: the
handler dead-letters it (``stream_processor.handler``).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiokafka import codec as aiokafka_codec
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.errors import UnsupportedCodecError
from aiokafka.structs import TopicPartition

from streamrec.metrics import DECODE_CONDITIONS

log = logging.getLogger("streamrec.worker")

CONDITIONS = DECODE_CONDITIONS
CODEC_UNAVAILABLE, UNDECODABLE_BATCH = DECODE_CONDITIONS
# aiokafka: "Libraries for snappy compression codec not found"
_MISSING_LIBRARY = re.compile(r"Libraries for (\w+) compression codec not found")
# the codec libraries aiokafka imports once, at its own import: (module attribute, import name)
_CODEC_LIBRARIES = (("cramjam", "cramjam"),)


@dataclass(frozen=True)
class Fault:
    """Why a partition's batch at ``offset`` could not be decoded: ``condition`` (one of ``CONDITIONS``)
    and ``cause``, a line for a person (the codec, or the decoder's error)."""

    condition: str
    cause: str


def classify(exc: BaseException) -> Fault:
    """The fault an exception raised while decoding a batch stands for."""
    if isinstance(exc, UnsupportedCodecError) and (m := _MISSING_LIBRARY.search(str(exc))):
        return Fault(CODEC_UNAVAILABLE, f"the {m[1]} compression codec's library is not installed")
    return Fault(UNDECODABLE_BATCH, f"{type(exc).__name__}: {exc}")


def reimport_codecs() -> None:
    """Import again the compression libraries aiokafka found missing at its import, so that a library
    installed while the worker runs is used on the next retry."""
    importlib.invalidate_caches()
    for attribute, name in _CODEC_LIBRARIES:
        if getattr(aiokafka_codec, attribute, None) is None:
            try:
                setattr(aiokafka_codec, attribute, importlib.import_module(name))
            except ImportError:
                continue
            log.info("the compression library %s is installed now", name)


@dataclass
class Blocked:
    """One partition waiting at a batch it cannot decode."""

    topic: str
    partition: int
    offset: int
    fault: Fault
    since: float
    retries: int = 0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready description, for ``/readyz``."""
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "condition": self.fault.condition,
            "cause": self.fault.cause,
            "blocked_s": round(time.time() - self.since, 1),
            "retries": self.retries,
        }


class PartitionGuard:
    """Which partitions wait at a batch they cannot decode, and when each is fetched again.

    ``on_change(condition, blocked)`` is told how many partitions each condition blocks (the metric).
    ``retry_s`` is the first retry's delay in seconds; each next one doubles, up to 16 times it.
    ``attach`` gives it the consumer's ways to suspend and resume fetching one partition. Fault and retry
    calls run on the consumer's event loop; ``blocked()`` may be read from any thread.
    """

    def __init__(self, on_change: Callable[[str, int], None], retry_s: float = 1.0) -> None:
        self._on_change = on_change
        self.retry_s = retry_s
        self._pause: Callable[[TopicPartition], None] = lambda tp: None
        self._resume: Callable[[TopicPartition], None] = lambda tp: None
        self._blocked: dict[TopicPartition, Blocked] = {}
        self._lock = threading.Lock()

    def attach(
        self, pause: Callable[[TopicPartition], None], resume: Callable[[TopicPartition], None]
    ) -> None:
        """Use ``pause(tp)`` and ``resume(tp)`` (the aiokafka consumer's own) on blocked partitions."""
        self._pause = pause
        self._resume = resume

    def blocked(self) -> list[Blocked]:
        """The partitions waiting now, oldest first."""
        with self._lock:
            return sorted(self._blocked.values(), key=lambda b: b.since)

    def _report(self) -> None:
        with self._lock:
            counts = {c: sum(b.fault.condition == c for b in self._blocked.values()) for c in CONDITIONS}
        for condition, n in counts.items():
            self._on_change(condition, n)

    def fault(self, tp: TopicPartition, offset: int, exc: BaseException) -> None:
        """The batch at ``offset`` of ``tp`` could not be decoded: pause the partition, retry later."""
        fault = classify(exc)
        with self._lock:
            known = self._blocked.get(tp)
            if known is None or known.offset != offset or known.fault != fault:
                known = self._blocked[tp] = Blocked(tp.topic, tp.partition, offset, fault, time.time())
                first = True
            else:
                known.retries += 1
                first = False
        delay = min(self.retry_s * 2 ** min(known.retries, 4), self.retry_s * 16)
        (log.error if first else log.warning)(
            "partition %s[%d] blocked at offset %d: %s (%s); other partitions go on, retry in %.0f s",
            tp.topic,
            tp.partition,
            offset,
            fault.cause,
            fault.condition,
            delay,
            extra={"reason": fault.cause},
        )
        self._report()
        self._pause(tp)
        asyncio.get_running_loop().call_later(delay, self._retry, tp)

    def _retry(self, tp: TopicPartition) -> None:
        if tp in self._blocked:
            reimport_codecs()
            self._resume(tp)

    def progressed(self, tp: TopicPartition, offset: int) -> None:
        """``tp`` decoded a batch up to ``offset`` (exclusive): if it waited before it, it goes on."""
        with self._lock:
            known = self._blocked.get(tp)
            if known is None or offset <= known.offset:
                return
            del self._blocked[tp]
        log.warning(
            "partition %s[%d] goes on past offset %d after %.0f s blocked (%s)",
            tp.topic,
            tp.partition,
            known.offset,
            time.time() - known.since,
            known.fault.cause,
        )
        self._report()

    def forget(self, tps: set[TopicPartition]) -> None:
        """Partitions this worker no longer owns (a rebalance): their new owner reports them."""
        with self._lock:
            for tp in tps:
                self._blocked.pop(tp, None)
        self._report()


class GuardedPartitionRecords(aiokafka_fetcher.PartitionRecords):
    """aiokafka's records of one fetched partition, which stop cleanly at a batch they cannot decode
    and tell the guard (``guard``: set on the subclass that ``install`` makes)."""

    guard: PartitionGuard

    def _unpack_records(self) -> Iterator[Any]:
        inner = super()._unpack_records()
        tp = self._tp
        while True:
            try:
                record = next(inner)
            except StopIteration:
                self.guard.progressed(tp, self.next_fetch_offset)
                return
            except Exception as exc:  # noqa: BLE001 - whatever a batch's decoding raises is its fault
                # next_fetch_offset still points at the faulty batch (or the first record not yet
                # handed on): the partition's position stays there
                self.guard.fault(tp, self.next_fetch_offset, exc)
                return
            yield record


def install(guard: PartitionGuard) -> None:
    """Make aiokafka's fetcher, in this process, build guarded partition records that report to
    ``guard``. aiokafka has no hook for this; its fetcher looks the class up in its module on each
    fetch. The worker process runs one consumer, so one guard serves it."""
    aiokafka_fetcher.PartitionRecords = type(
        "GuardedPartitionRecords", (GuardedPartitionRecords,), {"guard": guard}
    )
