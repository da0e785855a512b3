"""The workloads the pipeline trains: the one table that names them.

A workload is one package (or module) exposing `WORKLOAD`, a `components.workloads.base.Workload`:
its params schema, data staging, model, worker loop, evaluation, model file and pyfunc. The
stages call through it and never branch on a workload's name. Adding one is: a package and a
line in the project's `pyproject.toml` (`[tool.trainyard.workloads]`, `name = "package.module:WORKLOAD"`;
`python -m components.cli.new_workload NAME` writes both), or for a one-off run the environment
(`TRAINYARD_WORKLOADS=name=package.module:WORKLOAD,...`); then `python -m components.cli.params_doc`
and `python -m components.cli.stage_deps` write its `params.yaml` section and its `dvc.yaml`
entries from the table.
"""

from __future__ import annotations

import importlib
import os
import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from components.fingerprint import ROOT, WorkloadCode

if TYPE_CHECKING:
    from components.workloads.base import Workload

BUILTIN = {
    "char_lm": "components.workloads.char_lm:WORKLOAD",
    "image_classifier": "components.workloads.image_classifier:WORKLOAD",
    "text_classifier": "components.workloads.text_classifier:WORKLOAD",
}
PLUGINS_ENV = "TRAINYARD_WORKLOADS"


PROJECT_TABLE = "pyproject.toml"  # [tool.trainyard.workloads]


def _check(name: str, target: str, where: str) -> None:
    if not name.isidentifier() or not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", target):
        raise ValueError(f"{where}: {name} = {target!r} is not name = \"package.module:ATTRIBUTE\"")


def project_workloads(root: Path = ROOT) -> dict[str, str]:
    """The project's own workloads: `[tool.trainyard.workloads]` of its pyproject.toml."""
    path = root / PROJECT_TABLE
    if not path.is_file():
        return {}
    import tomllib

    try:
        found = tomllib.loads(path.read_text("utf-8")).get("tool", {}).get("trainyard", {}).get("workloads", {})
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path.name}: not valid TOML ({err})") from None
    for name, target in found.items():
        _check(name, str(target), f"{path.name} [tool.trainyard.workloads]")
    return {k: str(v) for k, v in found.items()}


def table() -> dict[str, str]:
    """name -> `module:attribute`: the built-in workloads, the project's (pyproject.toml), then those
    `TRAINYARD_WORKLOADS` adds."""
    out = dict(BUILTIN) | project_workloads()
    for item in filter(None, (s.strip() for s in os.environ.get(PLUGINS_ENV, "").split(","))):
        name, sep, target = item.partition("=")
        if not sep or ":" not in target or not name.isidentifier():
            raise ValueError(f"{PLUGINS_ENV}: {item!r} is not name=module:attribute")
        out[name] = target
    return out


def names() -> tuple[str, ...]:
    """Every workload's name, in table order."""
    return tuple(table())


def module_of(name: str) -> str:
    """The dotted module that defines a workload (its code is part of its stages' fingerprint)."""
    return table()[name].partition(":")[0]


@cache
def _load(target: str) -> Workload:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def get(name: str) -> Workload:
    """The workload called `name`; KeyError naming the known ones otherwise."""
    t = table()
    if name not in t:
        raise KeyError(f"unknown workload {name!r} (known: {', '.join(t)})")
    return _load(t[name])


def stage_code(name: str, stage: str) -> WorkloadCode:
    """Workload `name`'s code in `stage`: the module that defines it, the modules of its own it
    declares the stage runs (`Workload.stage_modules`, named relative to its package) and those
    its base class declares (`Workload.base_stage_modules`, absolute). Of the modules that define
    its class and its bases, only the module-level imports count: each method imports its own."""
    import sys

    from components.workloads.base import Workload

    module, w = module_of(name), get(name)
    spec = sys.modules[module].__spec__
    package = module if spec.submodule_search_locations else module.rpartition(".")[0]
    own = tuple(f"{package}.{m}" if package else m for m in w.stage_modules.get(stage, ()))
    bases = tuple(dict.fromkeys(c.__module__ for c in type(w).__mro__ if issubclass(c, Workload)))
    return WorkloadCode(module, own + tuple(w.base_stage_modules.get(stage, ())), bases)
