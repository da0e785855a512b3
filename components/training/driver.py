"""The Ray Train driver: data location, TorchTrainer, and what comes back from it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from components.cluster.connect import ray_verbose
from components.cluster.resources import (
    ResourceError,
    free_resources_line,
    start_attempts,
    start_timed_out,
    start_wait_s,
)

if TYPE_CHECKING:  # torch: only where a checkpoint is read
    from components.training.checkpoints import Candidate


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
    mend_run_folder(storage_path, name)
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
            # A preempted node's restart is counted apart from `max_failures`, and without a
            # bound: each one goes on from the checkpoint written on its notice, so none is lost.
            failure_config=ray.train.FailureConfig(max_failures=max_failures, max_preemption_failures=-1,
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


SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's list of a run's checkpoints


def mend_run_folder(storage_path: str, name: str) -> str | None:
    """Make a Train run's folder one Ray Train will resume, and say what was done (None: nothing).

    Ray Train refuses to start a run whose checkpoint list (written in place, not renamed
    into place) does not parse, or names a checkpoint folder that is gone (an interrupted
    copy of the run store), and would refuse it on every retry. A list naming folders that
    are gone loses those entries; one that does not parse is set aside
    (`<list>.damaged-<time>`) and the run starts over."""
    import pyarrow.fs as pafs

    from components.store import (
        DamagedState,
        read_store_json,
        set_aside,
        store_fs,
        write_store_json,
    )

    uri = f"{storage_path.rstrip('/')}/{name}/{SNAPSHOT}"
    fs, path = store_fs(uri)
    folder = path.rsplit("/", 1)[0]
    try:
        snap = read_store_json(uri)
        if snap is None:
            return None
        results, indices = snap["checkpoint_results"], snap["checkpoint_report_indices"]
        if len(results) != len(indices):
            raise DamagedState(f"{uri} lists {len(results)} checkpoints with {len(indices)} report indices")
        gone = {r["checkpoint_dir_name"] for r in results
                if fs.get_file_info(f"{folder}/{r['checkpoint_dir_name']}").type != pafs.FileType.Directory}
    except (DamagedState, KeyError, TypeError) as err:
        said = (f"{err if isinstance(err, DamagedState) else f'{uri} is not a checkpoint list ({err!r})'}; "
                f"set aside as {set_aside(uri)}: the run starts over")
    else:
        if not gone:
            return None
        kept = [(r, i) for r, i in zip(results, indices, strict=True) if r["checkpoint_dir_name"] not in gone]
        snap["checkpoint_results"], snap["checkpoint_report_indices"] = [r for r, _ in kept], [i for _, i in kept]
        latest = snap.get("latest_checkpoint_result")
        if latest and latest["checkpoint_dir_name"] in gone:
            # the list is kept in score order; the latest is the one reported last
            snap["latest_checkpoint_result"] = max(kept, key=lambda ri: ri[1])[0] if kept else None
        for key in ("validated_checkpoint_dir_names", "timed_out_validation_checkpoint_dir_names",
                    "failed_validation_checkpoint_dir_names"):
            snap[key] = [n for n in snap.get(key, []) if n not in gone]
        write_store_json(uri, snap)
        said = (f"{uri} lists checkpoint(s) that are gone ({', '.join(sorted(gone))}); dropped from the list: "
                f"the run goes on from {latest_name(snap) or 'the start'}")
    print(f"[train] {said}", flush=True)
    return said


def latest_name(snap: dict[str, Any]) -> str | None:
    """The last checkpoint a Train run's checkpoint list names, or None."""
    latest = snap.get("latest_checkpoint_result")
    return latest["checkpoint_dir_name"] if latest else None


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

    from components.training.session import StageSession, running_in

    device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
    session = StageSession(run_uri, device, select, on_report)
    with running_in(session):
        loop(worker_config(loop_config, cpus_per_worker, select))
    last, best = session.latest(), session.best()
    if last is None or best is None:
        raise RuntimeError("training finished without reporting a checkpoint")
    ranked = [best] + [e for e in reversed(session.entries) if e is not best]
    return _outcome([(e["dir"], lambda e=e: session.opened(e)) for e in ranked],
                    (last["dir"], lambda: session.opened(last)), session.run_uri, 1)


def _outcome(ranked: list[Candidate], last: Candidate, run_path: str, num_workers: int) -> TrainOutcome:
    """Load the last checkpoint and the best that loads of `ranked` (best first): a best one
    damaged since it was reported gives way to the next, with one line saying so."""
    from components.training.checkpoints import fallback_line, first_that_loads, load_state

    label, opened = last
    with opened() as d:
        state = load_state(d, label)  # written by this run's last report: damage here is real news
    best, used, damaged = first_that_loads(ranked)
    if damaged:
        print(f"[train] {fallback_line(damaged, used, 'publishing the last checkpoint')}", flush=True)
    return TrainOutcome(state=state, best=best if best is not None else state, run_path=run_path,
                        num_workers=num_workers)


def fit(trainer, num_workers: int, select: tuple[str, str] | None = None) -> TrainOutcome:
    """Run the trainer; load the last checkpoint it reported and the best by `select`
    (the earliest on a tie)."""
    from components.cluster.connect import stop_head_watch

    try:
        result = trainer.fit()
        stop_head_watch()  # the checkpoints are in the run store: publishing needs no cluster
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

    def named(c) -> Candidate:
        return c.path.rstrip("/").rsplit("/", 1)[-1], c.as_directory

    # a checkpoint written on a preemption notice is no epoch's (its select metric is NaN)
    scored = [(c, m) for c, m in (result.best_checkpoints or [])
              if select and select[0] in m and "preempted_at_step" not in m]
    ranked = []
    if scored:
        metric, sign = select[0], (1 if select[1] == "min" else -1)
        ranked = [named(c) for c, _ in sorted(scored, key=lambda cm: (sign * cm[1][metric], cm[1].get("epoch", 0)))]
    return _outcome(ranked or [named(result.checkpoint)], named(result.checkpoint), result.path, num_workers)
