"""Logging a workload's model as a self-contained MLflow pyfunc: the model file is an
artifact and the `components` package travels as model code, so `mlflow.pyfunc.load_model`
works in a fresh process and `mlflow models serve` can serve it."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from components.fingerprint import PACKAGES, ROOT, _imported_modules, import_closure

CHECKPOINT_ARTIFACT = "checkpoint"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def imported_packages(entry: str) -> set[str]:
    """Top-level third-party modules that importing `entry` can import: every `import` in its
    closure inside components/ (module level or in a function: a lazy import still runs)."""
    out = set()
    for path in import_closure(entry):
        for mod in _imported_modules(path, _module_name(path)):
            top = mod.split(".")[0]
            if top and top not in PACKAGES and top not in sys.stdlib_module_names:
                out.add(top)
    return out


def pip_requirements(entry: str) -> list[str]:
    """What the model code at `entry` needs, pinned to the versions installed here: the
    distribution of each package its import closure names (so the served model imports
    exactly what was tested, and an import added later is listed without an edit here)."""
    owners = metadata.packages_distributions()
    reqs = set()
    for top in imported_packages(entry):
        dists = owners.get(top)
        if not dists:
            raise RuntimeError(f"{entry} imports '{top}', which no installed distribution provides")
        # mlflow's modules belong to mlflow, mlflow-skinny and mlflow-tracing: take the one named like it
        dist = next((d for d in dists if d.lower().replace("_", "-") == top.lower()), sorted(dists)[0])
        reqs.add(f"{dist}=={metadata.version(dist)}")
    return sorted(reqs, key=str.lower)


def log_pyfunc(python_model: mlflow.pyfunc.PythonModel, model_file: str | Path, signature: Any,
               input_example: Any, name: str = "model"):
    """Log `python_model` (which loads `context.artifacts[CHECKPOINT_ARTIFACT]`) into the active
    run; returns MLflow's ModelInfo."""
    import components

    return mlflow.pyfunc.log_model(
        name=name, python_model=python_model, artifacts={CHECKPOINT_ARTIFACT: str(model_file)},
        code_paths=[str(Path(components.__file__).parent)], signature=signature, input_example=input_example,
        pip_requirements=pip_requirements(type(python_model).__module__))
