"""The workloads the pipeline trains: the one table that names them.

A workload is one package (or module) exposing `WORKLOAD`, a `components.workloads.base.Workload`:
its params schema, data staging, model, worker loop, evaluation, model file and pyfunc. The
stages call through it and never branch on a workload's name. Adding one is: a package here
and a line in `BUILTIN` (or, for a workload that lives elsewhere, `TRAINYARD_WORKLOADS`:
`name=package.module:WORKLOAD,...`), then `python -m components.cli.params_doc` and
`python -m components.cli.stage_deps` to write its `params.yaml` section and its `dvc.yaml`
entries from the table.
"""

from __future__ import annotations

import importlib
import os
from functools import cache
from typing import TYPE_CHECKING

from components.fingerprint import WorkloadCode

if TYPE_CHECKING:
    from components.workloads.base import Workload

BUILTIN = {
    "char_lm": "components.workloads.char_lm:WORKLOAD",
    "image_classifier": "components.workloads.image_classifier:WORKLOAD",
    "text_classifier": "components.workloads.text_classifier:WORKLOAD",
}
PLUGINS_ENV = "TRAINYARD_WORKLOADS"


def table() -> dict[str, str]:
    """name -> `module:attribute`: the built-in workloads, then those `TRAINYARD_WORKLOADS` adds."""
    out = dict(BUILTIN)
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
    """Workload `name`'s code in `stage`: the module that defines it and the modules of its own
    it declares the stage runs (`Workload.stage_modules`, named relative to its package)."""
    import sys

    module, w = module_of(name), get(name)
    spec = sys.modules[module].__spec__
    package = module if spec.submodule_search_locations else module.rpartition(".")[0]
    return WorkloadCode(module, tuple(f"{package}.{m}" if package else m for m in w.stage_modules.get(stage, ())))
