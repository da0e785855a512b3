"""A stage's connection to MLflow: the tracking URI resolved once, checked before any compute,
and what an earlier stage kept in the journal sent first; and the life of a stage's run
(`stage_run`): start or reopen by key, journal, system metrics, failure, finish."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from components.tracking import runs
from components.tracking.busy import wait_out_busy_stores
from components.tracking.journal import Writer
from components.tracking.live import LiveMetrics
from components.tracking.monitor import system_metrics
from components.tracking.server import TrackingError, artifact_root, check_login, check_tracking


@dataclass(frozen=True)
class Tracking:
    """The tracking URI a stage writes to, and a client on it."""

    uri: str
    client: Any  # mlflow.MlflowClient

    def experiment_id(self, name: str) -> str:
        """The experiment's id, created on first use (embedded stores keep artifacts in ./mlartifacts)."""
        return runs.experiment_id(self.client, name, artifact_root(self.uri))


def connect(uri: str, outage_ok: bool = False) -> Tracking:
    """Check that the server at `uri` answers and takes our login (fails before any compute),
    send what the journal kept while it was down, and return a client on it. MLflow's fluent
    API (`mlflow.start_run`, used to log models) is pointed at `uri` too. `outage_ok`: a stage
    that only writes to runs that exist (evaluate) goes on when no server answers, its writes
    journaled; a refused login still stops it."""
    import mlflow
    from mlflow import MlflowClient

    from components.cluster.connect import quiet_loggers

    quiet_loggers()  # its loggers exist now: filter them as the stage's start did Ray's
    wait_out_busy_stores()  # before MLflow opens the store: its first reads wait a lock out too
    try:
        check_tracking(uri)
    except TrackingError as err:
        if not outage_ok or "no MLflow server answers" not in str(err):
            raise
        print(f"[mlflow] {err}: this stage goes on; its MLflow writes wait in the journal and are sent "
              "when a stage starts with the server back", flush=True)
        mlflow.set_tracking_uri(uri)
        return Tracking(uri, MlflowClient(tracking_uri=uri, registry_uri=uri))
    check_login(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    writer = Writer(uri)
    if writer.journal.path.exists():
        sent = writer.flush()
        left = len(writer.journal)
        print(f"[mlflow] sent {sent} writes kept while {uri} was down"
              + (f"; {left} still queued in {writer.journal.path}" if left else ""), flush=True)
    return Tracking(uri, MlflowClient(tracking_uri=uri, registry_uri=uri))


@dataclass(frozen=True)
class StageRun:
    """An open stage run: its id, the journaled writer for it, and its live-metrics hook."""

    run_id: str
    writer: Writer
    live: LiveMetrics

    def tag(self, key: str, value: str) -> None:
        """Set a tag, journaled while the server is away."""
        self.writer.write({"op": "tag", "run_id": self.run_id, "key": key, "value": value})


@contextmanager
def stage_run(t: Tracking, experiment: str, run_key: str, run_name: str, tags: dict[str, str],
              live_keys: tuple[str, ...] = (), params: dict[str, Any] | None = None,
              datasets: tuple[str, dict[str, str]] | None = None) -> Iterator[StageRun]:
    """The run keyed `run_key` (reopened when a stage with the same key ran before, else
    created), with its `params` and its `datasets` (a data folder and {file: context}, named
    after the experiment) logged once, and MLflow's system metrics sampled while the block
    runs. From its start on,
    writes the server cannot take wait in the journal; an exception marks the run FAILED (and
    goes on); a normal end marks it FINISHED, after giving a restarting server a grace period
    to take what the journal holds."""
    run_id = runs.start_run(t.client, t.experiment_id(experiment), run_key, run_name, tags)
    if params:
        runs.log_params(t.client, run_id, params)
    if datasets:
        runs.log_datasets(t.client, run_id, datasets[0], datasets[1], experiment)
    writer = Writer(t.uri)
    monitor = system_metrics(run_id, writer)
    try:
        yield StageRun(run_id, writer, LiveMetrics(writer, run_id, live_keys))
    except BaseException:
        writer.finish(run_id, "FAILED")
        raise
    finally:
        if monitor is not None:
            monitor.finish()
    writer.finish(run_id)
    writer.settle_or_report()
