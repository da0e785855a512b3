"""Ray Tune sweeps over a workload's worker loop.

Kept apart as in Ray's examples: the worker function (a workload's loop.py), the per-trial
driver (`_trial`: the loop itself in the trial's process for 1-worker trials, else a
TorchTrainer) and the tuner (`run_sweep`). The Tune driver process is the only MLflow writer
(`callbacks`): one parent run, one child run per trial, keyed by the trial id so a resumed
sweep never duplicates them. Raising `num_samples` on a finished sweep adds a round of new
trials; the searcher (`search`) is told the earlier ones."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from components.cluster.connect import error_line, init_ray, stop_head_watch
from components.cluster.resources import TrialPlan, plan_trials, want_gpu
from components.config import FINAL_ONLY, TuneParams
from components.store import DamagedState, read_store_json
from components.training.launch import Launch, runs_here
from components.tuning.callbacks import done_marker, mlflow_callback, reaper
from components.tuning.search import planned, rounds, search_space, searcher

if TYPE_CHECKING:  # the stage hands its workload in: tuning does not import workloads
    from components.workloads.base import Workload


def trial_steps(tp: TuneParams, per_pass: int) -> int:
    """Steps in a trial epoch: `tune.steps_per_epoch`, or `pass_frac` of a pass over the
    training data (`per_pass` steps), at least `min_steps`: the budget scales with the data."""
    return tp.steps_per_epoch or max(tp.min_steps, math.ceil(tp.pass_frac * per_pass))


def trial_train_config(base: dict[str, Any], tp: TuneParams, sampled: dict[str, Any],
                       schema: type[BaseModel], steps_per_pass: Callable[[dict[str, Any]], int]) -> dict[str, Any]:
    """The train config one trial runs: the trial's train params (`trial_params`), the sweep's
    budget, the sampled values; final-run-only keys at their defaults, so they cannot
    change a trial's result (tune does not rerun when they change). `schema`: the workload's
    train section; `steps_per_pass(cfg)`: a pass's steps for that config (a sampled bptt or
    bs changes it)."""
    cfg = {k: v for k, v in base.items() if k not in FINAL_ONLY}
    cfg |= {"epochs": tp.epochs, "num_workers": tp.workers_per_trial, "seed": tp.seed, **sampled}
    cfg["steps_per_epoch"] = trial_steps(tp, steps_per_pass(cfg))
    # Sampled values obey the same schema as hand-written ones (checked at load: config.py).
    return schema.model_validate(cfg).model_dump()


def in_process(tp: TuneParams) -> bool:
    """Whether a trial runs its loop in the Tune trial's own process: one worker needs no
    worker group, no DDP and no placement group of its own (seconds per trial on a sweep of
    short trials); `tune.in_process: false` keeps Ray Train for every trial. The launcher's
    choice, asked ahead: the trial's resources and actor reuse follow it."""
    return runs_here(trial_launch(tp, {}, False, None), in_trial=True)


def trial_launch(tp: TuneParams, train_cfg: dict[str, Any], use_gpu: bool, select: tuple[str, str] | None) -> Launch:
    """How a trial's loop is launched: `tune.workers_per_trial` workers of `tune.cpus_per_worker`;
    a Train-run trial restarts its workers once (as a crashed in-process trial is retried once)."""
    return Launch(num_workers=tp.workers_per_trial, cpus_per_worker=tp.cpus_per_worker, use_gpu=use_gpu,
                  in_process=tp.in_process, select=select, placement=train_cfg.get("placement", "pack"),
                  max_failures=1)


def trial_resources(tp: TuneParams, use_gpu: bool) -> dict[str, float]:
    """What Tune reserves for one trial's own process: the worker's CPUs (and GPU) when the
    loop runs there; else memory only: it just waits on its TorchTrainer, and the CPUs go to
    the Train workers, which Ray Train places in their own placement group."""
    own = {"memory": tp.driver_memory_mb * 2**20}
    if in_process(tp):
        return {"CPU": tp.cpus_per_worker, "GPU": tp.gpus_per_worker if use_gpu else 0, **own}
    return {"CPU": 0, **own}


def _trial(config: dict[str, Any], *, base: dict[str, Any], tp: TuneParams, data: dict[str, Any],
           storage: str, sweep: str, use_gpu: bool, loop: Callable[[dict[str, Any]], None],
           schema: type[BaseModel], select: tuple[str, str], steps_per_pass: Callable[[dict[str, Any]], int]) -> None:
    """One trial: the workload's loop, where `components.training.launch` runs it (this
    process for one worker, else a Ray Train run whose rank-0 reports flow to Tune)."""
    from ray import tune

    from components.training.launch import launch_trial

    trial_id = tune.get_context().get_trial_id()
    try:
        done = read_store_json(done_marker(storage, sweep, trial_id))
    except DamagedState as err:
        print(f"[tune] {err}; the trial runs again", flush=True)
        done = None
    if done is not None:
        # Completed before the sweep driver was killed, but after Tune's last snapshot of
        # the sweep: hand back the recorded result instead of training again.
        tune.report(done)
        return
    train_cfg = trial_train_config(base, tp, config, schema, steps_per_pass)
    # the sweep's key in the run's name: never another sweep's run
    launch_trial(loop, {"train": train_cfg, "data": data}, trial_launch(tp, train_cfg, use_gpu, select),
                 name=f"{sweep}-{trial_id}", storage=storage)


def _trials(grid, metric: str) -> list[dict[str, Any]]:
    """Each trial of a finished Tune run: id, config, epochs, metric, training seconds, error."""
    out = []
    for r in grid:
        m = r.metrics or {}
        out.append({"trial_id": m.get("trial_id"), "config": r.config, "epochs": m.get("epoch"),
                    metric: m.get(metric), "train_s": m.get("train_s"), "node_id": m.get("node_id"),
                    "error": error_line(r.error) if r.error else None})
    return out


