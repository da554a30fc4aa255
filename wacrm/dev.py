"""``wacrm dev``: the whole system as one process tree on one machine.

Order of start: lock, embedded PostgreSQL (data under the state dir, kept across runs),
migrations, embedded broker, topics, fake Graph API (unless ``WHATSAPP_API_BASE_URL`` is set),
webhook server, worker. Then it supervises: a child that dies is restarted; when the
embedded broker dies (it keeps everything in memory) it is restarted, the topics are
created again and the worker restarted with it. Ctrl-C or SIGTERM stops everything in
reverse order. A second ``wacrm dev`` on the same state dir refuses to start.

What it writes under the state dir is private to its owner: the files (``dev.json`` and
``secrets.json`` hold the webhook's secrets, ``dev.lock``) are created mode 0600, the
state dir (when it creates it) and ``logs/`` mode 0700. (Run as root, the embedded
PostgreSQL runs as a system user and opens the state dir for traversal, o+rx; the files
and ``logs/`` stay private.)
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wacrm.core.embedded import EmbeddedBroker, EmbeddedError, EmbeddedPostgres, free_port, port_free, remembered_port
from wacrm.core.exits import CommandError
from wacrm.core.settings import Settings, SettingsError, load
from wacrm.devstate import SECRETS_FILE, STATE_FILE
from wacrm.storage.migrate import run_migrations
from wacrm.storage.numbers import new_key
from wacrm.system import LaunchError, Processes, Wiring, fake_meta_cmd, metrics_url, serve_cmd, wait_ready, worker_cmd
from wacrm.topics.admin import create_topics
from wacrm.whatsapp.fake_meta import WABA_ID as FAKE_WABA_ID

RESTARTS_PER_MINUTE = 5


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter (created 0700; made 0700 if it exists)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read: created 0600, never readable by others
    even for a moment; an existing file is made 0600 before it is truncated."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)
        f.truncate()
        f.write(text)


def open_private(path: Path, mode: str) -> Any:
    """Open ``path`` (created 0600 if new, made 0600 if not) with ``mode``, e.g. ``"a+"``."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, mode)


def _persistent_secrets(state_dir: Path) -> dict[str, str]:
    """Generated once per state dir so the webhook's secrets (and the key the numbers' tokens are
    encrypted with) survive restarts; one missing from an older state dir is added."""
    path = state_dir / SECRETS_FILE
    try:
        values: dict[str, str] = json.loads(path.read_text())
    except (OSError, ValueError):
        values = {"WHATSAPP_APP_SECRET": secrets.token_hex(16), "WHATSAPP_VERIFY_TOKEN": secrets.token_urlsafe(12),
                  "WHATSAPP_ACCESS_TOKEN": "dev-" + secrets.token_hex(8)}
    if "TOKEN_ENCRYPTION_KEY" not in values:
        values["TOKEN_ENCRYPTION_KEY"] = new_key()
        write_private(path, json.dumps(values))
    return values


ADMIN_FILE = "admin.json"
FIRST_ADMIN_EMAIL = "admin@wacrm.local"


async def first_admin(database_url: str, state_dir: Path, timeout: float) -> tuple[str, str] | None:
    """The dev inbox's first admin: created (with a generated password, kept in the state dir,
    mode 0600) when the database has no user yet. Returns (email, password), or None when the
    users were made another way and the password is not known here."""
    from wacrm.inbox import auth
    from wacrm.storage.db import connect

    path = state_dir / ADMIN_FILE
    conn = await connect(database_url, timeout=timeout)
    try:
        if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users)"):
            password = auth.generate_password()
            write_private(path, json.dumps({"email": FIRST_ADMIN_EMAIL, "password": password}))
            await auth.add_user(conn, FIRST_ADMIN_EMAIL, "admin", await auth.hash_password_async(password), "Admin")
    finally:
        await conn.close()
    try:
        saved = json.loads(path.read_text())
        return saved["email"], saved["password"]
    except (OSError, ValueError, KeyError):
        return None


class _Stop(Exception):
    pass


def busy_ports(host: str, port: int, worker_metrics_port: str | None) -> str | None:
    """What is in the way of starting, checked before anything starts: the ports this run must bind."""
    wanted = [("PORT", port)]
    if worker_metrics_port and worker_metrics_port.isdigit():
        wanted.append(("WORKER_METRICS_PORT", int(worker_metrics_port)))
    for name, number in wanted:
        if not port_free(host, number):
            return (f"port {number} on {host} ({name}) is in use: another `wacrm dev` or another server holds it. "
                    f"Stop that one, or start this one on another port: {name}={number + 1} wacrm dev "
                    "--state-dir OTHER_DIR. Nothing was started.")
    return None


def default_processes(cores: int | None = None) -> tuple[int, int]:
    """``wacrm serve --processes`` and the number of ``wacrm worker`` processes for this machine: two
    workers from 2 cores, two serve processes from 4, one of each on a single core (why: README,
    "Benchmarks")."""
    cores = cores or os.cpu_count() or 1
    return (2 if cores >= 4 else 1, 2 if cores >= 2 else 1)


