"""Every command and option of `wacrm` explains itself in --help."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from wacrm.cli.main import parser


def commands(p: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...],
                                                                                  argparse.ArgumentParser]]:
    found = [(path, p)]
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += commands(sub, (*path, name))
    return found


def test_every_command_has_a_description_and_every_option_a_help() -> None:
    missing = []
    for path, p in commands(parser()):
        if path and not p.description:
            missing.append(f"wacrm {' '.join(path)}: no description")
        for action in p._actions:
            if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help:
                missing.append(f"wacrm {' '.join(path)} {'/'.join(action.option_strings) or action.dest}: no help")
    assert missing == []


def test_help_prints_the_sentences() -> None:
    wacrm = str(Path(sys.executable).parent / "wacrm")
    for cmd in ("serve", "worker", "migrate", "topics", "verify-schema"):
        out = subprocess.run([wacrm, cmd, "--help"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and len(out.stdout.splitlines()) > 3, out.stdout
