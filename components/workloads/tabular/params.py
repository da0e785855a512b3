"""The params of a tabular workload: every section with defaults, and `tabular_params` to make a
workload's own from them by naming only what differs (its table, target, model name, budget)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import create_model
from pydantic.fields import FieldInfo

from components.config import (
    Fraction,
    HeldOut,
    LoaderParams,
    OptimParams,
    PartParams,
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

TASKS = ("regression", "classification")


class TabularPrepare(Section):
    """A table with feature and target columns: a .csv / .tsv or .parquet file, or a folder of them,
    local (under `inputs`) or in an object store (s3://...). Read a batch of rows at a time."""

    source: str = knob("inputs/table.csv", "the table: a .csv, .tsv or .parquet file, a folder of them, or an "
                       "object-store URI")
    inputs: str = knob("inputs", "what prepare depends on in dvc.yaml: a local source must be in it")
    target: str = knob("y", "the column to predict")
    features: list[str] | None = knob(None, "the feature columns (numbers); null: every column but the target")
    batch_rows: PositiveInt = knob(65_536, "rows read at a time: bounds prepare's and normalize's memory")


class TabularNormalize(HeldOut, PartParams):
    """Rows split at random (fixed by seed); features standardised with the train split's mean and std."""

    val_frac: Fraction = knob(0.2, "share of rows for val")
    test_frac: Fraction = knob(0.2, "share of rows for test")
    seed: Seed = knob(0, "which row goes to which split")


class TabularTune(TuneParams):
    """The sweep: Ray Tune with ASHA over the train keys in `space` (the learning rate unless the
    workload names more)."""

    num_samples: PositiveInt = knob(4, "trials in the sweep")
    epochs: PositiveInt = knob(3, "ASHA's max_t (one report per epoch)")
    space: dict[str, SearchDim] = knob(lambda: dims(lr={"type": "loguniform", "low": 1e-3, "high": 0.1}),
                                       "train keys to search")


class TabularTrain(LoaderParams, OptimParams):
    """The workload's model, data parallel: each worker streams its row shard, reshuffled every epoch."""

    epochs: PositiveInt = knob(10, "passes over the train rows")
    steps_per_epoch: PositiveInt | None = knob(None, "null: each train row once per epoch")
    bs: PositiveInt = knob(64, "rows per step in total, split over the workers")
    hidden: PositiveInt = knob(64, "width of the model's hidden layers (for models that have them)")
    dropout: float = knob(0.0, "dropout in the model (for models that have it)", ge=0, lt=1)


class TabularEvaluate(Section):
    """The loss on val and test, beside the baseline: the train mean (regression) or the majority class."""

    preview_rows: PositiveInt = knob(1000, "val rows written to the predictions report")


class TabularRegister(RegisterParams):
    """The MLflow registry: a version per trained model, `champion` only if it beats the current one."""


class TabularParams(WorkloadParams):
    """A supervised model on a table."""

    TASK: ClassVar[str] = "regression"  # or classification: set per workload by `tabular_params`

    prepare: TabularPrepare = knob(TabularPrepare)
    normalize: TabularNormalize = knob(TabularNormalize)
    tune: TabularTune = knob(TabularTune)
    train: TabularTrain = knob(TabularTrain)
    evaluate: TabularEvaluate = knob(TabularEvaluate)
    register_: TabularRegister = register_field(TabularRegister)


def with_defaults(cls: type[Section], doc: str | None = None, **values: Any) -> type[Section]:
    """`cls` with other defaults for some of its keys (their meaning and checks kept)."""
    unknown = sorted(set(values) - set(cls.model_fields))
    if unknown:
        raise TypeError(f"{cls.__name__} has no key {unknown[0]!r} (keys: {', '.join(cls.model_fields)})")
    fields: dict[str, Any] = {}
    for key, value in values.items():
        field = cls.model_fields[key]
        if isinstance(value, dict) and key == "space":
            value = dims(**value)
        new = FieldInfo.merge_field_infos(field, default=value)
        new.default_factory = None
        fields[key] = (field.annotation, new)
    sub = create_model(cls.__name__, __base__=cls, __doc__=doc or cls.__doc__, __module__=cls.__module__, **fields)
    sub.__own_keys__ = tuple(k for k in cls.model_fields if k in getattr(cls, "__annotations__", {}))
    return sub


def tabular_params(doc: str, *, model_name: str, source: str, target: str, inputs: str | None = None,
                   task: Literal["regression", "classification"] = "regression",
                   prepare: dict[str, Any] | None = None, normalize: dict[str, Any] | None = None,
                   tune: dict[str, Any] | None = None, train: dict[str, Any] | None = None) -> type[TabularParams]:
    """A tabular workload's params section: `TabularParams` with these defaults (`doc` heads its
    part of params.yaml). Regression registers by val loss (mean squared error, lower wins),
    classification by val accuracy (higher wins)."""
    if task not in TASKS:
        raise TypeError(f"task must be one of {TASKS}, not {task!r}")
    if inputs is None:  # the source's folder: what dvc.yaml watches for prepare
        inputs = source.rsplit("/", 1)[0] if "/" in source and "://" not in source else "inputs"
    metric = ("val_loss", "min") if task == "regression" else ("accuracy", "max")
    sections = {
        "prepare": with_defaults(TabularPrepare, source=source, inputs=inputs, target=target, **(prepare or {})),
        "normalize": with_defaults(TabularNormalize, **(normalize or {})),
        "tune": with_defaults(TabularTune, **(tune or {})),
        "train": with_defaults(TabularTrain, **(train or {})),
    }
    reg = with_defaults(TabularRegister, model_name=model_name, metric=metric[0], mode=metric[1])
    fields: dict[str, Any] = {k: (cls, knob(cls)) for k, cls in sections.items()}
    fields["register_"] = (reg, register_field(reg))
    out = create_model("Params", __base__=TabularParams, __doc__=doc, **fields)
    out.TASK = task
    out.REGISTER_METRIC = metric
    out.REPORTED = ("val_loss", "train_loss") + (("val_accuracy",) if task == "classification" else ())
    return out


__all__ = ["TabularEvaluate", "TabularNormalize", "TabularParams", "TabularPrepare", "TabularRegister",
           "TabularTrain", "TabularTune", "tabular_params", "with_defaults"]
