"""MLflow runs, written by one process only (the stage's driver).

Runs are found by a stable key tag (`trainyard.run_key`: workload / stage / params key or
trial id), never by timestamps, so a stage re-run after a crash continues its run instead
of creating a duplicate, and metric history already logged is not logged twice.
"""

from __future__ import annotations

import time
from typing import Any

RUN_KEY = "trainyard.run_key"


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


def find_run(c, exp_id: str, run_key: str):
    """The run tagged with `run_key`, or None."""
    runs = c.search_runs([exp_id], filter_string=f"tags.`{RUN_KEY}` = '{run_key}'", max_results=1)
    return runs[0] if runs else None


def start_run(c, exp_id: str, run_key: str, run_name: str, tags: dict[str, str] | None = None,
              parent_run_id: str | None = None, reopen: bool = True) -> str:
    """Reuse the run with this key, or create it; returns its id. The run is RUNNING after,
    unless `reopen` is false and it had ended (a finished sweep trial stays as it was)."""
    run = find_run(c, exp_id, run_key)
    all_tags = {RUN_KEY: run_key, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    if run is None:
        run = c.create_run(exp_id, run_name=run_name, tags=all_tags)
    else:
        for k, v in all_tags.items():
            c.set_tag(run.info.run_id, k, v)
        if reopen or run.info.status == "RUNNING":
            c.update_run(run.info.run_id, status="RUNNING")
    return run.info.run_id


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
