"""The rule by which every command finds a running `wacrm dev` (wacrm.devstate), and the banner that
points to those commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wacrm.dev import _banner
from wacrm.devstate import STATE_FILE, with_running_dev


def publish(state_dir: Path, pid: int) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / STATE_FILE).write_text(json.dumps({"pid": pid, "database_url": "postgresql://dev@127.0.0.1:5999/x",
                                                    "kafka": "127.0.0.1:9999"}))


def test_a_running_dev_fills_only_what_is_unset_and_says_which_it_used(tmp_path: Path) -> None:
    publish(tmp_path, os.getpid())
    env, note = with_running_dev({"KAFKA_BOOTSTRAP_SERVERS": "kafka:9092", "DATABASE_URL": " "}, tmp_path)
    assert env["DATABASE_URL"] == "postgresql://dev@127.0.0.1:5999/x" and env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert note is not None and "DATABASE_URL unset" in note and f"pid {os.getpid()}" in note
    assert "KAFKA" not in note
    assert "TOKEN_ENCRYPTION_KEY" not in env  # the dev wrote no secrets.json here
    (tmp_path / "secrets.json").write_text(json.dumps({"TOKEN_ENCRYPTION_KEY": "k" * 44}))
    env, _ = with_running_dev({}, tmp_path)
    assert env["TOKEN_ENCRYPTION_KEY"] == "k" * 44  # its database's tokens need its key
    env, _ = with_running_dev({"TOKEN_ENCRYPTION_KEY": "mine"}, tmp_path)
    assert env["TOKEN_ENCRYPTION_KEY"] == "mine"
    env, note = with_running_dev({"DATABASE_URL": "postgresql://mine/db", "KAFKA_BOOTSTRAP_SERVERS": "k:1"}, tmp_path)
    assert note is None and env["DATABASE_URL"] == "postgresql://mine/db"


def test_no_dev_or_one_that_died_changes_nothing(tmp_path: Path) -> None:
    assert with_running_dev({}, tmp_path / "none") == ({}, None)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    publish(tmp_path, int(gone.stdout))  # a state file left behind by a killed dev
    assert with_running_dev({}, tmp_path) == ({}, None)
    (tmp_path / STATE_FILE).write_text("{not json")
    assert with_running_dev({}, tmp_path) == ({}, None)


def test_the_commands_say_what_is_missing_when_no_dev_runs(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")}
    for args in (["users", "list"], ["trace", "abc"], ["dlq", "list"]):
        done = subprocess.run([sys.executable, "-m", "wacrm", *args], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2 and "required by this command and not set" in done.stderr, done.stderr
        assert "using the running" not in done.stderr


def test_the_banner_aligns_its_topics(capsys: pytest.CaptureFixture[str]) -> None:
    base = "http://127.0.0.1:8080"
    _banner({"base_url": base, "webhook_url": f"{base}/webhooks/whatsapp", "worker_metrics_url": "http://w/metrics",
             "verify_token": "vt", "app_secret": "secret", "database_url": "postgresql://db", "kafka": "b:1",
             "fake_meta_url": "http://127.0.0.1:9", "inbox_url": f"{base}/", "admin_email": "admin@x",
             "admin_password": "pw"}, Path(".wacrm/logs"), 1.0)
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("wacrm is running (ready in 1.0s). Ctrl-C stops everything.") + 1
    topics = lines[start:lines.index("", start)]
    labels = ["webhook", "health", "metrics", "verify token", "app secret", "database", "broker", "fake Graph API",
              "inbox", "sign in as", "logs"]
    column = 2 + len("fake Graph API") + 2  # every value starts in one column, after the longest topic
    assert [t[:column].strip() for t in topics] == labels
    assert all(t[column - 1] == " " and t[column] != " " for t in topics), "\n".join(topics)
