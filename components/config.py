"""The params schema's shared parts: value types, the knobs every workload's sections share,
and the cross-section checks. Each workload declares its own sections (its `params.py`);
`components.params` assembles them into the whole `params.yaml` schema.

Every knob is declared once, with `knob(default, "what it means")`: `params.yaml` and the
README's knob tables are written from these declarations (`python -m components.cli.params_doc`),
and a test fails when they disagree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]
Probability = Annotated[float, Field(ge=0, lt=1)]
# numpy's and Ray Tune's generators refuse seeds outside [0, 2**32): refused here, before compute
Seed = Annotated[int, Field(ge=0, lt=2**32)]
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


def _model_name(name: str) -> str:
    # MLflow refuses '/' and ':' in model names; '@' and spaces would break `models:/<name>@<alias>`
    if not _MODEL_NAME.fullmatch(name):
        raise ValueError("an MLflow model name is letters, digits, '.', '_' and '-', starting with a letter "
                         "or digit (no '/', ':', '@' or spaces: they break models:/<name>@<alias> URIs)")
    return name


ModelName = Annotated[str, AfterValidator(_model_name)]


def knob(default: Any = ..., doc: str = "", **kw: Any) -> Any:
    """A params key: its default and what it means, declared once (params.yaml and the README
    are written from it)."""
    if callable(default):  # a section class, or a lambda building a mutable default
        return Field(default_factory=default, description=doc, **kw)
    return Field(default, description=doc, **kw)


class ParamsError(ValueError):
    """A `params.yaml` value that fails validation; the message names the key."""


class Section(BaseModel):
    """One `params.yaml` section. Unknown keys are errors: a typo, or a key this workload does
    not use, must not silently fall back to a default or be ignored."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True, populate_by_name=True)


class HeldOut(Section):
    """A section with `val_frac` and `test_frac` (its own fields, with its own wording): they
    must leave `min_train` of the data for train."""

    min_train: ClassVar[float] = 0.1

    @model_validator(mode="after")
    def _room_for_train(self) -> HeldOut:
        if self.val_frac + self.test_frac >= 1 - self.min_train:  # type: ignore[attr-defined]
            raise ValueError(f"val_frac + test_frac must leave at least {self.min_train:.0%} for train")
        return self


class RunParams(Section):
    """Optimiser and run knobs every workload's `train` section has (its schedule is its own:
    `OptimParams` adds the shared ones)."""

    use_tuned: bool = knob(True, "take the tune space's values from tune's best_params.json")
    num_workers: PositiveInt = knob(2, "Ray Train data-parallel (DDP) workers; bs must divide by it")
    cpus_per_worker: PositiveFloat = knob(1.0, "CPUs each worker holds (and its torch threads)")
    use_gpu: Literal["auto", True, False] = knob("auto", "auto: GPUs when the cluster has one per worker "
                                                 "(NCCL + bf16 autocast)")
    seed: Seed = knob(0, "weights, dropout and data order")
    optimizer: Literal["adamw", "adam"] = knob("adamw", "adamw (decoupled weight decay) | adam (weight decay as L2)")
    lr: PositiveFloat = knob(3e-3, "peak learning rate")
    beta2: Annotated[float, Field(gt=0, lt=1)] = knob(0.999, "Adam's second-moment decay (0.99 adapts faster)")
    weight_decay: Annotated[float, Field(ge=0)] = knob(0.01, "weight decay")
    clip: PositiveFloat | None = knob(1.0, "gradient-norm clip; null to turn off")
    patience: PositiveInt | None = knob(None, "stop after this many epochs without a better val metric "
                                        "(the best epoch is published either way); null: run every epoch")
    in_process: bool = knob(True, "a 1-worker run with no cluster (RAY_ADDRESS unset) trains in the stage's own "
                            "process: no Ray, no worker group (~20 s less a run); false: Ray Train always")
    max_failures: Annotated[int, Field(ge=0)] = knob(2, "worker-group restarts from the last checkpoint "
                                                     "before giving up (Ray Train runs; a run in the stage's "
                                                     "process fails at once and the next repro resumes)")
    placement: Literal["pack", "spread"] = knob("pack", "pack | spread: workers fill one node first, "
                                                "or go one per node")
    preemption_check_s: Annotated[float, Field(ge=0)] = knob(
        2.0, "seconds of training between looks for a preemption notice (a node drained with a deadline; each look "
        "a few ms): on one, a checkpoint is written mid-epoch; 0: never (a restart then loses the epoch so far)")

    @model_validator(mode="after")
    def _workers_divide(self) -> RunParams:
        bs = getattr(self, "bs", None)
        if bs is not None and bs % self.num_workers:
            raise ValueError(f"bs ({bs}) must be a multiple of num_workers ({self.num_workers})")
        return self


