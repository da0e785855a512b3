"""Write a new workload that runs out of the box: a package with a model on a table
(`components.workloads.tabular`), a sample table, its test, its line in pyproject.toml, its
params.yaml section and its dvc.yaml items.

    python -m components.cli.new_workload houses                      # workloads/houses/
    python -m components.cli.new_workload churn --in ml --task classification

Then `dvc repro register@houses` prepares, sweeps, trains, evaluates and registers it, and
`pytest tests/test_workload_houses.py` trains it in one process on the sample table. Point
`houses.prepare.source` in params.yaml at your own table (and `target` at its column) and edit
the model in `workloads/houses/model.py`.
"""

from __future__ import annotations

import argparse
import keyword
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from components.data.parquet import atomic_path
from components.fingerprint import ROOT
from components.workloads import PROJECT_TABLE, table

PACKAGE = '''"""{name}: a model on a table, on `components.workloads.tabular` (prepare, normalize, sweep, DDP
training, evaluation against the baseline and registration come from the base). Point
`{name}.prepare.source` in params.yaml at your table and `target` at the column to predict;
the model is in model.py."""

from __future__ import annotations

from typing import Any

from components.workloads.tabular import TabularWorkload, tabular_params

MODEL_STAGES = ("tune", "train", "evaluate", "register")


class {cls}(TabularWorkload):
    name = "{name}"
    params = tabular_params(
        "{name}: {what} on a table.", model_name="{model_name}", task="{task}",
        source="inputs/{name}/rows.csv", target="{target}",
        tune={{"num_samples": 4, "epochs": 3, "space": {{
            "lr": {{"type": "loguniform", "low": 0.001, "high": 0.03}},
            "dropout": {{"type": "uniform", "low": 0.0, "high": 0.3}}}}}},
        train={{"epochs": 20, "hidden": 32, "lr": 0.01}})
    # model.py is code of the stages that build the model only: an edit to it retrains, and
    # leaves prepare and normalize as they are (it is imported in `model`, not at the top)
    stage_modules = {{stage: ("model",) for stage in MODEL_STAGES}}

    def model(self, n_features: int, n_outputs: int, train: dict[str, Any]) -> Any:
        from .model import build

        return build(n_features, n_outputs, train)


WORKLOAD = {cls}()
'''

MODEL = '''"""{name}'s model: (N, n_features) standardised features -> (N, n_outputs): {outputs}."""

from __future__ import annotations

from typing import Any

from torch import nn


def build(n_features: int, n_outputs: int, train: dict[str, Any]) -> nn.Module:
    """A two-layer MLP; `train` holds the run's train params (`hidden`, `dropout`, your own keys)."""
    h = train["hidden"]
    return nn.Sequential(nn.Linear(n_features, h), nn.ReLU(), nn.Dropout(train["dropout"]),
                         nn.Linear(h, h), nn.ReLU(), nn.Linear(h, n_outputs))
'''

TEST = '''"""{name}: its stages in one process on its sample table (no Ray, no MLflow): the model it
trains beats the baseline that register holds it to."""

from __future__ import annotations

from pathlib import Path

from pipelines.inline import fit_and_score

ROOT = Path(__file__).resolve().parents[1]


def test_{name}_trains_and_beats_its_baseline(tmp_path, monkeypatch):
    from {module} import WORKLOAD

    monkeypatch.chdir(ROOT)  # the sample table's path is the project's
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # one worker, in this process
    p = WORKLOAD.params()
    p = p.model_copy(update={{"train": p.train.model_copy(update={{"num_workers": 1}})}})
    metrics = fit_and_score("{name}", p, tmp_path)
    {check}
'''