def _lock(state_dir: Path) -> Any | None:
    """``dev.lock`` held by this process, its pid written in it; ``None`` (and who holds it said) when
    another ``wacrm dev`` holds it."""
    if not state_dir.exists():
        private_dir(state_dir)
    lock_file = open_private(state_dir / "dev.lock", "a+")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        pid = lock_file.read().strip() or "?"
        print(f"wacrm dev: another `wacrm dev` (pid {pid}) is already running on {state_dir}/; "
              "stop it first (Ctrl-C in its terminal).", file=sys.stderr)
        lock_file.close()
        return None
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(str(os.getpid()))
    lock_file.flush()
    return lock_file


def _environment(state_dir: Path) -> dict[str, str]:
    """This process's environment with the state dir's secrets and media directory where it names none."""
    env = dict(os.environ)
    for key, value in _persistent_secrets(state_dir).items():
        env.setdefault(key, value)
    env.setdefault("MEDIA_DIR", str(state_dir / "media"))  # the customers' files, beside the database
    return env


def _stop_on_signals() -> None:
    """Ctrl-C or SIGTERM raises :class:`_Stop` once; what comes while stopping is ignored."""
    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise _Stop

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


@dataclass
class _Servers:
    """The embedded PostgreSQL and broker this run started; ``None`` where the environment names its own."""

    pg: EmbeddedPostgres | None = None
    broker: EmbeddedBroker | None = None

    def stop(self) -> None:
        if self.broker is not None:
            self.broker.stop()
        if self.pg is not None:
            self.pg.stop()


def _start_servers(state_dir: Path, settings: Settings, servers: _Servers,
                   logs: Path) -> tuple[Settings, tuple[str, str] | None]:
    """PostgreSQL (migrated, with a first admin) and the broker (with every topic): the embedded ones
    unless the environment names its own. The settings pointing at them, and the first admin."""
    database_url = settings.database_url
    if database_url is None:
        pg_port, moved = remembered_port(state_dir / "pg" / "port")
        if moved:
            print(f"embedded PostgreSQL: {moved}", flush=True)
        pg = servers.pg = EmbeddedPostgres(state_dir / "pg" / "data", port=pg_port)
        print(f"starting embedded PostgreSQL (data in {pg.data_dir}) …", flush=True)
        pg.start()
        database_url = pg.url
    asyncio.run(run_migrations(database_url, settings.db_timeout_s, out=lambda m: print(f"  migrate: {m}")))
    admin = asyncio.run(first_admin(database_url, state_dir, settings.db_timeout_s))
    bootstrap = settings.kafka_bootstrap_servers
    if bootstrap is None:
        broker = servers.broker = EmbeddedBroker(log_path=logs / "tansu.log")
        print("starting embedded broker (tansu, in memory) …", flush=True)
        broker.start()
        bootstrap = broker.bootstrap
    settings = settings.replace(database_url=database_url, kafka_bootstrap_servers=bootstrap)
    print("creating topics …", flush=True)
    asyncio.run(create_topics(settings, out=print))
    return settings, admin


def _wiring(env: dict[str, str], settings: Settings, fake_port: int | None) -> Wiring:
    """The processes' wiring over ``env`` (which keeps the secrets): the servers, and the fake Graph API
    on ``fake_port`` (with the account whose templates it serves) unless the environment names Meta's."""
    assert settings.database_url is not None and settings.kafka_bootstrap_servers is not None
    if fake_port is not None:
        env.setdefault("WHATSAPP_BUSINESS_ACCOUNT_ID", settings.whatsapp_business_account_id or FAKE_WABA_ID)
    metrics_port = int(env.setdefault("WORKER_METRICS_PORT", str(free_port())))
    return Wiring(settings.database_url, settings.kafka_bootstrap_servers, None, settings.port, metrics_port,
                  fake_meta_url=None if fake_port is None else f"http://127.0.0.1:{fake_port}", host=settings.host)


def _launch(processes: Processes, wiring: Wiring, env: dict[str, str], fake_port: int | None) -> list[str]:
    """fake-meta (when wired), serve, and the workers of one group, each with its own metrics port;
    the workers' metrics URLs."""
    environ = wiring.environ(env)
    if fake_port is not None:  # statuses flow back, as from Meta
        processes.start("fake-meta", fake_meta_cmd(fake_port, wiring.webhook), environ)
    serve_processes, workers = default_processes()
    processes.start("serve", serve_cmd("--processes", str(serve_processes)), environ)
    processes.start("worker", worker_cmd(), environ)
    urls = [wiring.worker_metrics]
    for n in range(2, workers + 1):
        port = free_port()
        processes.start(f"worker-{n}", worker_cmd(), {**environ, "WORKER_METRICS_PORT": str(port)})
        urls.append(metrics_url(port, wiring.host))
    return urls


