"""The shape of the tree (issue #23): no import circle between modules or folders, imports inside
functions included; no module over 500 lines and no function over 80 outside the tests."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import layering

TREE = layering.scan()


def test_the_scan_sees_the_whole_tree() -> None:
    for module in ("wacrm.agents.runner", "wacrm.storage.repo", "wacrm.inbox.server", "bench.run", "faults.run"):
        assert module in TREE.modules
    assert "wacrm.core.settings" in TREE.imports["wacrm.core.errors"] or "wacrm.core.schema" in \
        TREE.imports["wacrm.core.errors"]
    assert TREE.folder_imports()["agents"] >= {"core", "storage", "topics"}


def test_no_folder_imports_another_that_imports_it_back() -> None:
    assert layering.circles(TREE.folder_imports()) == []


def test_no_module_circle() -> None:
    assert layering.circles(TREE.imports) == []


def test_modules_and_functions_stay_short() -> None:
    assert TREE.long_modules() == []
    assert sorted(TREE.long_functions) == []


def test_circles_are_found_through_any_path() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert layering.circles(graph) == [["a", "b", "c"]]