def sample_rows(task: str, n: int = 800, seed: int = 0) -> str:
    """A small table to start from: four features, and a target that depends on them nonlinearly."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    score = np.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2] + 0.5 * x[:, 3]
    head = "x0,x1,x2,x3," + ("y" if task == "regression" else "label")
    if task == "regression":
        rows = [f"{a:.5f},{b:.5f},{c:.5f},{d:.5f},{t:.5f}" for (a, b, c, d), t in
                zip(x.tolist(), (score + rng.normal(scale=0.1, size=n)).tolist(), strict=True)]
    else:
        labels = np.where(score < -0.5, "low", np.where(score < 0.5, "mid", "high"))
        rows = [f"{a:.5f},{b:.5f},{c:.5f},{d:.5f},{t}" for (a, b, c, d), t in zip(x.tolist(), labels, strict=True)]
    return "\n".join([head, *rows]) + "\n"


def register_in_pyproject(text: str, name: str, target: str) -> str:
    """pyproject.toml's text with `name = "target"` in `[tool.trainyard.workloads]` (added if missing)."""
    line = f'{name} = "{target}"\n'
    header = re.search(r"^\[tool\.trainyard\.workloads\][ \t]*\n", text, re.M)
    if header:
        return text[:header.end()] + line + text[header.end():]
    return text.rstrip("\n") + ("\n\n" if text.strip() else "") + "[tool.trainyard.workloads]\n" + line


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def create(name: str, where: str = "workloads", task: str = "regression", root: Path = ROOT) -> list[Path]:
    """Write the workload `name` under `root/where/name`; the files written. ValueError naming
    what is wrong (a bad name, one taken, a folder that exists) before anything is written."""
    if not name.isidentifier() or keyword.iskeyword(name) or name != name.lower():
        raise ValueError(f"workload name {name!r}: lower-case letters, digits and '_', not starting with a digit")
    parts = Path(where).parts
    if not parts or any(not p.isidentifier() or keyword.iskeyword(p) for p in parts):
        raise ValueError(f"--in {where!r}: a folder of the project whose path parts are Python names "
                         "(it becomes the package path)")
    if name in table():
        raise ValueError(f"workload name {name!r} is taken ({table()[name]})")
    pkg = root.joinpath(*parts, name)
    if pkg.exists():
        raise ValueError(f"{pkg.relative_to(root)} exists already")
    test = root / "tests" / f"test_workload_{name}.py"
    if test.exists():
        raise ValueError(f"{test.relative_to(root)} exists already")
    module = ".".join([*parts, name])
    cls = "".join(w.capitalize() for w in name.split("_")) or "Workload"
    classification = task == "classification"
    written = []
    for i in range(1, len(parts) + 1):  # the packages above it
        init = root.joinpath(*parts[:i], "__init__.py")
        if not init.exists():
            _write(init, "")
            written.append(init)
    files = {
        pkg / "__init__.py": PACKAGE.format(
            name=name, cls=cls, task=task, model_name=name.replace("_", "-"),
            target="label" if classification else "y", what="a classifier" if classification else "a regression"),
        pkg / "model.py": MODEL.format(name=name, outputs="a logit per class" if classification else "one value per row"),
        root / "inputs" / name / "rows.csv": sample_rows(task),
        test: TEST.format(name=name, module=module, check=(
            'assert metrics["accuracy"] > metrics["baseline_majority_val_accuracy"], metrics' if classification else
            'assert metrics["val_loss"] < 0.5 * metrics["baseline_mean_val_loss"], metrics')),
    }
    for path, text in files.items():
        _write(path, text)
        written.append(path)
    pyproject = root / PROJECT_TABLE
    _write(pyproject, register_in_pyproject(pyproject.read_text() if pyproject.exists() else "", name,
                                            f"{module}:WORKLOAD"))
    written.append(pyproject)
    return written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help="the workload's name: its params.yaml section, dvc.yaml items, MLflow experiment")
    ap.add_argument("--in", dest="where", default="workloads", help="the project folder the package goes in "
                    "(default: workloads)")
    ap.add_argument("--task", choices=("regression", "classification"), default="regression")
    a = ap.parse_args(argv)
    try:
        written = create(a.name, a.where, a.task)
    except ValueError as err:
        sys.exit(f"error: {err}")
    for path in written:
        print(f"[new_workload] wrote {path.relative_to(ROOT)}")
    for tool in ("params_doc", "stage_deps"):  # its params.yaml section and dvc.yaml items, from the table
        done = subprocess.run([sys.executable, "-m", f"components.cli.{tool}"], cwd=ROOT, capture_output=True,
                              text=True, check=False)
        if done.returncode:
            sys.exit(f"error: python -m components.cli.{tool} failed: {(done.stderr or done.stdout).strip()}")
        print(done.stdout.strip())
    print(f"[new_workload] {a.name} is ready: `pytest tests/test_workload_{a.name}.py` trains it here; "
          f"`dvc repro register@{a.name}` runs its pipeline; its table is inputs/{a.name}/rows.csv")


if __name__ == "__main__":
    main()
