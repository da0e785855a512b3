"""tune: a Ray Tune sweep (ASHA) over the train params named in `tune.space`; each trial is
a Ray Train run. Writes the best trial's params.

    python -m pipelines.tune --workload char_lm --data data/char_lm/normalized --out tune/char_lm/best_params.json
"""

from __future__ import annotations

import argparse

from components.data.parquet import load_manifest, write_json
from components.runtime import params_key, stage_storage
from components.tracking import runs
from components.training.driver import char_lm_data, image_data
from components.tuning.sweep import run_sweep
from pipelines.common import main, params, paths


def run(args: argparse.Namespace) -> None:
    p = getattr(params(args), args.workload)
    runs.client()  # fails here, before any compute, if MLflow does not answer
    base = p.train.model_dump()
    if args.workload == "image_classifier":
        data = image_data(args.data, base["flip"], base["crop"], p.prepare.source)
    else:
        data = char_lm_data(args.data).as_dict()
    key = params_key(p.tune.model_dump(), base, load_manifest(args.data)["files"])
    outcome = run_sweep(p.tune, base, data, experiment=args.workload,
                        storage=stage_storage(args.workload, "tune"), name=f"sweep-{key}",
                        use_gpu_setting=p.train.use_gpu, workload=args.workload)
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
    main(run, __doc__, paths("--data", "--out"), workloads=("char_lm", "image_classifier"))
