"""The workload boundary: every workload in the table implements the interface, and nothing
outside its own package branches on a workload's name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from components import workloads
from components.config import WorkloadParams
from components.workloads.base import Workload

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", workloads.names())
def test_every_workload_implements_the_interface(name):
    w = workloads.get(name)
    assert isinstance(w, Workload) and w.name == name
    assert issubclass(w.params, WorkloadParams)
    assert callable(w.worker_loop())  # its loop module imports
    for hook in ("prepare", "normalize", "training_data", "publish", "evaluate", "registration"):
        assert getattr(type(w), hook) is not getattr(Workload, hook), f"{name} does not implement {hook}"
    assert {"epochs", "steps_per_epoch", "num_workers", "seed"} <= set(w.train_schema.model_fields)
    # dvc.yaml hands `<workload>.prepare.source` to tune and train
    assert "source" in w.params.model_fields["prepare"].annotation.model_fields
    assert "epoch" in w.live_metrics and "val_loss" in w.live_metrics


def test_no_code_outside_a_workload_names_one():
    """A string equal to a workload's name in pipelines/ or components/ (outside the table and
    the workloads' own packages) is a branch on it, or a default that picks one."""
    names = set(workloads.names())
    allowed = {"components/workloads/__init__.py", "components/cli/lr_find.py"}  # the table; a char-LM tool
    found = []
    for path in sorted([*REPO.glob("pipelines/*.py"), *REPO.glob("components/**/*.py")]):
        rel = path.relative_to(REPO).as_posix()
        if rel in allowed or any(rel.startswith(f"components/workloads/{n}/") for n in names):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert not found, "workload names outside the workload table:\n" + "\n".join(found)


def test_a_workload_can_be_added_from_the_environment(monkeypatch):
    monkeypatch.setenv(workloads.PLUGINS_ENV, "regression=tests.workloads.regression:WORKLOAD")
    assert workloads.names()[-1] == "regression"
    assert workloads.get("regression").name == "regression"
    assert workloads.module_of("regression") == "tests.workloads.regression"
    monkeypatch.setenv(workloads.PLUGINS_ENV, "regression:tests.workloads.regression")
    with pytest.raises(ValueError, match="is not name=module:attribute"):
        workloads.table()


def test_stages_hold_no_workload_specific_keys():
    """A train key, metric or config key only some workloads have (`max_tokens`, `val_accuracy`,
    `samples_padded`, `arch`) is the workload's to name: a stage reads it through the workload."""
    ws = [workloads.get(name) for name in workloads.names()]
    keys = [set(w.train_schema.model_fields) | set(w.live_metrics) | set(w.train_metrics) for w in ws]
    specific = (set.union(*keys) - set.intersection(*keys)) | {"arch"}
    assert {"max_tokens", "val_accuracy", "samples_padded"} <= specific
    found = []
    for path in sorted(REPO.glob("pipelines/*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in specific:
                found.append(f"{path.relative_to(REPO).as_posix()}:{node.lineno}: {node.value!r}")
    assert not found, "workload keys in stage files:\n" + "\n".join(found)
