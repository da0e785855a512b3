"""Faults injected for real: killed stage processes, a stopped MLflow server, concurrent
registry writers, damaged files between stages. Each test checks that nothing is lost.
The killed stages start their own local Ray, as `make run` does: what is checked is what
the next run does with what they left. (A SIGKILLed Train worker is in test_ray_train.py.)"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from components.data.parquet import file_md5
from tests.integration.conftest import make_project, project_env, run, tiny_params, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.faults]


# --- killed stage processes, in a project of their own (the e2e project stays untouched) ---

def _sql(project, query: str, args: tuple = ()) -> list[tuple]:
    """Read the project's MLflow SQLite store directly (the stage may be writing it)."""
    import sqlite3

    db = project / "mlflow.db"
    if not db.exists():
        return []
    for _ in range(50):
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
                return con.execute(query, args).fetchall()
        except sqlite3.OperationalError:  # locked, or tables not created yet
            time.sleep(0.2)
    return []


def _trial_runs(project) -> list[tuple[str, str, int | None]]:
    """(run id, status, end time) of every sweep child run."""
    return _sql(project, "SELECT r.run_uuid, r.status, r.end_time FROM runs r JOIN tags t ON r.run_uuid = t.run_uuid "
                         "WHERE t.key = 'mlflow.parentRunId'")


