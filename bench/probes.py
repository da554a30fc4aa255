"""What the benchmark watches while the system runs: memory of each process, consumer lag,
and a short py-spy profile of the worker. Read-only: nothing here changes the system.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from wacrm.core import procs


def parse_kb(status_text: str, field: str) -> int | None:
    """The value in bytes of a ``Field:   123 kB`` line of /proc/PID/status or smaps_rollup."""
    for line in status_text.splitlines():
        if line.startswith(field + ":"):
            parts = line.split()
            return int(parts[1]) * 1024 if len(parts) > 1 and parts[1].isdigit() else None
    return None


def rss(pid: int) -> int | None:
    try:
        return parse_kb(Path(f"/proc/{pid}/status").read_text(), "VmRSS")
    except OSError:
        return None


def pss_tree(pid: int) -> int | None:
    """Proportional memory of a process and its children (PostgreSQL: shared buffers counted once)."""
    total = 0
    found = False
    for p in [pid, *procs.children(pid)]:
        try:
            value = parse_kb(Path(f"/proc/{p}/smaps_rollup").read_text(), "Pss")
        except OSError:
            continue
        if value is not None:
            total += value
            found = True
    return total if found else None


def cpu_seconds(pid: int, tree: bool = False) -> float:
    """User + system CPU time of a process so far; with ``tree``, also of its children, those
    still running and those it has reaped (PostgreSQL's backends come and go)."""
    total = 0.0
    for p in [pid, *(procs.children(pid) if tree else [])]:
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        if tree and p == pid:
            total += (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    return total


# A named part of the system: its processes, each (pid, whether its children count too).
Tracked = dict[str, list[tuple[int, bool]]]


def rss_of(entries: list[tuple[int, bool]]) -> int | None:
    """Resident memory of a part: its processes' RSS summed (with their children when so marked)."""
    pids = [q for pid, tree in entries for q in ([pid, *procs.children(pid)] if tree else [pid])]
    values = [v for v in (rss(p) for p in pids) if v is not None]
    return sum(values) if values else None


class CpuMeter:
    """CPU used by named parts from now on, in cores (CPU seconds per second of wall time)."""

    def __init__(self, processes: Tracked) -> None:
        self.processes = processes
        self.started = time.monotonic()
        self.start = {name: self._seconds(entries) for name, entries in processes.items()}

    @staticmethod
    def _seconds(entries: list[tuple[int, bool]]) -> float:
        return sum(cpu_seconds(pid, tree) for pid, tree in entries)

    @property
    def span(self) -> float:
        return time.monotonic() - self.started

    def cores(self) -> dict[str, float]:
        span = max(self.span, 1e-9)
        return {name: (self._seconds(entries) - self.start[name]) / span for name, entries in self.processes.items()}


def ensure_py_spy() -> str | None:
    """The py-spy binary next to this interpreter, installed with pip if missing; None if impossible."""
    here = Path(sys.executable).parent / "py-spy"
    if here.exists():
        return str(here)
    found = shutil.which("py-spy")
    if found:
        return found
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "py-spy==0.4.3"],
                            capture_output=True, text=True, timeout=300)
    return str(here) if result.returncode == 0 and here.exists() else None


def profile_cmd(pid: int, seconds: float, out: Path) -> list[str] | None:
    """``py-spy record`` of ``pid`` for ``seconds`` into collapsed stacks at ``out`` (None: no py-spy).

    Only samples where the process's Python holds the GIL (``--gil``): its CPU, not its threads
    waiting in the event loop or in a socket call.
    """
    binary = ensure_py_spy()
    if binary is None:
        return None
    return [binary, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "100",
            "--gil", "--format", "raw", "--output", str(out), "--nonblocking"]
