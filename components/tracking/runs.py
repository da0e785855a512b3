"""MLflow runs, written by one process only (the stage's driver).

Runs are found by a stable key tag (`trainyard.run_key`: workload / stage / params key or
trial id), never by timestamps, so a stage re-run after a crash continues its run instead
of creating a duplicate, and metric history already logged is not logged twice.
"""

from __future__ import annotations

import base64
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_URI = "sqlite:///mlflow.db"
RUN_KEY = "trainyard.run_key"


class TrackingError(RuntimeError):
    """The tracking server cannot be reached or refuses a write."""


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else the embedded SQLite store in the working directory."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


def artifact_root(uri: str) -> str | None:
    """Artifacts of the embedded store go to `./mlartifacts`; a server decides its own."""
    return Path("mlartifacts").resolve().as_uri() if uri.startswith("sqlite:") else None


def check_tracking(uri: str, timeout_s: float = 5.0) -> None:
    """Fail before any compute when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):  # noqa: S310
            pass
    except urllib.error.HTTPError as err:
        if err.code >= 500:
            raise TrackingError(f"MLFLOW_TRACKING_URI={uri}: server error {err.code} on /health") from None
    except (urllib.error.URLError, OSError) as err:
        raise TrackingError(f"MLFLOW_TRACKING_URI={uri}: no MLflow server answers "
                            f"({getattr(err, 'reason', err)})") from None


def _login_header() -> tuple[str | None, dict[str, str]]:
    """(user, headers) from MLflow's own credential variables: basic auth, else a bearer token."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password is not None:
        return user, {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return user, {"Authorization": f"Bearer {token}"} if token else {}


def check_login(uri: str, timeout_s: float = 10.0) -> None:
    """Fail before any compute when a server with logins refuses ours. Credentials come from the
    environment only (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, or
    MLFLOW_TRACKING_TOKEN), never from params.yaml or the repository."""
    if not uri.startswith(("http://", "https://")):
        return
    user, headers = _login_header()
    req = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1",
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s):  # noqa: S310 - the configured server
            pass
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            who = f"the login of user {user!r}" if user else "requests without a login"
            raise TrackingError(f"MLFLOW_TRACKING_URI={uri}: the server refused {who} (HTTP {err.code}); "
                                "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD") from None
    except (urllib.error.URLError, OSError):
        pass  # reachability is check_tracking's to report


def denied(err: BaseException) -> str | None:
    """One line for an MLflow write the server refused for lack of permission, else None."""
    code = getattr(err, "error_code", None)
    if code not in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        return None
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or "(no login)"
    first = str(getattr(err, "message", err)).strip().splitlines()[0]
    return (f"MLFLOW_TRACKING_URI={tracking_uri()}: user {user!r} may not do this ({code}: {first}); "
            "an admin can grant EDIT or MANAGE on the experiment or registered model")


def server_answers(uri: str, timeout_s: float = 2.0) -> bool:
    """Whether the tracking server answers now (always true for a local store)."""
    try:
        check_tracking(uri, timeout_s)
        return True
    except TrackingError:
        return False


def client():
    """An MlflowClient on the configured tracking URI (checked first), after sending what an
    earlier stage kept in the journal while the server was down."""
    import mlflow
    from mlflow import MlflowClient

    from components.tracking.journal import Writer

    uri = tracking_uri()
    check_tracking(uri)
    check_login(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    writer = Writer(uri)
    if writer.journal.path.exists():
        sent = writer.flush()
        left = len(writer.journal)
        print(f"[mlflow] sent {sent} writes kept while {uri} was down"
              + (f"; {left} still queued in {writer.journal.path}" if left else ""), flush=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(c, name: str) -> str:
    """The experiment's id, created on first use (with the embedded artifact root)."""
    from mlflow.exceptions import MlflowException

    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=artifact_root(tracking_uri()))
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