class PartParams(Section):
    """How a normalized split is stored: a folder of Parquet part files of bounded size."""

    part_mb: PositiveInt = knob(192, "each split is a folder of Parquet part files of at most about this many MB "
                                "(DVC tracks a few large files, not one per row group)")


class LoaderParams(Section):
    """How a worker reads its rows: a window of row groups at a time, a few batches ahead. Memory
    per worker is about (shuffle_groups row groups + prefetch batches), whatever the data's size."""

    shuffle_groups: PositiveInt = knob(4, "row groups shuffled together: each epoch visits this rank's row groups "
                                       "in a seeded order, this many at a time, rows shuffled among them "
                                       "(more: a better shuffle, more memory)")
    prefetch: PositiveInt = knob(2, "batches read, decoded and augmented ahead of training, on a background "
                                 "thread")
    eval_bs: PositiveInt = knob(256, "rows per batch when scoring val (each epoch) and val / test (evaluate)")


class OptimParams(RunParams):
    """RunParams and the learning-rate schedules in components/training/schedules.py."""

    schedule: Literal["cosine", "constant", "sgdr", "onecycle"] = knob(
        "cosine", "cosine | constant | sgdr (warm restarts) | onecycle")
    min_lr_frac: Annotated[float, Field(ge=0, le=1)] = knob(0.1, "cosine / sgdr: the floor, as a fraction of lr")
    cycle_len: PositiveFloat = knob(1.0, "sgdr: epochs in the first cycle")
    cycle_mult: Annotated[float, Field(ge=1)] = knob(2.0, "sgdr: each cycle this many times as long as the last")
    pct_start: Fraction = knob(0.25, "onecycle: share of the run warming up from lr / div_factor")
    div_factor: Annotated[float, Field(gt=1)] = knob(25.0, "onecycle: start at lr / div_factor")
    final_div: Annotated[float, Field(gt=1)] = knob(1e4, "onecycle: end at lr / (div_factor * final_div)")


class SearchDim(Section):
    """One dimension of the search space: `choice` of values, `grid` (every value, each
    crossed with the other grid dimensions), or a (log-)uniform range."""

    type: Literal["choice", "grid", "uniform", "loguniform", "randint"]
    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None

    @model_validator(mode="after")
    def _well_formed(self) -> SearchDim:
        if self.type in ("choice", "grid"):
            if not self.values:
                raise ValueError(f"{self.type} needs a non-empty 'values' list")
        else:
            if self.low is None or self.high is None:
                raise ValueError(f"{self.type} needs 'low' and 'high'")
            if not self.low < self.high:
                raise ValueError(f"low ({self.low}) must be below high ({self.high})")
            if self.type == "loguniform" and self.low <= 0:
                raise ValueError("loguniform needs low > 0")
        return self


def dims(**space: dict[str, Any]) -> dict[str, SearchDim]:
    """A search space from plain dicts: `dims(lr={"type": "loguniform", "low": 1e-3, "high": 1e-2})`."""
    return {k: SearchDim(**v) for k, v in space.items()}


