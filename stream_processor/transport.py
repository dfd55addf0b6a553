"""Faust's aiokafka transport with a configurable fetch wait.

Faust hard-codes the consumer's ``fetch_max_wait_ms`` to 1500. Apache Kafka answers a fetch as soon as
data arrives, but Tansu holds it for the whole wait, so an event would sit up to 1.5 s before the worker
sees it. This transport (registered as the ``streamrec-kafka://`` scheme through faust's
``faust.transports`` entry point) sets the wait from ``Settings.worker_fetch_wait_ms`` instead.
"""

from __future__ import annotations

from typing import Any, ClassVar

from faust.transport.drivers import aiokafka as faust_aiokafka


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """The aiokafka consumer thread with a short fetch wait (``fetch_max_wait_ms``, ms): a quiet partition
    does not hold a batch from the others for aiokafka's default 500 ms.
    """

    fetch_max_wait_ms: ClassVar[int] = 20

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # read once by AIOKafkaConsumer.start() to build its fetcher; there is no public knob
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer


class Consumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer, on the consumer thread above."""

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    """faust's aiokafka transport with the consumer above: use it as the app's ``broker`` transport."""

    Consumer = Consumer
