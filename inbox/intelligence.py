"""Conversation intelligence: ``summary``, ``intent``, ``lead_stage``, ``lead_score``, ``sentiment``.

Two engines: the LLM when one is configured (structured output: a JSON object checked against
the fields below, bounded by a timeout), else the rules file's ``intelligence`` section
(keywords per stage and intent, positive and negative words). An LLM that fails, times out or
answers something unusable falls back to the rules, and the result says so (``engine``).

The lead's stage only moves forward (in the order of ``intelligence.stages``) when computed;
a person may set any stage (``POST conversations/{id}/lead``). :func:`advance` is that rule.

Pure functions (:func:`by_rules`, :func:`advance`, :func:`parse_llm`) are apart from the effects
(:func:`refresh`, which reads the messages, asks the engine and stores the result).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import orjson

from wacrm.core import metrics
from wacrm.core.secret import Secret
from wacrm.orchestrator.rules import Intelligence as IntelligenceRules
from wacrm.orchestrator.rules import mentions

log = logging.getLogger("wacrm.inbox.intelligence")

SENTIMENTS = ("positive", "neutral", "negative")
HISTORY = 30  # messages read for a refresh


@dataclass(frozen=True, slots=True)
class Intelligence:
    summary: str
    intent: str
    lead_stage: str
    lead_score: int
    sentiment: str
    engine: str
    refreshed_at: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def advance(stages: tuple[str, ...], current: str | None, proposed: str | None) -> str | None:
    """The stage after a computed proposal: ``proposed`` if it is further along than ``current``,
    else ``current`` (a stage not in ``stages`` counts as the first)."""
    if proposed is None or proposed not in stages:
        return current
    position = stages.index(current) if current in stages else 0
    return proposed if stages.index(proposed) > position else current


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def by_rules(rules: IntelligenceRules, turns: list[tuple[str, str]], current_stage: str | None) -> Intelligence:
    """Intelligence from keywords: ``turns`` are (direction, text), oldest first."""
    customer = [t for d, t in turns if d == "inbound" and t]
    intents = [name for name, words in rules.intents if any(mentions(t, words) for t in customer)]
    # The latest message that names an intent says what the customer wants now.
    intent = "other"
    for text in reversed(customer):
        hit = [name for name, words in rules.intents if mentions(text, words)]
        if hit:
            intent = hit[0]
            break
    proposed = None
    for stage, words in rules.stage_keywords:
        if any(mentions(t, words) for t in customer):
            proposed = advance(rules.stages, proposed, stage) if proposed else stage
    stage = advance(rules.stages, current_stage, proposed) or (rules.stages[0] if rules.stages else "new")
    recent = customer[-3:]
    positive = sum(mentions(t, rules.positive) for t in recent)
    negative = sum(mentions(t, rules.negative) for t in recent)
    sentiment = "positive" if positive > negative else "negative" if negative > positive else "neutral"
    score = rules.stage_scores.get(stage, 10) + (5 if sentiment == "positive" else -10 if sentiment == "negative"
                                                   else 0)
    if customer:
        topics = ", ".join(dict.fromkeys(intents)) or "nothing specific"
        summary = (f"{len(customer)} customer message(s); asked about {topics}. "
                   f"Latest: \u201c{_clip(customer[-1], 120)}\u201d")
    else:
        summary = "No customer messages yet."
    return Intelligence(summary, intent, stage, max(0, min(100, score)), sentiment, "rules")


_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string"},
        "intent": {"type": "string"},
        "lead_stage": {"type": "string"},
        "lead_score": {"type": "integer", "minimum": 0, "maximum": 100},
        "sentiment": {"type": "string", "enum": list(SENTIMENTS)},
    },
    "required": ["summary", "intent", "lead_stage", "lead_score", "sentiment"],
    "additionalProperties": False,
}


class LlmAnswerError(ValueError):
    """The model's answer is not the structured object asked for."""


def parse_llm(body: Any, stages: tuple[str, ...], current_stage: str | None) -> Intelligence:
    """The intelligence in a chat-completion body; raises :class:`LlmAnswerError` when unusable."""
    try:
        content = body["choices"][0]["message"]["content"]
        data = orjson.loads(content) if isinstance(content, str) else content
    except (KeyError, IndexError, TypeError, orjson.JSONDecodeError) as exc:
        raise LlmAnswerError(f"not a JSON object in choices[0].message.content: {exc}") from None
    if not isinstance(data, dict):
        raise LlmAnswerError("content is not a JSON object")
    summary, intent, stage = data.get("summary"), data.get("intent"), data.get("lead_stage")
    score, sentiment = data.get("lead_score"), data.get("sentiment")
    if not isinstance(summary, str) or not summary.strip() or not isinstance(intent, str) or not intent.strip():
        raise LlmAnswerError("summary and intent must be non-empty strings")
    if not isinstance(score, int) or isinstance(score, bool) or not 0 <= score <= 100:
        raise LlmAnswerError("lead_score must be an integer from 0 to 100")
    if sentiment not in SENTIMENTS:
        raise LlmAnswerError(f"sentiment must be one of {', '.join(SENTIMENTS)}")
    new_stage = advance(stages, current_stage, stage if isinstance(stage, str) else None) or current_stage or "new"
    return Intelligence(_clip(summary, 600), _clip(intent, 60), new_stage, score, sentiment, "llm")


