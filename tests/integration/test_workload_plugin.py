"""The workload boundary holds: a workload defined in the test tree (linear regression on a
CSV table, a model and its params on `TabularWorkload`), outside components/, runs through
DVC, Ray Train, Ray Tune and the MLflow registry with no stage file touched:
`TRAINYARD_WORKLOADS` names it, its params section is added, and `components.cli.stage_deps`
writes its dvc.yaml items and code deps. Its registered model serves from elsewhere."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tests.integration.conftest import (
    REPO,
    make_project,
    project_env,
    requirements_only_env,
    run,
    serve_and_ask,
)
from tests.workloads.regression import WORKLOAD, write_rows

pytestmark = [pytest.mark.slow, pytest.mark.plugin]
PLUGIN = "regression=tests.workloads.regression:WORKLOAD"


@pytest.fixture(scope="module")
def project(tmp_path_factory, shared_ray):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["regression"] = WORKLOAD.params().model_dump(by_alias=True, mode="json")
    dest = make_project(tmp_path_factory.mktemp("plugin"), params)
    # what a user adds for a new workload: one package (here, in the test tree), one params
    # section, its table, the table's entry in the environment; dvc.yaml is written from the table
    write_rows(dest / "inputs/regression/rows.csv")
    run(["python", "-m", "components.cli.stage_deps"], dest, env=project_env() | {"TRAINYARD_WORKLOADS": PLUGIN})
    env = project_env(shared_ray) | {"TRAINYARD_WORKLOADS": PLUGIN}
    proc = run(["dvc", "repro", "register@regression"], dest, timeout=900, env=env)
    (dest / "repro.log").write_text(proc.stdout + proc.stderr)
    return dest


def test_no_stage_file_was_touched(project):
    changed = subprocess.run(["git", "status", "--porcelain", "--", "pipelines", "components", "tests"],
                             cwd=project, capture_output=True, text=True, check=True).stdout.split("\n")
    assert [line for line in changed if line.strip()] == []
    # its code, outside components/, is what its stages depend on (DVC sees an edit to it)
    items = {stage: body["foreach"]["regression"] for stage, body in
             yaml.safe_load((project / "dvc.yaml").read_text())["stages"].items() if "regression" in body["foreach"]}
    assert "tests/workloads/regression/__init__.py" in items["train"]["code"]
    # the base's loop is code of the stages that train, not of those that stage the data
    assert "components/workloads/tabular/loop.py" in items["train"]["code"]
    assert "components/workloads/tabular/loop.py" not in items["prepare"]["code"]


def test_every_stage_ran_and_the_model_learned(project):
    log = (project / "repro.log").read_text()
    for stage in ("prepare", "normalize", "trial_params", "tune", "train", "evaluate", "register"):
        assert f"Running stage '{stage}@regression'" in log, stage
    tuned = json.loads((project / "tune/regression/best_params.json").read_text())
    assert tuned["num_trials"] == 2 and set(tuned["params"]) == {"lr"}
    import pyarrow.parquet as pq

    y = pq.read_table(project / "data/regression/normalized/val").column("y").to_numpy()
    metrics = json.loads((project / "metrics/regression/eval.json").read_text())
    # far below predicting the mean: the workers learned the linear map
    assert metrics["val_loss"] < 0.05 * y.var(), (metrics, y.var())
    train = json.loads((project / "metrics/regression/train.json").read_text())
    assert train["num_workers"] == 2 and train["epochs"] == 3


def test_the_registry_holds_it_as_champion_and_it_serves_from_elsewhere(project, tmp_path):
    code = ("import json, mlflow, numpy as np, pandas as pd\n"
            "from mlflow import MlflowClient\n"
            "c = MlflowClient()\n"
            "v = c.get_model_version_by_alias('regression-test', 'champion')\n"
            "exp = c.get_experiment_by_name('regression')\n"
            "runs = c.search_runs([exp.experiment_id])\n"
            "rows = pd.read_csv('rows.csv')\n"
            "pred = mlflow.pyfunc.load_model('models:/regression-test@champion').predict(rows.drop(columns='y'))\n"
            "print(json.dumps({'version': str(v.version), 'stages': sorted(r.data.tags.get('trainyard.stage', 'trial')"
            " for r in runs), 'mse': float(np.mean((pred['prediction'].values - rows['y'].values) ** 2)),"
            " 'var': float(rows['y'].var())}))\n")
    # a process outside the project: the workload's package comes with the model, not from here
    (tmp_path / "rows.csv").write_bytes((project / "inputs/regression/rows.csv").read_bytes())
    env = project_env() | {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    out = json.loads(run(["python", "-c", code], tmp_path, env=env).stdout.strip().splitlines()[-1])
    assert out["version"] == "1"
    assert out["stages"] == ["train", "trial", "trial", "tune"]  # train, the sweep and its two trials
    assert out["mse"] < 0.05 * out["var"], out  # raw feature columns in, the learned map out


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory, shared_ray):
    """A fresh project in which the README's commands for a workload of one's own ran as typed:
    `new_workload houses`, its own test, `dvc repro register@houses`."""
    from tests.integration.test_readme import readme_blocks

    dest = make_project(tmp_path_factory.mktemp("scaffold"), yaml.safe_load((REPO / "params.yaml").read_text()))
    lines = [ln for ln in readme_blocks("### A workload of your own", "bash").splitlines() if ln.strip()]
    assert [ln.split()[0] for ln in lines] == ["python", "pytest", "dvc"]
    log = ""
    for line in lines:
        p = run(["bash", "-c", f"set -e\n{line}"], dest, timeout=900, env=project_env(shared_ray))
        log += p.stdout + p.stderr
    (dest / "repro.log").write_text(log)
    return dest


def test_a_scaffolded_workload_passes_its_own_test_and_runs_every_stage(scaffolded):
    log = (scaffolded / "repro.log").read_text()
    assert "1 passed" in log
    for stage in ("prepare", "normalize", "trial_params", "tune", "train", "evaluate", "register"):
        assert f"Running stage '{stage}@houses'" in log, stage
    metrics = json.loads((scaffolded / "metrics/houses/eval.json").read_text())
    assert metrics["val_loss"] < 0.5 * metrics["baseline_mean_val_loss"], metrics
    assert json.loads((scaffolded / "registry/houses/registered.json").read_text())["aliases"] == ["challenger",
                                                                                                   "champion"]
    assert "houses:" in (scaffolded / "params.yaml").read_text()


def test_a_scaffolded_workload_serves_from_an_environment_without_the_project(scaffolded, tmp_path):
    import pandas as pd

    env = requirements_only_env(tmp_path / "venv")
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{scaffolded / 'mlflow.db'}"
    probe = run(["python", "-c", "import components"], tmp_path, env=env, check=False)
    assert probe.returncode != 0 and "No module named 'components'" in probe.stderr  # only what the model ships
    rows = pd.read_csv(scaffolded / "inputs/houses/rows.csv").head(100)
    body = {"dataframe_split": rows.drop(columns="y").to_dict(orient="split", index=False)}
    reply = serve_and_ask("models:/houses@champion", body, tmp_path, env)
    pred = [p["prediction"] for p in reply["predictions"]]
    mse = sum((a - b) ** 2 for a, b in zip(pred, rows["y"], strict=True)) / len(pred)
    assert mse < 0.5 * rows["y"].var(), (mse, rows["y"].var())


def test_an_edit_to_a_scaffolded_model_retrains_and_leaves_its_data_stages(scaffolded):
    env = project_env()
    assert "up to date" in run(["dvc", "status", "train@houses", "prepare@houses"], scaffolded, env=env).stdout
    model = scaffolded / "workloads/houses/model.py"
    model.write_text(model.read_text().replace("nn.Linear(h, h), nn.ReLU(), ", ""))
    stale = run(["dvc", "status"], scaffolded, env=env).stdout
    for stage in ("tune", "train", "evaluate", "register"):
        assert f"{stage}@houses:" in stale, stale
    assert "prepare@houses:" not in stale and "normalize@houses:" not in stale, stale
