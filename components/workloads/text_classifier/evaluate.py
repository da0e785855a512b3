"""Text-classifier evaluation: accuracy, per-class accuracy, confusion matrices, the majority
baseline, and the comparison the lesson is about: the same classifier from scratch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.data.parquet import check_table
from components.workloads.text_classifier.staging import SPLIT_SCHEMA


def read_split(folder: str | Path, split: str, manifest: dict[str, Any]) -> tuple[list[str], torch.Tensor]:
    """A checked split: its passages and int64 labels."""
    t = check_table(Path(folder) / f"{split}.parquet", SPLIT_SCHEMA, manifest["files"][f"{split}.parquet"]).read()
    return t.column("text").to_pylist(), torch.from_numpy(t.column("label").to_numpy().astype(np.int64))


def majority_baseline(y_train: torch.Tensor, splits: dict[str, torch.Tensor]) -> dict[str, float]:
    """`baseline_majority_<split>_accuracy`: always the most frequent train class."""
    majority = int(torch.bincount(y_train).argmax())
    return {f"baseline_majority_{s}_accuracy": float((y == majority).float().mean()) for s, y in splits.items()}


def train_scratch(folder: str | Path, manifest: dict[str, Any], blob: dict[str, Any], run_uri: str,
                  select: tuple[str, str]) -> str:
    """Train the published classifier's twin from random weights with the same params and
    budget, in this process (checkpoints under `run_uri`: a rerun resumes or reuses it), its
    epoch picked by `select` as the fine-tuned one's was; the model file it publishes, beside the run."""
    from components.training.driver import fit_in_process
    from components.workloads.text_classifier.loop import train_loop_per_worker
    from components.workloads.text_classifier.model import publish_model

    folder = Path(folder)
    cfg = {**blob["train"], "encoder": "scratch"}
    data = {"train_uri": str(folder / "train.parquet"), "val_uri": str(folder / "val.parquet"),
            "n_train": manifest["files"]["train.parquet"]["rows"], "n_val": manifest["files"]["val.parquet"]["rows"],
            "n_classes": len(blob["classes"]), "classes": blob["classes"], "encoder": blob["encoder"],
            "encoder_uri": None}
    out = fit_in_process(train_loop_per_worker, {"train": cfg, "data": data}, run_uri=run_uri,
                         cpus_per_worker=max(1.0, float(cfg["cpus_per_worker"] * cfg["num_workers"])), use_gpu=False,
                         select=select)
    path = f"{run_uri}/scratch-model.pt"
    publish_model(path, out.published, data, cfg)
    return path