@dataclass(frozen=True, slots=True)
class LlmConfig:
    base_url: str
    api_key: Secret | None
    model: str
    timeout_s: float


Llm = tuple[aiohttp.ClientSession, LlmConfig]  # the configured model and the session it is asked over


async def by_llm(session: aiohttp.ClientSession, cfg: LlmConfig, rules: IntelligenceRules,
                 turns: list[tuple[str, str]], current_stage: str | None) -> Intelligence:
    """Ask the model; raises :class:`LlmAnswerError`, ``aiohttp.ClientError`` or ``asyncio.TimeoutError``."""
    transcript = "\n".join(f"{'Customer' if d == 'inbound' else 'Business'}: {t}" for d, t in turns)
    prompt = ("Read this WhatsApp conversation between a business and a customer and describe it as JSON with: "
              "summary (two sentences), intent (a short label), lead_stage (one of: "
              f"{', '.join(rules.stages)}; the current stage is {current_stage or 'new'}), lead_score "
              "(0-100, how likely the customer buys), sentiment (positive, neutral or negative).")
    body = {"model": cfg.model, "temperature": 0,
            "messages": [{"role": "system", "content": prompt}, {"role": "user", "content": transcript}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "conversation_intelligence", "strict": True,
                                                "schema": _SCHEMA}}}
    headers = {"Content-Type": "application/json"}
    if cfg.api_key is not None:
        headers["Authorization"] = f"Bearer {cfg.api_key.reveal()}"
    async with session.post(f"{cfg.base_url.rstrip('/')}/chat/completions", data=orjson.dumps(body),
                            headers=headers, timeout=aiohttp.ClientTimeout(total=cfg.timeout_s)) as resp:
        raw = await resp.read()
        if resp.status != 200:
            raise LlmAnswerError(f"LLM answered HTTP {resp.status}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise LlmAnswerError("LLM answer is not JSON") from None
    return parse_llm(data, rules.stages, current_stage)


async def refresh(pool: asyncpg.Pool, conversation_id: int, rules: IntelligenceRules, *,
                  llm: Llm | None, trigger: str) -> Intelligence | None:
    """Recompute and store the conversation's intelligence (and its lead's stage and score).

    The model is called outside any transaction; None when the conversation does not exist.
    """
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            """SELECT c.id, l.stage FROM conversations c LEFT JOIN leads l ON l.contact_id = c.contact_id
               WHERE c.id = $1""", conversation_id)
        if row is None:
            return None
        rows = await conn.fetch(
            """SELECT direction, body FROM messages WHERE conversation_id = $1 AND body IS NOT NULL
               ORDER BY id DESC LIMIT $2""", conversation_id, HISTORY)
    turns = [(r["direction"], r["body"]) for r in reversed(rows)]
    current = row["stage"]
    result: Intelligence | None = None
    if llm is not None and turns:
        try:
            result = await by_llm(llm[0], llm[1], rules, turns, current)
        except (TimeoutError, LlmAnswerError, aiohttp.ClientError) as exc:
            log.warning("intelligence: the LLM failed for conversation %d (%s); the rules answer",
                        conversation_id, type(exc).__name__)
            fallback = by_rules(rules, turns, current)
            result = Intelligence(fallback.summary, fallback.intent, fallback.lead_stage, fallback.lead_score,
                                  fallback.sentiment, "rules_fallback")
    if result is None:
        result = by_rules(rules, turns, current)
    stamped = Intelligence(result.summary, result.intent, result.lead_stage, result.lead_score, result.sentiment,
                           result.engine, datetime.now(UTC).isoformat())
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """UPDATE conversations SET intelligence = $2, intelligence_at = now(), messages_since_intelligence = 0
               WHERE id = $1""", conversation_id, stamped.as_dict())
        # Forward only, checked again under the row lock: a person may have set the stage meanwhile.
        lead = await conn.fetchrow(
            "SELECT l.id, l.stage FROM leads l JOIN conversations c ON c.contact_id = l.contact_id "
            "WHERE c.id = $1 FOR UPDATE OF l", conversation_id)
        if lead is not None:
            stage = advance(rules.stages, lead["stage"], stamped.lead_stage)
            await conn.execute("UPDATE leads SET score = $2, stage = $3, stage_updated_at = CASE WHEN stage <> $3 "
                               "THEN now() ELSE stage_updated_at END WHERE id = $1",
                               lead["id"], stamped.lead_score, stage)
    metrics.INBOX_INTELLIGENCE.labels(stamped.engine, trigger).inc()
    return stamped
