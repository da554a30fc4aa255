"""The machine's ceilings, each measured by a child process of its own (:mod:`bench.ceilings`): raw
produce to the broker and the inbound path's statements on PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import orjson

from bench.system import Bench, BenchError, log


def ceilings(b: Bench) -> None:
    assert b.broker is not None
    p = b.plan
    log("ceiling: raw produce")
    b.results["produce"] = _json_child(
        b, "ceiling-produce", [sys.executable, "-m", "bench.ceilings", "produce", "--bootstrap", b.broker.bootstrap,
                               "--topic", "bench.ceiling", "--seconds", str(p.ceiling_s)], p.ceiling_s * 2 + 60)
    log(f"  {b.results['produce']}")
    log("ceiling: PostgreSQL, inbound statements")
    b.results["postgres"] = _json_child(
        b, "ceiling-postgres", [sys.executable, "-m", "bench.ceilings", "postgres", "--database-url",
                                b.ceiling_db, "--seconds", str(p.ceiling_s)], p.ceiling_s * 2 + 60)
    log(f"  {b.results['postgres']}")


def _json_child(b: Bench, name: str, cmd: list[str], timeout: float) -> dict[str, Any]:
    """Run a measuring child to completion (bounded); its last output line is its JSON result."""
    log_path = b.processes.log(name)
    proc = b.start(name, cmd)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{name} overran its bound of {timeout:.0f}s; see {log_path}") from None
    finally:
        b.stop(name)
    lines = log_path.read_text(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise BenchError(f"{name} failed (code {proc.returncode}); see {log_path}")
    return orjson.loads(lines[-1])
