"""How long and how hard each phase runs: the quick plan (``--quick``, a few minutes) and the full one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    name: str
    ceiling_s: float
    ingest_rates: tuple[int, ...]
    ingest_step_s: float
    search_steps: int
    search_step_s: float
    e2e_rates: tuple[int, ...]  # bodies/s; the steps stop at the first that fails
    e2e_step_s: float
    drain_s: float
    customer_rate: int
    customer_s: float
    sustain_s: float  # the highest clean step's rate held this long (stepping down when it fails)
    soak_s: float  # memory and lag at a quarter of the sustained rate
    profile_s: float
    budget_rate: int  # bodies/s: the fixed rate at which the CPU each message costs is measured
    budget_s: float
    wrk_s: float  # each closed-loop run of the webhook
    serve_processes: tuple[int, ...]  # the webhook's closed-loop runs: `wacrm serve --processes` of each
    deadline_s: float
    fresh_broker_per_phase: bool  # a short run adds too little to the embedded broker to slow it down


QUICK = Plan("quick", ceiling_s=2, ingest_rates=(1000, 5000, 10000), ingest_step_s=2, search_steps=4,
             search_step_s=2, e2e_rates=(100, 200, 300, 500, 750), e2e_step_s=6, drain_s=20, customer_rate=5,
             customer_s=4, sustain_s=10, soak_s=15, profile_s=5, budget_rate=200, budget_s=15, wrk_s=4,
             serve_processes=(1, 2), deadline_s=600,
             fresh_broker_per_phase=False)
FULL = Plan("full", ceiling_s=5, ingest_rates=(1000, 5000, 10000, 15000), ingest_step_s=5, search_steps=6,
            search_step_s=4, e2e_rates=(100, 150, 200, 250, 300, 400, 500, 750, 1000, 1500, 2000),
            e2e_step_s=15, drain_s=60,
            customer_rate=10, customer_s=15, sustain_s=60, soak_s=600, profile_s=20, budget_rate=200, budget_s=30,
            wrk_s=10, serve_processes=(1, 2), deadline_s=2000,
            fresh_broker_per_phase=True)
