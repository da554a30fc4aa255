"""The CPU budget's sections: CPU-ms a message by process, the backlogs, the minimal pipeline beside ours,
the SQL statements a message costs, and what a cluster would carry (a model from those figures)."""

from __future__ import annotations

import math
from typing import Any

from bench.fmt import CPU_COLUMNS, cpu_list, num, pct, ratio, table


def budget_section(results: dict[str, Any]) -> list[str]:
    """CPU-milliseconds each message costs each process, at the fixed rate of the budget phase."""
    b = results.get("budget")
    if not b or not b.get("cpu_ms_per_message"):
        return []
    cost = b["cpu_ms_per_message"]
    total = sum(cost.values())
    cores = results.get("machine", {}).get("cores") or 1
    rows = [[name, f"{cost.get(name, 0):.2f}", pct(cost.get(name, 0) / total if total else None)]
            for name in CPU_COLUMNS]
    rows.append(["**total**", f"**{total:.2f}**", "100 %"])
    st = b.get("statuses") or {}
    return ["## CPU budget per message", "",
            f"At a fixed {num(b['offered_rate'])} bodies/s ({num(b['messages_per_s'])} messages/s, "
            f"{b['duration_s']:.0f} s, every message answered: lost {b['lost']}, dup {b['duplicated']}), the CPU "
            "each process used over the load and its drain, divided by the messages: user + system time from "
            "/proc, PostgreSQL with its backends, the generator its own rusage.", "",
            "Each customer message's reply brought its three statuses (sent, delivered, read), posted by fake-meta "
            "to the webhook and applied by the workers within the run"
            + (f" ({num(st.get('applied'))} of {num(st.get('expected'))} applied)" if st else "") + ".", "",
            table(["process", "CPU-ms per message", "share"], rows), "",
            f"At {total:.2f} CPU-ms a message, {cores} cores carry at most about "
            f"{num(cores * 1000 / total) if total else '–'} messages/s with nothing to spare; "
            f"the 2,000/s target needs {num(cores * 1000 / 2000, 2)} CPU-ms a message or less.", "",
            *_drain(results), *_status_backlog(results), *minimal_section(results), *_statements(b),
            *scale_section(results)]


def _drain(results: dict[str, Any]) -> list[str]:
    d = results.get("drain")
    if not d:
        return []
    return [f"The pipeline behind the webhook, alone on the machine: a backlog of {num(d['messages'])} messages put "
            f"on the raw topic with the workers stopped was answered at **{num(d['messages_per_s'])} messages/s** "
            f"({num(d['replied'])} answered in {d['seconds']:.1f} s from the moment the workers had joined; CPU in "
            "cores: " + cpu_list(d["cpu_cores"]) + ").", ""]


def _status_backlog(results: dict[str, Any]) -> list[str]:
    d = results.get("status_backlog")
    if not d:
        return []
    return [f"Status processing alone: {num(d['statuses'])} statuses of real replies (three a reply, one a body as "
            "Meta posts them) put on the raw topic with the workers stopped were applied at "
            f"**{num(d['statuses_per_s'])} statuses/s** ({num(d['applied'])} in {d['seconds']:.1f} s from the "
            "moment the workers had joined; CPU in cores: "
            + cpu_list(d["cpu_cores"]) + ").", ""]


def _minimal_fractions(results: dict[str, Any]) -> tuple[float | None, float | None, float | None, float | None]:
    """Ours and the minimal pipeline's: backlog messages/s, and CPU-ms a message at the budget's rate."""
    mini = results.get("minimal") or {}
    ours_rate = (results.get("drain") or {}).get("messages_per_s")
    mini_rate = (mini.get("backlog") or {}).get("messages_per_s")
    ours_cpu = sum(((results.get("budget") or {}).get("cpu_ms_per_message") or {}).values()) or None
    mini_cpu = sum(((mini.get("budget") or {}).get("cpu_ms_per_message") or {}).values()) or None
    return ours_rate, mini_rate, ours_cpu, mini_cpu


def minimal_rows(results: dict[str, Any]) -> list[list[str]]:
    """The ceilings table's rows for the minimal pipeline: its backlog rate and its CPU a message."""
    if not results.get("minimal"):
        return []
    ours_rate, mini_rate, ours_cpu, mini_cpu = _minimal_fractions(results)
    return [["pipeline: messages/s from a backlog", "the workers (store, rules, ledger, send, statuses)",
             num(ours_rate), "minimal pipeline (store once, ledger row, send, commit after)", num(mini_rate),
             ratio(ours_rate, mini_rate)],
            ["pipeline: CPU-ms a message with its statuses, every process", "ours", num(ours_cpu, 2),
             "minimal pipeline", num(mini_cpu, 2), f"{ours_cpu / mini_cpu:.1f}×" if ours_cpu and mini_cpu else "–"]]


