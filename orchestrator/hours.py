"""Business hours: when the business is open, and the hours in words for the replies.

:class:`BusinessHours` is the rules file's ``business_hours`` section, parsed
(:mod:`orchestrator.rules`); :func:`describe_hours` writes it out in the reply's language, so a
text that says ``{hours}`` cannot contradict the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class BusinessHours:
    timezone: ZoneInfo
    days: dict[str, tuple[tuple[time, time | None], ...]]  # None end = midnight
    out_of_hours_message: dict[str, str] | None  # language -> text (rules.Texts)

    def is_open(self, now: datetime) -> bool:
        local = now.astimezone(self.timezone)
        today = self.days.get(DAYS[local.weekday()], ())
        t = local.time()
        return any(start <= t and (end is None or t < end) for start, end in today)


def hhmm(value: str) -> time | None:
    """``HH:MM`` as a time; ``24:00``, the end of the day, as None."""
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
