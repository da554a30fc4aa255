"""The shape of the tree: which folder imports which, import circles, and modules and functions too long.

``python scripts/layering.py`` prints the report; ``tests/test_layering.py`` holds the limits. Every
import counts, also one inside a function (that is where circles hide). A folder is a top-level
package of the checkout: ``agents/`` is imported as ``wacrm.agents``, ``bench/`` as ``bench``.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("bench", "faults", "harness", "scripts")  # run from a checkout, imported by their own names
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


@dataclass
class Tree:
    modules: dict[str, Path] = field(default_factory=dict)  # dotted name -> file
    imports: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # module -> modules it imports
    long_functions: list[tuple[int, str]] = field(default_factory=list)  # (lines, "path:line name")
    local_imports: int = 0  # import statements inside a function

    def folder(self, module: str) -> str:
        parts = module.split(".")
        return parts[1] if parts[0] == "wacrm" and len(parts) > 1 and (ROOT / parts[1]).is_dir() else parts[0]

    def folder_imports(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = defaultdict(set)
        for a, targets in self.imports.items():
            for b in targets:
                if self.folder(a) != self.folder(b):
                    out[self.folder(a)].add(self.folder(b))
        return out

    def long_modules(self) -> list[tuple[int, str]]:
        sizes = ((len(p.read_text().splitlines()), name) for name, p in self.modules.items())
        return sorted((n, name) for n, name in sizes if n > MAX_MODULE_LINES)


def _packages() -> Iterator[tuple[str, Path]]:
    """(dotted prefix, folder) of every package of the checkout, installed or tool."""
    for d in sorted(ROOT.iterdir()):
        if not (d / "__init__.py").exists() or d.name == "tests" or d.is_symlink():
            continue
        yield (d.name if d.name in (*TOOLS, "wacrm") else f"wacrm.{d.name}"), d


def _module_name(prefix: str, folder: Path, file: Path) -> str:
    parts = [prefix, *file.relative_to(folder).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def scan() -> Tree:
    tree = Tree()
    for prefix, folder in _packages():
        for file in sorted(folder.rglob("*.py")):
            if any((folder / p).is_symlink() for p in file.relative_to(folder).parents):
                continue  # a link to a folder counted as its own package
            tree.modules[_module_name(prefix, folder, file)] = file
    for name, file in tree.modules.items():
        _scan_module(tree, name, file)
    return tree


def _scan_module(tree: Tree, name: str, file: Path) -> None:
    parsed = ast.parse(file.read_text(), str(file))
    functions = [n for n in ast.walk(parsed) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    for fn in functions:
        lines = (fn.end_lineno or fn.lineno) - fn.lineno + 1
        if lines > MAX_FUNCTION_LINES:
            tree.long_functions.append((lines, f"{file.relative_to(ROOT)}:{fn.lineno} {fn.name}"))
        tree.local_imports += sum(isinstance(n, ast.Import | ast.ImportFrom) for n in ast.walk(fn))
    for node in ast.walk(parsed):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, file.name == "__init__.py", node)
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        for target in targets:
            while target and target not in tree.modules:  # `import a.b.c` of a module imports its package too
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                tree.imports[name].add(target)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one node (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        found.append(sorted(group))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def report(tree: Tree) -> str:
    lines = ["folder layering (each folder and the folders it imports):"]
    folders = tree.folder_imports()
    lines += [f"  {a:<13} -> {', '.join(sorted(folders[a]))}" for a in sorted(folders)]
    lines.append(f"folder circles: {circles(folders) or 'none'}")
    lines.append(f"module circles: {circles(tree.imports) or 'none'}")
    lines.append(f"modules over {MAX_MODULE_LINES} lines: {tree.long_modules() or 'none'}")
    lines.append(f"functions over {MAX_FUNCTION_LINES} lines: {sorted(tree.long_functions, reverse=True) or 'none'}")
    lines.append(f"imports inside functions: {tree.local_imports}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(report(scan()) + "\n")
