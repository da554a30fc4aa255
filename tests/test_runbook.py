"""docs/RUNBOOK.md stays true: every `console` block's commands run against a `wacrm dev` stack and
their output must match what the runbook says to expect (`…` stands for anything; `[exit N]` is
the exit status; a command is retried for a while, as a person would look again, until it matches)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_dev_command import _start_dev, dev_env

RUNBOOK = Path(__file__).resolve().parents[1] / "docs" / "RUNBOOK.md"
PATIENCE_S = 60.0


@dataclass
class Step:
    command: str
    expected: list[str] = field(default_factory=list)
    exit: int = 0


def steps(text: str) -> list[Step]:
    """The runbook's console commands with the output each should print."""
    out: list[Step] = []
    for block in re.findall(r"^```console\n(.*?)^```", text, re.S | re.M):
        for line in block.splitlines():
            if line.startswith("$ "):
                out.append(Step(line[2:]))
            elif (m := re.fullmatch(r"\[exit (\d+)\]", line.strip())) and out:
                out[-1].exit = int(m.group(1))
            elif line.strip() and out:
                out[-1].expected.append(line)
    return out


def pattern(expected: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in expected.rstrip().split("…")))


def mismatch(step: Step, code: int, output: str) -> str | None:
    """What does not match, or None."""
    if code != step.exit:
        return f"exit {code}, expected {step.exit}"
    lines = [line.rstrip() for line in output.splitlines()]
    at = 0
    for want in step.expected:
        rx = pattern(want)
        while at < len(lines) and not rx.fullmatch(lines[at]):
            at += 1
        if at == len(lines):
            return f"no line like {want!r} (in order)"
        at += 1
    return None


def test_the_runbook_parser() -> None:
    parsed = steps("text\n```console\n$ a --x\nfirst …\n[exit 1]\n$ b\n```\n```sh\n$ not run\n```\n")
    assert [(s.command, s.expected, s.exit) for s in parsed] == [("a --x", ["first …"], 1), ("b", [], 0)]
    assert mismatch(parsed[0], 1, "zero\nfirst line\n") is None
    assert mismatch(parsed[0], 0, "first line") == "exit 0, expected 1"
    assert mismatch(Step("c", ["x …", "y"]), 0, "y\nx 1\n") == "no line like 'y' (in order)"


@pytest.mark.integration
def test_every_runbook_command_does_what_the_runbook_says(tmp_path: Path) -> None:
    all_steps = steps(RUNBOOK.read_text())
    assert len(all_steps) >= 12
    state_dir = tmp_path / "state"
    env = dev_env()
    dev = _start_dev(state_dir, env)
    try:
        state = json.loads((state_dir / "dev.json").read_text())
        shell_env = {**env, "DATABASE_URL": state["database_url"], "KAFKA_BOOTSTRAP_SERVERS": state["kafka"],
                     "WHATSAPP_APP_SECRET": state["app_secret"], "WORKER_METRICS_URL": state["worker_metrics_url"],
                     "BASE_URL": state["base_url"], "ADMIN_EMAIL": state["admin_email"],
                     "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
        for step in all_steps:
            deadline = time.monotonic() + PATIENCE_S
            while True:
                done = subprocess.run(["bash", "-c", f"set -o pipefail; {step.command}"], env=shell_env,
                                      cwd=tmp_path, capture_output=True, text=True, timeout=300)
                problem = mismatch(step, done.returncode, done.stdout + done.stderr)
                if problem is None:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"runbook: `{step.command}`: {problem}\n--- output ---\n"
                                         f"{done.stdout}{done.stderr}")
                time.sleep(2)
    finally:
        dev.send_signal(signal.SIGINT)
        try:
            dev.wait(90)
        except subprocess.TimeoutExpired:
            dev.kill()
