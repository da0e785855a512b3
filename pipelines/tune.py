r"""tune: a Ray Tune sweep (ASHA; random or Optuna TPE search) over the train params named in
`tune.space`; each trial runs the workload's loop (a Ray Train run when it has more than one
worker). Writes the best trial's params.

    python -m pipelines.tune --workload char_lm --data data/char_lm/normalized \
        --trial-params tune/char_lm/trial_params.json --out tune/char_lm/best_params.json

The train params a trial uses come from the `trial_params` stage's file (params.yaml's when
`--trial-params` is left out), so that `tune` does not rerun when `epochs` & co change.
"""

from __future__ import annotations

import argparse

from components import timings
from components.cli.entry import main, paths, workload
from components.config import trial_params
from components.data.parquet import read_json, write_json
from components.run_keys import require_model_declared, run_key
from components.store import stage_storage
from components.tracking.session import connect
from components.tuning.sweep import run_sweep


def sweep_base(train_schema, path: str) -> dict:
    """The trial params the `trial_params` stage wrote, checked against train's schema again
    (`trial_train_config` sets the final-run keys per trial)."""
    base = read_json(path)["train"]
    # num_workers is the trial's own (tune.workers_per_trial); 1 divides every bs
    train_schema.model_validate({**base, "num_workers": 1})
    return base


def run(args: argparse.Namespace) -> None:
    w, p = workload(args)
    connect(args.tracking_uri)  # fails here, before any compute, if MLflow does not answer
    # dvc.yaml passes the trial_params stage's file (what tune depends on); by hand, params.yaml's
    base = sweep_base(w.train_schema, args.trial_params) if args.trial_params else trial_params(p.train, p.tune.space)
    require_model_declared(args.workload, args.params)  # the user's model files are deps: an edit retrains
    data = w.training_data(args.data, base, p).workers  # builds a model by import path, loads starting weights
    # Same code + data + base model + params -> same sweep name -> a killed sweep resumes; any
    # change -> a new sweep. Except num_samples: raised, it adds trials to the same sweep (rounds).
    key = run_key("tune", args.workload, p.tune.model_dump(exclude={"num_samples"}), base,
                  inputs=(args.data, args.trial_params), params_file=args.params)
    outcome = run_sweep(p.tune, base, data, workload=w, tracking_uri=args.tracking_uri, code=key.code,
                        storage=stage_storage(args.workload, "tune"), name=f"sweep-{key.key}",
                        use_gpu_setting=base["use_gpu"])
    # the trials' own training clocks, run `concurrent` at a time: the sweep's work in wall seconds
    timings.add_work(sum(t.get("train_s") or 0.0 for t in outcome.trials) / max(1, outcome.plan.concurrent))
    stopped = sum(1 for t in outcome.trials if (t["epochs"] or 0) < p.tune.epochs)
    write_json(args.out, {
        "params": outcome.best_params, p.tune.metric: outcome.best_metric, "trial_id": outcome.best_trial,
        "num_trials": len(outcome.trials), "stopped_early": stopped, "concurrent": outcome.plan.concurrent,
        "mlflow_parent_run_id": outcome.parent_run_id,
        "trials": sorted(outcome.trials, key=lambda t: t["trial_id"] or ""),
    })
    print(f"[tune] best {p.tune.metric} {outcome.best_metric:.4f} with {outcome.best_params} "
          f"({len(outcome.trials)} trials, {stopped} stopped early by ASHA) -> {args.out}")


if __name__ == "__main__":
    main(run, __doc__, paths("--data", "--out", optional=("--trial-params",)))