class TuneParams(Section):
    """The sweep: Ray Tune with ASHA; each trial runs the workload's loop (a Ray Train run when
    it has more than one worker)."""

    num_samples: PositiveInt = knob(6, "trials in the sweep (raised on a finished sweep: only the new ones run)")
    search: Literal["random", "optuna"] = knob("random", "how trials are drawn: random, or optuna (TPE, "
                                                "told every finished trial's result)")
    reproducible: bool = knob(False, "one trial at a time, so ASHA and the searcher see results in the same "
                              "order: the same pick on every run, at the cost of the sweep's parallelism")
    max_concurrent: PositiveInt | None = knob(None, "null: as many as the cluster fits (trial driver counted)")
    workers_per_trial: PositiveInt = knob(1, "Ray Train workers in each trial")
    in_process: bool = knob(True, "1-worker trials run their loop in the trial's own process "
                            "(no Train worker group: seconds less per trial); false: Ray Train for every trial")
    cpus_per_worker: PositiveFloat = knob(1.0, "CPUs each trial worker holds")
    gpus_per_worker: Annotated[float, Field(ge=0)] = knob(0.0, ">0 to sweep on GPUs (with train.use_gpu auto/true)")
    driver_memory_mb: PositiveInt = knob(256, "what each trial's own process holds (memory)")
    epochs: PositiveInt = knob(3, "ASHA's max_t (one report per epoch)")
    steps_per_epoch: PositiveInt | None = knob(None, "steps per trial epoch; null: pass_frac of a pass over "
                                               "the training data, at least min_steps")
    pass_frac: PositiveFloat = knob(0.04, "a trial epoch as a fraction of a pass (when steps_per_epoch is null)")
    min_steps: PositiveInt = knob(20, "the fewest steps in a trial epoch (when steps_per_epoch is null)")
    grace_period: PositiveInt = knob(1, "ASHA: epochs before a trial can be stopped")
    reduction_factor: Annotated[float, Field(gt=1)] = knob(2.0, "ASHA: keep the best 1/reduction_factor at each rung")
    metric: str = knob("val_loss", "what ASHA and the pick compare (a metric the trials report)")
    mode: Literal["min", "max"] = knob("min", "min | max")
    seed: Seed = knob(0, "the search's random state")
    space: dict[str, SearchDim] = knob(
        lambda: dims(bptt={"type": "choice", "values": [16, 32, 64]},
                     lr={"type": "loguniform", "low": 0.001, "high": 0.01},
                     dropout={"type": "uniform", "low": 0.2, "high": 0.5}),
        "train keys to search: {type: choice|grid, values: [...]} or {type: uniform|loguniform|randint, low, high}")

    @model_validator(mode="after")
    def _space_keys(self) -> TuneParams:
        if not self.space:
            raise ValueError("space is empty: name at least one train key to search")
        if self.grace_period > self.epochs:
            raise ValueError(f"grace_period ({self.grace_period}) exceeds epochs ({self.epochs})")
        grid = [k for k, d in self.space.items() if d.type == "grid"]
        if grid and self.search != "random":
            raise ValueError(f"space.{grid[0]}: a grid dimension needs search: random ({self.search} draws its own points)")
        return self


class RegisterParams(Section):
    """The MLflow registry: a version per trained model, `champion` only if it beats the current one."""

    model_name: ModelName = knob("model", "the registered model's name")
    metric: str = knob("val_loss", "from metrics/<workload>/eval.json; the champion is re-scored with it "
                       "on the same val data, so only the workload's own metric is accepted")
    mode: Literal["min", "max"] = knob("min", "min | max")
    min_delta: float = knob(0.0, "the champion moves only for an improvement of at least this much in `metric` "
                            "(0: any strict improvement); the baseline gate is strict either way", ge=0)
    require_approval: bool = knob(False, "true: register sets only `challenger` (and records what the gate "
                                  "would do); the champion moves only by `registry approve`")


# Train keys only the final run reads: a trial takes its budget, workers and seed from
# `tune`, so these neither reach a trial nor may be searched (and `tune` does not rerun
# when they change; see `trial_params` in dvc.yaml).
FINAL_ONLY = ("use_tuned", "epochs", "steps_per_epoch", "max_tokens", "time_budget_s", "num_workers",
              "cpus_per_worker", "seed", "in_process", "max_failures", "placement", "patience", "bigram_mix",
              "preemption_check_s")


def trial_params(train: BaseModel, searched: Iterable[str] = ()) -> dict[str, Any]:
    """The train params a sweep trial uses: all but the keys only the final run reads and the
    `searched` ones (`tune.space`'s keys: every trial sets them to its own sample, so their
    value in `train` changes no trial and must not rerun the sweep)."""
    skip = set(FINAL_ONLY) | set(searched)
    return {k: v for k, v in train.model_dump().items() if k not in skip}


