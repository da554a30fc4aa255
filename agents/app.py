"""The faust app of ``wacrm worker``: its settings, one agent per stage, the timers beside them.

:func:`build` wires the worker: each stage (:class:`Stage`) is an agent at ``concurrency=1`` driven by an
:class:`agents.runner.Runner` (batches, failure routing, acks: its docstring); the periodic jobs are
:mod:`agents.timers`; the consumer's fetch tuning is :mod:`agents.faust_patch`. The runner's ``halt``
stops the worker as a SIGTERM does, with a non-zero exit, so its supervisor restarts it from the last
committed offset.

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
  each takes its events in batches (``BATCH_SIZE``, ``BATCH_WAIT_MS``).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import faust
import mode
from mode.types.signals import BaseSignalT

from wacrm.agents import runner
from wacrm.agents.context import Resources
from wacrm.agents.dlqlimit import DlqLimitConfig
from wacrm.agents.faust_patch import FetchTuning, tune_fetch
from wacrm.agents.inbound import Inbound
from wacrm.agents.ingest import Ingest
from wacrm.agents.media import MediaAgent
from wacrm.agents.sender import Sender
from wacrm.agents.status import Status
from wacrm.agents.timers import Timers
from wacrm.core import metrics
from wacrm.core.settings import Settings
from wacrm.orchestrator.rules import load_rules
from wacrm.orchestrator.service import Orchestrator
from wacrm.topics import DLQ, INBOUND, MEDIA, OUTBOUND, RAW, STATUS, retry_topic
from wacrm.topics.lag import LagProbe


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


class Stage(NamedTuple):
    """One agent of the worker: its name, the topic it consumes and the stage its runner drives."""

    name: str
    source: faust.TopicT
    stage: runner.Stage


def build(settings: Settings) -> tuple[faust.App, Resources]:
    """The worker's app with its agents and timers, and the resources service to start beside it."""
    app = _app(settings)
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
    sender = Sender(settings, resources, rules, {"outbound": outbound, **retries}, dlq)
    stages = [
        Stage("ingest", raw, Ingest(messages, status, outbound, dlq, resources, media)),
        Stage("inbound", inbound, messages),  # drains what an older worker put there, and redrives
        Stage("sender", outbound, sender),
        Stage("status", status, Status(resources, rules, outbound)),
        Stage("media", media, MediaAgent(settings, resources)),
    ]
    config = runner_config(settings)
    halt = _halter(app)
    for s in stages:
        app.agent(s.source, name=f"wacrm.{s.name}", concurrency=1)(
            _agent(runner.Runner(s.name, s.stage, dlq, resources.ready, config, halt)))
    for n, source in enumerate(retries.values(), start=1):  # one at a time: each waits for its own due time
        app.agent(source, name=f"wacrm.sender_retry_{n}", concurrency=1)(
            _agent(runner.Runner(f"sender_retry_{n}", sender, dlq, resources.ready,
                                 dataclasses.replace(config, batch_size=1), halt)))

    lag_probe = resources.lag_probe = LagProbe(settings.kafka_group_id,
                                               [RAW, INBOUND, STATUS, OUTBOUND, MEDIA, *retries],
                                               **settings.kafka_client_kwargs())
    Timers(settings, resources, orchestrator, outbound, media, lag_probe).install(app)
    _count_partitions(app)
    return app, resources


def _app(settings: Settings) -> faust.App:
    """The faust app with the settings this module's docstring explains."""
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
    tune_fetch(app, FetchTuning(settings.consumer_fetch_wait_ms, settings.consumer_fetch_min_bytes))
    return app


def _halter(app: faust.App) -> runner.Halt:
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

    return halt


def _count_partitions(app: faust.App) -> None:
    """``wacrm_worker_partitions``: how many partitions the worker holds, set on each rebalance."""

    # mode types a receiver as a union of two callables that mypy does not match to any function;
    # this is the signature mode calls: (sender, *args, signal=..., **kwargs).
    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    def on_assigned(sender: Any, *args: Any, signal: BaseSignalT, **kwargs: Any) -> None:
        metrics.WORKER_PARTITIONS.set(len(args[0]) if args else 0)  # args: (the assigned partitions,)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    def on_revoked(sender: Any, *args: Any, signal: BaseSignalT, **kwargs: Any) -> None:
        metrics.WORKER_PARTITIONS.set(0)


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
