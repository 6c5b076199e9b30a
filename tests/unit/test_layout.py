"""The layout a newcomer reads in one step: one folder per concern, one name per module,
small modules, thin agents, no import cycles."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("mailstream", "agents", "tables")


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def dotted(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_subpackage_says_what_lives_there_in_one_line() -> None:
    for init in (ROOT / "mailstream").rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc, f"{init.relative_to(ROOT)} has no docstring"


def test_no_two_modules_share_a_name() -> None:
    seen: dict[str, list[str]] = defaultdict(list)
    for path in modules():
        if path.name not in ("__init__.py", "__main__.py"):
            seen[path.name].append(str(path.relative_to(ROOT)))
    assert {name: where for name, where in seen.items() if len(where) > 1} == {}


def test_the_package_top_level_holds_few_modules() -> None:
    top = [p.name for p in (ROOT / "mailstream").glob("*.py")]
    assert len(top) <= 12, top


def test_modules_are_small_and_agents_thin() -> None:
    too_long = {}
    for path in modules():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        limit = 250 if path.parent.name == "agents" else 450
        if lines > limit:
            too_long[str(path.relative_to(ROOT))] = lines
    assert too_long == {}


def imported_at_load(path: Path) -> set[str]:
    """The modules a module imports when it is loaded (not inside functions, not for
    type checking only)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if isinstance(sub, ast.Import):
                found.update(alias.name for alias in sub.names)
            elif isinstance(sub, ast.ImportFrom) and sub.module and not sub.level:
                found.add(sub.module)
                found.update(f"{sub.module}.{alias.name}" for alias in sub.names)
    return found


def test_no_import_cycles() -> None:
    names = {dotted(p): p for p in modules()}
    graph = {
        name: {dep for dep in imported_at_load(path) if dep in names and dep != name}
        for name, path in names.items()
    }
    # a package's modules may import their package's __init__ (it only holds a docstring)
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []
