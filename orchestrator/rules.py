"""The rules engine: a JSON file of greeting, FAQ, business hours, handover, opt-out and fallback.

Pure: :func:`load_rules` validates a file (every problem reported with its path in the file),
:func:`decide` turns a :class:`Situation` into a :class:`Decision`. Keywords match whole
words, ignoring case and accents ("Envío" matches "envio"); opt-out and opt-in keywords
match only a message that is that word alone ("STOP", not "don't stop").
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, time
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

Action = Literal["reply", "handover", "opt_out", "opt_in", "none"]
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# Message types that never get an automatic answer (and never count in a burst).
NO_REPLY_TYPES = frozenset({"reaction", "system", "unsupported", "unknown", "request_welcome", "ephemeral",
                            "edit", "revoke"})


class RulesError(ValueError):
    """The rules file is invalid; the message lists each problem with its place in the file."""


def normalize(text: str) -> str:
    """Case- and accent-insensitive form: NFKD, combining marks dropped, casefolded."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", normalize(text))


@dataclass(frozen=True, slots=True)
class Faq:
    keywords: frozenset[str]
    answer: str


@dataclass(frozen=True, slots=True)
class BusinessHours:
    timezone: ZoneInfo
    days: dict[str, tuple[tuple[time, time | None], ...]]  # None end = midnight
    out_of_hours_message: str | None

    def is_open(self, now: datetime) -> bool:
        local = now.astimezone(self.timezone)
        today = self.days.get(DAYS[local.weekday()], ())
        t = local.time()
        return any(start <= t and (end is None or t < end) for start, end in today)


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    language: str
    parameters: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LlmRules:
    system_prompt: str
    history: int = 10
    max_reply_chars: int = 1000
    timeout_seconds: float = 8.0


@dataclass(frozen=True, slots=True)
class Rules:
    greeting: str | None
    faq: tuple[Faq, ...]
    business_hours: BusinessHours | None
    handover_keywords: frozenset[str]
    handover_message: str | None
    opt_out_keywords: frozenset[str]
    opt_out_confirmation: str
    opt_in_keywords: frozenset[str]
    opt_in_confirmation: str
    fallback_action: Literal["reply", "handover"]
    fallback_message: str | None
    window_template: Template | None
    llm: LlmRules


@dataclass(frozen=True, slots=True)
class Situation:
    """What the engine knows when it decides: the customer's unanswered messages, oldest first."""

    texts: tuple[str, ...]
    types: tuple[str, ...]
    new_contact: bool
    opted_out: bool
    human_owned: bool  # assigned to a person, waiting for one, or the bot paused
    now: datetime
    customer_name: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    text: str | None
    rule: str  # which rule decided (a metric label)
    engine: str = "rules"
    extra: dict[str, Any] = field(default_factory=dict)


def _hhmm(value: str) -> time | None:
    if value == "24:00":
        return None
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def _parse(data: Any) -> Rules:
    problems: list[str] = []

    def obj(parent: Any, key: str, where: str) -> dict[str, Any]:
        value = parent.get(key, {}) if isinstance(parent, dict) else {}
        if value is None:
            return {}
        if not isinstance(value, dict):
            problems.append(f"{where}{key}: must be an object")
            return {}
        return value

    def text(parent: dict[str, Any], key: str, where: str, required: bool = False) -> str | None:
        value = parent.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{where}{key}: must be a non-empty string")
            return None
        return value

    def words(parent: dict[str, Any], key: str, where: str) -> frozenset[str]:
        value = parent.get(key, [])
        if not isinstance(value, list) or not all(isinstance(w, str) and w.strip() for w in value):
            problems.append(f"{where}{key}: must be a list of words")
            return frozenset()
        return frozenset(" ".join(_words(w)) for w in value)

    if not isinstance(data, dict):
        raise RulesError("the rules file must hold a JSON object")
    faqs = []
    raw_faq = data.get("faq", [])
    if not isinstance(raw_faq, list):
        problems.append("faq: must be a list")
        raw_faq = []
    for i, item in enumerate(raw_faq):
        if not isinstance(item, dict):
            problems.append(f"faq[{i}]: must be an object")
            continue
        kw, answer = words(item, "keywords", f"faq[{i}]."), text(item, "answer", f"faq[{i}].", required=True)
        if kw and answer:
            faqs.append(Faq(kw, answer))

    hours = None
    bh = obj(data, "business_hours", "")
    if bh:
        try:
            tz = ZoneInfo(str(bh.get("timezone", "UTC")))
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(f"business_hours.timezone: unknown time zone {bh.get('timezone')!r}")
            tz = ZoneInfo("UTC")
        days: dict[str, tuple[tuple[time, time | None], ...]] = {}
        for day, spans in obj(bh, "days", "business_hours.").items():
            if day not in DAYS:
                problems.append(f"business_hours.days.{day}: not one of {', '.join(DAYS)}")
                continue
            parsed = []
            for span in spans if isinstance(spans, list) else [spans]:
                m = re.fullmatch(r"(\d\d:\d\d)-(\d\d:\d\d)", span) if isinstance(span, str) else None
                try:
                    if not m:
                        raise ValueError
                    parsed.append((_hhmm(m.group(1)) or time(0), _hhmm(m.group(2))))
                except ValueError:
                    problems.append(f"business_hours.days.{day}: {span!r} is not HH:MM-HH:MM")
            days[day] = tuple(parsed)
        hours = BusinessHours(tz, days, text(bh, "out_of_hours_message", "business_hours."))

    ho = obj(data, "handover", "")
    oo = obj(data, "opt_out", "")
    fb = obj(data, "fallback", "")
    action = fb.get("action", "reply")
    if action not in ("reply", "handover"):
        problems.append("fallback.action: must be reply or handover")
        action = "reply"
    template = None
    wt = obj(data, "window_template", "")
    if wt:
        name, lang = text(wt, "name", "window_template.", True), text(wt, "language", "window_template.", True)
        params = wt.get("parameters", [])
        if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
            problems.append("window_template.parameters: must be a list of strings")
            params = []
        if name and lang:
            template = Template(name, lang, tuple(params))
    ll = obj(data, "llm", "")
    llm = LlmRules(
        system_prompt=text(ll, "system_prompt", "llm.") or "You are a helpful assistant of a business on WhatsApp.",
        history=int(ll.get("history", 10)) if isinstance(ll.get("history", 10), int) else 10,
        max_reply_chars=int(ll.get("max_reply_chars", 1000)) if isinstance(ll.get("max_reply_chars", 1000), int)
        else 1000,
        timeout_seconds=float(ll.get("timeout_seconds", 8)) if isinstance(ll.get("timeout_seconds", 8), (int, float))
        else 8.0)
    rules = Rules(
        greeting=text(data, "greeting", ""),
        faq=tuple(faqs),
        business_hours=hours,
        handover_keywords=words(ho, "keywords", "handover."),
        handover_message=text(ho, "message", "handover."),
        opt_out_keywords=words(oo, "keywords", "opt_out."),
        opt_out_confirmation=text(oo, "confirmation", "opt_out.") or "You will not receive automatic messages.",
        opt_in_keywords=words(oo, "opt_in_keywords", "opt_out."),
        opt_in_confirmation=text(oo, "opt_in_confirmation", "opt_out.") or "You will receive our messages again.",
        fallback_action=action,
        fallback_message=text(fb, "message", "fallback."),
        window_template=template,
        llm=llm,
    )
    if problems:
        raise RulesError("invalid rules file:\n  " + "\n  ".join(problems))
    return rules