def minimal_section(results: dict[str, Any]) -> list[str]:
    """The minimal pipeline next to ours: CPU a message by process, and the backlog's rate."""
    mini = results.get("minimal") or {}
    b, mb = results.get("budget") or {}, mini.get("budget") or {}
    if not mb.get("cpu_ms_per_message"):
        return []
    ours, theirs = b.get("cpu_ms_per_message") or {}, mb["cpu_ms_per_message"]
    rows = [[name, f"{ours[name]:.2f}" if name in ours else "–", f"{theirs.get(name, 0):.2f}",
             f"{ours[name] / theirs[name]:.1f}×" if ours.get(name) and theirs.get(name) else "–"]
            for name in CPU_COLUMNS]
    total_o, total_m = sum(ours.values()), sum(theirs.values())
    rows.append(["**total**", f"**{total_o:.2f}**" if ours else "–", f"**{total_m:.2f}**",
                 f"**{total_o / total_m:.1f}×**" if total_o and total_m else "–"])
    ours_rate, mini_rate, _, _ = _minimal_fractions(results)
    backlog = mini.get("backlog") or {}
    return ["### Against the minimal pipeline", "",
            "`bench/minimal.py`, on the same PostgreSQL and broker, in the same run: a webhook that checks the "
            "signature and publishes with acks=all, and "
            f"{mini.get('consumers', '?')} consumer process(es) in one group (manual commits) that store each "
            "message once (unique key), record one reply in a ledger row, post it to fake-meta (a fake-meta of its "
            "own, posting the three statuses back to the minimal webhook, which stores each once) and commit the "
            f"offsets after. At the same {num(mb.get('offered_rate'))} bodies/s ({num(mb.get('messages_per_s'))} "
            f"messages/s; lost {mb.get('lost')}, dup {mb.get('duplicated')}; statuses stored "
            f"{num((mb.get('statuses') or {}).get('applied'))} of {num((mb.get('statuses') or {}).get('expected'))}),"
            " CPU-ms a message:", "",
            table(["process", "ours", "minimal", "ours ÷ minimal"], rows), "",
            f"From a backlog of {num(backlog.get('messages'))} messages the minimal consumers answered "
            f"{num(mini_rate)} messages/s (first stored to last reply sent); ours {num(ours_rate)} messages/s: "
            f"{ratio(ours_rate, mini_rate)} of it.", ""]


def _statements(b: dict[str, Any]) -> list[str]:
    rows = [[f"{x['per_message']:.2f}", f"{x['ms_per_message']:.3f}", f"`{_short_sql(x['query'])}`"]
            for x in (b.get("statements") or [])[:12]]
    if not rows:
        return []
    calls = sum(x["per_message"] for x in b["statements"])
    wal = b.get("wal_bytes_per_message")
    return [f"What each message cost PostgreSQL (`pg_stat_statements`, top-level statements: {calls:.1f} per "
            "message, transaction control included"
            + (f"; {num(wal / 1024, 1)} KiB of WAL per message" if wal else "") + "), by execution time:", "",
            table(["calls per message", "ms per message", "statement"], rows), ""]


def _short_sql(query: str) -> str:
    text = " ".join(query.split()).replace("|", "\\|").replace("`", "'")
    return text if len(text) <= 100 else text[:97] + "…"


def scale_section(results: dict[str, Any]) -> list[str]:
    """What N brokers and M worker pods would carry, from the measured CPU per message (a model, on paper)."""
    b = results.get("budget") or {}
    cost = b.get("cpu_ms_per_message") or {}
    if not cost.get("worker") or not cost.get("postgres"):
        return []
    wal = b.get("wal_bytes_per_message") or 0.0
    body = 600  # bytes of a raw body and of a reply intent on the bus, about (the bench's bodies: ~500)
    rows = []
    for rate in (2_000, 10_000, 50_000):
        workers = math.ceil(rate * cost["worker"] / 1000 / 0.7)  # pods of one core, run at 70 %
        serve = math.ceil(rate * cost.get("serve", 0) / 1000 / 0.7)
        pg_cores = rate * cost["postgres"] / 1000
        bus_mb = rate * body * 2 * 3 / 1e6  # raw and outbound, written three times (replication factor 3)
        rows.append([num(rate), str(workers), str(serve), num(max(workers, 12)), f"{pg_cores:.1f}",
                     f"{rate * wal / 2**20:.1f}" if wal else "–", f"{bus_mb:.0f}"])
    return ["## Scale: what a cluster would carry (a model)", "",
            "The measured CPU per message, taken as linear (it falls with larger batches, so this errs on the "
            "safe side), with each worker pod one core run at 70 %, and a partition per worker pod at least "
            "(a consumer group uses at most one consumer per partition, and Kafka cannot shrink a topic: create "
            "`TOPIC_PARTITIONS` for the largest group you will run). Bus bytes: a raw body and a reply intent "
            "of about 600 bytes each, replication factor 3. The embedded broker's CPU per message does not "
            "carry over to Kafka, which batches on the broker side; 3 brokers at the rates below move "
            "tens of MB/s, well inside what a small Kafka cluster sustains.", "",
            table(["messages/s", "worker pods (1 core)", "serve pods (1 core)", "partitions (at least)",
                   "PostgreSQL cores", "WAL MiB/s", "bus writes MB/s (×3 replicas)"], rows), "",
            "**The first bottleneck is PostgreSQL's primary.** Workers and webhook processes scale out with "
            "partitions and pods; every message's writes (contact, conversation, lead, message, inbox event, "
            "ledger row, outbound message, their index entries) land on one primary. At "
            f"{cost['postgres']:.2f} CPU-ms and {num(wal / 1024, 1) if wal else '?'} KiB of WAL a message, "
            "a 16-core primary tops out near "
            f"{num(16 * 1000 * 0.7 / cost['postgres'])} messages/s on CPU. What to do about it, in order: "
            "fewer row versions per message (each UPDATE of a conversation rewrites every index on it: keep the "
            "counters the inbox sorts by out of the indexed columns so updates become HOT, and give the "
            "outbound message's conversation update to the statement that records the send); commit per batch with "
            "`synchronous_commit = off` for the derived rows only (the raw topic can rebuild them by replay); "
            "then split the data by business number (`phone_number_id`): conversations never cross numbers, "
            "so a primary per group of numbers scales writes linearly, with the raw topic keyed accordingly.",
            ""]

