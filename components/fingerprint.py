"""What code a stage runs, and a fingerprint of it.

A stage's code is the import closure of its entry module and of the workload modules it runs,
inside this repository's own packages (`components/`, `pipelines/`) and the workload's, found
by reading the source (every `import`, at module level or inside functions, so code a Ray
worker imports later counts too). The stages reach a workload through the table in
`components.workloads`, by name, so its code is added explicitly: the module that defines it,
of which only the module-level imports count (its methods are each stage's way in, each
importing its own modules lazily), and the modules it declares the stage runs
(`Workload.stage_modules`), whole. Editing a workload's model reruns the stages that run the
model, not those that only read its data. Two uses:

- the fingerprint goes into every key that decides "resume or start anew" (run store
  paths, Ray run names, Tune experiments and done markers, MLflow run keys), so a code
  change is a new run, never a resumed old one;
- `tests/unit/test_stage_deps.py` checks that `dvc.yaml` lists every file of each stage's
  closure as a dependency, so DVC sees the same change.
"""

from __future__ import annotations

import ast
import hashlib
from dataclasses import dataclass
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


def _module_level(tree: ast.AST) -> list[ast.AST]:
    """The nodes that run when a module is imported: all but function bodies."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        todo.extend(n for n in ast.iter_child_nodes(node)
                    if not isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))
    return out


def imported_modules(path: Path, module: str, module_level_only: bool = False) -> frozenset[str]:
    """Dotted names this file imports (absolute and relative), with `from x import y` giving
    both `x` and `x.y` (y may be a submodule); inside functions too unless `module_level_only`.
    Parsed once per version of the file (register walks the closure twice: 0.1 s of its 2.6 s)."""
    st = path.stat()
    return _imported_modules(str(path), st.st_mtime_ns, st.st_size, module, module_level_only)


@cache
def _imported_modules(path_s: str, _mtime_ns: int, _size: int, module: str, module_level_only: bool
                      ) -> frozenset[str]:
    path = Path(path_s)
    tree = ast.parse(path.read_text("utf-8"), path_s)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in (_module_level(tree) if module_level_only else ast.walk(tree)):
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
    return frozenset(out)


def _with_parents(module: str) -> list[str]:
    # importing a.b.c runs a/__init__.py and a/b/__init__.py first
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@cache
def import_closure(entry: str, root: Path = ROOT, packages: tuple[str, ...] = PACKAGES,
                   shallow: tuple[str, ...] = ()) -> tuple[Path, ...]:
    """Every file of ours (in `packages` under `root`) that importing `entry` can run, sorted;
    of the `shallow` modules only the module-level imports are followed."""
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
            todo.extend(imported_modules(path, mod, module_level_only=mod in shallow))
    return tuple(sorted(set(seen.values())))


@dataclass(frozen=True)
class WorkloadCode:
    """A workload's code in one stage: `module` defines the workload (its module-level imports
    count), `runs` are its modules the stage runs (their whole closures count)."""

    module: str
    runs: tuple[str, ...] = ()
    shallow: tuple[str, ...] = ()  # more modules of which only module-level imports count (the class's bases)

    @property
    def packages(self) -> tuple[str, ...]:
        """Ours, and the workload's own top-level package (a workload defined elsewhere)."""
        return tuple(dict.fromkeys((*PACKAGES, self.module.split(".", 1)[0])))


def stage_closure(entry: str, workload: WorkloadCode | None = None, root: Path = ROOT) -> tuple[Path, ...]:
    """The files a stage runs: `entry`'s closure and, for a stage of a workload, that
    workload's code in the stage (`WorkloadCode`)."""
    files = set(import_closure(entry, root))
    if workload is not None:
        for module in (workload.module, *workload.runs):
            files.update(import_closure(module, root, workload.packages, (workload.module, *workload.shallow)))
    return tuple(sorted(files))


def stage_code_files(entry: str, workload: WorkloadCode | None = None, root: Path = ROOT) -> list[str]:
    """The closure as repository-relative POSIX paths, leaving out empty `__init__.py` files
    (nothing runs in them; listing them in dvc.yaml would only be noise)."""
    return [p.relative_to(root).as_posix() for p in stage_closure(entry, workload, root)
            if not (p.name == "__init__.py" and not p.read_text("utf-8").strip())]


def code_fingerprint(entry: str, workload: WorkloadCode | None = None, root: Path = ROOT) -> str:
    """A short sha256 of the path and bytes of every file a stage runs (`stage_closure`)."""
    digest = hashlib.sha256()
    for path in stage_closure(entry, workload, root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]
