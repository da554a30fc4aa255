"""Create every topic of the catalogue with its final partition count (``wacrm topics``).

Idempotent: existing topics are left as they are; one whose partition count differs from
the configured count is reported (Kafka cannot shrink a topic, and growing one moves keys
to other partitions, breaking per-conversation order).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from wacrm.core.exits import CommandError
from wacrm.core.settings import Settings
from wacrm.topics import catalogue, partitions_for


@dataclass(frozen=True, slots=True)
class TopicReport:
    name: str
    partitions: int
    created: bool
    problem: str | None = None


async def ensure_topics(bootstrap_servers: str, partitions: int, replication_factor: int = 1,
                        timeout: float = 30.0, retry_tiers: int = 4,
                        security: Mapping[str, Any] | None = None) -> list[TopicReport]:
    """``security``: aiokafka's TLS/SASL arguments (``Settings.kafka_security_kwargs()``); none: PLAINTEXT."""
    specs = catalogue(retry_tiers)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout * 1000),
                                **dict(security or {}))
    await asyncio.wait_for(admin.start(), timeout)
    try:
        existing = set(await asyncio.wait_for(admin.list_topics(), timeout))
        wanted = {spec.name: partitions_for(spec, partitions) for spec in specs}
        new = [NewTopic(spec.name, wanted[spec.name], replication_factor, topic_configs=dict(spec.config))
               for spec in specs if spec.name not in existing]
        created: set[str] = set()
        for topic in new:  # one at a time: a rejected one must not hide the others' result
            try:
                await asyncio.wait_for(admin.create_topics([topic]), timeout)
                created.add(topic.name)
            except TopicAlreadyExistsError:
                pass
        described = await asyncio.wait_for(admin.describe_topics(list(wanted)), timeout)
        reports = []
        for d in described:
            name = d["topic"]
            count = len(d.get("partitions") or [])
            problem = None
            if d.get("error_code"):
                problem = f"broker error {d['error_code']} describing the topic"
            elif count != wanted[name]:
                problem = f"has {count} partitions, configured {wanted[name]} (TOPIC_PARTITIONS)"
            reports.append(TopicReport(name, count, name in created, problem))
        return sorted(reports, key=lambda r: [s.name for s in specs].index(r.name))
    finally:
        await admin.close()


class TopicsError(CommandError):
    """The broker is unreachable or its topics disagree with the configuration (exit 1)."""


async def create_topics(s: Settings, out: Callable[[str], None] = print) -> None:
    """``wacrm topics``: create the catalogue's topics, one line each to ``out``."""
    assert s.kafka_bootstrap_servers
    try:
        reports = await ensure_topics(s.kafka_bootstrap_servers, s.topic_partitions, s.topic_replication_factor,
                                      retry_tiers=len(s.retry_delays()), security=s.kafka_security_kwargs())
    except Exception as exc:
        raise TopicsError(f"cannot reach the broker at KAFKA_BOOTSTRAP_SERVERS={s.kafka_bootstrap_servers}: "
                          f"{type(exc).__name__}: {exc}") from None
    bad = False
    for r in reports:
        what = "created" if r.created else "exists"
        out(f"  {r.name:<16} {r.partitions:>4} partitions  {what}" + (f"  PROBLEM: {r.problem}" if r.problem else ""))
        bad = bad or r.problem is not None
    if bad:
        raise TopicsError("some topics do not match the configuration (see above)")
