"""Child processes with a managed lifetime: started in their own session, told to stop when
their parent dies (Linux ``PR_SET_PDEATHSIG``), stopped with a signal and a bounded wait.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None

    def preexec() -> None:
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)

    return preexec


def spawn(cmd: list[str], *, log_path: Path | None = None, env: dict[str, str] | None = None,
          death_signal: int = signal.SIGTERM, **kwargs: Any) -> subprocess.Popen:
    """Start ``cmd`` in a new session, output appended to ``log_path`` (or discarded)."""
    with contextlib.ExitStack() as stack:
        out: Any = stack.enter_context(open(log_path, "ab")) if log_path else subprocess.DEVNULL
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, preexec_fn=_die_with_parent(death_signal),
                                **kwargs)


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
    """Signal ``proc``, wait up to ``timeout`` seconds, then kill it; returns its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        except ProcessLookupError:
            pass
    return proc.returncode


def python_cmd(*args: str) -> list[str]:
    """Run a ``wacrm`` subcommand with this interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "wacrm", *args]


def env_with(**values: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in values.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def worker_joined(metrics_text: str) -> bool:
    """Whether a worker's /metrics says it holds partitions (it joined its consumer group)."""
    for line in metrics_text.splitlines():
        if line.startswith("wacrm_worker_assigned_partitions "):
            return float(line.split()[1]) > 0
    return False


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc; zombies included until reaped)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()  # the name may hold spaces; the rest is fixed
            if len(fields) > 1 and int(fields[1]) == pid:
                out.append(int(entry))
    return out
