"""The Ray Train driver: data location, TorchTrainer, and what comes back from it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from components.cluster.connect import ray_verbose
from components.cluster.resources import (
    ResourceError,
    free_resources_line,
    start_attempts,
    start_timed_out,
    start_wait_s,
)


def worker_config(loop_config: dict[str, Any], cpus_per_worker: float,
                  select: tuple[str, str] | None) -> dict[str, Any]:
    """The config a worker loop receives, wherever it runs (a Train worker, a Tune trial)."""
    return {**loop_config, "cpus_per_worker": cpus_per_worker, "select": select}


def make_trainer(loop: Callable[[dict[str, Any]], None], loop_config: dict[str, Any], *, name: str,
                 storage_path: str, num_workers: int, cpus_per_worker: float, use_gpu: bool, max_failures: int,
                 callbacks: list | None = None, placement: str = "pack", select: tuple[str, str] | None = None):
    """A TorchTrainer over a workload's per-worker loop, resumable by (`storage_path`, `name`).
    `select` (metric, min|max): Ray keeps the best checkpoint by it besides the latest, and
    the loop can stop early on it (`train.patience`)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    start_wait_s()  # a bad TRAINYARD_WORKER_START_TIMEOUT_S fails here, before any compute
    return TorchTrainer(
        loop,
        train_loop_config=worker_config(loop_config, cpus_per_worker, select),
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, placement_strategy=placement.upper(),
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path,
            # Ray Train restarts the worker group from the last reported checkpoint.
            # and gives up placing its workers after TRAINYARD_WORKER_START_TIMEOUT_S.
            failure_config=ray.train.FailureConfig(max_failures=max_failures,
                                                   controller_failure_limit=start_attempts()),
            # the best checkpoint by `select`, and always the latest (Ray keeps it to resume from)
            checkpoint_config=(ray.train.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=select[0],
                                                          checkpoint_score_order=select[1])
                               if select else ray.train.CheckpointConfig(num_to_keep=2)),
            callbacks=callbacks or [],
            # Ray Train's own INFO lines (worker groups starting, checkpoints written, DDP
            # wrapping) on every trial are noise to a pipeline user; TRAINYARD_RAY_VERBOSE=1 shows them
            logging_config=ray.train.LoggingConfig(log_level="INFO" if ray_verbose() else "WARNING")),
    )


@dataclass(frozen=True)
class TrainOutcome:
    """The last checkpoint's state (the whole history), the best one's (the model to publish;
    the last when no metric selects), and where the run lives."""

    state: dict[str, Any]
    best: dict[str, Any]
    run_path: str
    num_workers: int

    @property
    def published(self) -> dict[str, Any]:
        """What a workload's `publish` gets: the best epoch's weights with the whole run's history."""
        return {**self.state, "model": self.best["model"]}


def fit_in_process(loop: Callable[[dict[str, Any]], None], loop_config: dict[str, Any], *, run_uri: str,
                   cpus_per_worker: float, use_gpu: bool, select: tuple[str, str] | None = None,
                   on_report: Callable[[dict[str, Any]], None] | None = None) -> TrainOutcome:
    """Run a workload's loop as the one rank, in this process, checkpointing to `run_uri` in
    the run store (a run started again resumes there); what `fit` returns for a Train run.

    No Ray is started: for one worker, a Train controller, a worker group and a placement
    group cost seconds and buy nothing. A failure ends the run (there is no worker group to
    restart); the next run with the same key resumes from the last checkpoint."""
    import torch

    from components.training.checkpoints import load_state
    from components.training.session import StageSession, running_in

    device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
    session = StageSession(run_uri, device, select, on_report)
    with running_in(session):
        loop(worker_config(loop_config, cpus_per_worker, select))
    last, best = session.latest(), session.best()
    if last is None or best is None:
        raise RuntimeError("training finished without reporting a checkpoint")

    def load(entry: dict[str, Any]) -> dict[str, Any]:
        with session.opened(entry) as d:
            return load_state(d)

    state = load(last)
    return TrainOutcome(state=state, best=state if best is last else load(best), run_path=session.run_uri,
                        num_workers=1)


def fit(trainer, num_workers: int, select: tuple[str, str] | None = None) -> TrainOutcome:
    """Run the trainer; load the last checkpoint it reported and the best by `select`
    (the earliest on a tie)."""
    from components.training.checkpoints import load_state

    try:
        result = trainer.fit()
    except Exception as err:
        if start_timed_out(err):
            scaling = trainer.scaling_config
            raise ResourceError(
                f"the {num_workers} training workers ({scaling.resources_per_worker or {'CPU': 1}} each) could not be "
                f"placed within {start_wait_s():g} s ({free_resources_line()} now): other jobs hold the cluster; "
                f"raise TRAINYARD_WORKER_START_TIMEOUT_S to wait longer") from err
        raise
    if result.checkpoint is None:
        raise RuntimeError("training finished without reporting a checkpoint")
    with result.checkpoint.as_directory() as d:
        state = load_state(d)
    best = state
    scored = [(c, m) for c, m in (result.best_checkpoints or []) if select and select[0] in m]
    if scored:
        metric, sign = select[0], (1 if select[1] == "min" else -1)
        checkpoint, _ = min(scored, key=lambda cm: (sign * cm[1][metric], cm[1].get("epoch", 0)))
        with checkpoint.as_directory() as d:
            best = load_state(d)
    return TrainOutcome(state=state, best=best, run_path=result.path, num_workers=num_workers)
