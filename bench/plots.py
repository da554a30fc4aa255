"""The report's pictures (matplotlib, installed by ``make bench``): PNGs beside BENCHMARKS.md.

:func:`draw` takes the results and a directory and returns the (title, file name) of each
picture it drew; a picture whose data the run did not produce is left out. Without matplotlib
it draws nothing and says so, and the report is still written.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

COLORS = {"serve": "#1f77b4", "worker": "#ff7f0e", "fake-meta": "#8c564b", "broker": "#2ca02c",
          "postgres": "#9467bd", "generator": "#7f7f7f"}


def draw(results: dict[str, Any], folder: Path) -> tuple[list[tuple[str, str]], str | None]:
    """Draw every picture the results allow into ``folder``; (title, file name) of each, and why none
    were drawn when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "matplotlib is not installed (`make bench` installs it)"
    folder.mkdir(parents=True, exist_ok=True)
    drawn = []
    for name, title, fn in ((("webhook-latency.png", "Webhook latency against offered rate", _webhook),
                             ("e2e-latency.png", "End-to-end latency against offered rate", _e2e),
                             ("cpu-per-message.png", "CPU per message, by process", _budget),
                             ("soak-latency.png", "Reply latency over the soak", _soak))):
        fig = fn(plt, results)
        if fig is None:
            continue
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        drawn.append((title, name))
    return drawn, None


def _finite(values: list[float | None]) -> list[float]:
    return [v * 1000 if v is not None and not math.isnan(v) else math.nan for v in values]


def _percentile_lines(ax: Any, points: list[tuple[float, dict[str, Any]]], label: str, style: str) -> None:
    points.sort(key=lambda p: p[0])
    xs = [x for x, _ in points]
    for pct, alpha in (("p50", 0.55), ("p99", 1.0)):
        ax.plot(xs, _finite([lat.get(pct) for _, lat in points]), style, alpha=alpha, label=f"{label} {pct}")


def _webhook(plt: Any, results: dict[str, Any]) -> Any:
    runs = []
    for key, label in (("webhook", "wacrm serve"), ("bare", "bare aiohttp")):
        sec = results.get(key) or {}
        pts = [(r["offered_rate"], r["latency_s"]) for r in (sec.get("fixed") or []) + (sec.get("search") or [])]
        if pts:
            runs.append((label, pts))
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for (label, pts), style in zip(runs, ("o-", "s--"), strict=False):
        _percentile_lines(ax, pts, label, style)
    _latency_axes(ax, "offered requests/s (open loop)", "latency (ms, log)", 10, "p99 target 10 ms",
                  "Webhook: latency against offered rate")
    return fig


def _e2e(plt: Any, results: dict[str, Any]) -> Any:
    steps = [s for s in results.get("e2e") or [] if s.get("messages")]
    if not steps:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    _percentile_lines(ax, [(s["messages_per_s"], s["latency_s"]) for s in steps], "end to end", "o-")
    _latency_axes(ax, "offered messages/s", "webhook call → reply at the Graph API (ms, log)", 1000,
                  "p99 target 1 s", "End to end: latency against offered rate")
    return fig


def _latency_axes(ax: Any, xlabel: str, ylabel: str, target_ms: float, target: str, title: str) -> None:
    """Labels, a log scale, the p99 target as a line, grid, legend and title."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.axhline(target_ms, color="red", linewidth=0.8, linestyle=":", label=target)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)


def _budget(plt: Any, results: dict[str, Any]) -> Any:
    cost = (results.get("budget") or {}).get("cpu_ms_per_message")
    if not cost:
        return None
    names = [n for n in COLORS if n in cost]
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    left = 0.0
    for n in names:
        ax.barh(["CPU-ms per message"], [cost[n]], left=left, color=COLORS[n], label=f"{n} {cost[n]:.2f}")
        left += cost[n]
    cores = (results.get("machine") or {}).get("cores") or 2
    ax.axvline(cores * 1000 / 2000, color="red", linestyle=":", label=f"2,000 msg/s on {cores} cores")
    ax.set_xlabel(f"CPU-milliseconds per message (total {left:.2f})")
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    ax.set_title(f"CPU per message at {results['budget']['offered_rate']} bodies/s, by process")
    return fig


def _soak(plt: Any, results: dict[str, Any]) -> Any:
    line = (results.get("soak") or {}).get("timeline")
    if not line:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    ts = [p["t"] for p in line]
    ax.plot(ts, [p["p50"] * 1000 for p in line], "-", label="p50")
    ax.plot(ts, [p["p99"] * 1000 for p in line], "-", label="p99")
    ax.set_xlabel("seconds into the soak")
    ax.set_ylabel("reply latency (ms)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Reply latency over the soak at {results['soak']['offered_rate']} bodies/s")
    return fig
