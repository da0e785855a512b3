"""Faults injected for real: SIGKILLed Ray Train workers, killed stage processes, a stopped
MLflow server, concurrent registry writers. Each test checks that nothing is lost."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time

import pytest
import yaml

from components.data.parquet import file_md5
from components.training.driver import fit, make_trainer
from tests.integration.conftest import make_project, project_env, run, small_train_cfg, tiny_params

pytestmark = pytest.mark.slow


def _wait_for(cond, timeout_s: float, what: str, every_s: float = 0.1):
    """Poll `cond` until it returns something truthy; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _train_worker_pids(exclude: set[int] = frozenset()) -> list[int]:
    """PIDs of the Ray Train worker processes running now (Ray titles them `ray::RayTrainWorker`)."""
    import psutil

    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and cmd[0].startswith("ray::RayTrainWorker") and p.pid not in exclude:
            out.append(p.pid)
    return sorted(out)


def test_worker_sigkill_mid_epoch_resumes_from_the_last_checkpoint(ray_local, token_data, tmp_path):
    # dropout on, so the resumed epochs must also replay the same random masks
    cfg = small_train_cfg(epochs=4, steps_per_epoch=300, n_hidden=64, dropout=0.2)
    kw = dict(storage_path=str(tmp_path), num_workers=2, cpus_per_worker=1, use_gpu=False)
    ref = fit(make_trainer({"train": cfg, "data": token_data}, name="unbroken", max_failures=0, **kw), 2).state
    epoch_s = max(h["epoch_s"] for h in ref["history"])

    before = set(_train_worker_pids())
    box: dict = {}

    def run() -> None:
        try:
            box["state"] = fit(make_trainer({"train": cfg, "data": token_data}, name="killed",
                                            max_failures=1, **kw), 2).state
        except BaseException as err:  # handed to the test thread
            box["error"] = err

    t = threading.Thread(target=run, daemon=True)
    t.start()
    run_dir = tmp_path / "killed"
    _wait_for(lambda: (run_dir / "epoch-0002" / "state.pt").exists(), 300, "the epoch-2 checkpoint")
    time.sleep(epoch_s * 0.4)  # into epoch 3
    assert not (run_dir / "epoch-0003").exists(), "epoch 3 ended before the kill; make epochs longer"
    pids = _wait_for(lambda: len(p := _train_worker_pids(before)) == 2 and p, 30, "the run's two Train workers")
    os.kill(pids[-1], signal.SIGKILL)
    t.join(600)
    assert not t.is_alive(), "training did not finish after the worker was killed"
    if "error" in box:
        raise box["error"]
    state = box["state"]
    # resumed once, from the epoch-2 checkpoint: only the killed epoch (one checkpoint interval) is redone
    assert [r["epoch"] for r in state["resumes"]] == [2]
    assert state["resumes"][0]["step"] == ref["history"][1]["step"]
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3, 4]
    assert state["sampler"] == ref["sampler"] and state["schedule"]["step"] == ref["schedule"]["step"]
    # the same run as the unbroken one, within 0.02 nats/char (in practice identical)
    assert abs(state["history"][-1]["val_loss"] - ref["history"][-1]["val_loss"]) <= 0.02
    assert len(_train_worker_pids(before)) == 0  # the worker group is gone with the run


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
    """The stage's own Python process, started by `dvc repro`."""
    import psutil

    for p in psutil.Process(dvc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if f"pipelines.{module}" in " ".join(p.cmdline()):
                return p
    return None


def _kill_stage_when(project, target: list[str], module: str, ready, what: str, timeout_s: float = 600):
    """Start `dvc repro <target...>`, SIGKILL the stage's process once `ready()` holds; return the
    Ray processes the killed stage had recorded (PID, start time)."""

    dvc = subprocess.Popen(["dvc", "repro", *target], cwd=project, env=project_env(), start_new_session=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: dvc.poll() is None and ready(), timeout_s, what, every_s=0.5)
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


@pytest.fixture(scope="module")
def fault_project(tmp_path_factory):
    """A repository copy with tiny params, its char-LM data prepared."""
    project = make_project(tmp_path_factory.mktemp("faults"), tiny_params())
    run(["dvc", "repro", "normalize@char_lm"], project)
    return project


def test_killed_sweep_resumes_without_rerunning_finished_trials(fault_project):
    project = fault_project
    n = tiny_params()["char_lm"]["tune"]["num_samples"]

    def some_done_some_running():
        runs = _trial_runs(project)
        return any(s == "FINISHED" for _, s, _ in runs) and any(s == "RUNNING" for _, s, _ in runs)

    left = _kill_stage_when(project, ["tune@char_lm"], "tune", some_done_some_running,
                            "a finished trial and a running one")
    time.sleep(5)  # what dies with the driver has died by now; Ray's agents stay behind
    assert _alive(left), "the killed stage left no Ray process behind: nothing to clean up"
    before = {rid: (status, end) for rid, status, end in _trial_runs(project)}
    finished_before = {rid: end for rid, (status, end) in before.items() if status == "FINISHED"}
    assert finished_before and len(before) < n + 1
    assert not (project / "tune/char_lm/best_params.json").exists()

    again = run(["dvc", "repro", "tune@char_lm"], project)
    # the killed driver's Ray (GCS, raylet, workers...) was stopped by PID before the new one started
    assert "Ray processes left by killed process" in again.stdout
    assert not _alive(left)
    assert "resuming the sweep" in again.stdout

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


def test_killed_train_stage_leaves_last_good_outputs_and_resumes(fault_project):
    project = fault_project
    run(["dvc", "repro", "train@char_lm"], project)
    lock = (project / "dvc.lock").read_text()
    good_md5 = file_md5(project / "models/char_lm/model.pt")

    params = tiny_params()
    params["char_lm"]["train"]["epochs"] = 3
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
