"""The faust app of ``wacrm worker``: one app, one agent per stage, settings safe on Kafka and tansu.

Faust settings and why:
- ``value_serializer="raw"``: agents decode values themselves, so a malformed value is a
  dead letter with a reason, not a crash inside faust.
- ``topic_allow_declare=False``: topics are created by ``wacrm topics`` with their final
  partition count; faust must not create them with its own.
- no tables, no ``exactly_once``: PostgreSQL is the authority; the embedded broker has no
  transactions and its changelog recovery is unreliable.
- ``broker_session_timeout`` a few seconds and ``broker_heartbeat_interval`` 1 s: group joins
  wait half the session timeout on tansu.
- agents at ``concurrency=1``: per-partition order, and commits never pass an event in flight;
  each takes its events in batches (``BATCH_SIZE``, ``BATCH_WAIT_MS``): one transaction and
  one wait for the broker per batch instead of per event.
- every agent runs :class:`agents.runner.Runner` (failures routed by ``classify``, batches
  acked only once handled); a stop gives the batch in hand ``STOP_GRACE_SECONDS``; a
  dead-letter storm (``DLQ_LIMIT_*``) or a crash inside the runner stops the worker with a
  non-zero exit, as a SIGTERM would stop it, so its supervisor restarts it from the last
  committed offset.
- the consumer's fetch wait (faust fixes it at 1500 ms) is set from ``CONSUMER_FETCH_WAIT_MS``:
  on tansu a waiting fetch is not woken by new data, so each hop would add up to that much.
  ``CONSUMER_FETCH_MIN_BYTES`` lets a fetch wait for that much data (or the fetch wait): under
  load the consumer fetches in larger pieces instead of polling for every few records, which
  cost the broker and the worker a third of their CPU at a few hundred messages a second.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

import faust
import mode
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.types.signals import BaseSignalT

from wacrm.agents import runner
from wacrm.agents.context import Resources
from wacrm.agents.dlqlimit import DlqLimitConfig
from wacrm.agents.errors import Next, classify
from wacrm.agents.inbound import Inbound
from wacrm.agents.ingest import Ingest
from wacrm.agents.media import LEASE_S as MEDIA_LEASE_S
from wacrm.agents.media import MediaAgent
from wacrm.agents.sender import Sender
from wacrm.agents.sending import WINDOW
from wacrm.agents.status import Status
from wacrm.core import metrics
from wacrm.core.settings import Settings
from wacrm.orchestrator.rules import load_rules
from wacrm.orchestrator.service import Orchestrator
from wacrm.storage import media as media_ledger
from wacrm.storage import replies, repo
from wacrm.topics import DLQ, INBOUND, MEDIA, OUTBOUND, RAW, STATUS, retry_topic
from wacrm.topics.lag import LagProbe
from wacrm.topics.records import encode

log = logging.getLogger("wacrm.worker")
# A claimed call is in flight at most GRAPH_TIMEOUT_SECONDS; recording its answer takes a moment more.
# A row still ``sending`` this long after that lost its worker mid-call.
IN_FLIGHT_MARGIN_S = 15.0
HEALTH_EVERY_S = 5.0  # how often the worker samples lag, paused numbers, unsettled sends, waiting conversations
_fetch_wait_ms = 30
_fetch_min_bytes = 1
_original_create_worker_consumer = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer


def _create_worker_consumer(self: Any, transport: Any) -> Any:
    consumer = _original_create_worker_consumer(self, transport)
    consumer._fetch_max_wait_ms = _fetch_wait_ms  # read by aiokafka when the consumer starts
    consumer._fetch_min_bytes = _fetch_min_bytes
    return consumer


# A deliberate patch of faust's consumer factory (there is no setting for these two knobs).
faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]


def broker_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """faust's form of ``KAFKA_SECURITY_PROTOCOL`` and its companions (None: PLAINTEXT); faust turns it
    into the same aiokafka arguments as ``Settings.kafka_security_kwargs()``."""
    context = settings.kafka_ssl_context()
    if settings.kafka_uses_sasl:
        return faust.SASLCredentials(username=settings.kafka_sasl_username, password=settings.kafka_sasl_password,
                                     ssl_context=context, mechanism=settings.kafka_sasl_mechanism)
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def build(settings: Settings) -> tuple[faust.App, Resources]:
    """The worker's app with its agents, and the resources service to start beside it."""
    global _fetch_wait_ms, _fetch_min_bytes
    _fetch_wait_ms = settings.consumer_fetch_wait_ms
    _fetch_min_bytes = settings.consumer_fetch_min_bytes
    assert settings.kafka_bootstrap_servers is not None
    brokers = ";".join(f"kafka://{s.strip()}" for s in settings.kafka_bootstrap_servers.split(","))
    app = faust.App(
        settings.kafka_group_id,
        broker=brokers,
        broker_credentials=broker_credentials(settings),
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=settings.topic_partitions,
        topic_allow_declare=False,
        topic_disable_leader=True,
        web_enabled=False,
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_heartbeat_interval=1.0,
        broker_request_timeout=max(40.0, settings.broker_session_timeout_s * 2),
        broker_commit_interval=1.0,
        producer_acks=-1,
        producer_linger_ms=1,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        processing_guarantee="at_least_once",
        store="memory://",
        # faust makes a data directory even without tables; keep it out of the working directory.
        datadir=str(Path(tempfile.gettempdir()) / f"wacrm-faust-{settings.kafka_group_id}"),
    )
    # Counters RepliesStopped reads exist from the start, so a first send after a restart is an increase.
    metrics.SENDS.labels("sent")
    for expects in ("true", "false"):
        metrics.MESSAGES_STORED.labels(expects)
    rules = load_rules(Path(settings.rules_file) if settings.rules_file else None)
    orchestrator = Orchestrator(rules)
    resources = Resources(settings, orchestrator)

    def topic(name: str) -> faust.TopicT:
        return app.topic(name, value_type=bytes, key_type=bytes, internal=False)

    raw, inbound, status, outbound, dlq, media = (topic(n) for n in (RAW, INBOUND, STATUS, OUTBOUND, DLQ, MEDIA))
    retries = {retry_topic(n): topic(retry_topic(n)) for n in range(1, len(settings.retry_delays()) + 1)}

    messages = Inbound(settings, resources, orchestrator, outbound)
    ingest = Ingest(messages, status, outbound, dlq, resources, media)
    sender = Sender(settings, resources, rules, {"outbound": outbound, **retries}, dlq)
    stages: list[tuple[str, faust.TopicT, runner.Handler]] = [
        ("ingest", raw, ingest.handle),
        ("inbound", inbound, messages.handle),  # drains what an older worker put there, and redrives
        ("sender", outbound, sender.handle),
        ("status", status, Status(resources, rules, outbound).handle),
        ("media", media, MediaAgent(settings, resources).handle),
    ]
    config = runner_config(settings)

    async def halt(reason: BaseException) -> None:
        """Stop the worker as a SIGTERM does (offsets of what was handled are committed), then exit
        non-zero: the worker re-raises its ``crash_reason`` once stopped. (``app.crash`` instead
        leaves the consumer's final commit hanging on its stopped thread.)"""
        root = app.beacon.root
        worker = root.data if root is not None else None
        if not isinstance(worker, mode.Worker):  # not run by `wacrm worker`: crash the app itself
            await app.crash(reason)
            return
        worker.crash_reason = reason
        os.kill(os.getpid(), signal.SIGTERM)

    for name, source, handler in stages:
        app.agent(source, name=f"wacrm.{name}", concurrency=1)(
            _agent(runner.Runner(name, handler, dlq, resources.ready, config, halt)))
    for n, source in enumerate(retries.values(), start=1):  # one at a time: each waits for its own due time
        app.agent(source, name=f"wacrm.sender_retry_{n}", concurrency=1)(
            _agent(runner.Runner(f"sender_retry_{n}", sender.handle, dlq, resources.ready,
                                 dataclasses.replace(config, batch_size=1), halt)))

    lease_s = rules.llm.timeout_seconds + 10

    @app.timer(interval=0.2)
    async def answer_due_conversations() -> None:
        """Burst window over (or an LLM to ask): answer each due conversation, several at a time."""
        if not resources.ready.is_set():
            return
        try:
            async with resources.pool.acquire() as conn, conn.transaction():
                due = await replies.lease_due(conn, 20, lease_s)
            results = await asyncio.gather(*(orchestrator.answer(resources.pool, c) for c in due),
                                           return_exceptions=True)
            for conversation_id, result in zip(due, results, strict=True):
                if isinstance(result, BaseException):  # the lease runs out and another tick tries again
                    log.warning("answering conversation %d failed: %r", conversation_id, result)
                else:
                    await runner.publish(outbound, result)
        except Exception as exc:
            _timer_failed("the reply timer", exc)

    @app.timer(interval=1.0)
    async def publish_outbox() -> None:
        """Intents in the ledger not (or no longer) on the bus: manual replies, crashes, overdue retries."""
        if not resources.ready.is_set():
            return
        try:
            async with resources.pool.acquire() as conn, conn.transaction():
                intents = await replies.due_for_publishing(conn, 200)
            await runner.publish(outbound, intents)
        except Exception as exc:
            _timer_failed("the outbox sweep", exc)

    @app.timer(interval=1.0)
    async def publish_due_media() -> None:
        """Media downloads due again (a retry's time came, a record was lost, a worker died mid-download)."""
        if not resources.ready.is_set():
            return
        try:
            async with resources.pool.acquire() as conn, conn.transaction():
                jobs = await media_ledger.due_for_publishing(conn, MEDIA_LEASE_S, 200)
            futures = [await runner.produce(media, j.conversation_key.encode(), encode(j)) for j in jobs]
            await asyncio.gather(*futures)
        except Exception as exc:
            _timer_failed("the media sweep", exc)

    in_flight_after_s = settings.graph_timeout_s + IN_FLIGHT_MARGIN_S

    @app.timer(interval=1.0)
    async def settle_ambiguous_sends() -> None:
        """Calls in flight past the Graph API timeout (their worker died) become ambiguous; what stays
        ambiguous past ``AMBIGUOUS_SETTLE_SECONDS`` (no status settled it) goes to a person, or is
        queued again under ``AMBIGUOUS_POLICY=resend``."""
        if not resources.ready.is_set():
            return
        try:
            async with resources.pool.acquire() as conn, conn.transaction():
                stuck = await repo.in_flight_too_long(conn, in_flight_after_s, 200)
                overdue = await repo.settle_overdue(conn, settings.ambiguous_settle_s,
                                                    settings.ambiguous_policy == "resend", 200)
            if stuck:
                log.warning("%d send(s) were in flight when their worker stopped: ambiguous, not resent (ids %s)",
                            len(stuck), stuck[:20])
                metrics.AMBIGUOUS_SENDS.labels("stuck").inc(len(stuck))
            for row_id, how in overdue:
                log.warning("send %d still ambiguous after %.0fs: %s", row_id, settings.ambiguous_settle_s,
                            "a person checks" if how == "task" else "sent again (AMBIGUOUS_POLICY=resend)")
                metrics.AMBIGUOUS_SENDS.labels(how).inc()
        except Exception as exc:
            _timer_failed("the ambiguous-send timer", exc)

    lag_probe = resources.lag_probe = LagProbe(settings.kafka_group_id,
                                               [RAW, INBOUND, STATUS, OUTBOUND, MEDIA, *retries],
                                               **settings.kafka_client_kwargs())
    lag_started = False

    @app.timer(interval=HEALTH_EVERY_S)
    async def sample_health() -> None:
        """The gauges an operator alerts on: consumer lag per partition, paused numbers, unsettled sends."""
        nonlocal lag_started
        if not resources.ready.is_set():
            return
        try:
            if not lag_started:
                await asyncio.wait_for(lag_probe.start(), 20)
                lag_started = True
            lags = await asyncio.wait_for(lag_probe.sample(), 20)
            metrics.CONSUMER_LAG.clear()
            for p in lags:
                metrics.CONSUMER_LAG.labels(p.topic, str(p.partition), str(p.reliable).lower()).set(p.lag)
            metrics.LAG_SAMPLES.labels("ok").inc()
        except Exception as exc:
            metrics.LAG_SAMPLES.labels("failed").inc()
            _timer_failed("the lag sampler", exc)
        try:
            async with resources.pool.acquire() as conn:
                health = await repo.delivery_health(conn)
                awaiting = await replies.awaiting_reply(conn, WINDOW.total_seconds())
            metrics.PAUSED_NUMBERS.set(health.paused_numbers)
            metrics.AMBIGUOUS_OPEN.labels("count").set(health.unsettled)
            metrics.AMBIGUOUS_OPEN.labels("oldest_seconds").set(health.oldest_unsettled_s)
            metrics.AWAITING_REPLY.set(awaiting)
        except Exception as exc:
            _timer_failed("the delivery-health sampler", exc)

    # mode types a receiver as a union of two callables that mypy does not match to any function;
    # this is the signature mode calls: (sender, *args, signal=..., **kwargs).
    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    def on_assigned(sender: Any, *args: Any, signal: BaseSignalT, **kwargs: Any) -> None:
        metrics.WORKER_PARTITIONS.set(len(args[0]) if args else 0)  # args: (the assigned partitions,)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    def on_revoked(sender: Any, *args: Any, signal: BaseSignalT, **kwargs: Any) -> None:
        metrics.WORKER_PARTITIONS.set(0)

    return app, resources


def runner_config(settings: Settings) -> runner.RunnerConfig:
    return runner.RunnerConfig(
        batch_size=settings.batch_size, batch_wait_s=settings.batch_wait_ms / 1000,
        stop_grace_s=settings.stop_grace_s,
        dlq_limit=DlqLimitConfig(consecutive=settings.dlq_limit_consecutive, ratio=settings.dlq_limit_ratio,
                                 window=settings.dlq_limit_window))


def _agent(agent_runner: runner.Runner) -> Any:
    async def agent(stream: faust.Stream) -> None:
        await agent_runner.run(stream)

    agent.__name__ = agent.__qualname__ = f"{agent_runner.agent}_agent"
    return agent


def _timer_failed(what: str, exc: Exception) -> None:
    """A timer's failure: one line for an outage it waits out (it runs again), a traceback for a bug."""
    if classify(exc) is Next.RETRY:
        log.warning("%s failed (%r); it runs again", what, exc)
    else:
        log.error("%s failed; it runs again", what, exc_info=exc)
