r"""train: the workload's model, data parallel over Ray Train workers, with the sweep's best
params unless `train.use_tuned: false`. A 1-worker run with no cluster to go to (`RAY_ADDRESS`
unset) trains in this process instead, without starting Ray (`train.in_process`).

    python -m pipelines.train --workload char_lm --data data/char_lm/normalized \
        --tuned tune/char_lm/best_params.json --model models/char_lm/model.pt \
        --metrics metrics/char_lm/train.json --plot plots/char_lm/train_curve.csv

The run record (MLflow run id, checkpoint folder, tuned values) goes to `train_run.json` beside
the model (or `--run-info`); `--metrics` holds numbers only, for `dvc metrics`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from components import timings
from components.cli.entry import main, paths, workload
from components.cluster.connect import init_ray
from components.cluster.resources import check_train_fits, local_resources, want_gpu
from components.config import effective_train_params
from components.data.parquet import read_json, write_json
from components.run_keys import require_model_declared, run_key
from components.store import stage_storage
from components.tracking.session import connect, stage_run
from components.training.launch import Launch, launch, runs_here
from components.training.report import describe_values, outcome_metrics, write_curve


def train_stage(args: argparse.Namespace) -> dict[str, Any]:
    """Run the training stage of `args.workload`; returns the metrics it publishes and its run record."""
    w, p = workload(args)
    tuned_file = read_json(args.tuned)["params"] if p.train.use_tuned and args.tuned else None
    cfg, tuned_values = effective_train_params(p.train, tuned_file)
    t = connect(args.tracking_uri)  # fails here, before any compute, if MLflow does not answer
    require_model_declared(args.workload, args.params)  # the user's model files are deps: an edit retrains
    data = w.training_data(args.data, cfg, p)  # builds a model by import path, loads starting weights
    here = runs_here(Launch.of(cfg, False, w.select))
    resources = local_resources() if here else init_ray(dashboard=False, shared=True)
    spec = Launch.of(cfg, want_gpu(cfg["use_gpu"], resources, cfg["num_workers"]), w.select)
    check_train_fits(resources, spec.num_workers, spec.cpus_per_worker, spec.use_gpu)
    # Same code + params + data + base model -> same key -> a re-run resumes this run's
    # checkpoints; a change to any of them is a new run (new Ray run name, new MLflow run).
    # The tuned values are in cfg (when they are used): best_params.json is keyed through it.
    rk = run_key("train", args.workload, cfg, inputs=(args.data,), params_file=args.params)
    shown = [k for k in w.headline if k in cfg]
    shown += sorted(set(tuned_values) - set(shown))  # a searched n_hidden shows too
    with stage_run(t, args.workload, f"{args.workload}/train/{rk.key}", f"train-{rk.key}",
                   {"trainyard.stage": "train", "trainyard.arch": w.arch(cfg), "trainyard.code": rk.code},
                   w.live_metrics, params=cfg | data.logged,
                   datasets=(args.data, {"train": "training", "val": "validation"})) as run:
        where = "1 worker, in this process (no cluster: RAY_ADDRESS unset)" if here else f"{spec.num_workers} worker(s)"
        print(f"[train] {w.arch(cfg)} on {where}{' (GPU)' if spec.use_gpu else ''}, "
              f"{describe_values(cfg, p.train.model_dump(), tuned_values, shown)}, {w.budget(cfg)}; "
              f"MLflow run {run.run_id}", flush=True)
        with timings.clock("fit_s"):
            outcome = launch(w.worker_loop(), {"train": cfg, "data": data.workers}, spec, name=f"run-{rk.key}",
                             storage=stage_storage(args.workload, "train"), on_report=run.live.log,
                             live_keys=w.live_metrics)
        history = outcome.state["history"]
        timings.add_work(sum(h.get("epoch_s", 0.0) for h in history))  # the loop's own clock: steps and val
        run.writer.log_history(run.run_id, history)  # whatever the live writes missed (the checkpoint has it all)
        # the best epoch's weights (by the workload's `select` metric), with the whole run's history
        w.publish(args.model, outcome.published, args.data, data.workers, cfg)
        run.tag("trainyard.published_epoch", str(outcome.best["epoch"]))
        # Who ran it and with what goes to the run record beside the model (evaluate and
        # register read the MLflow run id there); `dvc metrics` reads numbers only.
        metrics = outcome_metrics(outcome, spec.num_workers, w.published_metrics)
        info = {"run_id": run.run_id, "model": w.arch(cfg), "selected_by": f"{w.select[0]} ({w.select[1]})",
                "params": {k: cfg[k] for k in shown}, "run_path": outcome.run_path,
                "worker_nodes": outcome.state.get("worker_nodes")}
        write_json(args.run_info or Path(args.model).with_name("train_run.json"), info)
        write_json(args.metrics, metrics)
        write_curve(args.plot, history, w.live_metrics)
        run.writer.log_artifact(run.run_id, args.plot)
    return metrics | info


def run(args: argparse.Namespace) -> None:
    m = train_stage(args)
    also = "".join(f", {k} {v:.4f}" for k, v in m.items() if k.startswith("val_") and k != "val_loss")
    print(f"[train] done: {m['epochs']} epochs ({m['train_s']:.0f} s of training); published epoch "
          f"{m['published_epoch']} (best {m['selected_by']}): val_loss {m['val_loss']:.4f}{also} -> {args.model}")


if __name__ == "__main__":
    main(run, __doc__, paths("--data", "--model", "--metrics", "--plot", optional=("--tuned", "--run-info")))