def _state(wiring: Wiring, env: dict[str, str], admin: tuple[str, str] | None) -> dict[str, Any]:
    """What ``dev.json`` publishes to the commands run beside this dev (:mod:`wacrm.devstate`)."""
    return {"pid": os.getpid(), "webhook_url": wiring.webhook, "base_url": wiring.base,
            "app_secret": env["WHATSAPP_APP_SECRET"], "verify_token": env["WHATSAPP_VERIFY_TOKEN"],
            "fake_meta_url": wiring.fake_meta_url, "database_url": wiring.database_url, "kafka": wiring.bootstrap,
            "worker_metrics_url": wiring.worker_metrics, "inbox_url": f"{wiring.base}/",
            "admin_email": admin[0] if admin else None, "admin_password": admin[1] if admin else None}


def run_dev(state_dir: Path) -> int:
    lock_file = _lock(state_dir)
    if lock_file is None:
        return 1
    env = _environment(state_dir)
    try:
        settings = load(env, "dev")
    except SettingsError as exc:
        print(f"wacrm dev: {exc}", file=sys.stderr)
        return 2
    busy = busy_ports(settings.host, settings.port, env.get("WORKER_METRICS_PORT"))
    if busy:
        print(f"wacrm dev: {busy}", file=sys.stderr)
        return 1

    _stop_on_signals()
    logs = private_dir(state_dir / "logs")
    servers = _Servers()
    processes = Processes(logs)
    started = time.monotonic()
    try:
        settings, admin = _start_servers(state_dir, settings, servers, logs)
        fake_port = None if "WHATSAPP_API_BASE_URL" in os.environ else free_port()
        wiring = _wiring(env, settings, fake_port)
        worker_metrics = _launch(processes, wiring, env, fake_port)
        asyncio.run(wait_ready(processes, readyz=wiring.readyz, workers=worker_metrics, timeout=90))
        state = _state(wiring, env, admin)
        write_private(state_dir / STATE_FILE, json.dumps(state, indent=2))
        _banner(state, logs, time.monotonic() - started)
        _supervise(processes, servers.broker, settings)
    except _Stop:
        print("\nstopping …", flush=True)
    except (CommandError, EmbeddedError, LaunchError) as exc:
        print(f"wacrm dev: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        (state_dir / STATE_FILE).unlink(missing_ok=True)
        processes.stop_all()
        servers.stop()
        lock_file.close()
    print("stopped.", flush=True)
    return 0


def _banner(state: dict[str, Any], logs: Path, took: float) -> None:
    base = state["base_url"]
    topics: list[tuple[str, str]] = [
        ("webhook", state["webhook_url"]),
        ("health", f"{base}/healthz   {base}/readyz"),
        ("metrics", f"{base}/metrics   {state['worker_metrics_url']} (worker)"),
        ("verify token", state["verify_token"]),
        ("app secret", state["app_secret"]),
        ("database", state["database_url"]),
        ("broker", state["kafka"]),
    ]
    if state["fake_meta_url"]:
        fake = state["fake_meta_url"]
        topics.append(("fake Graph API", f"{fake}   (what was sent: {fake}/__sent)"))
    topics.append(("inbox", f"{state['inbox_url']}   (API: {base}/api/v1/)"))
    topics.append(("sign in as", f"{state['admin_email']}   password {state['admin_password']}" if state["admin_email"]
                   else "a user of yours (add one: .venv/bin/wacrm users add EMAIL --role admin)"))
    topics.append(("logs", f"{logs}/"))
    width = max(len(label) for label, _ in topics) + 2
    lines = ["", f"wacrm is running (ready in {took:.1f}s). Ctrl-C stops everything.",
             *(f"  {label:<{width}}{value}" for label, value in topics), "",
             "Send a test message from another terminal (commands run here use this system):",
             "  .venv/bin/wacrm simulate --text \"hi\"",
             "  .venv/bin/wacrm simulate --image photo.jpg --text \"is this in stock?\"",
             "  .venv/bin/wacrm trace REQUEST_ID      .venv/bin/wacrm users list      .venv/bin/wacrm dlq list", ""]
    print("\n".join(lines), flush=True)


def _supervise(processes: Processes, broker: EmbeddedBroker | None, settings: Settings) -> None:
    """Restart a process that exits (more than RESTARTS_PER_MINUTE times a minute ends the run), and the
    embedded broker when it dies, with its topics and the worker."""
    restarts: dict[str, list[float]] = {}
    while True:
        time.sleep(0.5)
        if broker is not None and broker.proc is not None and broker.proc.poll() is not None:
            print("embedded broker exited; restarting it, re-creating topics and restarting the worker "
                  "(its in-memory data is gone)", flush=True)
            # Stop the worker first: one that rejoins the new broker while being stopped leaves a
            # ghost member holding partitions that tansu never reassigns.
            processes.stop("worker")
            broker.start()
            asyncio.run(create_topics(settings, out=lambda m: None))
            processes.restart("worker")
        for name, proc in list(processes.running.items()):
            if proc.poll() is not None:
                now = time.monotonic()
                times = restarts[name] = [t for t in restarts.get(name, []) if now - t < 60] + [now]
                if len(times) > RESTARTS_PER_MINUTE:
                    raise CommandError(f"{name} keeps exiting (code {proc.returncode}); see {processes.log(name)}")
                print(f"{name} exited with code {proc.returncode}; restarting (log: {processes.log(name)})",
                      flush=True)
                processes.restart(name)
