"""The import graph of components/ and pipelines/ has no cycles: every `import`, at module
level or inside a function, counts (a cycle hidden in a function is still a cycle: each side
must be read, changed and tested with the other)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

from components.fingerprint import PACKAGES, ROOT, imported_modules, module_file


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the modules of ours it imports (a package's `__init__` is the package)."""
    graph: dict[str, set[str]] = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            name = _module_name(path, root)
            deps = set()
            for imported in imported_modules(path, name):
                target = module_file(imported, root)
                if target is not None:
                    dep = _module_name(target, root)
                    # a module importing its own package's __init__ (or a parent) is not a cycle of note
                    if dep != name and not name.startswith(dep + "."):
                        deps.add(dep)
            graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_components_and_pipelines_import_without_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one_hidden_in_a_function(tmp_path):
    pkg = tmp_path / "components"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "journal.py").write_text("from components.runs import log\n")
    (pkg / "runs.py").write_text("def client():\n    from components.journal import Writer\n")
    (pkg / "ok.py").write_text("import components.runs\n")
    cycle = find_cycle(import_graph(tmp_path))
    assert cycle in (["components.journal", "components.runs", "components.journal"],
                     ["components.runs", "components.journal", "components.runs"])


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})


def test_the_layer_contracts_hold():
    """pyproject.toml's import-linter contracts (`make lint` runs the same)."""
    p = _lint_imports(ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "0 broken" in p.stdout


def test_the_layer_contracts_catch_a_lower_room_importing_a_higher_one(tmp_path):
    for part in (*PACKAGES, "pyproject.toml"):
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, tmp_path / part)
    parquet = tmp_path / "components/data/parquet.py"
    parquet.write_text(parquet.read_text() + "\n\ndef _run_id():\n    from components.tracking import runs\n\n"
                       "    return runs\n")
    p = _lint_imports(tmp_path)
    assert p.returncode != 0 and "components.data.parquet -> components.tracking.runs" in p.stdout, p.stdout[-3000:]


def test_no_module_imports_a_private_name_of_another():
    """A `_name` is its module's own business: another module that needs it gets a public name."""
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text("utf-8"))):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] in PACKAGES):
                    private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                    if private:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {', '.join(private)}")
    assert not found, "private names imported across modules:\n" + "\n".join(found)
