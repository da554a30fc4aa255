"""The rules engine: the rules file and the decision it makes.

The file holds the greeting, FAQ, business hours, handover, opt-out and fallback, plus what the
inbox reads from it (templates offered when the window is closed, lead stages, the keywords of
the rules-based intelligence). Pure: :func:`load_rules` validates a file, every problem reported
with its place in the file; :func:`decide` turns a :class:`Situation` into a :class:`Decision`.

Keywords match whole words, ignoring case and accents; opt-out and opt-in keywords match only a
message that is that word alone ("STOP", not "don't stop"). A text may be one per language
(``{"en": …, "es": …}``); a reply is in one language (:func:`reply_language`), and ``{hours}`` is
the configured hours in words (:func:`orchestrator.hours.describe_hours`). A fallback with
``"follow_up": true`` leaves a task for a person (``Decision.extra["follow_up"]``).
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

from wacrm.orchestrator.hours import DAYS, BusinessHours, describe_hours, hhmm

Action = Literal["reply", "handover", "opt_out", "opt_in", "none"]
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


#: One text in several languages: language -> text; "" is the text written without a language
#: (taken as the file's default language).
Texts = dict[str, str]


def text_in(texts: Texts, language: str, default: str) -> str:
    """``texts`` in ``language``, else in the default language, else the first written."""
    for lang in (language, default, ""):
        if lang in texts:
            return texts[lang]
    return next(iter(texts.values()))


def _has(texts: Texts, language: str, default: str) -> bool:
    return language in texts or (language == default and "" in texts)


def reply_language(parts: list[Texts], language: str, default: str) -> str:
    """The one language of a reply that joins ``parts``: the customer's ``language`` if every part has
    it, else ``default`` if every part has that, else the first other language every part has; when
    none is common to all, ``language`` (each part then in its best language: :func:`text_in`)."""
    others = sorted({lang for p in parts for lang in p if lang})
    for lang in (language, default, *others):
        if all(_has(p, lang, default) for p in parts):
            return lang
    return language


@dataclass(frozen=True, slots=True)
class Faq:
    keywords: frozenset[str]
    answers: Texts

    def answer_in(self, language: str, default: str) -> str:
        return text_in(self.answers, language, default)


@dataclass(frozen=True, slots=True)
class Intelligence:
    """The rules file's ``intelligence`` section: lead stages in order, keywords that move a lead to
    a stage, intents, and the words that tell sentiment."""

    stages: tuple[str, ...]
    stage_keywords: tuple[tuple[str, frozenset[str]], ...]
    stage_scores: dict[str, int]
    intents: tuple[tuple[str, frozenset[str]], ...]
    positive: frozenset[str]
    negative: frozenset[str]


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
    greeting: Texts | None
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
    fallback_follow_up: bool = False
    templates: tuple[Template, ...] = ()  # what a person may send when the window is closed
    default_language: str = "en"
    languages: tuple[tuple[str, frozenset[str]], ...] = ()
    intelligence: Intelligence = field(default_factory=lambda: Intelligence(
        ("new", "interested", "qualified", "won", "lost"), (), {}, (), frozenset(), frozenset()))

    def offered_templates(self) -> tuple[Template, ...]:
        """The templates the inbox offers outside the 24-hour window (the window template first)."""
        out = ((self.window_template,) if self.window_template else ()) + self.templates
        return tuple(dict.fromkeys(out))


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


def language_of(texts: list[str] | tuple[str, ...], languages: tuple[tuple[str, frozenset[str]], ...],
                default: str) -> str:
    """The language whose words the customer used most (ties: the file's order), else ``default``."""
    words = [w for t in texts for w in _words(t)]
    best, count = default, 0
    for lang, known in languages:
        n = sum(w in known for w in words)
        if n > count:
            best, count = lang, n
    return best


class _Reader:
    """Reads the parts of a rules file, collecting every problem with its place in the file."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def obj(self, parent: Any, key: str, where: str) -> dict[str, Any]:
        value = parent.get(key, {}) if isinstance(parent, dict) else {}
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problems.append(f"{where}{key}: must be an object")
            return {}
        return value

    def text(self, parent: dict[str, Any], key: str, where: str, required: bool = False) -> str | None:
        value = parent.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            self.problems.append(f"{where}{key}: must be a non-empty string")
            return None
        return value

    def texts(self, parent: dict[str, Any], key: str, where: str) -> Texts | None:
        """One text, or one per language (``{"en": …, "es": …}``)."""
        value = parent.get(key)
        if value is None:
            return None
        if isinstance(value, str) and value.strip():
            return {"": value}
        if isinstance(value, dict) and value and all(
                isinstance(k, str) and k and isinstance(v, str) and v.strip() for k, v in value.items()):
            return dict(value)
        self.problems.append(f"{where}{key}: must be a non-empty string or an object of language: text")
        return None

    def words(self, parent: dict[str, Any], key: str, where: str) -> frozenset[str]:
        value = parent.get(key, [])
        if not isinstance(value, list) or not all(isinstance(w, str) and w.strip() for w in value):
            self.problems.append(f"{where}{key}: must be a list of words")
            return frozenset()
        return frozenset(" ".join(_words(w)) for w in value)

    def template(self, t: dict[str, Any], where: str) -> Template | None:
        name, lang = self.text(t, "name", where, True), self.text(t, "language", where, True)
        params = t.get("parameters", [])
        if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
            self.problems.append(f"{where}parameters: must be a list of strings")
            params = []
        return Template(name, lang, tuple(params)) if name and lang else None


def _faqs(r: _Reader, data: dict[str, Any]) -> tuple[Faq, ...]:
    raw_faq = data.get("faq", [])
    if not isinstance(raw_faq, list):
        r.problems.append("faq: must be a list")
        raw_faq = []
    faqs = []
    for i, item in enumerate(raw_faq):
        if not isinstance(item, dict):
            r.problems.append(f"faq[{i}]: must be an object")
            continue
        kw = r.words(item, "keywords", f"faq[{i}].")
        answers = r.texts(item, "answer", f"faq[{i}].")
        if answers is None and item.get("answer") is None:
            r.problems.append(f"faq[{i}].answer: must be a non-empty string or an object of language: text")
        if kw and answers:
            faqs.append(Faq(kw, answers))
    return tuple(faqs)


def _spans(r: _Reader, day: str, spans: Any) -> tuple[tuple[time, time | None], ...]:
    parsed = []
    for span in spans if isinstance(spans, list) else [spans]:
        m = re.fullmatch(r"(\d\d:\d\d)-(\d\d:\d\d)", span) if isinstance(span, str) else None
        try:
            if not m:
                raise ValueError
            parsed.append((hhmm(m.group(1)) or time(0), hhmm(m.group(2))))
        except ValueError:
            r.problems.append(f"business_hours.days.{day}: {span!r} is not HH:MM-HH:MM")
    return tuple(parsed)


def _business_hours(r: _Reader, data: dict[str, Any]) -> BusinessHours | None:
    bh = r.obj(data, "business_hours", "")
    if not bh:
        return None
    try:
        tz = ZoneInfo(str(bh.get("timezone", "UTC")))
    except (ZoneInfoNotFoundError, ValueError):
        r.problems.append(f"business_hours.timezone: unknown time zone {bh.get('timezone')!r}")
        tz = ZoneInfo("UTC")
    days: dict[str, tuple[tuple[time, time | None], ...]] = {}
    for day, spans in r.obj(bh, "days", "business_hours.").items():
        if day not in DAYS:
            r.problems.append(f"business_hours.days.{day}: not one of {', '.join(DAYS)}")
            continue
        days[day] = _spans(r, day, spans)
    return BusinessHours(tz, days, r.texts(bh, "out_of_hours_message", "business_hours."))


def _templates(r: _Reader, data: dict[str, Any]) -> tuple[Template | None, tuple[Template, ...]]:
    """The window template and the others a person may send when the window is closed."""
    wt = r.obj(data, "window_template", "")
    window = r.template(wt, "window_template.") if wt else None
    raw_templates = data.get("templates", [])
    if not isinstance(raw_templates, list):
        r.problems.append("templates: must be a list")
        raw_templates = []
    templates = []
    for i, t in enumerate(raw_templates):
        if not isinstance(t, dict):
            r.problems.append(f"templates[{i}]: must be an object")
        elif (template := r.template(t, f"templates[{i}].")) is not None:
            templates.append(template)
    return window, tuple(templates)


def _intelligence(r: _Reader, data: dict[str, Any]) -> Intelligence:
    intel = r.obj(data, "intelligence", "")
    stages = intel.get("stages", ["new", "interested", "qualified", "won", "lost"])
    if not isinstance(stages, list) or not stages or not all(isinstance(x, str) and x for x in stages):
        r.problems.append("intelligence.stages: must be a non-empty list of stage names, in order")
        stages = ["new"]
    stage_keywords = []
    for stage in r.obj(intel, "stage_keywords", "intelligence."):
        if stage not in stages:
            r.problems.append(f"intelligence.stage_keywords.{stage}: not one of intelligence.stages")
            continue
        stage_keywords.append((stage, r.words(intel["stage_keywords"], stage, "intelligence.stage_keywords.")))
    scores = r.obj(intel, "stage_scores", "intelligence.")
    for stage, score in scores.items():
        if stage not in stages or not isinstance(score, int) or not 0 <= score <= 100:
            r.problems.append(f"intelligence.stage_scores.{stage}: must name a stage and be 0 to 100")
    intents = [(name, r.words(r.obj(intel, "intents", "intelligence."), name, "intelligence.intents."))
               for name in r.obj(intel, "intents", "intelligence.")]
    return Intelligence(tuple(stages), tuple(stage_keywords), dict(scores), tuple(intents),
                        r.words(intel, "positive", "intelligence."), r.words(intel, "negative", "intelligence."))


def _llm(r: _Reader, data: dict[str, Any]) -> LlmRules:
    ll = r.obj(data, "llm", "")
    history, chars, timeout = ll.get("history", 10), ll.get("max_reply_chars", 1000), ll.get("timeout_seconds", 8)
    return LlmRules(
        system_prompt=r.text(ll, "system_prompt", "llm.") or "You are a helpful assistant of a business on WhatsApp.",
        history=int(history) if isinstance(history, int) else 10,
        max_reply_chars=int(chars) if isinstance(chars, int) else 1000,
        timeout_seconds=float(timeout) if isinstance(timeout, (int, float)) else 8.0)


def _parse(data: Any) -> Rules:
    """The rules of a parsed JSON file; :class:`RulesError` lists every problem, in the file's order."""
    if not isinstance(data, dict):
        raise RulesError("the rules file must hold a JSON object")
    r = _Reader()
    faq, hours = _faqs(r, data), _business_hours(r, data)
    ho, oo, fb = r.obj(data, "handover", ""), r.obj(data, "opt_out", ""), r.obj(data, "fallback", "")
    action = fb.get("action", "reply")
    if action not in ("reply", "handover"):
        r.problems.append("fallback.action: must be reply or handover")
        action = "reply"
    window_template, templates = _templates(r, data)
    languages = tuple((lang, r.words({lang: lang_words}, lang, "languages."))
                      for lang, lang_words in r.obj(data, "languages", "").items())
    default_language = data.get("default_language", "en")
    if not isinstance(default_language, str) or not default_language:
        r.problems.append("default_language: must be a language code such as en")
        default_language = "en"
    follow_up = fb.get("follow_up", False)
    if not isinstance(follow_up, bool):
        r.problems.append("fallback.follow_up: must be true or false")
        follow_up = False
    intelligence, llm = _intelligence(r, data), _llm(r, data)
    rules = Rules(
        greeting=r.texts(data, "greeting", ""),
        faq=faq,
        business_hours=hours,
        handover_keywords=r.words(ho, "keywords", "handover."),
        handover_message=r.text(ho, "message", "handover."),
        opt_out_keywords=r.words(oo, "keywords", "opt_out."),
        opt_out_confirmation=r.text(oo, "confirmation", "opt_out.") or "You will not receive automatic messages.",
        opt_in_keywords=r.words(oo, "opt_in_keywords", "opt_out."),
        opt_in_confirmation=r.text(oo, "opt_in_confirmation", "opt_out.") or "You will receive our messages again.",
        fallback_action=action,
        fallback_message=r.text(fb, "message", "fallback."),
        window_template=window_template,
        llm=llm,
        fallback_follow_up=follow_up,
        templates=templates,
        default_language=default_language,
        languages=languages,
        intelligence=intelligence,
    )
    if r.problems:
        raise RulesError("invalid rules file:\n  " + "\n  ".join(r.problems))
    return rules


def load_rules(path: Path | None = None) -> Rules:
    """Read and validate a rules file (the shipped default when ``path`` is None)."""
    try:
        raw = path.read_text() if path is not None else \
            resources.files("wacrm.orchestrator").joinpath("default_rules.json").read_text()
    except OSError as exc:
        raise RulesError(f"cannot read the rules file {path}: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RulesError(f"the rules file {path} is not JSON: {exc}") from None
    return _parse(data)


def mentions(text: str, keywords: frozenset[str]) -> bool:
    """Whether ``text`` contains one of ``keywords`` as whole words (case and accents ignored)."""
    words = _words(text)
    joined = " " + " ".join(words) + " "
    return any(f" {k} " in joined for k in keywords)


_mentions = mentions


def _is_only(text: str, keywords: frozenset[str]) -> bool:
    return " ".join(_words(text)) in keywords


def _named(greeting: str, name: str | None, language: str) -> str:
    """``{name}`` filled in: the customer's name, else "there" in English and nothing in other languages."""
    if name:
        return greeting.replace("{name}", name)
    return greeting.replace("{name}", "there") if language == "en" else \
        greeting.replace(" {name}", "").replace("{name}", "")


def decide(rules: Rules, s: Situation, *, engine_answers: bool = False) -> Decision:
    """What to do about the customer's unanswered messages.

    With ``engine_answers`` (an LLM will write the answer), only the safety rules are applied
    (opt-out/in, blocked conversations, handover keywords) and ``none``/``rule="engine"`` means
    "ask the engine".
    """
    texts = [t for t, kind in zip(s.texts, s.types, strict=True) if kind not in NO_REPLY_TYPES and t]
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
    default = rules.default_language
    answers = [f.answers for f in rules.faq if any(_mentions(t, f.keywords) for t in texts)]
    closed = rules.business_hours is not None and not rules.business_hours.is_open(s.now)
    greeting = rules.greeting if s.new_contact else None
    out_of_hours = rules.business_hours.out_of_hours_message if closed and rules.business_hours else None
    parts = [p for p in (greeting, *answers, out_of_hours) if p]
    if parts:
        language = reply_language(parts, language_of(texts, rules.languages, default), default)
        hours = describe_hours(rules.business_hours, language)
        written = [text_in(p, language, default).replace("{hours}", hours) for p in parts]
        if greeting:
            written[0] = _named(written[0], s.customer_name, language)
        rule = "faq" if answers else ("greeting" if greeting else "out_of_hours")
        return Decision("reply", "\n\n".join(dict.fromkeys(written)), rule)  # each text once, in file order
    if rules.fallback_action == "handover":
        return Decision("handover", rules.handover_message, "fallback_handover")
    if rules.fallback_message:
        return Decision("reply", rules.fallback_message, "fallback", extra={"follow_up": rules.fallback_follow_up})
    return Decision("none", None, "no_rule")
