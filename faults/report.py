"""FAULTS.md from the rows of a run: the table, when and where it ran, and each scenario in words."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from faults.count import Tally

COLUMNS = ("scenario", "load", "faults injected", "posted", "stored", "answered once", "answered twice",
           "unanswered", "dead-lettered", "ambiguous settled", "ambiguous left", "lost", "verdict")


def _na(value: int | None) -> str:
    return "n/a" if value is None else str(value)


def _cells(row: Any) -> list[str]:
    t: Tally | None = row.tally
    head = [f"`{row.scenario}`", row.load, row.faults or "-"]
    if t is None:
        return head + ["-"] * 9 + [str(row.verdict)]
    unanswered = str(t.unanswered) + (f" ({t.unanswered_with_task} with a task)" if t.unanswered_with_task else "")
    return [*head, str(t.posted), str(t.stored), str(t.answered_once), str(t.answered_twice), unanswered,
            str(t.dead_lettered), _na(t.ambiguous_settled), _na(t.ambiguous_left), str(t.lost), str(row.verdict)]


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(rows: Sequence[Any]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_escape(c) for c in _cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def render(rows: Sequence[Any], scenarios: Sequence[Any], *, date: str, machine: str, command: str,
           took_s: float) -> str:
    """The whole report. ``scenarios``: the catalogue, for the paragraphs (in run order)."""
    failed = [r.scenario for r in rows if not r.verdict.ok]
    out = [
        "# Fault suite", "",
        f"Run {date} on {machine}, with `{command}` ({took_s / 60:.0f} min).", "",
        "Each scenario runs on a fresh database and a fresh embedded broker, with `wacrm serve`, `wacrm worker` "
        "and `wacrm fake-meta` as real processes; a generator posts signed webhook bodies at the rate shown "
        "(retrying 503s as Meta does; *posted* counts messages acknowledged with a 200), the faults are "
        "injected, the load stops, and the system is drained until every posted message is stored and "
        "answered and nothing is in flight (or a bound passes). *Answered* counts the replies fake-meta "
        "took whose `context.message_id` is the message (a burst: any of its messages); *lost* is posted "
        "but not stored; *dead-lettered* is every record in `wa.dlq`; *ambiguous* reads `outbound_log` "
        "(n/a before migration 0006). A verdict is ok when nothing was lost or answered twice, every "
        "message was answered (or has a task for a person), no ambiguous send was left unsettled, normal "
        "traffic was not dead-lettered, and the webhook never answered 5xx (other than the 503 Meta "
        "retries).", "",
        table(rows), "",
        ("All scenarios ok." if not failed else "Not ok: " + ", ".join(f"`{n}`" for n in failed) + "."), "",
        "## Scenarios", "",
    ]
    by_name = {r.scenario: r for r in rows}
    for s in scenarios:
        row = by_name.get(s.name)
        if row is None:
            continue
        out.append(f"**`{s.name}`.** {s.about}")
        extra = [*list(row.notes), f"took {row.took_s:.0f} s"]
        out.append("")
        out.append("Notes: " + "; ".join(extra) + ".")
        out.append("")
    return "\n".join(out).rstrip() + "\n"
