"""``wacrm dev`` as a user runs it: one command brings everything up, ``simulate`` gets a reply,
a second ``dev`` refuses, Ctrl-C leaves no process behind, and the data survives a restart."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from wacrm.core import procs
from wacrm.core.embedded import free_port, pg_bin_dir

pytestmark = pytest.mark.skipif(bool(os.environ.get("DATABASE_URL") or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")),
                                reason="exercises the embedded defaults")


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_dev(state_dir: Path, env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen(procs.python_cmd("dev", "--state-dir", str(state_dir)), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    lines = []
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError("wacrm dev exited:\n" + "".join(lines))
        lines.append(line)
        if "Send a test message" in line:
            return proc
    proc.kill()
    raise AssertionError("no banner within 120s:\n" + "".join(lines))


def _simulate(state_dir: Path, text: str) -> subprocess.CompletedProcess:
    env = procs.env_with(WHATSAPP_APP_SECRET=None)  # the secret comes from the running dev's state
    return subprocess.run(procs.python_cmd("simulate", "--text", text, "--state-dir", str(state_dir)),
                          env=env, capture_output=True, text=True, timeout=60)


def dev_env() -> dict[str, str]:
    """The environment of a `wacrm dev` on its own embedded servers and free ports."""
    return procs.env_with(PORT=str(free_port()), WORKER_METRICS_PORT=str(free_port()), BROKER_SESSION_TIMEOUT="6",
                          DATABASE_URL=None, KAFKA_BOOTSTRAP_SERVERS=None, WHATSAPP_APP_SECRET=None,
                          WHATSAPP_API_BASE_URL=None)


def _beside(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """A command run in the directory of a running `wacrm dev`, with no DATABASE_URL or KAFKA_BOOTSTRAP_SERVERS."""
    return subprocess.run(procs.python_cmd(*args), env=procs.env_with(DATABASE_URL=None, KAFKA_BOOTSTRAP_SERVERS=None),
                          cwd=cwd, capture_output=True, text=True, timeout=90)


def test_dev_runs_everything_and_stops_cleanly(tmp_path: Path) -> None:
    state_dir = tmp_path / ".wacrm"  # the default name: commands run in tmp_path find this dev system
    env = dev_env()
    dev = _start_dev(state_dir, env)
    try:
        family = _descendants(dev.pid)
        assert len(family) >= 5  # postgres, tansu, fake-meta, serve, worker (and postgres' own children)
        state = json.loads((state_dir / "dev.json").read_text())
        # Its secrets are its owner's only. (The state dir itself may be opened to others for traversal:
        # as root, the embedded PostgreSQL runs as a system user that must reach its data dir.)
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (state_dir / "logs", state_dir / "dev.json",
                                                                  state_dir / "secrets.json", state_dir / "dev.lock")}
        assert modes == {"logs": 0o700, "dev.json": 0o600, "secrets.json": 0o600, "dev.lock": 0o600}

        # The banner's first admin signs in to the inbox.
        login = urllib.request.Request(f"{state['base_url']}/api/v1/auth/login", method="POST",
                                       data=json.dumps({"email": state["admin_email"],
                                                        "password": state["admin_password"]}).encode(),
                                       headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(login, timeout=30) as resp:
            assert json.loads(resp.read())["user"]["role"] == "admin"

        result = _simulate(state_dir, "hello from the dev test")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "reply sent to +15550002222" in result.stdout

        # The commands the banner points to work beside it, and say which system they used.
        used = f"using the running `wacrm dev` (pid {dev.pid}"
        users = _beside(tmp_path, "users", "list")
        assert users.returncode == 0 and state["admin_email"] in users.stdout, users.stdout + users.stderr
        assert used in users.stderr and "DATABASE_URL" in users.stderr
        request_id = result.stdout.split("request id: ", 1)[1].split()[0]
        trace = _beside(tmp_path, "trace", request_id)
        assert trace.returncode == 0 and used in trace.stderr, trace.stdout + trace.stderr
        assert "stored" in trace.stdout.lower(), trace.stdout
        dlq = _beside(tmp_path, "dlq", "list", "--bus-timeout", "20")
        assert dlq.returncode == 0 and "dead letters" in dlq.stdout and used in dlq.stderr, dlq.stdout + dlq.stderr
        assert "KAFKA_BOOTSTRAP_SERVERS" in dlq.stderr
        with urllib.request.urlopen(f"{state['base_url']}/favicon.ico", timeout=30) as icon:
            assert icon.headers["Content-Type"] == "image/x-icon" and icon.read(4) == b"\x00\x00\x01\x00"

        second = subprocess.run(procs.python_cmd("dev", "--state-dir", str(state_dir)), env=env,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and "already running" in second.stderr
        # Another state dir on the same port: refused before anything starts, with the way out.
        other = tmp_path / "other"
        third = subprocess.run(procs.python_cmd("dev", "--state-dir", str(other)), env=env,
                               capture_output=True, text=True, timeout=60)
        assert third.returncode == 1, third.stdout + third.stderr
        assert f"port {env['PORT']} on 127.0.0.1 (PORT) is in use" in third.stderr and "Nothing was started" \
            in third.stderr
        assert not (other / "pg").exists() and "Traceback" not in third.stderr

        dev.send_signal(signal.SIGINT)
        dev.wait(90)
        assert dev.returncode == 0
        time.sleep(0.5)
        assert [p for p in family if _alive(p)] == []
        assert not (state_dir / "dev.json").exists()

        # The data survives: a new dev on the same state dir still knows the conversation.
        dev = _start_dev(state_dir, env)
        state2 = json.loads((state_dir / "dev.json").read_text())
        assert state2["app_secret"] == state["app_secret"]  # the generated secrets are kept too
        assert state2["database_url"] == state["database_url"]  # the embedded PostgreSQL keeps its port
        check = subprocess.run(
            [str(pg_bin_dir() / "psql"),
             state2["database_url"], "-tAc", "SELECT count(*) FROM messages WHERE body = 'hello from the dev test'"],
            capture_output=True, text=True, timeout=30)
        assert check.stdout.strip() == "1", check.stderr
    finally:
        if dev.poll() is None:
            dev.send_signal(signal.SIGINT)
            try:
                dev.wait(90)
            except subprocess.TimeoutExpired:
                dev.kill()


def test_the_processes_wacrm_dev_runs_follow_the_cores() -> None:
    from wacrm.dev import default_processes

    # (serve processes, workers): as measured on 2 cores, workers first, a second serve process from 4
    assert [default_processes(n) for n in (1, 2, 3, 4, 16)] == [(1, 1), (1, 2), (1, 2), (2, 2), (2, 2)]
