"""The report's cells: figures as text ("–" for a figure not measured) and Markdown tables."""

from __future__ import annotations

import math


def ms(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "–"
    return f"{seconds * 1000:.1f}" if seconds < 1 else f"{seconds * 1000:.0f}"


def num(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def pct(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value * 100:.0f} %"


def mib(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value / 2**20:.0f}"


def ratio(a: float | None, b: float | None) -> str:
    return pct(a / b) if a and b else "–"


def met(ok: bool) -> str:
    return "met" if ok else "**NOT MET**"


def cpu_list(cpu: dict[str, float]) -> str:
    """CPU in cores by process, as the report's prose lists it."""
    return ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


CPU_COLUMNS = ("serve", "worker", "fake-meta", "broker", "postgres", "generator")  # every CPU table's processes
