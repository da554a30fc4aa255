"""The rules engine: a JSON file of greeting, FAQ, business hours, handover, opt-out and fallback,
plus what the inbox reads from it (templates offered when the window is closed, lead stages and
the keywords of the rules-based conversation intelligence).

Pure: :func:`load_rules` validates a file (every problem reported with its path in the file),
:func:`decide` turns a :class:`Situation` into a :class:`Decision`. Keywords match whole
words, ignoring case and accents ("Envío" matches "envio"); opt-out and opt-in keywords
match only a message that is that word alone ("STOP", not "don't stop").

The greeting, FAQ answers and the out-of-hours message may be one text or one per language
(``{"en": …, "es": …}``; a plain text is in the file's ``default_language``). The customer's
language is guessed from their words (:func:`language_of`, the file's ``languages`` word lists).
A reply is in one language (:func:`reply_language`): the customer's when every text it joins has
it, else the default language, else another that all have. ``{hours}`` in any text is replaced by
the business hours as configured, in that language (:func:`describe_hours`), so the FAQ cannot
contradict them.
A fallback whose message promises a follow-up (``"follow_up": true``) leaves the conversation
pending with a task for a person (``Decision.extra["follow_up"]``).
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
class BusinessHours:
    timezone: ZoneInfo
    days: dict[str, tuple[tuple[time, time | None], ...]]  # None end = midnight
    out_of_hours_message: Texts | None

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


def _hhmm(value: str) -> time | None:
    if value == "24:00":
        return None
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


@dataclass(frozen=True, slots=True)
class _HoursWords:
    days: tuple[str, ...]
    every_day: str
    always: str
    days_span: str  # "{a} to {b}"
    time_span: str
    joined: str
    closed: str


#: The words of :func:`describe_hours` in the languages the shipped rules answer in; others get English.
HOURS_WORDS = {
    "en": _HoursWords(("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"), "every day",
                      "around the clock", "{a} to {b}", "{a} to {b}", " and ", "by appointment only"),
    "es": _HoursWords(("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"), "todos los días",
                      "las 24 horas", "de {a} a {b}", "de {a} a {b}", " y ", "solo con cita previa"),
    "pt": _HoursWords(("segunda-feira", "terça-feira", "quarta-feira", "quinta-feira", "sexta-feira", "sábado",
                       "domingo"), "todos os dias", "24 horas por dia", "de {a} a {b}", "das {a} às {b}", " e ",
                      "somente com hora marcada"),
    "de": _HoursWords(("Montag", "Dienstag", "Mittwoch", "Donnerstag", "Freitag", "Samstag", "Sonntag"), "täglich",
                      "rund um die Uhr", "{a} bis {b}", "{a} bis {b}", " und ", "nur nach Vereinbarung"),
}


def describe_hours(hours: BusinessHours | None, language: str = "en") -> str:
    """The opening hours in words, from the configuration (one home for what the FAQ says), in
    ``language`` where :data:`HOURS_WORDS` has it, else in English."""
    w = HOURS_WORDS.get(language, HOURS_WORDS["en"])
    if hours is None:
        return f"{w.every_day}, {w.always}"

    def span(s: tuple[time, time | None]) -> str:
        start, end = s
        if start == time(0) and end is None:
            return w.always
        return w.time_span.format(a=f"{start:%H:%M}", b="24:00" if end is None else f"{end:%H:%M}")

    groups: list[tuple[list[str], str]] = []
    for day in DAYS:
        spans = hours.days.get(day, ())
        text = w.joined.join(span(s) for s in spans)
        if not text:
            continue
        if groups and groups[-1][1] == text and DAYS.index(groups[-1][0][-1]) == DAYS.index(day) - 1:
            groups[-1][0].append(day)
        else:
            groups.append(([day], text))
    if not groups:
        return w.closed
    names = dict(zip(DAYS, w.days, strict=True))
    parts = []
    for days, text in groups:
        which = w.every_day if len(days) == 7 else names[days[0]] if len(days) == 1 else \
            w.days_span.format(a=names[days[0]], b=names[days[-1]])
        parts.append(f"{which}, {text}")
    zone = "" if str(hours.timezone) == "UTC" and parts == [f"{w.every_day}, {w.always}"] else \
        f" ({hours.timezone})"
    return "; ".join(parts) + zone


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

    def texts(parent: dict[str, Any], key: str, where: str) -> Texts | None:
        """One text, or one per language (``{"en": …, "es": …}``)."""
        value = parent.get(key)
        if value is None:
            return None
        if isinstance(value, str) and value.strip():
            return {"": value}
        if isinstance(value, dict) and value and all(
                isinstance(k, str) and k and isinstance(v, str) and v.strip() for k, v in value.items()):
            return dict(value)
        problems.append(f"{where}{key}: must be a non-empty string or an object of language: text")
        return None

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
        kw = words(item, "keywords", f"faq[{i}].")
        answers = texts(item, "answer", f"faq[{i}].")
        if answers is None and item.get("answer") is None:
            problems.append(f"faq[{i}].answer: must be a non-empty string or an object of language: text")
        if kw and answers:
            faqs.append(Faq(kw, answers))

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
        hours = BusinessHours(tz, days, texts(bh, "out_of_hours_message", "business_hours."))

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
    templates: list[Template] = []
    raw_templates = data.get("templates", [])
    if not isinstance(raw_templates, list):
        problems.append("templates: must be a list")
        raw_templates = []
    for i, t in enumerate(raw_templates):
        where = f"templates[{i}]."
        if not isinstance(t, dict):
            problems.append(f"templates[{i}]: must be an object")
            continue
        name, lang = text(t, "name", where, True), text(t, "language", where, True)
        params = t.get("parameters", [])
        if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
            problems.append(f"{where}parameters: must be a list of strings")
            params = []
        if name and lang:
            templates.append(Template(name, lang, tuple(params)))
    languages: list[tuple[str, frozenset[str]]] = []
    for lang, lang_words in obj(data, "languages", "").items():
        languages.append((lang, words({lang: lang_words}, lang, "languages.")))
    default_language = data.get("default_language", "en")
    if not isinstance(default_language, str) or not default_language:
        problems.append("default_language: must be a language code such as en")
        default_language = "en"
    follow_up = fb.get("follow_up", False)
    if not isinstance(follow_up, bool):
        problems.append("fallback.follow_up: must be true or false")
        follow_up = False
    intel = obj(data, "intelligence", "")
    stages = intel.get("stages", ["new", "interested", "qualified", "won", "lost"])
    if not isinstance(stages, list) or not stages or not all(isinstance(x, str) and x for x in stages):
        problems.append("intelligence.stages: must be a non-empty list of stage names, in order")
        stages = ["new"]
    stage_keywords = []
    for stage in obj(intel, "stage_keywords", "intelligence."):
        if stage not in stages:
            problems.append(f"intelligence.stage_keywords.{stage}: not one of intelligence.stages")
            continue
        stage_keywords.append((stage, words(intel["stage_keywords"], stage, "intelligence.stage_keywords.")))
    scores = obj(intel, "stage_scores", "intelligence.")
    for stage, score in scores.items():
        if stage not in stages or not isinstance(score, int) or not 0 <= score <= 100:
            problems.append(f"intelligence.stage_scores.{stage}: must name a stage and be 0 to 100")
    intents = [(name, words(obj(intel, "intents", "intelligence."), name, "intelligence.intents."))
               for name in obj(intel, "intents", "intelligence.")]
    intelligence = Intelligence(tuple(stages), tuple(stage_keywords), dict(scores), tuple(intents),
                                words(intel, "positive", "intelligence."), words(intel, "negative", "intelligence."))
    ll = obj(data, "llm", "")
    llm = LlmRules(
        system_prompt=text(ll, "system_prompt", "llm.") or "You are a helpful assistant of a business on WhatsApp.",
        history=int(ll.get("history", 10)) if isinstance(ll.get("history", 10), int) else 10,
        max_reply_chars=int(ll.get("max_reply_chars", 1000)) if isinstance(ll.get("max_reply_chars", 1000), int)
        else 1000,
        timeout_seconds=float(ll.get("timeout_seconds", 8)) if isinstance(ll.get("timeout_seconds", 8), (int, float))
        else 8.0)
    rules = Rules(
        greeting=texts(data, "greeting", ""),
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
        fallback_follow_up=follow_up,
        templates=tuple(templates),
        default_language=default_language,
        languages=tuple(languages),
        intelligence=intelligence,
    )
    if problems:
        raise RulesError("invalid rules file:\n  " + "\n  ".join(problems))
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
