"""Where a worker loop runs: the one choice, for the train stage and for every sweep trial.

    here     the calling process is the one rank: a stage's own process (no Ray at all) or a
             Tune trial's process; one worker needs no worker group, no DDP and no placement
             group (seconds per run on this machine)
    workers  a Ray Train run (TorchTrainer): DDP over `num_workers`, worker-group restarts

A 1-worker loop runs `here` when its params allow it (`in_process`) and it is already where it
should run: a Tune trial is on the cluster; a stage is when no cluster is named (`RAY_ADDRESS`
unset). With a cluster, even one worker runs there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from components.store import local_state_dir
from components.training.driver import (
    TrainOutcome,
    fit,
    fit_in_process,
    make_trainer,
    worker_config,
)

Loop = Callable[[dict[str, Any]], None]
Hook = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Launch:
    """How a loop is run: its workers, what each holds, and what the run keeps."""

    num_workers: int
    cpus_per_worker: float
    use_gpu: bool
    in_process: bool = True  # a 1-worker run may go in the calling process
    select: tuple[str, str] | None = None  # (metric, min|max): the best checkpoint, early stopping
    placement: str = "pack"
    max_failures: int = 0

    @classmethod
    def of(cls, cfg: dict[str, Any], use_gpu: bool, select: tuple[str, str] | None, **kw: Any) -> Launch:
        """From a train config (its `num_workers`, `cpus_per_worker`, `in_process`, `placement`,
        `max_failures`); `kw` overrides."""
        base = {k: cfg[k] for k in ("num_workers", "cpus_per_worker", "in_process", "placement", "max_failures")
                if k in cfg}
        return cls(**{**base, "use_gpu": use_gpu, "select": select, **kw})


def runs_here(spec: Launch, *, in_trial: bool = False) -> bool:
    """Whether the loop runs in the calling process (see the module's docstring)."""
    if spec.num_workers != 1 or not spec.in_process:
        return False
    return in_trial or not os.environ.get("RAY_ADDRESS")


def launch(loop: Loop, loop_config: dict[str, Any], spec: Launch, *, name: str, storage: str,
           on_report: Hook | None = None, live_keys: tuple[str, ...] = ()) -> TrainOutcome:
    """Run a stage's loop where `runs_here` says, resumable by (`storage`, `name`): a run
    started again with the same name resumes from its last checkpoint. `on_report` gets rank
    0's reports (`live_keys` of them, and the history) while it trains; a Train run relays them
    through a file in this machine's state folder (Ray Train's controller runs on this node)."""
    if runs_here(spec):
        # its own folder: a Train run of the same name (with RAY_ADDRESS set) keeps another layout
        return fit_in_process(loop, loop_config, run_uri=f"{storage.rstrip('/')}/{name}-in-process",
                              cpus_per_worker=spec.cpus_per_worker, use_gpu=spec.use_gpu, select=spec.select,
                              on_report=on_report)
    from components.training.relay import ReportFeed, feed_callback

    feed = local_state_dir() / "live" / f"{name}-{os.getpid()}.jsonl" if on_report else None
    trainer = make_trainer(loop, loop_config, name=name, storage_path=storage, num_workers=spec.num_workers,
                           cpus_per_worker=spec.cpus_per_worker, use_gpu=spec.use_gpu,
                           max_failures=spec.max_failures, placement=spec.placement, select=spec.select,
                           callbacks=[feed_callback(feed, live_keys)] if feed else [])
    if feed is None:
        return fit(trainer, spec.num_workers, spec.select)
    with ReportFeed(feed, on_report):
        return fit(trainer, spec.num_workers, spec.select)


def launch_trial(loop: Loop, loop_config: dict[str, Any], spec: Launch, *, name: str, storage: str) -> None:
    """Run one Tune trial's loop where `runs_here` says; its reports and checkpoints go to Tune
    (straight from the loop, or from the Train run's rank 0)."""
    from components.training.session import TuneSession, running_in

    if runs_here(spec, in_trial=True):
        with running_in(TuneSession(spec.use_gpu)):
            loop(worker_config(loop_config, spec.cpus_per_worker, spec.select))
        return
    from ray.tune.integration.ray_train import TuneReportCallback

    from components.cluster.processes import reap_leaked_placement_groups

    reap_leaked_placement_groups()  # CPUs a stopped trial's Train run may have left held
    handover = guard_report_handover()  # before the first report can exist
    make_trainer(loop, loop_config, name=name, storage_path=storage, num_workers=spec.num_workers,
                 cpus_per_worker=spec.cpus_per_worker, use_gpu=spec.use_gpu, max_failures=spec.max_failures,
                 callbacks=[TuneReportCallback()], select=spec.select, placement=spec.placement).fit()
    wait_for_tune_to_take_reports(handover)


class _Handover:
    """Counts the trial actor's result fetches: started and finished (one thread writes both)."""

    def __init__(self) -> None:
        self.started = 0
        self.finished = 0


def guard_report_handover() -> _Handover | None:
    """Make the trial actor's hand-over of Train reports to Tune observable; see below.

    The trial actor's main thread moves each report from the Train controller's queue into
    Tune's one-slot result queue inside one `_get_result_from_queues` call; counting those
    calls lets the training thread wait until no report is half-way across.
    """
    from ray.train._internal.session import get_session

    session = get_session()
    fetch = getattr(session, "_get_result_from_queues", None)
    if fetch is None:  # not under Tune, or Ray changed: nothing to guard
        return None
    counts = _Handover()

    def counted(block: bool):
        counts.started += 1
        try:
            return fetch(block)
        finally:
            counts.finished += 1

    session._get_result_from_queues = counted
    return counts


def wait_for_tune_to_take_reports(handover: _Handover | None, timeout_s: float = 600.0) -> None:
    """Return only once Tune has taken the Train run's last report.

    Ray Tune's function trainable deadlocks otherwise: the Train controller's last report can
    still sit in the one-slot queue to the trial (Tune takes it when its driver asks for the
    next result, late when the driver is busy, e.g. logging to a slow tracking server), and
    the "function returned" marker Tune's wrapper puts into the trial's one-slot result queue
    as soon as we return would take the slot that report needs; both then wait forever.
    After `fit()` no new report arrives, so once the controller's queue is empty, every
    fetch that could have taken a report has started; when those have finished, the last
    report is in Tune's hands and returning is safe.
    """
    from ray.train._internal.session import get_session

    pending = getattr(get_session(), "_inter_actor_queue", None)
    if handover is None or pending is None:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not pending.empty():
        time.sleep(0.2)
    began = handover.started  # read after seeing the queue empty: later fetches find nothing
    while time.monotonic() < deadline:
        if handover.finished >= began:
            return
        time.sleep(0.05)
    print(f"[tune] warning: Tune did not take the trial's last report within {timeout_s:g} s", flush=True)
