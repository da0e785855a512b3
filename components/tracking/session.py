"""A stage's connection to MLflow: the tracking URI resolved once, checked before any compute,
and what an earlier stage kept in the journal sent first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components.tracking import runs
from components.tracking.journal import Writer
from components.tracking.server import artifact_root, check_login, check_tracking


@dataclass(frozen=True)
class Tracking:
    """The tracking URI a stage writes to, and a client on it."""

    uri: str
    client: Any  # mlflow.MlflowClient

    def experiment_id(self, name: str) -> str:
        """The experiment's id, created on first use (embedded stores keep artifacts in ./mlartifacts)."""
        return runs.experiment_id(self.client, name, artifact_root(self.uri))


def connect(uri: str) -> Tracking:
    """Check that the server at `uri` answers and takes our login (fails before any compute),
    send what the journal kept while it was down, and return a client on it. MLflow's fluent
    API (`mlflow.start_run`, used to log models) is pointed at `uri` too."""
    import mlflow
    from mlflow import MlflowClient

    from components.cluster.connect import quiet_loggers

    quiet_loggers()  # its loggers exist now: filter them as the stage's start did Ray's
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
    return Tracking(uri, MlflowClient(tracking_uri=uri, registry_uri=uri))
