"""The shape of the code, read from its imports: one direction of dependency (pipelines/ on top of deco_core/, no
import circle anywhere, stages beneath the workflow engine), small files and a short top level in pipelines/.

Every import counts, function-level ones included; ``from pkg import name`` is an import of ``pkg.name`` when that
is a module of ours, else of ``pkg``; relative imports are resolved against the importing module.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("deco_core", "pipelines")
MAX_LINES = 320
MAX_TOP_LEVEL_MODULES = 8
STAGE_ALLOWED = {"pipelines.workflow.context", "pipelines.ops.runtime"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def project_modules() -> dict[str, Path]:
    """Module name -> file, for every .py under the project packages."""
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _ours(name: str) -> str | None:
    """The longest prefix of ``name`` that is a project module (None: stdlib or third-party)."""
    mods = project_modules()
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in mods:
            return ".".join(parts[:i])
    return None


def _base(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


@cache
def imports_of(module: str) -> frozenset[str]:
    """Every name ``module`` imports anywhere in its body (fully qualified, submodules resolved)."""
    path = project_modules()[module]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, path, node)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in project_modules() else base)
    return frozenset(found)


def project_edges(module: str) -> set[str]:
    """The project modules ``module`` imports (itself excluded)."""
    return {t for name in imports_of(module) if (t := _ours(name)) and t != module}


def import_circles() -> list[list[str]]:
    """Every import circle among project modules: the strongly connected components of more than one module
    (Tarjan), each sorted, in module order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(project_edges(node)):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for mod in sorted(project_modules()):
        if mod not in index:
            visit(mod)
    return sorted(circles)


def test_no_import_cycle_among_project_modules() -> None:
    """No module of deco_core/ or pipelines/ reaches itself through its imports (function-level ones included);
    every circle found is named."""
    assert import_circles() == [], "import circles: " + "; ".join(" <-> ".join(c) for c in import_circles())


def test_no_import_cycle_touches_the_orchestration_layer() -> None:
    """No import circle contains a pipelines/ module (the workflow and its stages, ops, experiments, the CLI)."""
    assert [c for c in import_circles() if any(m.startswith("pipelines") for m in c)] == []


def test_library_never_imports_the_orchestration_layer() -> None:
    """Nothing under deco_core/ imports (or names as an import) anything under pipelines/."""
    offenders = {m: sorted(n for n in imports_of(m) if n.split(".")[0] == "pipelines")
                 for m in project_modules() if m.split(".")[0] == "deco_core"}
    assert not {m: n for m, n in offenders.items() if n}


def test_library_source_names_no_pipelines_module() -> None:
    """deco_core/ does not load pipelines by name either (importlib with a string): the direction holds at run
    time too."""
    named = [str(p.relative_to(ROOT)) for m, p in project_modules().items()
             if m.startswith("deco_core") and any(s in p.read_text() for s in ('"pipelines.', "'pipelines."))]
    assert not named


def test_no_source_file_over_the_line_limit() -> None:
    """No .py file under deco_core/, pipelines/ or tests/ is longer than 320 lines."""
    long = {str(p.relative_to(ROOT)): n for d in (*PACKAGES, "tests") for p in sorted((ROOT / d).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"


def test_pipelines_top_level_is_short() -> None:
    """At most 8 .py modules sit directly in pipelines/ (the rest lives in its subpackages)."""
    top = sorted(p.name for p in (ROOT / "pipelines").glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_stages_import_only_the_context_the_runtime_and_the_library() -> None:
    """A stage module imports, of pipelines/, only pipelines.workflow.context and pipelines.ops.runtime; the rest
    is deco_core, the standard library or third-party packages."""
    stages = [m for m in project_modules() if m.startswith("pipelines.stages.")]
    assert {"pipelines.stages.train", "pipelines.stages.evaluate", "pipelines.stages.register"} <= set(stages)
    bad = {m: sorted(n for n in imports_of(m) if n.split(".")[0] == "pipelines" and n not in STAGE_ALLOWED)
           for m in stages}
    assert not {m: n for m, n in bad.items() if n}


def test_only_the_dag_imports_the_stages() -> None:
    """pipelines.workflow.dag is the one module that imports pipelines.stages: the runner, the job entry, the
    operations and the experiments read the stage table from it."""
    importers = sorted(m for m in project_modules() if not m.startswith("pipelines.stages")
                       and any(n == "pipelines.stages" or n.startswith("pipelines.stages.") for n in imports_of(m)))
    assert importers == ["pipelines.workflow.dag"]


def test_the_import_walk_sees_function_level_imports() -> None:
    """The walker itself: a function-level import and a submodule named in ``from pkg import mod`` are edges."""
    assert "pipelines.workflow.dag" in project_edges("pipelines.workflow.runner")
    assert "pipelines.ops.runtime" in project_edges("pipelines.stages.train")
    assert "pipelines.workflow.runner" in project_edges("pipelines.workflow.job")  # imported inside main()
