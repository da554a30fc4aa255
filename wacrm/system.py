"""One wacrm system on this machine: how ``wacrm dev``, the tests, the fault suite and the benchmark launch it.

:class:`Wiring` is what the system's processes are told (database, broker, secrets, ports, the Graph API's
address, the caller's own settings). :class:`Processes` starts them by name, each appending its output to
``logs/NAME.log``, and stops them in the reverse order of their start. :func:`wait_ready` waits, bounded,
for the webhook to answer ``/readyz`` and for workers to hold partitions, and fails as soon as a watched
process exits. :func:`create_topics_on` makes every topic on a broker. What a launcher does beyond this
(embedded servers, faults, fixtures, profiling) is its own.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from wacrm.core import procs
from wacrm.core.embedded import wait_for_port
from wacrm.core.procs import worker_joined
from wacrm.core.settings import load
from wacrm.topics.admin import create_topics

LOCAL = "127.0.0.1"
NOT_JOINED = "a worker has not joined its consumer group yet"


class LaunchError(Exception):
    """A process of the system exited while it was awaited, or the system was not ready in time;
    the message names the process, its exit code and its log."""


@dataclass(frozen=True)
class Secrets:
    """The webhook's and the Graph API's secrets; ``token_key`` encrypts added numbers' tokens at rest."""

    app_secret: str
    verify_token: str
    access_token: str
    token_key: str | None = None

    def environ(self) -> dict[str, str]:
        env = {"WHATSAPP_APP_SECRET": self.app_secret, "WHATSAPP_VERIFY_TOKEN": self.verify_token,
               "WHATSAPP_ACCESS_TOKEN": self.access_token}
        return env if self.token_key is None else {**env, "TOKEN_ENCRYPTION_KEY": self.token_key}


@dataclass(frozen=True)
class Wiring:
    """What every process of one system is told; a field that is ``None`` is left to the base environment."""

    database_url: str
    bootstrap: str
    secrets: Secrets | None
    port: int
    worker_metrics_port: int
    fake_meta_url: str | None = None
    host: str = LOCAL
    group_id: str | None = None
    media_dir: Path | None = None
    settings: Mapping[str, str] = field(default_factory=dict)  # the caller's own; they win over the wiring

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def webhook(self) -> str:
        return f"{self.base}/webhooks/whatsapp"

    @property
    def readyz(self) -> str:
        return f"{self.base}/readyz"

    @property
    def worker_metrics(self) -> str:
        return metrics_url(self.worker_metrics_port, self.host)

    def environ(self, base: Mapping[str, str] | None = None, /, **more: str) -> dict[str, str]:
        """A process's environment: ``base`` (this process's own when ``None``), the wiring, the
        caller's settings, then ``more``."""
        wiring = {"DATABASE_URL": self.database_url, "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
                  "WHATSAPP_API_BASE_URL": self.fake_meta_url, "PORT": str(self.port), "HOST": self.host,
                  "WORKER_METRICS_PORT": str(self.worker_metrics_port), "KAFKA_GROUP_ID": self.group_id,
                  "MEDIA_DIR": None if self.media_dir is None else str(self.media_dir), "PYTHONUNBUFFERED": "1"}
        env = procs.env_with() if base is None else dict(base)
        env.update({k: v for k, v in wiring.items() if v is not None})
        env.update(self.secrets.environ() if self.secrets is not None else {})
        env.update(self.settings)
        env.update(more)
        return env


def metrics_url(port: int, host: str = LOCAL) -> str:
    """A worker's /metrics (``WORKER_METRICS_PORT``), which says whether it holds partitions."""
    return f"http://{host}:{port}/metrics"


def serve_cmd(*args: str) -> list[str]:
    return procs.python_cmd("serve", *args)


def worker_cmd(*args: str) -> list[str]:
    return procs.python_cmd("worker", *args)


def fake_meta_cmd(port: int, webhook_url: str, *args: str) -> list[str]:
    """``wacrm fake-meta`` on ``port``, posting Meta's statuses of what it takes to ``webhook_url``."""
    return procs.python_cmd("fake-meta", "--port", str(port), "--webhook-url", webhook_url, *args)


