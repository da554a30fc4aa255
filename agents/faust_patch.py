"""The consumer's fetch wait and minimum fetch size, which faust has no setting for.

faust builds the worker's aiokafka consumer with ``fetch_max_wait_ms=1500`` and the default
``fetch_min_bytes``. :func:`tune_fetch` gives one app its own values (``CONSUMER_FETCH_WAIT_MS``,
``CONSUMER_FETCH_MIN_BYTES``); an app never tuned keeps faust's. Contract: call it before the app
starts; the first call wraps faust's consumer factory (``AIOKafkaConsumerThread._create_worker_consumer``)
once for the process, and the wrapper reads each app's values when its consumer is created.

Why: on the embedded broker a waiting fetch is not woken by new data, so every hop could add the
whole fetch wait; a minimum fetch size lets a loaded consumer read in pieces instead of polling
for every few records (README, configuration).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka


@dataclass(frozen=True, slots=True)
class FetchTuning:
    wait_ms: int  # the longest a fetch waits for data (aiokafka's fetch_max_wait_ms)
    min_bytes: int  # the data a fetch waits for, up to wait_ms (aiokafka's fetch_min_bytes)


_tuned: weakref.WeakKeyDictionary[faust.App, FetchTuning] = weakref.WeakKeyDictionary()
_original = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer


def tune_fetch(app: faust.App, tuning: FetchTuning) -> None:
    """Create ``app``'s worker consumer with ``tuning`` instead of faust's fixed values."""
    _tuned[app] = tuning
    thread = faust_aiokafka.AIOKafkaConsumerThread
    if thread._create_worker_consumer is not _create_worker_consumer:
        thread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]


def _create_worker_consumer(self: Any, transport: Any) -> Any:
    consumer = _original(self, transport)
    tuning = _tuned.get(self.app)
    if tuning is not None:  # read by aiokafka when the consumer starts
        consumer._fetch_max_wait_ms = tuning.wait_ms
        consumer._fetch_min_bytes = tuning.min_bytes
    return consumer
