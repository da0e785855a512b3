"""Per-trial overhead of a sweep: a trial's wall time minus the time it spent training.

    python bench/sweep_overhead.py                  # 8 digits trials, 2 at a time
    python bench/sweep_overhead.py --trials 16

The digits sweep of params.yaml (ASHA, `image_classifier.tune`), three ways, one after the
other in one Ray instance:
  1w      1-worker trials as the pipeline runs them (the loop in the Tune trial's process)
  1w-ray  1-worker trials through a Ray Train run each (`tune.in_process: false`, as before)
  2w      2-worker trials (a Ray Train run each, DDP), one at a time on 2 CPUs
  repro   as 1w with `tune.reproducible: true` (one trial at a time): what the same pick on
          every run costs in sweep time
A trial's wall time is its MLflow child run's (the sweep driver opens it when Tune starts the
trial and closes it when Tune has its last result); its training time is the `train_s` of its
last report (seconds inside its training steps). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.params import load_params  # noqa: E402


def sweep(label: str, tune_over: dict, p, w, data, work: Path, uri: str) -> dict:
    """Run one sweep; per-trial (wall, training) seconds from its MLflow child runs."""
    from mlflow import MlflowClient

    from components.tuning.sweep import run_sweep

    tp = type(p.tune).model_validate(p.tune.model_dump() | tune_over)
    base = p.train.model_dump()
    t0 = time.perf_counter()
    out = run_sweep(tp, base, data, workload=w, tracking_uri=uri, storage=str(work / "runs"),
                    name=f"{label}-{int(time.time())}", use_gpu_setting=False)
    wall = time.perf_counter() - t0
    client = MlflowClient(uri)
    trained = {t["trial_id"]: t["train_s"] for t in out.trials}
    rows = []
    for run in client.search_runs([client.get_experiment_by_name(w.name).experiment_id],
                                  f"tags.mlflow.parentRunId = '{out.parent_run_id}'"):
        train_s = trained.get(run.data.tags.get("trainyard.trial_id"))
        if run.info.end_time and train_s is not None:
            rows.append(((run.info.end_time - run.info.start_time) / 1000, train_s))
    over = [t - s for t, s in rows]
    res = {"label": label, "trials": len(rows), "concurrent": out.plan.concurrent, "sweep_wall_s": round(wall, 1),
           "mean_trial_wall_s": round(statistics.mean(t for t, _ in rows), 2),
           "mean_train_s": round(statistics.mean(s for _, s in rows), 2),
           "per_trial_overhead_s": round(statistics.mean(over), 2), "median_overhead_s": round(statistics.median(over), 2)}
    print(f"{label:7s} {res['trials']} trials, {res['concurrent']} at a time: sweep {wall:.1f} s; per trial "
          f"{res['mean_trial_wall_s']:.2f} s wall, {res['mean_train_s']:.2f} s training, overhead "
          f"{res['per_trial_overhead_s']:.2f} s (median {res['median_overhead_s']:.2f})", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--skip", action="append", default=[], choices=["1w", "1w-ray", "2w", "repro"],
                    help="leave a variant out")
    args = ap.parse_args()

    from components.cluster.connect import init_ray
    from components.workloads import get

    w = get("image_classifier")
    p = load_params(args.params).image_classifier
    results = {}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        w.prepare(p, str(work / "prepared"))
        w.normalize(p, str(work / "prepared"), str(work / "normalized"))
        data = w.training_data(str(work / "normalized"), p.train.model_dump(), p).workers
        uri = f"sqlite:///{work / 'mlflow.db'}"
        init_ray()
        variants = {"1w": {"workers_per_trial": 1, "in_process": True},
                    "1w-ray": {"workers_per_trial": 1, "in_process": False},
                    "2w": {"workers_per_trial": 2},
                    "repro": {"workers_per_trial": 1, "in_process": True, "reproducible": True}}
        for label, over in variants.items():
            if label not in args.skip:
                results[label] = sweep(label, over | {"num_samples": args.trials}, p, w, data, work, uri)
    line = {k: v for k, v in {
        "per_trial_overhead_s": results.get("1w", {}).get("per_trial_overhead_s"),
        "per_trial_overhead_train_run_s": results.get("1w-ray", {}).get("per_trial_overhead_s"),
        "per_trial_overhead_2w_s": results.get("2w", {}).get("per_trial_overhead_s"),
        "reproducible_sweep_time_ratio": (round(results["repro"]["sweep_wall_s"] / results["1w"]["sweep_wall_s"], 2)
                                          if {"repro", "1w"} <= set(results) else None),
        "trials": args.trials, "variants": list(results.values())}.items() if v is not None}
    print(json.dumps(line))


if __name__ == "__main__":
    main()
