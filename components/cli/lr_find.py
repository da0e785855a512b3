"""lr_find: an exponential learning-rate sweep on the train split -> a loss-vs-lr plot and a
suggested `char_lm.train.lr`. Its own step, outside `dvc repro`; run it, look, then set the lr.

    python -m components.cli.lr_find --workload char_lm --data data/char_lm/normalized --out reports/char_lm
"""

from __future__ import annotations

import argparse
from pathlib import Path

from components.cli.entry import main, params, paths
from components.config import ParamsError
from components.data.parquet import write_json
from components.workloads.char_lm.lr_find import lr_find
from components.workloads.char_lm.staging import training_data

WORKLOAD = "char_lm"  # the one workload this tool serves


def plot(path: Path, lrs: list[float], losses: list[float], suggested: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses)
    ax.axvline(suggested, ls="--", c="C1", label=f"suggested lr {suggested:.2e} (minimum / 10)")
    ax.set(xscale="log", xlabel="learning rate", ylabel="smoothed train loss (nats/char)", title="lr finder")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(args: argparse.Namespace) -> None:
    import torch

    from components.data.shards import worker_streams

    if args.workload != WORKLOAD:  # the finder drives the char-LM's own streams and model
        raise ParamsError(f"lr_find: --workload {args.workload}: the lr finder is the char-LM's "
                         f"(--workload {WORKLOAD}); the classifiers' lr comes from their sweep")
    tp = getattr(params(args), args.workload).train.model_dump()
    data = training_data(args.data)
    streams = worker_streams(data["train_uri"], data["n_train"], tp["bs"], 0, 1)
    print(f"[lr_find] {args.steps} steps from {args.start_lr:g} to {args.end_lr:g} ({tp['arch']}, bs {tp['bs']})", flush=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    res = lr_find(streams, data["vocab_size"], tp, args.start_lr, args.end_lr, args.steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(out / "lr_find.png", res.lrs, res.losses, res.suggested_lr)
    write_json(out / "lr_find.json", {"suggested_lr": res.suggested_lr, "steepest_lr": res.steepest_lr,
                                      "lrs": res.lrs, "losses": res.losses})
    print(f"[lr_find] suggested lr {res.suggested_lr:.2e} (a tenth of the lr at the loss minimum); "
          f"steepest fall at {res.steepest_lr:.2e}")
    print(f"[lr_find] plot {out / 'lr_find.png'}; set char_lm.train.lr in params.yaml (and use_tuned: false, "
          "or drop lr from char_lm.tune.space)")


def _args(a: argparse.ArgumentParser) -> None:
    paths("--data", "--out")(a)
    a.add_argument("--steps", type=int, default=200)
    a.add_argument("--start-lr", type=float, default=1e-5)
    a.add_argument("--end-lr", type=float, default=1.0)


if __name__ == "__main__":
    main(run, __doc__, _args)
