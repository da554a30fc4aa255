"""What the benchmark judges by: issue #12's targets and the verdicts on one run's results.

Pure: results in, a verdict out. The phases step and search by these verdicts, the report states them.
"""

from __future__ import annotations

import math
from typing import Any

WEBHOOK_P99_BOUND_S = 0.010  # issue #12: p99 ≤ 10 ms
E2E_P99_BOUND_S = 1.0
# The webhook alone, the webhook beside a consuming worker, end to end, memory.
TARGETS = {"webhook_rps": 15_000, "webhook_p99_s": WEBHOOK_P99_BOUND_S, "webhook_with_worker_rps": 10_000,
           "e2e_rate": 2_000, "e2e_p99_s": E2E_P99_BOUND_S, "rss_growth": 0.10, "webhook_vs_minimal": 0.75}


def ingest_passes(result: dict[str, Any]) -> bool:
    """An open-loop run of the webhook: no errors, p99 within the bound, at least 95 % of the rate achieved."""
    lat = result["latency_s"]
    return (result["errors"] == 0 and result["ok"] > 0 and lat["p99"] <= WEBHOOK_P99_BOUND_S
            and result["achieved_rps"] >= 0.95 * result["offered_rate"])


def e2e_passes(step: dict[str, Any]) -> bool:
    """An end-to-end run: nothing lost or duplicated, no webhook errors, p99 within the bound."""
    p99 = step["latency_s"]["p99"]
    return (step["lost"] == 0 and step["duplicated"] == 0 and step["load"]["errors"] == 0
            and not math.isnan(p99) and p99 <= E2E_P99_BOUND_S)


def best_e2e(results: dict[str, Any]) -> dict[str, Any] | None:
    """The highest end-to-end step that passed."""
    clean = [s for s in results.get("e2e") or [] if e2e_passes(s)]
    return max(clean, key=lambda s: s["offered_rate"], default=None)


def held(results: dict[str, Any]) -> float | None:
    """Messages/s of the sustained run that held (p99 within the bound, nothing lost or duplicated)."""
    return next((s["messages_per_s"] for s in results.get("sustained") or [] if e2e_passes(s)), None)
