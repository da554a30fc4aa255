"""The bus contract: every topic's name, key, partitioning and record type, in one place.

All values on the bus are JSON (orjson) bytes; :mod:`topics.records` defines them and
their codecs. Topics are created by ``wacrm topics`` with their final partition count
before any client touches them (the embedded broker auto-creates unknown topics with the
wrong count, and Kafka cannot shrink one).
"""

from __future__ import annotations

from dataclasses import dataclass

from wacrm.topics.records import RAW_TOPIC_MAX_MESSAGE_BYTES

RAW = "wa.webhook.raw"
INBOUND = "wa.inbound"
STATUS = "wa.status"
OUTBOUND = "wa.outbound"
DLQ = "wa.dlq"
MEDIA = "wa.media"
RETRY_PREFIX = "wa.outbound.retry."


def retry_topic(attempt: int) -> str:
    """The retry topic for the (1-based) retry number ``attempt``: one topic per delay."""
    return f"{RETRY_PREFIX}{attempt}"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    key: str
    why: str
    partitioned: bool = True  # False: a single partition (low volume, order matters more than scale)
    config: tuple[tuple[str, str], ...] = ()


# Seven days of raw bodies: long enough to replay a week, the span Meta itself retries.
_WEEK_MS = str(7 * 24 * 3600 * 1000)

CATALOGUE: tuple[TopicSpec, ...] = (
    TopicSpec(
        RAW,
        key="conversation key of the body's first item (none when it has none)",
        why="the source of truth for replay: exact bytes Meta signed; keyed so successive bodies of a "
            "conversation are ingested in order",
        config=(("retention.ms", _WEEK_MS), ("max.message.bytes", str(RAW_TOPIC_MAX_MESSAGE_BYTES))),
    ),
    TopicSpec(
        INBOUND,
        key="conversation key",
        why="no longer written: the ingest agent stores messages as it reads the raw topic; kept so a worker "
            "drains what an older version left here, in order per conversation, and takes redriven letters",
        config=(("retention.ms", _WEEK_MS),),
    ),
    TopicSpec(
        STATUS,
        key="conversation key",
        why="statuses of one conversation are applied in order",
        config=(("retention.ms", _WEEK_MS),),
    ),
    TopicSpec(
        OUTBOUND,
        key="conversation key",
        why="replies of one conversation are sent in order",
        config=(("retention.ms", _WEEK_MS),),
    ),
    TopicSpec(
        MEDIA,
        key="conversation key",
        why="media downloads apart from the messages (a caption never waits for its file); keyed like the "
            "messages so a conversation's files come in order and a slow download holds up one partition only",
        config=(("retention.ms", _WEEK_MS),),
    ),
    TopicSpec(
        DLQ,
        key="source topic",
        why="poison events with the reason and the raw reference, kept for a human",
        partitioned=False,
        config=(("retention.ms", str(30 * 24 * 3600 * 1000)),),
    ),
)


def catalogue(retry_tiers: int) -> tuple[TopicSpec, ...]:
    """Every topic, with one retry topic per retry delay (``SEND_ATTEMPTS`` − 1 of them).

    A retry topic holds intents that all wait the same delay, so its head is always the
    first one due: its consumer sleeps until then without holding anything up.
    """
    return CATALOGUE + tuple(
        TopicSpec(retry_topic(n), key="conversation key", why=f"sends waiting for retry number {n}",
                  config=(("retention.ms", _WEEK_MS),))
        for n in range(1, retry_tiers + 1))


def partitions_for(spec: TopicSpec, configured: int) -> int:
    return configured if spec.partitioned else 1
