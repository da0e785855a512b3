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
import csv
import time
from pathlib import Path
from typing import Any

from components import timings
from components.cli.entry import main, paths, workload
from components.cluster.connect import init_ray
from components.cluster.resources import check_train_fits, local_resources, want_gpu
from components.data.parquet import atomic_path, read_json, write_json
from components.run_keys import run_key
from components.store import stage_storage
from components.tracking import runs
from components.tracking.journal import Writer
from components.tracking.live import LiveFeed, LiveMetrics, feed_callback
from components.tracking.session import connect
from components.training.driver import fit, fit_in_process, make_trainer, trains_in_process


def effective_train_params(tp, tuned_file: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """train's params, with the sweep's best values on top when `use_tuned` is true; and the
    tuned values themselves ({} when none apply)."""
    cfg = tp.model_dump()
    best: dict[str, Any] = {}
    if tp.use_tuned and tuned_file:
        best = read_json(tuned_file)["params"]
        cfg.update(best)
        # Re-validate: a tuned value must satisfy the same schema as a hand-written one.
        cfg = type(tp).model_validate(cfg).model_dump()
    return cfg, best


def describe_values(cfg: dict[str, Any], hand: dict[str, Any], tuned: dict[str, Any], keys: list[str]) -> str:
    """`lr 0.00404 (tuned; params.yaml's 0.01 unused while use_tuned is true), bptt 64`: which
    values the run uses, and where a tuned one overrides a hand-set value."""
    def show(v: Any) -> str:  # a searched knob may be a string (schedule) or a bool
        return f"{v:.3g}" if isinstance(v, float | int) and not isinstance(v, bool) else str(v)

    out = []
    for k in keys:
        line = f"{k} {show(cfg[k])}"
        if k in tuned:
            line += (f" (tuned; params.yaml's {show(hand[k])} unused while use_tuned is true)"
                     if hand[k] != cfg[k] else " (tuned; same as params.yaml)")
        out.append(line)
    return ", ".join(out)


def describe_budget(cfg: dict[str, Any]) -> str:
    """`up to 30 epochs of one pass each, at most 6,500,000 tokens, patience 3`: how long the run trains."""
    per = f"{cfg['steps_per_epoch']} steps" if cfg.get("steps_per_epoch") else "one pass"
    out = f"up to {cfg['epochs']} epochs of {per} each"
    if cfg.get("max_tokens"):
        out += f", at most {cfg['max_tokens']:,} tokens"
    if cfg.get("patience"):
        out += f", patience {cfg['patience']}"
    return out


def write_curve(path: str | Path, history: list[dict[str, float]], extra: tuple[str, ...] = ()) -> None:
    """Per-epoch train / val loss (and the workload's `extra` live metrics, e.g. val accuracy)
    as CSV for `dvc plots`."""
    cols = ["epoch", "train_loss", "val_loss", *(k for k in extra if k in history[0] and k != "lr")]
    cols = list(dict.fromkeys(cols))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for row in history:
            w.writerow({k: row[k] for k in cols})


def run_info_path(args: argparse.Namespace) -> Path:
    """Where train records its run (MLflow run id, checkpoint folder, tuned values): `--run-info`,
    else `train_run.json` beside the model; evaluate and register read it from there."""
    return Path(getattr(args, "run_info", None) or Path(args.model).with_name("train_run.json"))


def train_stage(args: argparse.Namespace) -> dict[str, Any]:
    """Run the training stage of `args.workload`; returns the metrics it publishes."""
    w, p = workload(args)
    cfg, tuned_values = effective_train_params(p.train, args.tuned)
    t = connect(args.tracking_uri)  # fails here, before any compute, if MLflow does not answer
    data = w.training_data(args.data, cfg, p)

    here = trains_in_process(cfg)
    resources = local_resources() if here else init_ray(dashboard=False, shared=True)
    gpu = want_gpu(cfg["use_gpu"], resources, cfg["num_workers"])
    check_train_fits(resources, cfg["num_workers"], cfg["cpus_per_worker"], gpu)
    # Same code + params + data + base model -> same key -> a re-run resumes this run's
    # checkpoints; a change to any of them is a new run (new Ray run name, new MLflow run).
    # The tuned values are in cfg (when they are used): best_params.json is keyed through it.
    rk = run_key("train", args.workload, cfg, inputs=(args.data,), params_file=args.params)
    key, code = rk.key, rk.code
    run_id = runs.start_run(t.client, t.experiment_id(args.workload), f"{args.workload}/train/{key}", f"train-{key}",
                            {"trainyard.stage": "train", "trainyard.arch": str(cfg.get("arch", "-")),
                             "trainyard.code": code})
    runs.log_params(t.client, run_id, cfg | data.logged)
    runs.log_datasets(t.client, run_id, args.data, {"train.parquet": "training", "val.parquet": "validation"},
                      args.workload)
    usual = [k for k in w.headline if k in cfg]
    shown = usual + sorted(set(tuned_values) - set(usual))  # a searched n_hidden shows too
    tuned = {k: cfg[k] for k in shown}
    where = "1 worker, in this process (no cluster: RAY_ADDRESS unset)" if here else f"{cfg['num_workers']} worker(s)"
    print(f"[train] {cfg.get('arch', args.workload)} on {where}{' (GPU)' if gpu else ''}, "
          f"{describe_values(cfg, p.train.model_dump(), tuned_values, shown)}, {describe_budget(cfg)}; "
          f"MLflow run {run_id}", flush=True)
    # From here on the run exists: writes the server cannot take wait in the journal.
    writer = Writer(t.uri)
    live = LiveMetrics(writer, run_id, w.live_metrics)
    loop_config, storage = {"train": cfg, "data": data.workers}, stage_storage(args.workload, "train")
    monitor = runs.system_metrics(run_id, t.uri)
    fit_t0 = time.perf_counter()
    try:
        if here:
            # its own folder: a Train run of the same key (with RAY_ADDRESS set) keeps another layout
            outcome = fit_in_process(w.worker_loop(), loop_config, run_uri=f"{storage.rstrip('/')}/run-{key}-in-process",
                                     cpus_per_worker=cfg["cpus_per_worker"], use_gpu=gpu, select=w.select,
                                     on_report=live.log)
        else:
            feed = writer.journal.path.with_name(f"live-{run_id}.jsonl")  # beside the journal: the driver's node
            trainer = make_trainer(w.worker_loop(), loop_config, name=f"run-{key}", storage_path=storage,
                                   num_workers=cfg["num_workers"], cpus_per_worker=cfg["cpus_per_worker"],
                                   use_gpu=gpu, max_failures=cfg["max_failures"],
                                   callbacks=[feed_callback(feed, w.live_metrics)], placement=cfg["placement"],
                                   select=w.select)
            with LiveFeed(feed, live):
                outcome = fit(trainer, cfg["num_workers"], w.select)
    except BaseException:
        writer.finish(run_id, "FAILED")
        raise
    finally:
        if monitor is not None:
            monitor.finish()
    history = outcome.state["history"]
    timings.add_work(sum(h.get("epoch_s", 0.0) for h in history))  # the loop's own clock: steps and val
    timings.note("fit_s", time.perf_counter() - fit_t0)
    writer.log_history(run_id, history)  # whatever the live writes missed (the checkpoint has it all)
    # the best epoch's weights (by the workload's `select` metric), with the whole run's history
    published = outcome.best["epoch"]
    w.publish(args.model, outcome.published, args.data, data.workers, cfg)
    writer.write({"op": "tag", "run_id": run_id, "key": "trainyard.published_epoch", "value": str(published)})
    last, best = history[-1], history[published - 1]
    # `dvc metrics` reads numbers only: what the run measured. Who ran it and with what goes to
    # the run record beside the model (evaluate and register read the MLflow run id there).
    metrics = {"epochs": last["epoch"], "published_epoch": published, "num_workers": cfg["num_workers"],
               "train_loss": best["train_loss"], "val_loss": best["val_loss"], "train_s": last["train_s"],
               **{k: best[k] for k in (*w.live_metrics, "samples_padded") if k in best and k not in ("epoch", "lr")}}
    info = {"run_id": run_id, "arch": cfg.get("arch", "-"), "selected_by": f"{w.select[0]} ({w.select[1]})",
            "params": tuned, "run_path": outcome.run_path, "worker_nodes": outcome.state.get("worker_nodes")}
    write_json(run_info_path(args), info)
    write_json(args.metrics, metrics)
    write_curve(args.plot, history, w.live_metrics)
    writer.log_artifact(run_id, args.plot)
    writer.finish(run_id)
    if not writer.settle():
        print(f"[mlflow] {writer.uri} is down: {len(writer.journal)} writes kept in {writer.journal.path}; "
              "they are sent when the next stage starts with the server back", flush=True)
    return metrics | info


def run(args: argparse.Namespace) -> None:
    m = train_stage(args)
    acc = f", val_accuracy {m['val_accuracy']:.4f}" if "val_accuracy" in m else ""
    print(f"[train] done: {m['epochs']} epochs ({m['train_s']:.0f} s of training); published epoch "
          f"{m['published_epoch']} (best {m['selected_by']}): val_loss {m['val_loss']:.4f}{acc} -> {args.model}")


if __name__ == "__main__":
    main(run, __doc__, paths("--data", "--model", "--metrics", "--plot", optional=("--tuned", "--run-info")))
