"""What a train run says and leaves besides its model: its first line, its curve for `dvc plots`."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from components.data.parquet import atomic_path
from components.training.driver import TrainOutcome


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


def outcome_metrics(outcome: TrainOutcome, num_workers: int, chosen: Any) -> dict[str, Any]:
    """What `dvc metrics` reads of a train run: numbers only, what it measured: epochs, the
    published epoch (the best by the workload's `select`) and its losses, the training seconds,
    and `chosen(row)`: the workload's own numbers of that epoch."""
    history = outcome.state["history"]
    last, best = history[-1], history[outcome.best["epoch"] - 1]
    return {"epochs": last["epoch"], "published_epoch": best["epoch"], "num_workers": num_workers,
            "train_loss": best["train_loss"], "val_loss": best["val_loss"], "train_s": last["train_s"],
            **chosen(best)}
