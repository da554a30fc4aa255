"""Run several copies of one command as one service (``wacrm serve --processes N``).

Each copy is started with the same environment (plus ``PROMETHEUS_MULTIPROC_DIR``, a directory
of this run's, so any copy's ``/metrics`` reports all of them) and binds the same port with
SO_REUSEPORT: the kernel spreads connections over them. SIGTERM and SIGINT are passed on to
every copy, which drain as one would. When one copy exits on its own, the others are stopped
and the supervisor exits with that copy's code: a supervisor above (systemd, Kubernetes)
restarts the whole, rather than this one running short of a copy without anyone knowing.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from types import FrameType

log = logging.getLogger("wacrm.copies")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def run(cmd: list[str], count: int, *, stop_timeout: float = 20.0) -> int:
    """Run ``count`` copies of ``cmd`` until a signal or until one exits; the exit code to use."""
    own_dir = MULTIPROC_ENV not in os.environ
    metrics_dir = os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="wacrm-metrics-")
    env = {**os.environ, MULTIPROC_ENV: metrics_dir}
    stopping: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    children: list[subprocess.Popen] = []
    try:
        children = [subprocess.Popen(cmd, env=env) for _ in range(count)]
        log.info("%d processes started (pids %s)", count, ", ".join(str(c.pid) for c in children))
        code = 0
        while not stopping:
            ended = [c for c in children if c.poll() is not None]
            if ended:
                code = ended[0].returncode or 1
                log.error("process %d exited with code %s; stopping the other %d", ended[0].pid,
                          ended[0].returncode, count - len(ended))
                break
            time.sleep(0.2)
        _stop_all(children, stop_timeout)
        return 0 if stopping and code == 0 else code
    finally:
        _stop_all(children, stop_timeout)
        for s, handler in previous.items():
            signal.signal(s, handler)
        if own_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _stop_all(children: list[subprocess.Popen], timeout: float) -> None:
    for c in children:
        if c.poll() is None:
            c.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for c in children:
        try:
            c.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.kill()
            c.wait()
