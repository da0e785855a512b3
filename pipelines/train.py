r"""train: a stateful char-LM, data parallel over Ray Train workers, tuned params by default.

    python -m pipelines.train --workload char_lm --data data/char_lm/normalized \
        --tuned tune/char_lm/best_params.json --model models/char_lm/model.pt \
        --metrics metrics/char_lm/train.json --plot plots/char_lm/train_curve.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

from components.config import TrainParams
from components.data.parquet import atomic_path, load_manifest, read_json, write_json
from components.data.text import Vocab
from components.evaluation.char_lm import publish_model
from components.models.char_lm import model_kwargs
from components.runtime import check_train_fits, init_ray, params_key, stage_storage, want_gpu
from components.tracking import runs
from components.training.driver import char_lm_data, fit, make_trainer
from pipelines.common import main, params, paths


def effective_train_params(tp: TrainParams, tuned_file: str | None) -> dict[str, Any]:
    """train's params, with the sweep's best values on top when `use_tuned` is true."""
    cfg = tp.model_dump()
    if tp.use_tuned and tuned_file:
        best = read_json(tuned_file)["params"]
        cfg.update(best)
        # Re-validate: a tuned value must satisfy the same schema as a hand-written one.
        cfg = TrainParams.model_validate(cfg).model_dump()
    return cfg


def write_curve(path: str | Path, history: list[dict[str, float]]) -> None:
    """Per-epoch train / val loss as CSV for `dvc plots`."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["epoch", "train_loss", "val_loss"])
        w.writeheader()
        for row in history:
            w.writerow({k: row[k] for k in ("epoch", "train_loss", "val_loss")})


def train_char_lm(args: argparse.Namespace, tp: TrainParams) -> dict[str, Any]:
    """Run the training stage; returns the metrics it publishes."""
    cfg = effective_train_params(tp, args.tuned)
    c = runs.client()  # fails here, before any compute, if MLflow does not answer
    data = char_lm_data(args.data)
    vocab = Vocab.from_json(read_json(Path(args.data) / "vocab.json"))
    manifest = load_manifest(args.data)

    resources = init_ray()
    gpu = want_gpu(cfg["use_gpu"], resources, cfg["num_workers"])
    check_train_fits(resources, cfg["num_workers"], cfg["cpus_per_worker"], gpu)
    # Same params + same data -> same key -> a re-run resumes this run's checkpoints.
    key = params_key(cfg, manifest["files"])
    exp = runs.experiment_id(c, args.workload)
    run_id = runs.start_run(c, exp, f"{args.workload}/train/{key}", f"train-{key}",
                            {"trainyard.stage": "train", "trainyard.arch": cfg["arch"]})
    runs.log_params(c, run_id, cfg | {"vocab_size": data.vocab_size, "n_train_tokens": data.n_train})
    print(f"[train] {cfg['arch']} on {cfg['num_workers']} worker(s){' (GPU)' if gpu else ''}, "
          f"bptt {cfg['bptt']}, lr {cfg['lr']:.2e}, dropout {cfg['dropout']:.3f}, {cfg['epochs']} epochs; "
          f"MLflow run {run_id}", flush=True)
    trainer = make_trainer({"train": cfg, "data": data.as_dict()}, name=f"run-{key}",
                           storage_path=stage_storage(args.workload, "train"),
                           num_workers=cfg["num_workers"], cpus_per_worker=cfg["cpus_per_worker"],
                           use_gpu=gpu, max_failures=cfg["max_failures"])
    try:
        outcome = fit(trainer, cfg["num_workers"])
    except BaseException:
        runs.finish_run(c, run_id, "FAILED")
        raise
    history = outcome.state["history"]
    runs.log_history(c, run_id, history)
    publish_model(args.model, outcome.state, vocab, model_kwargs(cfg, data.vocab_size))
    last = history[-1]
    metrics = {"run_id": run_id, "arch": cfg["arch"], "epochs": last["epoch"], "num_workers": cfg["num_workers"],
               "train_loss": last["train_loss"], "val_loss": last["val_loss"],
               "tokens_per_s": last["tokens_per_s"], "params": {k: cfg[k] for k in ("bptt", "lr", "dropout")},
               "ray_run_path": outcome.run_path}
    write_json(args.metrics, metrics)
    write_curve(args.plot, history)
    c.log_artifact(run_id, args.plot)
    runs.finish_run(c, run_id)
    return metrics


def run(args: argparse.Namespace) -> None:
    m = train_char_lm(args, params(args).char_lm.train)
    print(f"[train] done: val_loss {m['val_loss']:.4f} after {m['epochs']} epochs -> {args.model}")



if __name__ == "__main__":
    main(run, __doc__, paths("--data", "--model", "--metrics", "--plot", optional=("--tuned",)))
