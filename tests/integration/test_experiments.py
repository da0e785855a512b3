"""`dvc exp run --queue` + `dvc queue start`: the experiment runs in a temporary workspace, yet
records into the project's MLflow and run store, tagged with its name and baseline commit, and
`dvc exp show` / `dvc metrics diff` / `dvc plots diff` read it as DVC users expect."""

from __future__ import annotations

import json
import re
import shutil
import sys
import textwrap
import time

import pytest
import yaml

from tests.integration.conftest import project_env, run

pytestmark = [pytest.mark.slow, pytest.mark.changes]
GIT = ["git", "-c", "user.email=ci@example.invalid", "-c", "user.name=ci"]


def test_a_queued_experiment_records_into_the_projects_mlflow_and_store(tiny_project, tmp_path):
    # a copy of the shared project with its results committed, the way a user starts experiments
    project = tmp_path / "exp"
    shutil.copytree(tiny_project, project, symlinks=True, ignore=shutil.ignore_patterns(".trainyard", ".venv"))
    run(["git", "add", "-A"], project)
    run([*GIT, "commit", "-q", "-m", "results"], project)
    base = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    # with dvc.lock committed, `trace` finds the versions built from a data path at that commit
    traced = run([sys.executable, "-m", "components.cli.registry", "trace", "--data",
                  "data/char_lm/normalized/val", "--rev", "HEAD"], project).stdout
    assert re.search(r"^char-lm: [1-9]\d* version\(s\) built from data/char_lm/normalized/val at HEAD",
                     traced, re.M) and re.search(r"^v\d+\s", traced, re.M), traced
    # final-run keys (a shorter run): train, evaluate and register rerun, the sweep does not;
    # the char-LM's stages only (a new char-LM would also retrain the text classifier built on
    # it, minutes here: test_end_to_end.py checks that)
    run(["dvc", "exp", "run", "--queue", "-n", "seed7", "-S", "char_lm.train.seed=7",
         "-S", "char_lm.train.steps_per_epoch=30", "register@char_lm"], project)
    # (the char-LM's 1-worker train runs in the stage's process: no Ray)
    run(["dvc", "queue", "start", "-j", "1"], project)
    deadline = time.monotonic() + 900
    while True:
        status = run(["dvc", "queue", "status"], project).stdout
        if "seed7" in status and ("Success" in status or "Failed" in status):
            break
        assert time.monotonic() < deadline, status
        time.sleep(5)
    logs = run(["dvc", "queue", "logs", "seed7"], project, check=False).stdout
    assert "Success" in status, status + logs[-4000:]
    assert "Running stage 'train@char_lm'" in logs and "Running stage 'tune@char_lm'" not in logs, logs[-4000:]
    assert "Running stage 'train@text_classifier'" not in logs, logs[-4000:]

    # the project's MLflow has the experiment's training run, tagged with its name and baseline
    code = textwrap.dedent("""
        import json, mlflow
        from mlflow import MlflowClient
        c = MlflowClient('sqlite:///mlflow.db')
        exp = c.get_experiment_by_name('char_lm')
        rs = c.search_runs([exp.experiment_id], "tags.`trainyard.dvc_exp_name` = 'seed7'")
        print(json.dumps([{'stage': r.data.tags.get('trainyard.stage'), 'base': r.data.tags['trainyard.dvc_exp_baseline'],
                           'seed': r.data.params.get('seed')} for r in rs]))
    """)
    found = json.loads(run([sys.executable, "-c", code], project).stdout.strip().splitlines()[-1])
    assert {"stage": "train", "base": base, "seed": "7"} in found, found
    # ... and its run store: the checkpoints are in the project's .trainyard, not a deleted temp folder
    assert list((project / ".trainyard/char_lm/train").glob("run-*")), "run store outside the project"

    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    exps = [e for rev in shown for e in (rev.get("experiments") or []) if e.get("name") == "seed7"]
    assert exps, json.dumps(shown)[:3000]
    data = exps[0]["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["char_lm"]["train"]["seed"] == 7
    assert "lr" in data["params"]["tune/char_lm/best_params.json"]["data"]["params"]  # the tuned values
    assert isinstance(data["metrics"]["metrics/char_lm/eval.json"]["data"]["val_loss"], float)

    diff = json.loads(run(["dvc", "metrics", "diff", base, "seed7", "--json"], project).stdout)
    assert "val_loss" in diff["metrics/char_lm/train.json"], diff
    plots = json.loads(run(["dvc", "plots", "diff", base, "seed7", "--json", "--split"], project).stdout)
    assert not plots.get("errors"), plots.get("errors")
    charts = plots["data"]
    assert "char_lm_loss" in charts and not [k for k in charts if "train_curve" in k], sorted(charts)
    revs = charts["char_lm_loss"][0]["revisions"]
    assert len(revs) == 2 and "seed7" in revs, revs  # the baseline's curve beside the experiment's


def test_four_queued_experiments_on_two_queue_workers_share_the_projects_one_ray(tiny_project, tmp_path):
    """`dvc queue start -j 2` with four experiments, two of them overlapping sweeps (each changes
    a searched range): all finish on the project's one Ray, with no error from Ray's own
    processes in any log; each has its own runs; the registry gets every version once and
    crowns the best."""
    project = tmp_path / "exps"
    shutil.copytree(tiny_project, project, symlinks=True, ignore=shutil.ignore_patterns(".trainyard", ".venv"))
    run(["git", "add", "-A"], project)
    run([*GIT, "commit", "-q", "-m", "results"], project)
    queued = {"seed1": ["-S", "image_classifier.train.seed=1"],
              "seed2": ["-S", "image_classifier.train.seed=2"],
              "lr-wide": ["-S", "image_classifier.tune.space.lr.high=0.03"],
              "lr-narrow": ["-S", "image_classifier.tune.space.lr.high=0.015"]}
    for name, sets in queued.items():
        run(["dvc", "exp", "run", "--queue", "-n", name, *sets, "register@image_classifier"], project)
    run(["dvc", "queue", "start", "-j", "2"], project)
    deadline = time.monotonic() + 1800
    while True:
        status = run(["dvc", "queue", "status"], project).stdout
        done = [n for n in queued if re.search(rf"\b{n}\b.*\b(Success|Failed)\b", status)]
        if len(done) == len(queued):
            break
        assert time.monotonic() < deadline, status
        time.sleep(5)
    run(["dvc", "queue", "stop", "--kill"], project, check=False)
    logs = {n: run(["dvc", "queue", "logs", n], project, check=False).stdout for n in queued}
    for name, log in logs.items():
        assert re.search(rf"\b{name}\b.*\bSuccess\b", status), status + log[-4000:]
        for bad in ("Found multiple active Ray instances", "Traceback", "error:"):
            assert bad not in log, f"{name}: {bad}\n{log[-6000:]}"
    swept = [n for n, log in logs.items() if "Running stage 'tune@image_classifier'" in log]
    assert sorted(swept) == ["lr-narrow", "lr-wide"], swept
    # every Ray stage of every experiment on one Ray: the project's, started by the first
    rays = {n: re.findall(r"\[ray\] (started|using) this project's Ray at (\S+)", log) for n, log in logs.items()}
    assert all(rays.values()), rays
    assert len({addr for found in rays.values() for _, addr in found}) == 1, rays
    assert sum(how == "started" for found in rays.values() for how, _ in found) == 1, rays

    code = textwrap.dedent("""
        import json
        from mlflow import MlflowClient
        c = MlflowClient('sqlite:///mlflow.db')
        name = 'image-classifier'
        vs = c.search_model_versions(f"name = '{name}'")
        champ = c.get_model_version_by_alias(name, 'champion').version
        exp = c.get_experiment_by_name('image_classifier')
        trains = c.search_runs([exp.experiment_id], "tags.`trainyard.stage` = 'train'")
        print(json.dumps({'champion': champ, 'versions': [{'v': v.version, 'run': v.run_id, 'tags': v.tags}
                                                           for v in vs],
                          'train_runs': [r.data.tags.get('trainyard.dvc_exp_name') for r in trains]}))
    """)
    reg = json.loads(run([sys.executable, "-c", code], project).stdout.strip().splitlines()[-1])
    for name in queued:  # each experiment's own training run
        assert reg["train_runs"].count(name) == 1, reg["train_runs"]
    versions = reg["versions"]
    assert len(versions) == 5 and len({v["tags"]["trainyard.model_sha256"] for v in versions}) == 5, versions
    metric = versions[0]["tags"]["trainyard.metric_name"]  # accuracy, the higher the better
    scored = {v["v"]: float(v["tags"][f"trainyard.metric.{metric}"]) for v in versions}
    # the best (a tie keeps the earlier champion: only a strict improvement moves it)
    assert scored[reg["champion"]] == max(scored.values()), (reg["champion"], scored)


def test_a_model_of_our_own_by_import_path_is_swept_trained_registered_and_loads_without_the_project(
        tiny_project, tmp_path):
    """`image_classifier.train.arch: nets.tiny:build`, a module of the project's own: swept,
    trained on Ray Train, registered with its code, loaded from the registry in a process that
    runs elsewhere; an edit to the module retrains, an unchanged one does not."""
    project = tmp_path / "byo"
    shutil.copytree(tiny_project, project, symlinks=True, ignore=shutil.ignore_patterns(".trainyard", ".venv"))
    (project / "nets").mkdir()
    (project / "nets/__init__.py").write_text("")
    net = textwrap.dedent("""
        from torch import nn

        WIDTH = 8


        def build(in_shape, n_classes, dropout=0.0):
            c = in_shape[0]
            return nn.Sequential(nn.Conv2d(c, WIDTH, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                 nn.Dropout(dropout), nn.Linear(4 * WIDTH, n_classes))
    """)
    (project / "nets/tiny.py").write_text(net)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["image_classifier"]["train"]["arch"] = "nets.tiny:build"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # without its files in dvc.yaml the stage refuses: an edit to them would not retrain
    p = run(["dvc", "repro", "train@image_classifier"], project, check=False)
    assert p.returncode != 0 and "dvc.yaml does not list nets/__init__.py, nets/tiny.py" in p.stdout + p.stderr, \
        p.stdout[-3000:] + p.stderr[-3000:]
    run([sys.executable, "-m", "components.cli.stage_deps"], project)
    out = run(["dvc", "repro", "register@image_classifier"], project).stdout
    assert "Running stage 'tune@image_classifier'" in out and "Running stage 'train@image_classifier'" in out, out
    reg = json.loads((project / "registry/image_classifier/registered.json").read_text())
    tags = json.loads(run([sys.executable, "-c", textwrap.dedent(f"""
        import json
        from mlflow import MlflowClient
        v = MlflowClient('sqlite:///mlflow.db').get_model_version('image-classifier', '{reg["version"]}')
        print(json.dumps(v.tags))
    """)], project).stdout.strip().splitlines()[-1])
    assert tags["trainyard.arch"] == "nets.tiny:build"  # the lineage names the module and its digest
    assert json.loads(tags["trainyard.model_code"])["files"] == ["nets/__init__.py", "nets/tiny.py"], tags

    # the registered model loads and predicts in a process that runs outside the project
    code = textwrap.dedent(f"""
        import numpy as np, mlflow
        m = mlflow.pyfunc.load_model('models:/image-classifier/{reg["version"]}')
        print(m.predict(np.zeros((2, 8, 8, 1), dtype=np.uint8)).shape)
    """)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = project_env() | {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    assert run([sys.executable, "-c", code], elsewhere, env=env).stdout.strip().endswith("(2, 3)")

    # unchanged: nothing reruns; the module edited: the stages that build the model rerun
    assert "Running stage" not in run(["dvc", "repro", "register@image_classifier"], project).stdout
    (project / "nets/tiny.py").write_text(net.replace("WIDTH = 8", "WIDTH = 12"))
    status = run(["dvc", "status", "train@image_classifier"], project).stdout
    assert "nets/tiny.py" in status, status
