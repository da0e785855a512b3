"""What the Tune driver does besides running trials: the sweep's MLflow runs (it is their only
writer), a marker for each completed trial, and freeing CPUs stopped trials left held."""

from __future__ import annotations

import time
from typing import Any

from components.cluster.processes import reap_leaked_placement_groups
from components.store import write_store_json
from components.tracking import runs
from components.tracking.session import connect


def done_marker(storage: str, sweep: str, trial_id: str) -> str:
    """Where the sweep records that a trial completed (and with what). Keyed by the sweep's
    name, which holds its code, data and params key: another sweep never reads it."""
    return f"{storage.rstrip('/')}/done/{sweep}/{trial_id}.json"


def mlflow_callback(tracking_uri: str, experiment: str, parent_key: str, parent_tags: dict[str, str],
                    parent_params: dict[str, Any], max_t: int, storage: str, sweep: str, keys: tuple[str, ...]):
    """A Tune callback that records the sweep in MLflow: one parent run (`parent_key`), one child
    run per trial with its epochs, and a done marker per completed trial in the run store.

    The parent is opened at setup (the stage fails before any compute if no server answers);
    every write after that, a trial's run included, goes through the journal (`Writer`): a
    server that goes away mid-sweep costs no trial, and what it missed is sent when it answers.
    Trial runs are addressed by their key, so one opened while the server was away is found
    when the journal is replayed."""
    from ray import tune

    from components.tracking.journal import Writer

    class MlflowSweepCallback(tune.Callback):
        """Runs in the Tune driver: the sweep's single MLflow writer."""

        def setup(self, **info) -> None:
            t = connect(tracking_uri)
            self.c, self.exp = t.client, t.experiment_id(experiment)
            self.parent = runs.start_run(self.c, self.exp, parent_key, f"tune-{parent_key.rsplit('/', 1)[-1]}",
                                         parent_tags)
            runs.log_params(self.c, self.parent, parent_params)
            self.w = Writer(tracking_uri)
            self.children: dict[str, dict[str, str]] = {}

        def _child(self, trial) -> dict[str, str]:
            """The trial's run, by key (opened once, journaled while the server is away)."""
            if trial.trial_id not in self.children:
                ref = {"exp_id": self.exp, "run_key": f"{parent_key}/{trial.trial_id}"}
                self.w.write({"op": "start", **ref, "run_name": f"trial-{trial.trial_id}",
                              "tags": {"trainyard.trial_id": trial.trial_id}, "parent_run_id": self.parent,
                              "reopen": False, "params": trial.config})
                self.children[trial.trial_id] = ref
            return self.children[trial.trial_id]

        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            self._child(trial)

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            rows = []
            if "history" in result:  # a resumed trial: epochs this writer may have missed
                rows += [{k: r[k] for k in keys if k in r} for r in result["history"]]
            row = {k: result[k] for k in keys if k != "epoch" and k in result}
            # the trial's own epoch, not Tune's iteration count: a trial resumed after a
            # killed sweep restarts its iteration count but goes on from its checkpoint's epoch
            row["epoch"] = result.get("epoch", result["training_iteration"])
            self.w.write({"op": "metrics", **self._child(trial), "rows": [*rows, row]})

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            ref = self._child(trial)
            last = {k: v for k, v in (trial.last_result or {}).items() if k in keys}
            # recorded first: a sweep resumed after this point never trains this trial again
            write_store_json(done_marker(storage, sweep, trial.trial_id), last)
            self.w.write({"op": "tag", **ref, "key": "trainyard.stopped_early",
                          "value": str(last.get("epoch", 0) < max_t).lower()})
            if node := (trial.last_result or {}).get("node_id"):
                self.w.write({"op": "tag", **ref, "key": "trainyard.node_id", "value": node})
            self.w.write({"op": "terminate", **ref, "status": "FINISHED"})

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self.w.write({"op": "terminate", **self._child(trial), "status": "FAILED"})

        def on_experiment_end(self, trials, **info) -> None:
            self.w.finish(self.parent, "FINISHED")
            self.w.settle_or_report()

    return MlflowSweepCallback()


def reaper(every_s: float = 10.0):
    """A Tune callback that frees, every `every_s`, the CPUs a stopped trial's Train run left
    held (see `reap_leaked_placement_groups`): a trial already waiting for them gets them
    now, not when the next trial starts."""
    from ray import tune

    class ReapLeakedGroups(tune.Callback):
        def __init__(self) -> None:
            self.next = 0.0

        def on_step_begin(self, iteration, trials, **info) -> None:
            if time.monotonic() >= self.next:
                reap_leaked_placement_groups()
                self.next = time.monotonic() + every_s

    return ReapLeakedGroups()