async def create_topics_on(bootstrap: str) -> None:
    """Every topic of :mod:`wacrm.topics` on the broker at ``bootstrap``, quietly."""
    await create_topics(load({"KAFKA_BOOTSTRAP_SERVERS": bootstrap}, "dev"), out=lambda m: None)


@dataclass
class _Launched:
    cmd: list[str]
    env: dict[str, str]


class Processes:
    """The named processes of one system. Each appends its output to ``logs/NAME.log``; a name
    started again replaces the process of that name (stop it first)."""

    def __init__(self, logs: Path, *, cwd: Path | None = None) -> None:
        self.logs = logs
        self.cwd = cwd
        self.running: dict[str, subprocess.Popen] = {}
        self._launched: dict[str, _Launched] = {}

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def start(self, name: str, cmd: list[str], env: dict[str, str], *, port: int | None = None,
              timeout: float = 60) -> subprocess.Popen:
        """Start ``cmd`` as ``name``; with ``port``, wait until it listens there (``EmbeddedError``
        when it exits first, or after ``timeout``)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        proc = procs.spawn(cmd, log_path=self.log(name), env=env, cwd=self.cwd)
        self.running[name] = proc
        self._launched[name] = _Launched(cmd, env)
        if port is not None:
            self.wait_listening(name, port, timeout)
        return proc

    def restart(self, name: str) -> subprocess.Popen:
        """``name`` started again as it was last started (the old process stopped first if it runs)."""
        self.stop(name)
        launched = self._launched[name]
        return self.start(name, launched.cmd, launched.env)

    def wait_listening(self, name: str, port: int, timeout: float = 60) -> None:
        wait_for_port(port, timeout, self.running[name])

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Signal ``name``, wait up to ``timeout`` seconds, then kill it; its exit code (``None``: not running)."""
        return procs.stop(self.running.pop(name, None), sig, timeout)

    def stop_all(self, timeout: float = 20.0) -> None:
        """Every process, the last started first."""
        for name in reversed(list(self.running)):
            self.stop(name, timeout=timeout)

    def exited(self, names: Iterable[str] | None = None) -> str | None:
        """The first of ``names`` (every process when ``None``) that has exited, as a sentence naming its
        exit code and its log; ``None`` while they all run. A name not started counts as exited."""
        for name in self.running if names is None else names:
            proc = self.running.get(name)
            if proc is None:
                return f"{name} is not running; see {self.log(name)}"
            if proc.poll() is not None:
                return f"{name} exited with code {proc.returncode}; see {self.log(name)}"
        return None


async def wait_ready(processes: Processes, *, readyz: str | None = None, workers: Sequence[str] = (),
                     watch: Iterable[str] | None = None, timeout: float = 90) -> None:
    """Wait until ``readyz`` answers 200 and every worker metrics URL in ``workers`` says it holds
    partitions (its group settled). :class:`LaunchError` as soon as one of ``watch`` (every process when
    ``None``) exits, or after ``timeout`` seconds with the last reason it was not ready."""
    names = None if watch is None else list(watch)
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
        while True:
            exited = processes.exited(names)
            if exited:
                raise LaunchError(exited)
            last = await _not_ready(session, readyz, workers)
            if last is None:
                return
            if time.monotonic() >= deadline:
                raise LaunchError(f"the system did not become ready within {timeout:.0f}s: {last}")
            await asyncio.sleep(0.2)


async def _not_ready(session: aiohttp.ClientSession, readyz: str | None, workers: Sequence[str]) -> str | None:
    """Why the system is not ready yet, ``None`` when it is."""
    try:
        if readyz is not None:
            async with session.get(readyz) as r:
                if r.status != 200:
                    return await r.text() or f"{readyz} answered {r.status}"
        for url in workers:
            async with session.get(url) as r:
                if not worker_joined(await r.text()):
                    return NOT_JOINED
    except (TimeoutError, aiohttp.ClientError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
