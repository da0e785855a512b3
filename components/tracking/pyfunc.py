"""Logging a workload's model as a self-contained MLflow pyfunc: the model file is an
artifact and the `components` package travels as model code, so `mlflow.pyfunc.load_model`
works in a fresh process and `mlflow models serve` can serve it."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow.pyfunc

from components.fingerprint import PACKAGES, ROOT, import_closure, imported_modules

CHECKPOINT_ARTIFACT = "checkpoint"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def imported_packages(entry: str) -> set[str]:
    """Top-level third-party modules that importing `entry` can import: every `import` in its
    closure inside components/ (module level or in a function: a lazy import still runs)."""
    out = set()
    for path in import_closure(entry):
        for mod in imported_modules(path, _module_name(path)):
            top = mod.split(".")[0]
            if top and top not in PACKAGES and top not in sys.stdlib_module_names:
                out.add(top)
    return out


# Import names that differ from their distribution's (checked against its files, like any other).
_DIST_NAMES = {"PIL": "pillow", "sklearn": "scikit-learn", "yaml": "PyYAML", "google": "protobuf"}


def _provides(dist: metadata.Distribution, top: str) -> bool:
    # RECORD's text, not `dist.files`: torch's 12,000 entries as path objects took 0.5 s
    record = "\n" + (dist.read_text("RECORD") or "")
    return f"\n{top}/" in record or f"\n{top}.py," in record


def distribution_of(top: str) -> str:
    """The installed distribution that provides top-level module `top`. One named like it (or
    in `_DIST_NAMES`) whose files hold the module: reading one distribution's file list takes
    milliseconds, where mapping every installed one (`packages_distributions`) took 0.5-1 s."""
    for name in (_DIST_NAMES.get(top), top, top.replace("_", "-")):
        if not name:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if _provides(dist, top):
            return dist.metadata["Name"]
    # anything else (a namespace package, a distribution named unlike its module): the full map
    # (mlflow's modules belong to mlflow, mlflow-skinny and mlflow-tracing: the one named like it)
    dists = metadata.packages_distributions().get(top)
    if not dists:
        raise RuntimeError(f"'{top}' is imported, but no installed distribution provides it")
    return next((d for d in dists if d.lower().replace("_", "-") == top.lower()), sorted(dists)[0])


def _seed_mlflow_package_map(owners: dict[str, str]) -> None:
    """MLflow checks the requirements it is given against the installed versions, and to do so
    maps every installed distribution (1 s here) to look up these few. They are pinned to the
    installed versions by construction, so hand it the map of them we already hold. MLflow's
    cache is private: if it moves, MLflow builds its own map as before."""
    from mlflow.utils import requirements_utils as ru

    if getattr(ru, "_MODULES_TO_PACKAGES", "absent") is None:
        ru._MODULES_TO_PACKAGES = {top: [dist] for top, dist in owners.items()} | dict(
            getattr(ru, "MLFLOW_MODULES_TO_PACKAGES", {}))


def pip_requirements(entry: str) -> list[str]:
    """What the model code at `entry` needs, pinned to the versions installed here: the
    distribution of each package its import closure names (so the served model imports
    exactly what was tested, and an import added later is listed without an edit here)."""
    try:
        owners = {top: distribution_of(top) for top in imported_packages(entry)}
    except RuntimeError as err:
        raise RuntimeError(f"{entry}: {err}") from None
    _seed_mlflow_package_map(owners)
    return sorted({f"{d}=={metadata.version(d)}" for d in owners.values()}, key=str.lower)


def _save_pyfunc(validate_serving_input: bool = True, **kwargs: Any) -> None:
    mlflow.pyfunc.save_model(**kwargs)


# mlflow.pyfunc as a flavor for `Model.log`, taking the `validate_serving_input` switch that
# `mlflow.pyfunc.log_model` does not pass on: MLflow validates an input example by loading the
# model and predicting in this process, which imports torch (1.5 s of a 4.7 s register). Every
# workload's logged model is loaded and served in a fresh process by the end-to-end tests instead.
_PYFUNC_FLAVOR = SimpleNamespace(__name__="mlflow.pyfunc", save_model=_save_pyfunc)


def log_pyfunc(python_model: mlflow.pyfunc.PythonModel, model_file: str | Path, signature: Any,
               input_example: Any, name: str = "model", code: tuple[str, ...] = ()):
    """Log `python_model` (which loads `context.artifacts[CHECKPOINT_ARTIFACT]`) into the active
    run, with its input example saved but not run; returns MLflow's ModelInfo. `code`: more
    folders or files the model imports (the user's own model module), shipped beside ours."""
    from mlflow.models import Model

    import components

    return Model.log(
        artifact_path=None, name=name, flavor=_PYFUNC_FLAVOR, python_model=python_model,
        artifacts={CHECKPOINT_ARTIFACT: str(model_file)}, code_paths=[str(Path(components.__file__).parent), *code],
        signature=signature, input_example=input_example, validate_serving_input=False,
        pip_requirements=pip_requirements(type(python_model).__module__))

