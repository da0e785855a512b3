"""The simplest models an image classifier must beat, from the same splits: the majority
class of train, and a linear model (multinomial logistic regression) on the raw pixels."""

from __future__ import annotations

import numpy as np

MAX_TRAIN = 20_000  # rows the linear model fits on (a seeded sample beyond that): bounded time


def baselines(x_train: np.ndarray, y_train: np.ndarray, splits: dict[str, tuple[np.ndarray, np.ndarray]],
              seed: int = 0) -> dict[str, float]:
    """`baseline_majority_<split>_accuracy` and `baseline_linear_<split>_accuracy` per split;
    images are uint8 arrays (N, ...), flattened and scaled to [0, 1]."""
    from sklearn.linear_model import LogisticRegression

    majority = int(np.bincount(y_train).argmax())
    if len(y_train) > MAX_TRAIN:
        keep = np.random.default_rng(seed).choice(len(y_train), MAX_TRAIN, replace=False)
        x_train, y_train = x_train[keep], y_train[keep]
    linear = LogisticRegression(max_iter=300).fit(x_train.reshape(len(x_train), -1) / 255.0, y_train)
    out = {}
    for split, (x, y) in splits.items():
        out[f"baseline_majority_{split}_accuracy"] = float(np.mean(y == majority))
        out[f"baseline_linear_{split}_accuracy"] = float(np.mean(linear.predict(x.reshape(len(x), -1) / 255.0) == y))
    return out
