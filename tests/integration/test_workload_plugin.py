"""The workload boundary holds: a workload defined in the test tree (linear regression on
synthetic data), outside components/, runs through DVC, Ray Train, Ray Tune and the MLflow
registry with no stage file touched: `TRAINYARD_WORKLOADS` names it, its params section is
added, and `components.cli.stage_deps` writes its dvc.yaml items and code deps."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tests.integration.conftest import REPO, make_project, project_env, run
from tests.workloads.regression.params import RegressionParams

pytestmark = [pytest.mark.slow, pytest.mark.plugin]
PLUGIN = "regression=tests.workloads.regression:WORKLOAD"


@pytest.fixture(scope="module")
def project(tmp_path_factory, shared_ray):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["regression"] = RegressionParams().model_dump(by_alias=True, mode="json")
    dest = make_project(tmp_path_factory.mktemp("plugin"), params)
    # what a user adds for a new workload: one package (here, in the test tree), one params
    # section, the table's entry in the environment; dvc.yaml is written from the table
    (dest / "inputs/regression").mkdir(parents=True)
    (dest / "inputs/regression/README.md").write_text("synthetic data: nothing to put here\n")
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
    assert "tests/workloads/regression/loop.py" in items["train"]["code"]
    assert "tests/workloads/regression/loop.py" not in items["prepare"]["code"]


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


def test_the_registry_holds_it_as_champion_and_it_serves(project):
    code = ("import json, mlflow, numpy as np, pyarrow.parquet as pq\n"
            "from mlflow import MlflowClient\n"
            "mlflow.set_tracking_uri('sqlite:///mlflow.db')\n"
            "c = MlflowClient()\n"
            "v = c.get_model_version_by_alias('regression-test', 'champion')\n"
            "exp = c.get_experiment_by_name('regression')\n"
            "runs = c.search_runs([exp.experiment_id])\n"
            "t = pq.read_table('data/regression/normalized/test').to_pandas()\n"
            "pred = mlflow.pyfunc.load_model('models:/regression-test@champion').predict(t.drop(columns='y').values)\n"
            "print(json.dumps({'version': str(v.version), 'stages': sorted(r.data.tags.get('trainyard.stage', 'trial')"
            " for r in runs), 'mse': float(np.mean((pred - t['y'].values) ** 2))}))\n")
    out = json.loads(run(["python", "-c", code], project).stdout.strip().splitlines()[-1])
    assert out["version"] == "1"
    assert out["stages"] == ["train", "trial", "trial", "tune"]  # train, the sweep and its two trials
    metrics = json.loads((project / "metrics/regression/eval.json").read_text())
    assert out["mse"] == pytest.approx(metrics["test_loss"], rel=1e-4)
