"""Type-check wacrm and the checkout's tools: mypy from the repository's root, configured in pyproject.toml
(``[tool.mypy]``: the packages, ``wacrm``, ``bench``, ``faults`` and ``harness``). The checkout is laid out
as pip installs it (``wacrm/agents`` links to ``agents/``, …), so mypy needs no help. Exit status is mypy's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    return subprocess.call([sys.executable, "-m", "mypy"], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
