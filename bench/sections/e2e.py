"""The end-to-end sections: a row per run with its latency and its CPU by process, the customer's view,
memory and consumer lag over the soak, and where the worker's time goes."""

from __future__ import annotations

from typing import Any

from bench.fmt import CPU_COLUMNS, mib, ms, num, pct, table
from bench.targets import e2e_passes


def e2e_runs(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every end-to-end run of the results, labelled, in the report's order."""
    return (([("customer view", results["customer"])] if results.get("customer") else [])
            + ([("customer view, default settings", results["customer_default"])]
               if results.get("customer_default") else [])
            + [("step", s) for s in results.get("e2e") or []]
            + [("sustained", s) for s in results.get("sustained") or []]
            + ([("profiled", results["profiled"])] if results.get("profiled") else [])
            + ([("soak", results["soak"])] if results.get("soak") else []))


def e2e_section(results: dict[str, Any]) -> list[str]:
    """A row per end-to-end run (the settings it ran with above it), the customer's view, CPU by process."""
    runs = e2e_runs(results)
    if not runs:
        return []
    st = results.get("settings") or {}
    procs_ = results.get("processes") or {}
    out = ["## End to end (webhook called → fake-meta received the reply)", "",
            f"`wacrm serve --processes {procs_.get('serve', 1)}` and {procs_.get('workers', 1)} `wacrm worker` "
            "process(es) in one consumer group (what `wacrm dev` runs on this machine).", "",
            "The pipeline with the rules engine (every text message gets one reply), with the deliberate "
            "waiting switched off: `BURST_WINDOW_SECONDS=0` (default 2 s), `RATE_LIMIT_PER_SECOND=1000` "
            "(default 80) and no per-recipient pacing; everything else at its default ("
            + ", ".join(f"`{k}={v}`" for k, v in st.items()) + "). Every inbound id the webhook accepted "
            "is counted against the sends fake-meta recorded (`GET /__sent`, each send matched to the message "
            "it answers through the ledger row it names) and "
            "the inbound rows in PostgreSQL. The generator's bodies carry customer messages (10 % carry 2–5, so a "
            "body carries about 1.35 messages); rates are offered in bodies/s, the targets count messages/s. "
            "The statuses are the real ones: fake-meta posts sent, delivered and read for every reply to the "
            "webhook, signed, as Meta does, and each run waits until the workers applied them.",
            ""]
    rows = []
    for label, s in runs:
        lat = s["latency_s"]
        rows.append([label, num(s["offered_rate"]), num(s.get("messages_per_s")), f"{s['duration_s']:.0f}",
                     num(s["messages"]), num(s["replies_per_s"]), ms(lat["p50"]), ms(lat["p95"]),
                     ms(lat["p99"]), ms(lat["max"]), num(s["lost"]), num(s["duplicated"]),
                     num(s["load"]["errors"]),
                     "not judged" if label.endswith("default settings") else "yes" if e2e_passes(s) else "no"])
    out += [table(["", "bodies/s", "messages/s", "s", "messages", "replies/s", "p50 ms", "p95 ms", "p99 ms",
                   "max ms", "lost", "dup", "webhook errors", "passes"], rows), ""]
    return out + _customer_view(results) + _cpu_table(results, runs)


def _customer_view(results: dict[str, Any]) -> list[str]:
    c = results.get("customer")
    if not c:
        return []
    text = (f"What a customer sees at low load ({c['offered_rate']} bodies/s), the pipeline alone: the "
            f"reply arrives p50 {ms(c['latency_s']['p50'])} ms, p99 {ms(c['latency_s']['p99'])} ms after "
            "the webhook call.")
    d = results.get("customer_default")
    if d:
        text += (f" With the default settings (the burst window of 2 s after the customer's last "
                 f"message, answered by a timer that ticks every 0.2 s; rate limits and per-recipient "
                 f"pacing on) it arrives p50 {ms(d['latency_s']['p50'])} ms, p99 "
                 f"{ms(d['latency_s']['p99'])} ms after it.")
        if d.get("answered_together"):
            text += (f" {d['answered_together']} of its {d['lost']} messages without a reply of their "
                     "own came within the burst window of a later message from the same customer, and "
                     "that message's reply answered both (one reply per burst, as designed).")
    return [text, ""]


def _cpu_table(results: dict[str, Any], runs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    cpu_rows = []
    for label, s in runs:
        c = s.get("cpu_cores")
        if c:
            cpu_rows.append([label, num(s.get("messages_per_s"))] + [f"{c.get(k, 0):.2f}" for k in CPU_COLUMNS]
                            + [f"{sum(c.values()):.2f}"])
    if not cpu_rows:
        return []
    return [f"CPU used by each process during each run (load and drain), in cores; the machine has "
            f"{results.get('machine', {}).get('cores')}:", "",
            table(["", "messages/s", *CPU_COLUMNS, "total"], cpu_rows), ""]


def memory_section(results: dict[str, Any]) -> list[str]:
    """RSS of each process over the soak, and consumer lag, RSS and CPU sampled over time."""
    mem = results.get("memory") or {}
    soak = results.get("soak")
    table_ = [] if not mem else [
        "## Memory and consumer lag over the soak", "",
        f"Soak at {num(soak['offered_rate']) if soak else '?'} bodies/s (a quarter of the sustained rate) for "
        f"{soak['duration_s'] if soak else '?':.0f} s. RSS in MiB (PostgreSQL: proportional set size of "
        "the server and its backends). Growth compares the median of the first tenth after a 20 % warm-up "
        "with the median of the last tenth. The broker keeps every message in memory (no retention) and "
        "fake-meta records every request, so those two grow by design.", "",
        table(["process", "start", "end", "peak", "growth"],
              [[n, mib(v["start"]), mib(v["end"]), mib(v["peak"]), pct(v["growth"])] for n, v in mem.items()]),
        ""]
    return table_ + _over_time(results.get("samples") or [])


def _over_time(samples: list[dict[str, Any]]) -> list[str]:
    """About ten of the soak's samples: consumer lag by topic, RSS and CPU; and whether the broker slowed."""
    if not samples:
        return []
    step = max(1, len(samples) // 10)
    rows = []
    for r in samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else []):
        lag = r.get("lag") or {}
        lag_cells = [num(lag.get(t)) if "error" not in lag else "?" for t in
                     ("wa.webhook.raw", "wa.inbound", "wa.outbound", "wa.status")]
        cpu = r.get("cpu") or {}
        rows.append([f"{r['t']:.0f}", mib(r.get("serve")), mib(r.get("worker")), mib(r.get("broker")),
                     mib(r.get("postgres"))] + lag_cells
                    + [f"{cpu[k]:.2f}" if k in cpu else "–" for k in ("worker", "broker", "postgres")])
    out = ["Consumer lag (high-water mark minus the group's committed offset, messages; offsets are "
           "committed every second, so about a second of traffic shows as lag), RSS (MiB) and CPU (cores, "
           "since the previous sample) over time:", "",
           table(["t s", "serve", "worker", "broker", "postgres", "lag raw", "lag inbound", "lag outbound",
                  "lag status", "CPU worker", "CPU broker", "CPU postgres"], rows), ""]
    broker_cpu = [r["cpu"]["broker"] for r in samples if (r.get("cpu") or {}).get("broker") is not None]
    if len(broker_cpu) >= 4:
        first, last = broker_cpu[len(broker_cpu) // 10], broker_cpu[-1]
        out += [f"At a fixed rate the embedded broker's CPU went from {first:.2f} to {last:.2f} cores as it "
                "filled (it keeps every message in memory, with no retention): "
                + ("it, not our processes, is what slows down over a long run on this machine; Kafka with "
                   "retention does not grow this way." if last > 1.3 * first else "no marked growth."), ""]
    return out


def profile_section(results: dict[str, Any]) -> list[str]:
    """The worker's py-spy profile: by package, innermost frames, our functions."""
    prof = results.get("profile")
    if prof:
        at = results.get("profiled") or {}
        return ["## Where the time goes (py-spy, worker)", "",
                f"A run of its own at {num(at.get('messages_per_s'))} messages/s (the sustained rate), so the "
                f"profiler's cost stays out of the judged runs: {prof['seconds']:.0f} s at 100 Hz, "
                f"{num(prof['samples'])} samples in which the worker's Python "
                "held the GIL (`py-spy --gil`): its CPU time, not its waiting. Shares are of those samples.",
                "", "By package of the innermost frame:", "",
                table(["package", "share"], [[p, pct(s)] for p, s in prof["packages"]]), "",
                "Innermost frames (self time):", "",
                table(["frame", "share"], [[f"`{f}`", pct(s)] for f, s in prof["leaf"]]), "",
                "Our functions on the stack (inclusive time):", "",
                table(["function", "share"], [[f"`{f}`", pct(s)] for f, s in prof["own"]]), ""]
    if results.get("sustained"):
        return ["## Where the time goes", "", "No profile: py-spy could not attach (see the run's log).", ""]
    return []
