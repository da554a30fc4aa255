"""The webhook's producer: publishes raw bodies with ``acks=all`` and a bounded wait.

The producer is started lazily, so ``wacrm serve`` comes up (and answers 503) while the
broker is down, and recovers by itself when it returns.

Failures are routed by :func:`core.errors.classify`:

- :class:`PublishError` (RETRY: broker down or slow, timeouts): the caller answers 503 and
  Meta retries the body later;
- :class:`PublishRejected` (DEAD_LETTER: a body above
  :data:`topics.records.RAW_RECORD_MAX_BYTES`, checked before producing, or one the broker
  refuses for good): a retry can never succeed; the caller answers with a JSON error (413
  for ``too_large``) and no stack trace;
- anything else is a bug and propagates.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaProducer

from wacrm.core import metrics
from wacrm.core.errors import Next, classify, expected
from wacrm.topics.records import RAW_RECORD_MAX_BYTES, RAW_TOPIC_MAX_MESSAGE_BYTES, RecordTooLarge, check_size

log = logging.getLogger("wacrm.webhook")


class PublishError(Exception):
    """The broker did not acknowledge the body in time; the caller answers 503 so Meta retries."""


class PublishRejected(Exception):
    """The body can never be published (``code``: ``too_large`` or ``rejected``); answering 503
    would make Meta retry it for days. The message is safe to show the caller."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class RawPublisher:
    """Owns one AIOKafkaProducer; ``publish`` returns only once the broker acknowledged."""

    def __init__(self, bootstrap_servers: str, *, timeout: float, security: Mapping[str, Any] | None = None,
                 max_record_bytes: int = RAW_RECORD_MAX_BYTES) -> None:
        """``security``: aiokafka's TLS/SASL arguments (``Settings.kafka_security_kwargs()``); none: PLAINTEXT."""
        self._servers = bootstrap_servers
        self._timeout = timeout
        self._security = dict(security or {})
        self._max_record_bytes = max_record_bytes
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _ensure(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self._servers, acks="all", enable_idempotence=False, linger_ms=1,
                    request_timeout_ms=int(self._timeout * 1000), max_request_size=RAW_TOPIC_MAX_MESSAGE_BYTES,
                    retry_backoff_ms=100, **self._security)
                try:
                    await asyncio.wait_for(producer.start(), self._timeout)
                except BaseException:
                    await _quiet_stop(producer)
                    raise
                self._producer = producer
        return self._producer

    async def publish(self, topic: str, value: bytes, key: bytes | None = None,
                      headers: list[tuple[str, bytes]] | None = None) -> None:
        """Return once the broker acknowledged ``value`` (with ``headers``); :class:`PublishError` (retry
        later) or :class:`PublishRejected` (never) otherwise."""
        try:
            check_size(value, self._max_record_bytes)
        except RecordTooLarge as exc:
            raise PublishRejected("too_large", f"body of {exc.size} bytes is larger than the bus accepts "
                                               f"({exc.limit} bytes)") from None
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                producer = await self._ensure()
                await producer.send_and_wait(topic, value, key=key, headers=headers)
        except Exception as exc:
            step = classify(exc)
            if step is Next.RETRY:
                log.warning("publish to %s failed: %r", topic, exc)
                raise PublishError(f"broker did not acknowledge within {self._timeout}s: {type(exc).__name__}") \
                    from exc
            if not expected(exc):
                raise
            log.error("publish to %s refused for good: %r", topic, exc)
            code = "too_large" if "TooLarge" in type(exc).__name__ else "rejected"
            raise PublishRejected(code, f"the broker refused the body: {type(exc).__name__}") from exc
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
