"""Type-check the installed layout: mypy on ``wacrm.*`` as pip installs it, plus the checkout's tools.

The repository keeps top-level folders that install as ``wacrm.agents``, ``wacrm.core``, …
(``[tool.setuptools.package-dir]`` in pyproject.toml). mypy reads files, not import hooks, so
this builds that layout as a tree of symbolic links in ``build/typecheck`` and checks it there;
the mapping is read from pyproject.toml, never kept twice. Exit status is mypy's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / "build" / "typecheck"
TOOLS = ("bench", "faults", "harness")  # checkout tools, importable from the repository root


def build_tree() -> Path:
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(TREE, ignore_errors=True)
    top = TREE / "wacrm"
    top.mkdir(parents=True)
    for module in (ROOT / mapping["wacrm"]).glob("*.py"):
        (top / module.name).symlink_to(module)
    for package, folder in mapping.items():
        if package != "wacrm" and package.count(".") == 1:
            (top / package.split(".", 1)[1]).symlink_to(ROOT / folder, target_is_directory=True)
    for tool in TOOLS:
        (TREE / tool).symlink_to(ROOT / tool, target_is_directory=True)
    return TREE


def main() -> int:
    tree = build_tree()
    packages = [arg for name in ("wacrm", *TOOLS) for arg in ("-p", name)]
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), *packages]
    return subprocess.call(cmd, cwd=tree, env={"MYPYPATH": str(tree), "PATH": "/usr/bin:/bin"})


if __name__ == "__main__":
    sys.exit(main())
