"""Text-classifier evaluation: accuracy, per-class accuracy, confusion matrices, the majority
baseline, and the comparisons the lesson is about: the same classifier from scratch and on the
general LM without the fine-tuning step (each trained with the same params, budget and seed),
and a bag of words (TF-IDF + logistic regression) for where a linear model on words stands."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.data.dataset import in_sample, iter_batches, open_split, sample_rows
from components.store import verified_cache
from components.workloads.text_classifier.staging import SPLIT_SCHEMA


def split_batches(folder: str | Path, split: str, manifest: dict[str, Any],
                  bs: int = 256) -> Iterator[tuple[list[str], torch.Tensor]]:
    """A checked split, `bs` passages at a time in file order: (texts, int64 labels)."""
    uris = open_split(folder, split, manifest, SPLIT_SCHEMA, verified_cache()).uris
    for b in iter_batches(uris, bs, ["text", "label"]):
        yield b.column("text").to_pylist(), torch.from_numpy(b.column("label").to_numpy().astype(np.int64))


def read_split(folder: str | Path, split: str, manifest: dict[str, Any]) -> tuple[list[str], torch.Tensor]:
    """A whole checked split: its passages and int64 labels (benches; the stages stream `split_batches`)."""
    texts, ys = [], []
    for t, y in split_batches(folder, split, manifest, 4096):
        texts += t
        ys.append(y)
    return texts, torch.cat(ys)


def predict_split(net: Any, blob: dict[str, Any], folder: str | Path, split: str, manifest: dict[str, Any],
                  bs: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities (N, n_classes) and labels of a split, scored `bs` passages at a time."""
    from components.workloads.text_classifier.model import predict_texts

    probs, labels = [], []
    for texts, y in split_batches(folder, split, manifest, bs):
        probs.append(predict_texts(net, blob, texts, bs))
        labels.append(y)
    return torch.cat(probs), torch.cat(labels)


def majority_baseline(y_train: torch.Tensor, splits: dict[str, torch.Tensor]) -> dict[str, float]:
    """`baseline_majority_<split>_accuracy`: always the most frequent train class."""
    majority = int(torch.bincount(y_train).argmax())
    return {f"baseline_majority_{s}_accuracy": float((y == majority).float().mean()) for s, y in splits.items()}


def train_sample(folder: str | Path, manifest: dict[str, Any], most: int,
                 seed: int = 0) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(a seeded sample of at most `most` train passages, their labels, every train label), read a batch at a time."""
    keep = sample_rows(manifest["files"]["train"]["rows"], most, seed)
    texts, ys, every, at = [], [], [], 0
    for t, y in split_batches(folder, "train", manifest, 4096):
        sel = in_sample(keep, at, len(t))
        texts += [x for x, k in zip(t, sel, strict=True) if k]
        ys.append(y[torch.from_numpy(sel)])
        every.append(y)
        at += len(t)
    return texts, torch.cat(ys), torch.cat(every)


def tfidf_baseline(train: tuple[list[str], torch.Tensor],
                   splits: dict[str, tuple[list[str], torch.Tensor] | Iterable[tuple[list[str], torch.Tensor]]],
                   seed: int = 0) -> dict[str, float]:
    """`tfidf_<split>_accuracy`: word TF-IDF (uni- and bigrams) + logistic regression fit on the
    train passages: not a floor the model must clear, a mark of how far it stands from words.
    Each split: (texts, labels), or batches of them."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=200_000)
    clf = LogisticRegression(C=4.0, max_iter=1000, random_state=seed)
    clf.fit(vec.fit_transform(train[0]), train[1].numpy())
    out = {}
    for s, batches in splits.items():
        hits = n = 0
        for texts, y in ([batches] if isinstance(batches, tuple) else batches):
            hits += int((clf.predict(vec.transform(texts)) == y.numpy()).sum())
            n += len(y)
        out[f"tfidf_{s}_accuracy"] = hits / max(n, 1)
    return out


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
    splits = {s: open_split(folder, s, manifest, SPLIT_SCHEMA, verified_cache()).as_data() for s in ("train", "val")}
    data = {"train_uri": splits["train"], "val_uri": splits["val"],
            "n_train": manifest["files"]["train"]["rows"], "n_val": manifest["files"]["val"]["rows"],
            "n_classes": len(blob["classes"]), "classes": blob["classes"],
            "encoder": encoder_info(encoder_model) if encoder_model else blob["encoder"], "encoder_uri": encoder_model}
    out = fit_in_process(train_loop_per_worker, {"train": cfg, "data": data}, run_uri=run_uri,
                         cpus_per_worker=max(1.0, float(cfg["cpus_per_worker"] * cfg["num_workers"])), use_gpu=False,
                         select=select)
    path = f"{run_uri}/twin-model.pt"
    publish_model(path, out.published, data, cfg)
    return path
