"""The worker's periodic jobs, beside its agents: what the ledgers say is due goes on the bus.

Contract of every job: it runs on the event loop every ``interval`` seconds once the worker's
resources are ready (it does nothing before); it never raises: a failure is logged (one line for
an outage it waits out, a traceback for a bug) and the job runs again at its next tick. What a
job publishes is in PostgreSQL first, so a tick lost to a crash or a failure is made up by a later
one; the agents that consume it are idempotent.

- ``answer_due_conversations`` (0.2 s): conversations whose burst window is over are answered
  (the orchestrator; the LLM when configured), a few at a time under a lease; replies go to ``wa.outbound``.
- ``publish_outbox`` (1 s): ledger intents not (or no longer) on the bus: manual replies, crashes,
  overdue retries.
- ``publish_due_media`` (1 s): media downloads due again.
- ``settle_ambiguous_sends`` (1 s): calls in flight past the Graph API timeout become ambiguous;
  what stays ambiguous past ``AMBIGUOUS_SETTLE_SECONDS`` goes to a person (or is resent, by policy).
- ``sample_health`` (``HEALTH_EVERY_S``): the gauges an operator alerts on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import faust

from wacrm.agents import runner
from wacrm.agents.context import Resources
from wacrm.agents.media import LEASE_S as MEDIA_LEASE_S
from wacrm.core import metrics
from wacrm.core.errors import Next, classify
from wacrm.core.settings import Settings
from wacrm.orchestrator.service import Orchestrator
from wacrm.storage import ledger, ledger_send, replies
from wacrm.storage import media as media_ledger
from wacrm.topics.lag import LagProbe
from wacrm.topics.records import encode
from wacrm.whatsapp.limits import SERVICE_WINDOW

log = logging.getLogger("wacrm.worker")
# A claimed call is in flight at most GRAPH_TIMEOUT_SECONDS; recording its answer takes a moment more.
# A row still ``sending`` this long after that lost its worker mid-call.
IN_FLIGHT_MARGIN_S = 15.0
HEALTH_EVERY_S = 5.0  # how often the worker samples lag, paused numbers, unsettled sends, waiting conversations
ANSWER_LEASE_MARGIN_S = 10  # a conversation's answer lease: the LLM's timeout and this


class Timers:
    """The periodic jobs of one worker; :meth:`install` adds them to its app."""

    def __init__(self, settings: Settings, resources: Resources, orchestrator: Orchestrator,
                 outbound: faust.TopicT, media: faust.TopicT, lag_probe: LagProbe) -> None:
        self._s = settings
        self._res = resources
        self._orchestrator = orchestrator
        self._outbound = outbound
        self._media = media
        self._lag_probe = lag_probe
        self._lag_started = False
        self._answer_lease_s = orchestrator.rules.llm.timeout_seconds + ANSWER_LEASE_MARGIN_S
        self._in_flight_after_s = settings.graph_timeout_s + IN_FLIGHT_MARGIN_S

    def install(self, app: faust.App) -> None:
        jobs: list[tuple[float, Callable[[], Awaitable[None]]]] = [
            (0.2, self.answer_due_conversations),
            (1.0, self.publish_outbox),
            (1.0, self.publish_due_media),
            (1.0, self.settle_ambiguous_sends),
            (HEALTH_EVERY_S, self.sample_health),
        ]
        for interval, job in jobs:
            app.timer(interval=interval)(self._when_ready(job))

    def _when_ready(self, job: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        async def tick() -> None:
            if self._res.ready.is_set():
                await job()

        tick.__name__ = job.__name__
        tick.__qualname__ = job.__qualname__
        return tick

    async def answer_due_conversations(self) -> None:
        """Burst window over (or an LLM to ask): answer each due conversation, several at a time."""
        try:
            async with self._res.pool.acquire() as conn, conn.transaction():
                due = await replies.lease_due(conn, 20, self._answer_lease_s)
            results = await asyncio.gather(*(self._orchestrator.answer(self._res.pool, c) for c in due),
                                           return_exceptions=True)
            for conversation_id, result in zip(due, results, strict=True):
                if isinstance(result, BaseException):  # the lease runs out and another tick tries again
                    log.warning("answering conversation %d failed: %r", conversation_id, result)
                else:
                    await runner.publish(self._outbound, result)
        except Exception as exc:
            _failed("the reply timer", exc)

    async def publish_outbox(self) -> None:
        """Intents in the ledger not (or no longer) on the bus: manual replies, crashes, overdue retries."""
        try:
            async with self._res.pool.acquire() as conn, conn.transaction():
                intents = await ledger.due_for_publishing(conn, 200)
            await runner.publish(self._outbound, intents)
        except Exception as exc:
            _failed("the outbox sweep", exc)

    async def publish_due_media(self) -> None:
        """Media downloads due again (a retry's time came, a record was lost, a worker died mid-download)."""
        try:
            async with self._res.pool.acquire() as conn, conn.transaction():
                jobs = await media_ledger.due_for_publishing(conn, MEDIA_LEASE_S, 200)
            futures = [await runner.produce(self._media, j.conversation_key.encode(), encode(j)) for j in jobs]
            await asyncio.gather(*futures)
        except Exception as exc:
            _failed("the media sweep", exc)

    async def settle_ambiguous_sends(self) -> None:
        """Calls in flight past the Graph API timeout (their worker died) become ambiguous; what stays
        ambiguous past ``AMBIGUOUS_SETTLE_SECONDS`` (no status settled it) goes to a person, or is
        queued again under ``AMBIGUOUS_POLICY=resend``."""
        s = self._s
        try:
            async with self._res.pool.acquire() as conn, conn.transaction():
                stuck = await ledger_send.in_flight_too_long(conn, self._in_flight_after_s, 200)
                overdue = await ledger_send.settle_overdue(conn, s.ambiguous_settle_s,
                                                           s.ambiguous_policy == "resend", 200)
            if stuck:
                log.warning("%d send(s) were in flight when their worker stopped: ambiguous, not resent (ids %s)",
                            len(stuck), stuck[:20])
                metrics.AMBIGUOUS_SENDS.labels("stuck").inc(len(stuck))
            for row_id, how in overdue:
                log.warning("send %d still ambiguous after %.0fs: %s", row_id, s.ambiguous_settle_s,
                            "a person checks" if how == "task" else "sent again (AMBIGUOUS_POLICY=resend)")
                metrics.AMBIGUOUS_SENDS.labels(how).inc()
        except Exception as exc:
            _failed("the ambiguous-send timer", exc)

    async def sample_health(self) -> None:
        """The gauges an operator alerts on: consumer lag per partition, paused numbers, unsettled sends."""
        await self._sample_lag()
        await self._sample_delivery()

    async def _sample_lag(self) -> None:
        try:
            if not self._lag_started:
                await asyncio.wait_for(self._lag_probe.start(), 20)
                self._lag_started = True
            lags = await asyncio.wait_for(self._lag_probe.sample(), 20)
            metrics.CONSUMER_LAG.clear()
            for p in lags:
                metrics.CONSUMER_LAG.labels(p.topic, str(p.partition), str(p.reliable).lower()).set(p.lag)
            metrics.LAG_SAMPLES.labels("ok").inc()
        except Exception as exc:
            metrics.LAG_SAMPLES.labels("failed").inc()
            _failed("the lag sampler", exc)

    async def _sample_delivery(self) -> None:
        try:
            async with self._res.pool.acquire() as conn:
                health = await ledger_send.delivery_health(conn)
                awaiting = await replies.awaiting_reply(conn, SERVICE_WINDOW.total_seconds())
            metrics.PAUSED_NUMBERS.set(health.paused_numbers)
            metrics.AMBIGUOUS_OPEN.labels("count").set(health.unsettled)
            metrics.AMBIGUOUS_OPEN.labels("oldest_seconds").set(health.oldest_unsettled_s)
            metrics.AWAITING_REPLY.set(awaiting)
        except Exception as exc:
            _failed("the delivery-health sampler", exc)


def _failed(what: str, exc: Exception) -> None:
    """A job's failure: one line for an outage it waits out (it runs again), a traceback for a bug."""
    if classify(exc) is Next.RETRY:
        log.warning("%s failed (%r); it runs again", what, exc)
    else:
        log.error("%s failed; it runs again", what, exc_info=exc)