def load_rules(path: Path | None = None) -> Rules:
    """Read and validate a rules file (the shipped default when ``path`` is None)."""
    try:
        raw = path.read_text() if path is not None else \
            resources.files("orchestrator").joinpath("default_rules.json").read_text()
    except OSError as exc:
        raise RulesError(f"cannot read the rules file {path}: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RulesError(f"the rules file {path} is not JSON: {exc}") from None
    return _parse(data)


def _mentions(text: str, keywords: frozenset[str]) -> bool:
    words = _words(text)
    joined = " " + " ".join(words) + " "
    return any(f" {k} " in joined for k in keywords)


def _is_only(text: str, keywords: frozenset[str]) -> bool:
    return " ".join(_words(text)) in keywords


def decide(rules: Rules, s: Situation, *, engine_answers: bool = False) -> Decision:
    """What to do about the customer's unanswered messages.

    With ``engine_answers`` (an LLM will write the answer), only the safety rules are applied
    (opt-out/in, blocked conversations, handover keywords) and ``none``/``rule="engine"`` means
    "ask the engine".
    """
    texts = [t for t, kind in zip(s.texts, s.types) if kind not in NO_REPLY_TYPES and t]
    if not texts:
        return Decision("none", None, "no_reply_type")
    last = texts[-1]
    if s.opted_out:
        if _is_only(last, rules.opt_in_keywords):
            return Decision("opt_in", rules.opt_in_confirmation, "opt_in")
        return Decision("none", None, "opted_out")
    if _is_only(last, rules.opt_out_keywords):
        return Decision("opt_out", rules.opt_out_confirmation, "opt_out")
    if s.human_owned:
        return Decision("none", None, "human_owned")
    if any(_mentions(t, rules.handover_keywords) for t in texts):
        return Decision("handover", rules.handover_message, "handover")
    if engine_answers:
        return Decision("none", None, "engine")
    answers = [f.answer for f in rules.faq if any(_mentions(t, f.keywords) for t in texts)]
    closed = rules.business_hours is not None and not rules.business_hours.is_open(s.now)
    parts: list[str] = []
    if s.new_contact and rules.greeting:
        parts.append(rules.greeting.replace("{name}", s.customer_name or "there"))
    if answers:
        parts.extend(dict.fromkeys(answers))  # each answer once, in file order
    if closed and rules.business_hours and rules.business_hours.out_of_hours_message:
        parts.append(rules.business_hours.out_of_hours_message)
    if parts:
        rule = "faq" if answers else ("greeting" if s.new_contact and rules.greeting else "out_of_hours")
        return Decision("reply", "\n\n".join(parts), rule)
    if rules.fallback_action == "handover":
        return Decision("handover", rules.handover_message, "fallback_handover")
    if rules.fallback_message:
        return Decision("reply", rules.fallback_message, "fallback")
    return Decision("none", None, "no_rule")