def _check_sweep(tune: TuneParams, train: BaseModel, reported: tuple[str, ...]) -> None:
    """What Ray Tune or a trial would refuse only after the sweep started."""
    schema = type(train)
    unknown = sorted(set(tune.space) - set(schema.model_fields))
    if unknown:
        raise ValueError(f"tune.space names keys that train does not have: {unknown}")
    final = sorted(set(tune.space) & set(FINAL_ONLY))
    if final:
        raise ValueError(f"tune.space: {final} are set by tune itself (epochs, steps_per_epoch, "
                         "workers_per_trial, seed) or read only by the final run: not searchable")
    if tune.metric not in reported:
        raise ValueError(f"tune.metric {tune.metric!r} is not reported by this workload's trials "
                         f"(they report {list(reported)})")
    bs = getattr(train, "bs", None)
    if bs is not None and bs % tune.workers_per_trial:
        raise ValueError(f"train.bs ({bs}) must be a multiple of tune.workers_per_trial ({tune.workers_per_trial})")
    # every value the sweep can sample must pass train's own schema, or trials fail one by one
    base = train.model_dump()
    for key, dim in tune.space.items():
        ends = dim.values if dim.type == "choice" else [dim.low, dim.high]
        for value in ends:
            try:
                schema.model_validate({**base, key: value})
            except ValidationError as err:
                msg = err.errors()[0]["msg"].removeprefix("Value error, ")
                raise ValueError(f"tune.space.{key}: {value!r} is not a valid train.{key} ({msg})") from None


def _check_inputs(source: str, inputs: str, builtin: tuple[str, ...]) -> None:
    """A local source must lie inside `prepare.inputs`, the path dvc.yaml lists as prepare's
    dependency: anywhere else, editing it in place would leave the pipeline "up to date"."""
    if source in builtin or "://" in source:
        return
    src, watched = Path(source).resolve(), Path(inputs).resolve()
    if src != watched and watched not in src.parents:
        raise ValueError(f"source {source!r} is outside prepare.inputs ({inputs!r}), the path dvc.yaml "
                         "watches: editing it would not rerun prepare. Move it (or `dvc add` it) under "
                         f"{inputs}, or set prepare.inputs to it")


class WorkloadParams(Section):
    """A workload's whole `params.yaml` section: prepare, normalize, tune, train, evaluate,
    register. Subclasses type the six fields and set the class variables below."""

    BUILTIN_SOURCES: ClassVar[tuple[str, ...]] = ()  # sources that are not paths (downloads, bundled sets)
    REPORTED: ClassVar[tuple[str, ...]] = ("val_loss", "train_loss")  # what the worker loop reports per epoch
    REGISTER_METRIC: ClassVar[tuple[str, str]] = ("val_loss", "min")  # what register re-scores champions with

    @model_validator(mode="after")
    def _consistent(self) -> WorkloadParams:
        prepare = getattr(self, "prepare", None)
        if prepare is not None and hasattr(prepare, "inputs") and hasattr(prepare, "source"):
            _check_inputs(prepare.source, prepare.inputs, self.BUILTIN_SOURCES)
        _check_sweep(self.tune, self.train, self.REPORTED)
        reg, (metric, mode) = self.register_, self.REGISTER_METRIC
        # register compares with the champion by re-scoring it on our val data, which gives this
        # metric only: another one would compare unlike numbers
        if (reg.metric, reg.mode) != (metric, mode):
            raise ValueError(f"register.metric/mode must be {metric!r}/{mode!r} (got {reg.metric!r}/{reg.mode!r}): "
                             "the champion is re-scored with it on the same val data")
        return self


def register_field(cls: type[RegisterParams]) -> Any:
    """The `register` field of a workload section (`register` would shadow a pydantic
    attribute: stored as `register_`, spelled `register` in params.yaml)."""
    return Field(default_factory=cls, alias="register")


def effective_train_params(tp: BaseModel, tuned: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """train's params, with the sweep's best values (`tuned`, best_params.json's `params`) on top
    when `use_tuned` is true; and the tuned values that apply ({} when none do)."""
    cfg = tp.model_dump()
    if not (tp.use_tuned and tuned):
        return cfg, {}
    # Re-validate: a tuned value must satisfy the same schema as a hand-written one.
    return type(tp).model_validate({**cfg, **tuned}).model_dump(), dict(tuned)
