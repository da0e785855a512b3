"""Each epoch's metrics in the MLflow run while training runs, not only at the end.

The stage's process logs them, whoever trains: its own loop (one worker) or Ray Train's
workers, whose rank-0 reports reach it through `components.training.relay`; `LiveMetrics.log`
is the hook either way.
"""

from __future__ import annotations

from typing import Any

from components.tracking.journal import Writer


class LiveMetrics:
    """Logs each epoch's rank-0 report to the run as it comes (`log(report)`).

    A write that cannot be sent goes to the writer's journal; if even that fails (full),
    training goes on: the history is in every checkpoint and is logged again at the end."""

    def __init__(self, writer: Writer, run_id: str, keys: tuple[str, ...]) -> None:
        self.writer, self.run_id, self.keys = writer, run_id, keys
        self.warned = False

    def log(self, report: dict[str, Any]) -> None:
        """Send one report's metrics (`keys` only); after a resume the report carries the
        restored history, which fills any gap."""
        row = {k: v for k, v in report.items() if k in self.keys}
        if "epoch" not in row:
            return
        rows = [{k: v for k, v in r.items() if k in self.keys} for r in report.get("history", [])] or [row]
        try:
            if not self.writer.log_history(self.run_id, rows) and not self.warned:
                print(f"[mlflow] {self.writer.uri} does not answer: keeping metrics in {self.writer.journal.path}",
                      flush=True)
                self.warned = True
        except Exception as err:  # noqa: BLE001 - tracking trouble never stops training
            print(f"[mlflow] could not record epoch {row['epoch']}: {err}", flush=True)