@dataclass(frozen=True)
class SweepOutcome:
    best_params: dict[str, Any]
    best_metric: float
    best_trial: str
    trials: list[dict[str, Any]]
    plan: TrialPlan
    parent_run_id: str


def run_sweep(tp: TuneParams, base_train: dict[str, Any], data: dict[str, Any], *, workload: Workload,
              tracking_uri: str, storage: str, name: str, use_gpu_setting: str | bool = "auto",
              code: str = "") -> SweepOutcome:
    """Run (or resume) the sweep stored at `storage/name`; return the best trial's params.
    MLflow: experiment `workload.name`, a parent run and a child run per trial, at `tracking_uri`."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    resources = init_ray(dashboard=not in_process(tp), shared=True)  # a stopped trial's Train run: see init_ray
    use_gpu = want_gpu(use_gpu_setting, resources, tp.workers_per_trial) and tp.gpus_per_worker > 0
    # reproducible: one trial at a time, so ASHA and the searcher see results in one order
    plan = plan_trials(resources, tp.workers_per_trial, tp.cpus_per_worker, tp.gpus_per_worker if use_gpu else 0.0,
                       tp.driver_memory_mb, 1 if tp.reproducible else tp.max_concurrent)
    # A pass's steps for the budget line: the searched keys (left out of `base_train`) at their
    # defaults; each trial's own budget uses its sampled values (`trial_train_config`).
    filled = workload.train_schema.model_validate({**base_train, "num_workers": 1}).model_dump()
    per_pass = workload.steps_per_pass(data, filled)
    budget = (f"{tp.steps_per_epoch} steps (tune.steps_per_epoch)" if tp.steps_per_epoch else
              f"{trial_steps(tp, per_pass)} steps ({tp.pass_frac:g} of a {per_pass}-step pass, at least {tp.min_steps})")
    print(f"[tune] {planned(tp)} trials, {plan.concurrent} at a time "
          f"({tp.workers_per_trial} worker(s) x {tp.cpus_per_worker:g} CPU each, cluster {resources.get('CPU', 0):g} CPUs); "
          f"each trial up to {tp.epochs} epochs of {budget}", flush=True)

    trainable = tune.with_resources(
        tune.with_parameters(_trial, base=base_train, tp=tp, data=data, storage=storage, sweep=name,
                             use_gpu=use_gpu, loop=workload.worker_loop(), schema=workload.train_schema,
                             select=workload.select,
                             steps_per_pass=lambda cfg: workload.steps_per_pass(data, cfg)),
        trial_resources(tp, use_gpu))
    experiment = workload.name
    parent_key = f"{experiment}/tune/{name}"
    callback = mlflow_callback(tracking_uri, experiment, parent_key, {"trainyard.stage": "tune", "trainyard.code": code},
                                {f"space.{k}": v.model_dump_json(exclude_none=True) for k, v in tp.space.items()}
                                | {"search": tp.search, "concurrent": plan.concurrent}, tp.epochs,
                                storage, name, workload.live_metrics)
    trials: list[dict[str, Any]] = []
    names = rounds(storage, name)
    for i, round_name in enumerate(names):
        path = f"{storage.rstrip('/')}/{round_name}"
        last = i == len(names) - 1
        print(f"[tune] {'resuming the sweep' if last else f'reading its finished round {i + 1}'} at {path}",
              flush=True)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        # The restored run config comes from the pickled sweep state; attach this
        # process's MLflow writer (the old one died with the killed driver).
        # (A new list each time: Tune appends its progress reporter to the one it is given.)
        tuner._local_tuner.get_run_config().callbacks = [callback, reaper()]
        trials += _trials(tuner.fit(), tp.metric)
    if len(trials) < planned(tp):
        more = planned(tp) - len(trials)
        round_name = name if not names else f"{name}-r{len(names) + 1}"
        if trials:
            print(f"[tune] {len(trials)} trials done before: {more} new ones (round {len(names) + 1})", flush=True)
        tuner = tune.Tuner(
            trainable,
            **({} if tp.search == "optuna" else {"param_space": search_space(tp.space)}),
            tune_config=tune.TuneConfig(
                metric=tp.metric, mode=tp.mode, num_samples=more,
                scheduler=ASHAScheduler(time_attr="epoch", max_t=tp.epochs,
                                        grace_period=tp.grace_period, reduction_factor=tp.reduction_factor),
                search_alg=searcher(tp, plan.concurrent, trials, len(names)),
                # in-process trials all ask for the same resources: one process serves them in turn
                # (torch imported once), instead of a process started per trial
                reuse_actors=in_process(tp)),
            run_config=tune.RunConfig(name=round_name, storage_path=storage, callbacks=[callback, reaper()], verbose=1,
                                      # a trial's crash restarts it from its last checkpoint once, as
                                      # Ray Train's worker-group restart does for a Train-run trial
                                      failure_config=tune.FailureConfig(max_failures=1 if in_process(tp) else 0)),
        )
        trials += _trials(tuner.fit(), tp.metric)
    stop_head_watch()  # the trials' results are in hand: writing them needs no cluster
    ok = [t for t in trials if t[tp.metric] is not None]
    if not ok:
        raise RuntimeError(f"every trial failed; first error: {trials[0]['error'] if trials else 'no trials'}")
    best = min(ok, key=lambda t: ((1 if tp.mode == "min" else -1) * t[tp.metric], t["trial_id"] or ""))
    return SweepOutcome({k: best["config"][k] for k in tp.space}, best[tp.metric], best["trial_id"],
                        trials, plan, callback.parent)
