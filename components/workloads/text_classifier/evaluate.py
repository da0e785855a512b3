"""Text-classifier evaluation: accuracy, per-class accuracy, confusion matrices, the majority
baseline, and the comparisons the lesson is about: the same classifier from scratch and on the
general LM without the fine-tuning step (each trained with the same params, budget and seed),
and a bag of words (TF-IDF + logistic regression) for where a linear model on words stands."""

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


def tfidf_baseline(train: tuple[list[str], torch.Tensor], splits: dict[str, tuple[list[str], torch.Tensor]],
                   seed: int = 0) -> dict[str, float]:
    """`tfidf_<split>_accuracy`: word TF-IDF (uni- and bigrams) + logistic regression fit on the
    train passages: not a floor the model must clear, a mark of how far it stands from words."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=200_000)
    clf = LogisticRegression(C=4.0, max_iter=1000, random_state=seed)
    clf.fit(vec.fit_transform(train[0]), train[1].numpy())
    return {f"tfidf_{s}_accuracy": float((clf.predict(vec.transform(texts)) == y.numpy()).mean())
            for s, (texts, y) in splits.items()}


def train_twin(folder: str | Path, manifest: dict[str, Any], blob: dict[str, Any], run_uri: str,
               select: tuple[str, str], encoder_model: str | None) -> str:
    """Train the published classifier's twin with the same params, budget and seed, in this
    process (checkpoints under `run_uri`: a rerun resumes or reuses it), its epoch picked by
    `select` as the published one's was, from `encoder_model` (another LM file) or from random
    weights (None); the model file it publishes, beside the run."""
    from components.training.driver import fit_in_process
    from components.workloads.text_classifier.loop import train_loop_per_worker
    from components.workloads.text_classifier.model import publish_model
    from components.workloads.text_classifier.staging import encoder_info

    folder = Path(folder)
    cfg = {**blob["train"], "encoder": "char_lm" if encoder_model else "scratch",
           "encoder_model": encoder_model or blob["train"]["encoder_model"]}
    data = {"train_uri": str(folder / "train.parquet"), "val_uri": str(folder / "val.parquet"),
            "n_train": manifest["files"]["train.parquet"]["rows"], "n_val": manifest["files"]["val.parquet"]["rows"],
            "n_classes": len(blob["classes"]), "classes": blob["classes"],
            "encoder": encoder_info(encoder_model) if encoder_model else blob["encoder"], "encoder_uri": encoder_model}
    out = fit_in_process(train_loop_per_worker, {"train": cfg, "data": data}, run_uri=run_uri,
                         cpus_per_worker=max(1.0, float(cfg["cpus_per_worker"] * cfg["num_workers"])), use_gpu=False,
                         select=select)
    path = f"{run_uri}/twin-model.pt"
    publish_model(path, out.published, data, cfg)
    return path
