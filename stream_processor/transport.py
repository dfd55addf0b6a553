"""Faust's aiokafka transport with a configurable fetch wait, committed reads and guarded batches.

- Faust hard-codes the consumer's ``fetch_max_wait_ms`` to 1500. Apache Kafka answers a fetch as soon as
  data arrives, but Tansu holds it for the whole wait, so an event would sit up to 1.5 s before the worker
  sees it. This transport (registered as the ``streamrec-kafka://`` scheme through faust's
  ``faust.transports`` entry point) sets the wait from ``Settings.worker_fetch_wait_ms`` instead.
- Faust reads uncommitted records unless the app itself is transactional, so a transactional
  producer's aborted events would be folded. The worker reads committed records only
  (``isolation_level="read_committed"``): aborted transactions are skipped, control records never reach
  the agents.
- A record batch the consumer cannot decode blocks its partition instead of crashing the worker
  (``stream_processor.batches``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streamrec.stream_processor.batches import PartitionGuard, install


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """The aiokafka consumer thread with a short fetch wait (``fetch_max_wait_ms``, ms): a quiet partition
    does not hold a batch from the others for aiokafka's default 500 ms. It reads committed records only,
    and reports batches it cannot decode to ``guard`` (both set by the app from its settings).
    """

    fetch_max_wait_ms: ClassVar[int] = 20
    guard: ClassVar[PartitionGuard | None] = None

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # read once by AIOKafkaConsumer.start() to build its fetcher; there are no public knobs
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        consumer._isolation_level = "read_committed"
        if self.guard is not None:
            self.guard.attach(consumer.pause, consumer.resume)
            install(self.guard)
        return consumer

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """A rebalance took partitions away: a blocked one is its next owner's to report."""
        if self.guard is not None:
            self.guard.forget(set(revoked))
        await super().on_partitions_revoked(revoked)


class Consumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer, on the consumer thread above."""

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    """faust's aiokafka transport with the consumer above: use it as the app's ``broker`` transport."""

    Consumer = Consumer
