"""The webhook's producer: publishes raw bodies with ``acks=all`` and a bounded wait.

The producer is started lazily and restarted after a failure, so ``wacrm serve`` comes up
(and answers 503) while the broker is down, and recovers by itself when it returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from wacrm import metrics

log = logging.getLogger("wacrm.webhook")


class PublishError(Exception):
    """The broker did not acknowledge the body in time; the caller answers 503 so Meta retries."""


class RawPublisher:
    """Owns one AIOKafkaProducer; ``publish`` returns only once the broker acknowledged."""

    def __init__(self, bootstrap_servers: str, *, timeout: float, security: Mapping[str, Any] | None = None) -> None:
        """``security``: aiokafka's TLS/SASL arguments (``Settings.kafka_security_kwargs()``); none: PLAINTEXT."""
        self._servers = bootstrap_servers
        self._timeout = timeout
        self._security = dict(security or {})
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _ensure(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self._servers, acks="all", enable_idempotence=False, linger_ms=1,
                    request_timeout_ms=int(self._timeout * 1000), max_request_size=16 * 1024 * 1024,
                    retry_backoff_ms=100, **self._security)
                try:
                    await asyncio.wait_for(producer.start(), self._timeout)
                except BaseException:
                    await _quiet_stop(producer)
                    raise
                self._producer = producer
        return self._producer

    async def publish(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                producer = await self._ensure()
                await producer.send_and_wait(topic, value, key=key)
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("publish to %s failed: %r", topic, exc)
            raise PublishError(f"broker did not acknowledge within {self._timeout}s: {type(exc).__name__}") from exc
        metrics.PUBLISH_DURATION.labels(topic).observe(time.perf_counter() - started)

    async def topics(self) -> set[str]:
        """Topic names the broker knows (for /readyz); bounded by the publish timeout."""
        async with asyncio.timeout(self._timeout):
            producer = await self._ensure()
            cluster = await producer.client.fetch_all_metadata()
            return set(cluster.topics())

    async def stop(self) -> None:
        if self._producer is not None:
            await _quiet_stop(self._producer)
            self._producer = None


async def _quiet_stop(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), 5)
    except Exception as exc:  # shutting down: nothing left to do with the error
        log.debug("producer stop: %r", exc)
