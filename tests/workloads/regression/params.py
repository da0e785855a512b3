"""The regression workload's params section."""

from __future__ import annotations

from typing import Literal

from components.config import (
    Fraction,
    ModelName,
    OptimParams,
    PositiveInt,
    RegisterParams,
    SearchDim,
    Section,
    Seed,
    TuneParams,
    WorkloadParams,
    dims,
    knob,
    register_field,
)


class Prepare(Section):
    """Synthetic rows: y = x . w + noise."""

    source: Literal["synthetic"] = knob("synthetic", "where the rows come from (only generated ones here)")
    n_rows: PositiveInt = knob(1200, "rows generated")
    n_features: PositiveInt = knob(6, "features per row")
    noise: float = knob(0.1, "standard deviation of the noise", ge=0)
    seed: Seed = knob(0, "the generator's seed")
    inputs: str = knob("inputs/regression", "what prepare depends on in dvc.yaml")


class Normalize(Section):
    """Splits by position; features standardised with train statistics."""

    val_frac: Fraction = knob(0.2, "val share")
    test_frac: Fraction = knob(0.2, "test share")


class Tune(TuneParams):
    """A short sweep over lr."""

    num_samples: PositiveInt = knob(2, "trials")
    epochs: PositiveInt = knob(2, "ASHA's max_t")
    steps_per_epoch: PositiveInt | None = knob(10, "steps per trial epoch")
    space: dict[str, SearchDim] = knob(lambda: dims(lr={"type": "loguniform", "low": 0.03, "high": 0.3}), "train keys to search")


class Train(OptimParams):
    """A linear model, data parallel."""

    epochs: PositiveInt = knob(3, "epochs")
    steps_per_epoch: PositiveInt | None = knob(50, "steps per epoch; null: one pass")
    bs: PositiveInt = knob(64, "rows per step in total")
    lr: float = knob(0.1, "peak learning rate", gt=0)
    weight_decay: float = knob(0.0, "weight decay", ge=0)


class Evaluate(Section):
    """Mean squared error on val and test."""


class Register(RegisterParams):
    """The registry."""

    model_name: ModelName = knob("regression-test", "the registered model's name")


class RegressionParams(WorkloadParams):
    """Linear regression on synthetic data."""

    BUILTIN_SOURCES = ("synthetic",)

    prepare: Prepare = knob(Prepare)
    normalize: Normalize = knob(Normalize)
    tune: Tune = knob(Tune)
    train: Train = knob(Train)
    evaluate: Evaluate = knob(Evaluate)
    register_: Register = register_field(Register)
