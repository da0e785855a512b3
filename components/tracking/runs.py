"""MLflow runs, written by one process only (the stage's driver).

Runs are found by a stable key tag (`trainyard.run_key`: workload / stage / params key or
trial id), never by timestamps, so a stage re-run after a crash continues its run instead
of creating a duplicate, and metric history already logged is not logged twice.
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from components.store import project_root

RUN_KEY = "trainyard.run_key"


def git_commit() -> str:
    """The project's commit, with `-dirty` when tracked files differ; `unknown` outside git.
    In a `dvc exp run` the experiment's baseline commit (its workspace holds the baseline with
    the experiment's changes applied)."""
    if base := os.environ.get("DVC_EXP_BASELINE_REV"):
        return base
    root = project_root()
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=root).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, cwd=root).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def source_tags() -> dict[str, str]:
    """MLflow's standard source tags (what the UI's Source and User columns read) and, in a
    `dvc exp run`, the experiment's name and baseline commit."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user with no passwd entry
        user = "unknown"
    commit = git_commit()
    stage = os.environ.get("DVC_STAGE")  # set by DVC for the stage it runs
    tags = {"mlflow.user": user, "mlflow.source.type": "JOB",
            "mlflow.source.name": f"dvc stage {stage}" if stage else " ".join(sys.argv[:1]) or "python",
            "mlflow.source.git.commit": commit.removesuffix("-dirty")}
    if commit.endswith("-dirty"):
        tags["trainyard.git_dirty"] = "true"
    if name := os.environ.get("DVC_EXP_NAME"):
        tags["trainyard.dvc_exp_name"] = name
        tags["trainyard.dvc_exp_baseline"] = os.environ.get("DVC_EXP_BASELINE_REV", "")
    return tags


def experiment_id(c, name: str, artifact_location: str | None = None) -> str:
    """The experiment's id, created on first use (at `artifact_location`, or the server's default)."""
    from mlflow.exceptions import MlflowException

    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # created meanwhile by another process
        return c.get_experiment_by_name(name).experiment_id


def train_run_id(model: str | Path, record: str | Path | None = None) -> str:
    """The training run's MLflow id, from train's run record: `record`, else `train_run.json`
    beside the model file."""
    path = Path(record or Path(model).with_name("train_run.json"))
    return json.loads(path.read_text())["run_id"]


def find_run(c, exp_id: str, run_key: str):
    """The run tagged with `run_key`, or None."""
    runs = c.search_runs([exp_id], filter_string=f"tags.`{RUN_KEY}` = '{run_key}'", max_results=1)
    return runs[0] if runs else None


def start_run(c, exp_id: str, run_key: str, run_name: str, tags: dict[str, str] | None = None,
              parent_run_id: str | None = None, reopen: bool = True, start_time: int | None = None) -> str:
    """Reuse the run with this key, or create it; returns its id. The run is RUNNING after,
    unless `reopen` is false and it had ended (a finished sweep trial stays as it was).
    `start_time` (ms): when the run began, for one created late from a journal."""
    run = find_run(c, exp_id, run_key)
    all_tags = {RUN_KEY: run_key, **source_tags(), **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    if run is None:
        run = c.create_run(exp_id, run_name=run_name, tags=all_tags, start_time=start_time)
    else:
        for k, v in all_tags.items():
            c.set_tag(run.info.run_id, k, v)
        if reopen or run.info.status == "RUNNING":
            c.update_run(run.info.run_id, status="RUNNING")
    return run.info.run_id


def dataset_entries(data_dir: str | Path, files: dict[str, str], name: str) -> list[dict[str, Any]]:
    """The dataset inputs of data splits (or files): each named `<name>/<split>` with its DVC digest
    (the md5 `dvc.lock` records), its rows, and `files[split]` as its context."""
    from components.data.dataset import data_digest

    out = []
    for f, context in files.items():
        path = Path(data_dir) / f
        md5, rows = data_digest(data_dir, f)  # a split folder's from its manifest: no data read
        out.append({"name": f"{name}/{path.stem}", "digest": md5, "context": context,
                    "source": json.dumps({"path": str(path), "md5": md5}),
                    "profile": json.dumps({"num_rows": rows}) if rows is not None else None})
    return out


def log_dataset_entries(c, run_id: str, entries: list[dict[str, Any]]) -> None:
    """Log `dataset_entries` as the run's inputs. MLflow keeps one input per dataset and
    context, so a resumed run (or a replayed journal) logs nothing twice."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    c.log_inputs(run_id, datasets=[
        DatasetInput(Dataset(name=e["name"], digest=e["digest"], source_type="dvc", source=e["source"],
                             profile=e["profile"]), tags=[InputTag("mlflow.data.context", e["context"])])
        for e in entries])


def log_datasets(c, run_id: str, data_dir: str | Path, files: dict[str, str], name: str) -> None:
    """Log data files as the run's dataset inputs (`dataset_entries`, then `log_dataset_entries`)."""
    log_dataset_entries(c, run_id, dataset_entries(data_dir, files, name))


def log_params(c, run_id: str, params: dict[str, Any]) -> None:
    """Log params once; a re-run with the same key carries the same values."""
    from mlflow.entities import Param

    existing = c.get_run(run_id).data.params
    todo = [Param(k, str(v)) for k, v in params.items() if k not in existing]
    for i in range(0, len(todo), 100):
        c.log_batch(run_id, params=todo[i:i + 100])


def log_history(c, run_id: str, history: list[dict[str, float]], step_key: str = "epoch",
                timestamp: int | None = None) -> int:
    """Log per-step metrics, skipping steps the run already has; returns how many were added.
    `timestamp` (ms) keeps the time a journaled value was measured, not when it was sent."""
    from mlflow.entities import Metric

    run = c.get_run(run_id)
    done: dict[str, set[int]] = {}
    metrics = []
    now = timestamp or int(time.time() * 1000)
    for row in history:
        step = int(row[step_key])
        for k, v in row.items():
            if k == step_key or not isinstance(v, int | float):
                continue
            if k not in done:
                done[k] = {m.step for m in c.get_metric_history(run_id, k)} if k in run.data.metrics else set()
            if step not in done[k]:
                metrics.append(Metric(k, float(v), now, step))
    for i in range(0, len(metrics), 500):
        c.log_batch(run_id, metrics=metrics[i:i + 500])
    return len(metrics)


def finish_run(c, run_id: str, status: str = "FINISHED") -> None:
    """Close a run (FINISHED, FAILED or KILLED); a run already closed so keeps its end time."""
    info = c.get_run(run_id).info
    if info.status == status and info.end_time:
        return
    c.set_terminated(run_id, status=status)