def _stage_process(dvc: subprocess.Popen, module: str):
    """The stage's own Python process, started by `dvc repro` (through `$SHELL -c`, or `/bin/sh -c`
    when SHELL is unset: dash does not exec, so the shell itself names the module too)."""
    import psutil

    for p in psutil.Process(dvc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if f"pipelines.{module}" in p.cmdline()[1:3]:  # python -m pipelines.<module>; not sh -c "..."
                return p
    return None


def _kill_stage_when(project, target: list[str], module: str, ready, what: str, timeout_s: float = 600):
    """Start `dvc repro <target...>`, SIGKILL the stage's process once `ready()` holds; return the
    Ray processes the killed stage had recorded (PID, start time)."""

    # a private Ray for the killed stage (TRAINYARD_RAY_IDLE_S=0): its leftovers are what the next
    # stage must stop (the project's shared Ray, reused instead, is the last test's subject)
    dvc = subprocess.Popen(["dvc", "repro", *target], cwd=project, env=project_env() | {"TRAINYARD_RAY_IDLE_S": "0"},
                           start_new_session=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: dvc.poll() is None and ready(), timeout_s, what, every_s=0.5)
        stage = _stage_process(dvc, module)
        assert stage is not None, f"no pipelines.{module} process under dvc"
        record = project / ".trainyard" / "ray-processes" / f"{stage.pid}.json"
        left = [(p["pid"], p["started"]) for p in json.loads(record.read_text())["processes"]]
        stage.kill()  # SIGKILL: no cleanup handler runs
        out, _ = dvc.communicate(timeout=120)
    finally:
        if dvc.poll() is None:
            os.killpg(dvc.pid, signal.SIGKILL)
            dvc.wait()
    assert dvc.returncode != 0, out
    return left


def _alive(left) -> list[int]:
    """Which of the recorded (PID, start time) processes still run."""
    import psutil

    out = []
    for pid, started in left:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            if p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
    return out


def fault_params() -> dict:
    """The tiny params with a 4-trial sweep: two waves of two trials, enough for a kill with
    trials finished and running, and one wave less than the end-to-end sweep."""
    params = tiny_params()
    params["char_lm"]["tune"]["num_samples"] = 4
    return params


@pytest.fixture(scope="module")
def fault_project(tmp_path_factory):
    """A repository copy with the fault params, its char-LM data prepared."""
    project = make_project(tmp_path_factory.mktemp("faults"), fault_params())
    run(["dvc", "repro", "normalize@char_lm"], project)
    return project


@pytest.fixture(scope="module")
def good_train(fault_project, tmp_path_factory) -> dict:
    """One good `dvc repro train@char_lm` in the fault project (1 worker, in the stage's process):
    its dvc.lock, and its model and metrics copied aside (the killed-train test then overwrites
    the project's)."""
    run(["dvc", "repro", "train@char_lm"], fault_project)
    keep = tmp_path_factory.mktemp("good-train")
    out = {"lock": (fault_project / "dvc.lock").read_text(),
           "md5": file_md5(fault_project / "models/char_lm/model.pt"),
           "model": keep / "model.pt", "train": keep / "train_run.json", "metrics": keep / "train.json",
           "params": keep / "params.yaml"}
    shutil.copy2(fault_project / "models/char_lm/model.pt", out["model"])
    shutil.copy2(fault_project / "models/char_lm/train_run.json", out["train"])
    shutil.copy2(fault_project / "metrics/char_lm/train.json", out["metrics"])
    shutil.copy2(fault_project / "params.yaml", out["params"])
    return out


def test_killed_sweep_resumes_without_rerunning_finished_trials(fault_project):
    project = fault_project
    n = fault_params()["char_lm"]["tune"]["num_samples"]

    def some_done_some_running():
        runs = _trial_runs(project)
        return any(s == "FINISHED" for _, s, _ in runs) and any(s == "RUNNING" for _, s, _ in runs)

    left = _kill_stage_when(project, ["tune@char_lm"], "tune", some_done_some_running,
                            "a finished trial and a running one")
    time.sleep(5)  # what dies with the driver has died by now; Ray's agents usually stay behind
    # (not always: once, in a full run, none of a sweep's private Ray outlived its SIGKILLed
    # driver by 5 s; where some do, the next stage must stop them)
    leftover = _alive(left)
    before = {rid: (status, end) for rid, status, end in _trial_runs(project)}
    finished_before = {rid: end for rid, (status, end) in before.items() if status == "FINISHED"}
    assert finished_before and len(before) < n + 1
    assert not (project / "tune/char_lm/best_params.json").exists()

    again = run(["dvc", "repro", "tune@char_lm"], project)
    # the killed driver's Ray (GCS, raylet, workers...) was stopped by PID before the new one started
    assert not leftover or "Ray processes left by killed process" in again.stdout, again.stdout[-2000:]
    assert not _alive(left)

    best = json.loads((project / "tune/char_lm/best_params.json").read_text())
    assert best["num_trials"] == n and len({t["trial_id"] for t in best["trials"]}) == n
    after = {rid: (status, end) for rid, status, end in _trial_runs(project)}
    parents = _sql(project, "SELECT DISTINCT value FROM tags WHERE key = 'mlflow.parentRunId'")
    assert len(parents) == 1  # one sweep run, reused
    assert len(after) == n and all(status == "FINISHED" for status, _ in after.values())
    # trials that had finished were not run again: their runs were not touched
    assert all(after[rid][1] == end for rid, end in finished_before.items())
    # each trial's history: one value per epoch, epochs 1..k with no gap
    for rid in after:
        steps = [s for (s,) in _sql(project, "SELECT step FROM metrics WHERE run_uuid = ? AND key = 'val_loss' "
                                             "ORDER BY step", (rid,))]
        assert steps == list(range(1, len(steps) + 1)) and steps, (rid, steps)
    assert "resuming the sweep" in again.stdout


def test_sweep_state_cut_short_is_set_aside_and_the_sweep_runs_that_round_again(fault_project):
    """A sweep's Tune state that does not load (a full disk, an interrupted copy) never leaves
    the tune stage broken: the round is set aside, named in one line, and run again."""
    project = fault_project
    best_file = project / "tune/char_lm/best_params.json"
    if not best_file.exists():  # run alone: a finished sweep first
        run(["dvc", "repro", "tune@char_lm"], project)
    sweeps = [d for d in (project / ".trainyard/char_lm/tune").glob("sweep-*") if ".damaged-" not in d.name]
    assert len(sweeps) == 1, sweeps
    # the tuner's own state (with several experiment states, a newest one cut short only gives way
    # to the one before: tests/unit/test_damaged_state.py)
    newest = sweeps[0] / "tuner.pkl"
    newest.write_bytes(newest.read_bytes()[:200])

    again = run(["dvc", "repro", "--force", "--single-item", "tune@char_lm"], project)
    said = [line for line in again.stdout.splitlines() if "does not load" in line]
    assert len(said) == 1 and f"{newest.name} does not load (200 bytes" in said[0] and "set aside" in said[0], \
        again.stdout[-3000:]
    assert list(sweeps[0].parent.glob(f"{sweeps[0].name}.damaged-*"))  # kept for a person to look at
    best = json.loads(best_file.read_text())
    n = fault_params()["char_lm"]["tune"]["num_samples"]
    assert best["num_trials"] == n and all(t["val_loss"] is not None for t in best["trials"])


def test_killed_train_stage_leaves_last_good_outputs_and_resumes(fault_project, good_train):
    project = fault_project
    lock, good_md5 = good_train["lock"], good_train["md5"]
    assert (project / "dvc.lock").read_text() == lock  # the last good run's

    params = fault_params()
    # 2 workers through Ray Train, on a Ray of the stage's own: what the killed stage leaves
    # behind is Ray's processes, which the next run must stop
    params["char_lm"]["train"].update(epochs=3, num_workers=2)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    store = project / ".trainyard/char_lm/train"
    old_runs = set(store.glob("run-*"))

    def new_run_checkpointed() -> bool:
        new = [r for r in store.glob("run-*") if r not in old_runs]
        return bool(new) and (new[0] / "epoch-0001/state.pt").exists() and not (new[0] / "epoch-0003").exists()

    # --single-item: the sweep also reads train's params; only train is under test here
    left = _kill_stage_when(project, ["--single-item", "train@char_lm"], "train", new_run_checkpointed,
                            "the new run's first checkpoint")

    # dvc.lock is the last good run's; outputs are that run's or absent, never half-written
    assert (project / "dvc.lock").read_text() == lock
    model = project / "models/char_lm/model.pt"
    assert not model.exists() or file_md5(model) == good_md5
    for folder in ("models/char_lm", "metrics/char_lm", "plots/char_lm"):
        assert not [f.name for f in (project / folder).glob("*") if f.name.startswith(".")], folder
    for ckpt in store.glob("run-*/epoch-*"):  # every checkpoint directory holds a whole state
        assert (ckpt / "state.pt").exists(), ckpt

    again = run(["dvc", "repro", "--single-item", "train@char_lm"], project)
    assert not _alive(left)
    assert "resumed from epoch" in again.stdout + again.stderr
    assert json.loads((project / "metrics/char_lm/train.json").read_text())["epochs"] == 3
    assert run(["dvc", "status", "train@char_lm"], project).stdout.strip().endswith("up to date.")


# --- the tracking server goes away mid-run ---

def _train_args(out) -> list[str]:
    return [sys.executable, "-m", "pipelines.train", "--workload", "char_lm", "--data", "data/char_lm/normalized",
            "--params", str(out / "params.yaml"), "--model", str(out / "model.pt"),
            "--metrics", str(out / "train.json"), "--plot", str(out / "curve.csv")]


def _start_train(project, out, server, store, epochs: int, grace_s: float,
                 ray: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
    """The train stage on its own, against `server`: 1 worker in its own process, or with `ray`
    (the shared Ray's environment) 2 Ray Train workers, whose metrics the Train controller sends."""
    out.mkdir(parents=True)
    params = fault_params()
    params["char_lm"]["train"].update(epochs=epochs, steps_per_epoch=40, num_workers=2 if ray else 1)
    (out / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = out / "train.log"
    env = {**project_env(ray), "MLFLOW_TRACKING_URI": server.uri, "TRAINYARD_STORE": str(store),
           "TRAINYARD_MLFLOW_GRACE_S": str(grace_s)}
    with open(log, "w") as f:
        proc = subprocess.Popen(_train_args(out), cwd=project, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, log


def _val_steps(server, run_id: str) -> list[int]:
    from mlflow import MlflowClient

    return sorted(m.step for m in MlflowClient(server.uri).get_metric_history(run_id, "val_loss"))


def _run_id(log: Path) -> str | None:
    import re

    m = re.search(r"MLflow run ([0-9a-f]{32})", log.read_text())
    return m.group(1) if m else None


def _journal_entries(store: Path) -> int:
    return sum(len(f.read_text().splitlines()) for f in (store / "mlflow-journal").glob("*.jsonl"))


def test_mlflow_down_mid_run_is_journaled_and_replayed(fault_project, mlflow_server, shared_ray, tmp_path):
    project, server, store = fault_project, mlflow_server, tmp_path / "store"

    # A: the server dies after epoch 1 and comes back (while training goes on, or within the
    # stage's end-of-run grace when training is quicker than the server's restart); the stage's
    # own process sends each epoch's metrics
    proc, log = _start_train(project, tmp_path / "a", server, store, epochs=6, grace_s=240)
    try:
        run_id = wait_for(lambda: _run_id(log), 180, "the train run's id", every_s=0.5)
        wait_for(lambda: _val_steps(server, run_id), 300, "epoch 1 logged to the server", every_s=0.5)
        server.kill()
        wait_for(lambda: _journal_entries(store) >= 1, 300, "an epoch kept in the journal", every_s=0.5)
        assert proc.poll() is None, "training stopped when the tracking server went away"
        server.start()
        proc.wait(600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, log.read_text()[-4000:]
    assert _val_steps(server, run_id) == [1, 2, 3, 4, 5, 6]  # no gap
    assert _journal_entries(store) == 0

    # B: the server dies after epoch 1 and stays down to the end of the stage; the stage still
    # publishes its model, and the next stage (evaluate) sends what was kept. Ray Train on the
    # shared Ray: the Train controller's process sends the epochs and journals what fails
    # (6 epochs: the kill may land a few epochs late on a loaded machine; 3 entries still remain)
    proc, log = _start_train(project, tmp_path / "b", server, store, epochs=6, grace_s=1, ray=shared_ray)
    try:
        run_id = wait_for(lambda: _run_id(log), 180, "the train run's id", every_s=0.5)
        wait_for(lambda: _val_steps(server, run_id), 300, "epoch 1 logged to the server", every_s=0.5)
        server.kill()
        proc.wait(600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, log.read_text()[-4000:]
    assert (tmp_path / "b/model.pt").exists() and "writes kept in" in log.read_text()
    kept = _journal_entries(store)
    assert kept >= 3  # some epochs after the first, then the artifact and the status

    # C: still down. evaluate scores and publishes, its writes join the journal; register
    # refuses to crown anything, saying why, and leaves no output
    out = tmp_path / "b"
    env = {**project_env(), "MLFLOW_TRACKING_URI": server.uri, "TRAINYARD_STORE": str(store),
           "TRAINYARD_MLFLOW_GRACE_S": "1"}
    ev = subprocess.run([sys.executable, "-m", "pipelines.evaluate", "--workload", "char_lm",
                         "--data", "data/char_lm/normalized", "--params", str(out / "params.yaml"),
                         "--model", str(out / "model.pt"),
                         "--metrics", str(out / "eval.json"), "--reports", str(out / "reports")],
                        cwd=project, capture_output=True, text=True, timeout=600, env=env)
    assert ev.returncode == 0, ev.stdout[-3000:] + ev.stderr[-3000:]
    assert "no MLflow server answers" in ev.stdout and (out / "eval.json").exists()
    assert _journal_entries(store) >= kept + 4  # the numbers, samples.txt, eval.json, the test split
    register = [sys.executable, "-m", "pipelines.register", "--workload", "char_lm", "--params", str(out / "params.yaml"),
                "--model", str(out / "model.pt"), "--eval", str(out / "eval.json"),
                "--data", "data/char_lm/normalized", "--out", str(out / "registered.json")]
    rg = subprocess.run(register, cwd=project, capture_output=True, text=True, timeout=600, env=env)
    assert rg.returncode == 1 and "register cannot read char-lm@champion, so it registers and crowns nothing" \
        in rg.stderr, rg.stdout[-3000:] + rg.stderr[-3000:]
    assert not (out / "registered.json").exists()

    # D: the server is back: the next stage sends everything kept, in order, then does its work
    server.start()
    rg = subprocess.run(register, cwd=project, capture_output=True, text=True, timeout=600, env=env)
    assert rg.returncode == 0, rg.stdout[-3000:] + rg.stderr[-3000:]
    assert "writes kept while" in rg.stdout
    assert _val_steps(server, run_id) == [1, 2, 3, 4, 5, 6]
    assert _journal_entries(store) == 0
    from mlflow import MlflowClient

    c = MlflowClient(server.uri)
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED" and "eval_val_loss" in run.data.metrics
    assert {"testing"} <= {t.value for i in run.inputs.dataset_inputs for t in i.tags}
    assert "curve.csv" in [a.path for a in c.list_artifacts(run_id)]
    assert {"evaluation/eval.json", "evaluation/samples.txt"} <= {a.path for a in c.list_artifacts(run_id, "evaluation")}


def test_mlflow_down_mid_sweep_costs_no_trial_and_the_journal_fills_in_every_trial_run(
        fault_project, mlflow_server, shared_ray, tmp_path):
    """The tracking server dies while a sweep runs: the trials go on, trial runs opened while it
    is away are journaled by key, the stage writes best_params.json, and the next stage to
    connect sends it all: one child run per trial, FINISHED, every epoch, no gap."""
    from mlflow import MlflowClient

    project, server, store, out = fault_project, mlflow_server, tmp_path / "store", tmp_path / "sweep"
    out.mkdir()
    params = fault_params()
    params["char_lm"]["tune"].update(steps_per_epoch=150)  # long enough to lose the server mid-sweep
    (out / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**project_env(shared_ray), "MLFLOW_TRACKING_URI": server.uri, "TRAINYARD_STORE": str(store),
           "TRAINYARD_MLFLOW_GRACE_S": "1"}
    log = out / "tune.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.tune", "--workload", "char_lm",
                                 "--data", "data/char_lm/normalized", "--params", str(out / "params.yaml"),
                                 "--out", str(out / "best_params.json")], cwd=project, env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    c = MlflowClient(server.uri)

    def a_trial_logged() -> bool:
        exp = c.get_experiment_by_name("char_lm")
        return bool(exp and c.search_runs([exp.experiment_id], "metrics.val_loss > 0"))

    try:
        wait_for(a_trial_logged, 300, "a trial's first epoch on the server", every_s=0.5)
        server.kill()
        proc.wait(600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    best = json.loads((out / "best_params.json").read_text())
    n = params["char_lm"]["tune"]["num_samples"]
    assert best["num_trials"] == n and all(t["val_loss"] is not None for t in best["trials"])
    assert "writes kept in" in text and _journal_entries(store) > 0

    # the server back: the next stage's connect sends what the sweep kept
    server.start()
    subprocess.run([sys.executable, "-c", "from components.tracking.session import connect; import sys; "
                    "connect(sys.argv[1])", server.uri], cwd=project, env=env, check=True, timeout=300)
    assert _journal_entries(store) == 0
    exp = c.get_experiment_by_name("char_lm").experiment_id
    parent = best["mlflow_parent_run_id"]
    children = c.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.data.tags["trainyard.trial_id"] for r in children) == sorted(t["trial_id"] for t in best["trials"])
    assert all(r.info.status == "FINISHED" for r in children) and c.get_run(parent).info.status == "FINISHED"
    for r in children:
        steps = sorted(m.step for m in c.get_metric_history(r.info.run_id, "val_loss"))
        assert steps == list(range(1, len(steps) + 1)) and steps, (r.data.tags["trainyard.trial_id"], steps)


# --- two pipelines register the same model name at the same moment ---

def test_concurrent_registers_get_distinct_versions_and_the_better_champion(fault_project, good_train, tmp_path):
    project = fault_project
    params = fault_params()
    params["char_lm"]["register"]["model_name"] = "char-lm-race"
    # two different models: the good train stage's (tuned values, seed 0, 2 epochs), and one
    # trained here with another seed and length
    models = []
    for name, over in (("a", None), ("b", {"seed": 7, "epochs": 3})):
        d = tmp_path / name
        d.mkdir()
        p = fault_params()
        if over is None:
            shutil.copy2(good_train["model"], d / "model.pt")
            shutil.copy2(good_train["train"], d / "train_run.json")
            shutil.copy2(good_train["metrics"], d / "train.json")
        else:
            p["char_lm"]["train"].update(over)
        (d / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
        m = {"model": str(d / "model.pt"), "eval": str(d / "eval.json"), "train": str(d / "train_run.json")}
        common = ["--workload", "char_lm", "--data", "data/char_lm/normalized", "--params", str(d / "params.yaml"),
                  "--model", m["model"]]
        if over is not None:
            run([sys.executable, "-m", "pipelines.train", *common, "--metrics", str(d / "train.json"),
                 "--plot", str(d / "curve.csv")], project)
        run([sys.executable, "-m", "pipelines.evaluate", *common, "--train-run", m["train"], "--metrics", m["eval"],
             "--reports", str(d / "reports")], project)
        models.append(m)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    procs = [subprocess.Popen([sys.executable, "-m", "pipelines.register", "--workload", "char_lm",
                               "--params", str(tmp_path / "params.yaml"), "--model", m["model"], "--eval", m["eval"],
                               "--train-run", m["train"], "--data", "data/char_lm/normalized",
                               "--out", str(tmp_path / f"registered-{i}.json")],
                              cwd=project, env=project_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i, m in enumerate(models)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs

    losses = [json.loads(Path(m["eval"]).read_text())["val_loss"] for m in models]
    assert losses[0] != losses[1]
    regs = [json.loads((tmp_path / f"registered-{i}.json").read_text()) for i in (0, 1)]
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    versions = c.search_model_versions("name = 'char-lm-race'")
    assert sorted(int(v.version) for v in versions) == [1, 2]  # distinct versions, no collision
    assert {regs[0]["version"], regs[1]["version"]} == {"1", "2"}
    best = regs[losses.index(min(losses))]["version"]
    assert str(c.get_model_version_by_alias("char-lm-race", "champion").version) == best
    # each version's training run has its whole metric history
    for m in models:
        tr = json.loads(Path(m["train"]).read_text())
        epochs = json.loads(Path(m["train"]).with_name("train.json").read_text())["epochs"]
        steps = sorted(x.step for x in c.get_metric_history(tr["run_id"], "val_loss"))
        assert steps == list(range(1, epochs + 1))
    assert "trainyard.lease" not in c.get_registered_model("char-lm-race").tags  # released



def _hold_write_lock(db: Path, hold_s: float) -> subprocess.Popen:
    """Another process holding `db`'s lock (`BEGIN EXCLUSIVE`: no reads, no writes) for `hold_s` seconds, as a
    second writer (`mlflow ui`, another stage, a queued experiment) does mid-transaction;
    returns once it holds it."""
    code = ("import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE')\nprint('held', flush=True)\n"
            "time.sleep(float(sys.argv[2]))\nc.execute('COMMIT')\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(db), str(hold_s)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_store_another_process_holds_locked_is_waited_out_by_every_mlflow_access(fault_project, good_train,
                                                                                  tmp_path):
    """Evaluate opens its client, reads the train run and writes its own while another process
    holds the SQLite store's write lock for 20 s: it waits (TRAINYARD_MLFLOW_BUSY_S, 30 s) and
    finishes; with 5 s it says in one line that the store stayed busy, and what it could not do."""
    project = fault_project
    shutil.copy2(good_train["params"], tmp_path / "params.yaml")
    stage = [sys.executable, "-m", "pipelines.evaluate", "--workload", "char_lm", "--data", "data/char_lm/normalized",
             "--params", str(tmp_path / "params.yaml"), "--model", str(good_train["model"]),
             "--train-run", str(good_train["train"]), "--metrics", str(tmp_path / "eval.json"),
             "--reports", str(tmp_path / "reports")]
    holder = _hold_write_lock(project / "mlflow.db", 20)
    try:
        t0 = time.monotonic()
        p = run(stage, project, check=False)
        took = time.monotonic() - t0
    finally:
        holder.wait(timeout=60)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "database is locked" not in p.stdout + p.stderr
    assert took > 15  # it met the lock (the stage alone takes a few seconds)
    assert json.loads((tmp_path / "eval.json").read_text())["val_loss"] > 0

    (tmp_path / "eval.json").unlink()
    holder = _hold_write_lock(project / "mlflow.db", 40)
    try:
        p = run(stage, project, check=False, env=project_env() | {"TRAINYARD_MLFLOW_BUSY_S": "5"})
    finally:
        holder.wait(timeout=60)
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert p.returncode == 1 and len(errors) == 1, p.stdout[-3000:] + p.stderr[-3000:]
    assert "mlflow.db stayed locked by another process for 5 s" in errors[0], errors
    assert "could not open the store" in errors[0] and "Traceback" not in p.stderr, errors


# --- a Parquet file damaged between stages (DVC does not re-check cached files) ---

@pytest.mark.parametrize("damage", ["truncated", "zero-byte", "byte-flipped"])
def test_damaged_parquet_between_stages_stops_train_naming_the_file(fault_project, tmp_path, damage):
    data = tmp_path / "normalized"
    shutil.copytree(fault_project / "data/char_lm/normalized", data)
    f = data / "train/part-00000.parquet"
    raw = bytearray(f.read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    elif damage == "zero-byte":
        raw = bytearray()
    else:
        raw[len(raw) // 3] ^= 0xFF
    f.write_bytes(bytes(raw))
    out = tmp_path / "out"
    p = run([sys.executable, "-m", "pipelines.train", "--workload", "char_lm", "--data", str(data),
             "--model", str(out / "model.pt"), "--metrics", str(out / "train.json"), "--plot", str(out / "curve.csv")],
            fault_project, timeout=300, check=False)
    assert p.returncode == 1
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "train/part-00000.parquet" in last, p.stderr[-2000:]
    assert not out.exists()  # nothing published


# --- requests the cluster can never hold: the stage itself fails at once, not Ray after a wait ---

@pytest.mark.parametrize("stage, over, needle", [
    ("train", {"train": {"num_workers": 3, "bs": 48}}, "train asks for 3 workers x 1 CPU = 3 CPUs; the cluster has 2"),
    ("tune", {"train": {"bs": 48}, "tune": {"workers_per_trial": 3}}, "one trial needs 3 workers x 1 CPU = 3 CPUs"),
    # (`use_gpu: auto` with gpus_per_worker set runs on CPUs where there are no GPUs: same params everywhere)
    ("tune", {"train": {"use_gpu": True}, "tune": {"gpus_per_worker": 1}},
     "use_gpu is true for 1 workers but the cluster has 0 GPUs"),
])
def test_impossible_requests_stop_the_stage_at_once_with_the_numbers(fault_project, shared_ray, tmp_path, stage, over,
                                                                     needle):
    params = fault_params()
    for section, values in over.items():
        params["char_lm"][section].update(values)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = tmp_path / "out"
    args = {"train": ["--model", str(out / "model.pt"), "--metrics", str(out / "train.json"),
                      "--plot", str(out / "curve.csv")],
            "tune": ["--out", str(out / "best_params.json")]}[stage]
    # Ray would retry placing them for this long; the stage must not get that far
    env = {**project_env(shared_ray), "TRAINYARD_WORKER_START_TIMEOUT_S": "3600"}
    p = run([sys.executable, "-m", f"pipelines.{stage}", "--workload", "char_lm", "--data", "data/char_lm/normalized",
             "--params", str(tmp_path / "params.yaml"), *args], fault_project, timeout=240, check=False, env=env)
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and needle in last, p.stderr[-2000:]
    assert not out.exists()  # nothing published


# --- the project's own Ray (TRAINYARD_RAY_IDLE_S > 0): shared by stages, gone when idle -------

_STAGE = """
import sys, time
from components.cluster.connect import init_ray
from components import timings
init_ray(shared=True)
print("started" if timings._state["ray_started"] else "reused", flush=True)
time.sleep(float(sys.argv[1]))
"""


def _project_ray_pids(project: Path) -> list[int]:
    from components.cluster.local_ray import state_dir
    from components.cluster.ray_nodes import cluster_pids

    record = state_dir(project) / "state.json"
    return cluster_pids(json.loads(record.read_text())["temp_dir"]) if record.exists() else []


def test_the_project_ray_is_reused_by_the_next_stage_and_stops_when_idle_also_after_a_kill(tmp_path):
    """Two "stages" (processes calling `init_ray(shared=True)` as tune and train do): the
    second connects to the Ray the first started; once the last has exited, or been SIGKILLed,
    no process of that Ray outlives the idle time by more than 10 s."""
    from components.cluster.local_ray import state_dir
    from components.cluster.ray_nodes import cluster_pids

    idle = 4.0
    env = project_env() | {"TRAINYARD_RAY_IDLE_S": f"{idle:g}"}
    stage = [sys.executable, "-c", _STAGE]
    first = run([*stage, "0"], tmp_path, env=env | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])},
                timeout=300)
    assert first.stdout.strip().splitlines()[-1] == "started", first.stdout
    temp_dir = json.loads((state_dir(tmp_path) / "state.json").read_text())["temp_dir"]
    second = run([*stage, "0"], tmp_path, env=env | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])},
                 timeout=300)
    assert second.stdout.strip().splitlines()[-1] == "reused", second.stdout
    ended = time.monotonic()
    wait_for(lambda: not cluster_pids(temp_dir), idle + 10, "the idle project Ray to stop", every_s=0.5)
    assert time.monotonic() - ended <= idle + 10
    assert not (state_dir(tmp_path) / "state.json").exists()

    # a stage SIGKILLed while it holds its lease: nothing of its Ray outlives idle + 10 s
    proc = subprocess.Popen([*stage, "600"], cwd=tmp_path, stdout=subprocess.PIPE, text=True,
                            env=env | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        lines = []
        while "started" not in lines and len(lines) < 5:  # init_ray's own line, then ours
            lines.append(proc.stdout.readline().strip())
        assert "started" in lines, lines
        pids = _project_ray_pids(tmp_path)
        assert pids
        proc.kill()
        proc.wait(timeout=30)
        killed = time.monotonic()
        wait_for(lambda: not _alive([(p, _started(p)) for p in pids if _started(p)]), idle + 10,
                 "the killed stage's project Ray to stop", every_s=0.5)
        assert time.monotonic() - killed <= idle + 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _started(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None
