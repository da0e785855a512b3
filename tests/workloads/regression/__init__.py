"""A workload defined outside the pipeline's code: linear regression on a table of rows.

It proves the plug-in boundary: the stages run it through DVC, Ray Train, Ray Tune and the MLflow
registry knowing only `components.workloads.base.Workload`, and `TabularWorkload` gives it
everything but its model. `write_rows` makes its table (y = x . w + noise) for the tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from components.workloads.tabular import TabularWorkload, tabular_params


class Regression(TabularWorkload):
    name = "regression"
    params = tabular_params(
        "Linear regression on a table of numbers.", model_name="regression-test",
        source="inputs/regression/rows.csv", target="y",
        tune={"num_samples": 2, "epochs": 2, "steps_per_epoch": 10,
              "space": {"lr": {"type": "loguniform", "low": 0.03, "high": 0.3}}},
        train={"epochs": 3, "steps_per_epoch": 50, "lr": 0.1, "weight_decay": 0.0})

    def model(self, n_features: int, n_outputs: int, train: dict[str, Any]) -> nn.Module:
        return nn.Linear(n_features, n_outputs)


WORKLOAD = Regression()


def write_rows(path: Path, n_rows: int = 1200, n_features: int = 6, noise: float = 0.1, seed: int = 0) -> Path:
    """A CSV of `n_rows` rows: features x0.. and y = x . w + noise (a seeded w)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_rows, n_features)) * 3 + 1
    y = x @ rng.normal(size=n_features) + rng.normal(scale=noise, size=n_rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ",".join([*(f"x{i}" for i in range(n_features)), "y"])
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header=header, comments="", fmt="%.6f")
    return path
