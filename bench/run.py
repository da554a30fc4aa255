"""``python -m bench``: run the system in its production shape on this machine, measure it, write the report.

Order: embedded PostgreSQL and broker; the ceilings (raw produce, PostgreSQL statements of the inbound
path, a bare aiohttp handler); the webhook alone, open loop and under wrk; then the whole pipeline end to
end (:func:`_pipeline`); then the inbox. ``only`` runs one part. Everything started here is stopped here
(and dies with this process); traffic goes to 127.0.0.1 only; the run is bounded in time as a whole
(SIGALRM) and every wait inside it is bounded too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from bench import inbox, plots, report
from bench.drive import e2e_step, fresh_pipeline
from bench.phases import budget, ceilings, e2e, minimal, webhook
from bench.phases.inbox import inbox_phase
from bench.phases.media import media
from bench.plan import FULL, QUICK
from bench.system import Bench, BenchError, log
from harness.machine import machine
from wacrm.dev import default_processes
from wacrm.system import LaunchError

INBOX_DEADLINE_S = 900  # seeding a million messages, migrations, the load
ONLY_PIPELINE = ("pipeline", "budget", "webhook", "media")  # the parts without the inbox


class _Deadline(BaseException):
    pass


def run(quick: bool, out: Path, command: str, only: str | None = None,
        seed: inbox.Seed | None = None, think_s: float | None = None, *,
        serve_processes: int | None = None, workers: int | None = None) -> int:
    """Run the whole benchmark (or ``only`` one part) and write the report to ``out``; 0 on success.
    ``seed``, ``think_s``: the inbox phase's seed and people's mean pause instead of the plan's."""
    plan = QUICK if quick else FULL
    seed = seed or (inbox.QUICK_SEED if quick else inbox.FULL_SEED)
    load = inbox.QUICK_LOAD if quick else inbox.FULL_LOAD
    if think_s is not None:
        load = dataclasses.replace(load, think_s=think_s)
    work = Path(tempfile.mkdtemp(prefix="wacrm-bench-"))
    b = Bench(plan, work)
    if serve_processes is None or workers is None:
        dev_serve, dev_workers = default_processes()
        serve_processes, workers = serve_processes or dev_serve, workers or dev_workers
    b.serve_processes, b.workers = serve_processes, workers
    b.results["processes"] = {"serve": b.serve_processes, "workers": b.workers}
    started = time.time()

    def on_alarm(signum: int, frame: Any) -> None:
        raise _Deadline

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    with_inbox = only not in ONLY_PIPELINE
    bound = (INBOX_DEADLINE_S if with_inbox else 0) + (0 if only == "inbox" else plan.deadline_s)
    signal.alarm(int(bound))
    ok = False
    try:
        _phases(b, only)
        if with_inbox:
            asyncio.run(inbox_phase(b, seed, load))
        ok = True
    except _Deadline:
        print(f"wacrm bench: the run overran its bound of {bound:.0f}s; stopped", file=sys.stderr)
    except (BenchError, LaunchError, OSError, ValueError, asyncpg.PostgresError) as exc:
        print(f"wacrm bench: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("wacrm bench: interrupted", file=sys.stderr)
    finally:
        signal.alarm(0)
        b.stop_all()
    b.results["took_s"] = time.time() - started
    _write(b, out, command, only, ok)
    return 0 if ok else 1


def _phases(b: Bench, only: str | None) -> None:
    """Storage, then the phases of ``only`` (all but the inbox when None)."""
    b.start_storage()
    if only == "budget":
        asyncio.run(_budget_only(b))
    elif only == "media":
        asyncio.run(media(b))
    elif only == "webhook":
        asyncio.run(webhook.webhook(b))
        asyncio.run(webhook.webhook_closed_loop(b))
    elif only != "inbox":
        ceilings.ceilings(b)
        asyncio.run(webhook.http_ceiling(b))
        asyncio.run(webhook.webhook(b))
        asyncio.run(webhook.webhook_closed_loop(b))
        asyncio.run(_pipeline(b))


async def _pipeline(b: Bench) -> None:
    """The pipeline end to end, each judged phase after the one it depends on."""
    p = b.plan
    log("end to end: fresh broker; serve, worker, fake-meta")
    e2e.record_settings(b)
    b.ensure_fake_meta()
    await fresh_pipeline(b)
    await e2e.customer_view(b)
    best = await e2e.steps(b)
    sustained = await e2e.sustain(b, best or max(10, p.e2e_rates[0] // 4))
    await budget.budget(b)  # after the steps: the customers have written before, as in a running business
    await budget.drain(b)
    await budget.status_backlog(b)
    await minimal.minimal(b)
    await fresh_pipeline(b)  # the minimal pipeline ran on a broker of its own
    await e2e.soak(b, max(10, round((sustained or best or p.e2e_rates[0] // 4) / 4)))
    await e2e.customer_with_defaults(b)
    await media(b)


async def _budget_only(b: Bench) -> None:
    """``--only budget``: the pipeline started and its CPU budget measured, nothing else (a minute)."""
    b.ensure_fake_meta()
    await fresh_pipeline(b)
    log("CPU budget: warm-up, every customer writes once (not judged)")
    await e2e_step(b, 400, 12, "bwarm")
    await budget.budget(b)
    await budget.drain(b)
    await budget.status_backlog(b)
    await minimal.minimal(b)


def _write(b: Bench, out: Path, command: str, only: str | None, ok: bool) -> None:
    """The raw results next to the logs, the plots, and the report at ``out``; the logs kept on failure."""
    b.results["machine"] = machine(b.results.get("postgres_version"))
    b.results["command"] = command
    b.results["complete"] = ok
    b.results["only"] = only
    (b.work / "results.json").write_bytes(orjson.dumps(b.results, option=orjson.OPT_INDENT_2))
    pictures_dir = Path("docs") / "benchmarks"  # relative to the report, which links them
    drawn, why = plots.draw(b.results, out.parent / pictures_dir)
    b.results["pictures"] = [(title, str(pictures_dir / name)) for title, name in drawn]
    if why:
        b.results["pictures_missing"] = why
    out.write_text(report.render(b.results))
    log(f"report written to {out} (raw results in {b.work / 'results.json'})")
    if ok:
        shutil.rmtree(b.work / "pg", ignore_errors=True)
    else:
        print(f"wacrm bench: logs kept in {b.logs}", file=sys.stderr)
