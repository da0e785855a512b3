"""A registered model lists every distribution its code imports: `mlflow models serve` with a
fresh environment installs exactly that list, so a missing one is a model that will not load."""

from __future__ import annotations

import re
import sys
from importlib import metadata

import pytest

from components import workloads
from components.fingerprint import import_closure
from components.tracking.pyfunc import pip_requirements

IMPORT = re.compile(r"^\s*(?:import\s+([A-Za-z_]\w*)|from\s+([A-Za-z_]\w*)[\w.]*\s+import\s)", re.M)


def _pyfunc_modules() -> list[str]:
    return [f"{workloads.module_of(n)}.pyfunc" for n in workloads.names()]


@pytest.mark.parametrize("entry", _pyfunc_modules())
def test_every_import_of_the_model_code_is_a_pinned_requirement(entry):
    # read each file of the closure with a plain pattern (not the AST walk the code uses)
    tops = {a or b for path in import_closure(entry) for a, b in IMPORT.findall(path.read_text("utf-8"))}
    third = {t for t in tops if t not in ("components", "pipelines", "__future__") and t not in sys.stdlib_module_names}
    owners = metadata.packages_distributions()
    listed = {r.split("==")[0].lower() for r in pip_requirements(entry)}
    for top in sorted(third):
        assert {d.lower() for d in owners[top]} & listed, f"{entry} imports {top}, not in {sorted(listed)}"
    assert all("==" in r for r in pip_requirements(entry))  # pinned to what was tested


def test_the_image_model_lists_ray_and_torchvision():
    listed = {r.split("==")[0] for r in pip_requirements("components.workloads.image_classifier.pyfunc")}
    assert {"ray", "torchvision", "torch", "mlflow"} <= listed


def test_the_quick_lookup_names_the_distributions_the_full_map_does():
    """`distribution_of` reads one distribution's file list; it must agree with the map of all."""
    from importlib import metadata

    from components.tracking.pyfunc import distribution_of, imported_packages

    full = metadata.packages_distributions()
    for top in sorted(imported_packages("components.workloads.image_classifier.pyfunc")):
        assert distribution_of(top).lower() in {d.lower() for d in full[top]}, top
