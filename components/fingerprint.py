"""What code a stage runs, and a fingerprint of it.

A stage's code is the import closure of its entry module and of its workload's module
(the stages reach a workload through the table in `components.workloads`, by name, so the
workload's code is added explicitly) inside this repository's own packages (`components/`,
`pipelines/`), found by reading the source (every `import`, at module level or inside
functions, so code a Ray worker imports later counts too). Two uses:

- the fingerprint goes into every key that decides "resume or start anew" (run store
  paths, Ray run names, Tune experiments and done markers, MLflow run keys), so a code
  change is a new run, never a resumed old one;
- `tests/unit/test_stage_deps.py` checks that `dvc.yaml` lists every file of each stage's
  closure as a dependency, so DVC sees the same change.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

PACKAGES = ("components", "pipelines")
ROOT = Path(__file__).resolve().parents[1]


def module_file(module: str, root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> Path | None:
    """The source file of a dotted module name inside `root`, or None when it is not ours."""
    if module.split(".", 1)[0] not in packages:
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path, module: str) -> set[str]:
    """Dotted names this file imports (absolute and relative), with `from x import y` giving
    both `x` and `x.y` (y may be a submodule)."""
    tree = ast.parse(path.read_text("utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{alias.name}" for alias in node.names)
    return out


def _with_parents(module: str) -> list[str]:
    # importing a.b.c runs a/__init__.py and a/b/__init__.py first
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@cache
def import_closure(entry: str, root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> tuple[Path, ...]:
    """Every file of ours (in `packages` under `root`) that importing `entry` can run, sorted."""
    seen: dict[str, Path] = {}
    todo = [entry]
    while todo:
        name = todo.pop()
        for mod in _with_parents(name):
            if mod in seen:
                continue
            path = module_file(mod, root, packages)
            if path is None:
                continue
            seen[mod] = path
            todo.extend(_imported_modules(path, mod))
    return tuple(sorted(set(seen.values())))


def stage_closure(entry: str, workload: str | None = None, root: Path = ROOT) -> tuple[Path, ...]:
    """The files a stage runs: `entry`'s closure and, for a stage of `workload`, its module's
    (a workload defined outside components/ counts its own package too)."""
    files = set(import_closure(entry, root))
    if workload is not None:
        from components.workloads import module_of

        module = module_of(workload)
        packages = tuple(dict.fromkeys((*PACKAGES, module.split(".", 1)[0])))
        files.update(import_closure(module, root, packages))
    return tuple(sorted(files))


def stage_code_files(entry: str, workload: str | None = None, root: Path = ROOT) -> list[str]:
    """The closure as repository-relative POSIX paths, leaving out empty `__init__.py` files
    (nothing runs in them; listing them in dvc.yaml would only be noise)."""
    return [p.relative_to(root).as_posix() for p in stage_closure(entry, workload, root)
            if not (p.name == "__init__.py" and not p.read_text("utf-8").strip())]


def code_fingerprint(entry: str, workload: str | None = None, root: Path = ROOT) -> str:
    """A short sha256 of the path and bytes of every file a stage runs (`stage_closure`)."""
    digest = hashlib.sha256()
    for path in stage_closure(entry, workload, root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]
