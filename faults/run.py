"""``python -m faults``: run the scenarios on real processes and write FAULTS.md.

Exit 0 when every verdict is ok, 1 otherwise (or when the run could not start). Everything
started here is stopped here (and dies with this process); traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from faults import report
from faults.harness import Harness, log
from faults.scenarios import BY_NAME, SCENARIOS, Row, Scenario, run_scenario
from harness.machine import machine


def select(names: Sequence[str]) -> list[Scenario]:
    """The scenarios named (all when none), in catalogue order; ValueError names an unknown one."""
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown scenario {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    return [s for s in SCENARIOS if not names or s.name in names]


async def run_all(harness: Harness, scenarios: Sequence[Scenario], *, quick: bool,
                  each: Callable[[list[Row]], None] = lambda rows: None) -> list[Row]:
    """Run ``scenarios`` in order; ``each`` sees the rows so far after every one (the report is
    rewritten as the run goes, so an interrupted run still leaves its table)."""
    rows: list[Row] = []
    for s in scenarios:
        rows.append(await run_scenario(harness, s, quick=quick))
        each(rows)
    return rows


def _machine() -> str:
    m: dict[str, Any] = machine()
    return (f"{m['cores']} cores ({m['cpu'] or 'unknown CPU'}), {m['memory_bytes'] / 2**30:.1f} GiB, "
            f"{m['kernel']}, Python {m['python']}")


def run(names: Sequence[str], quick: bool, out: Path, command: str) -> int:
    scenarios = select(names)
    work = Path(tempfile.mkdtemp(prefix="wacrm-faults-"))
    harness = Harness(work)
    started = time.time()

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    rows: list[Row] = []
    date = time.strftime("%Y-%m-%d %H:%M %Z")  # when the run started

    def write(so_far: list[Row]) -> None:
        rows[:] = so_far
        out.write_text(report.render(so_far, SCENARIOS, date=date,
                                     machine=_machine(), command=command, took_s=time.time() - started))

    try:
        log(f"embedded PostgreSQL in {work}")
        harness.start()
        asyncio.run(run_all(harness, scenarios, quick=quick, each=write))
    except KeyboardInterrupt:
        print("make faults: interrupted", file=sys.stderr)
    finally:
        harness.stop()
    if rows:
        log(f"report written to {out}")
        print(report.table(rows))
    ok = bool(rows) and len(rows) == len(scenarios) and all(r.verdict.ok for r in rows)
    if ok:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"make faults: not every scenario is ok; logs kept in {work}", file=sys.stderr)
    return 0 if ok else 1
