"""The workload interface: everything a stage needs to know about one kind of model.

    prepare    raw source -> data/<w>/prepared            Workload.prepare
    normalize  prepared -> data/<w>/normalized            Workload.normalize
    tune/train normalized -> what workers read           Workload.training_data, .worker_loop
               final checkpoint -> models/<w>/model.pt    Workload.publish
    evaluate   model + val/test -> metrics, reports       Workload.evaluate
    register   model -> MLflow pyfunc, champion re-score  Workload.registration

The stages own everything around these calls (params, Ray, MLflow, run keys, atomic
publishing); a workload owns only what differs between models.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from components.config import WorkloadParams


@dataclass(frozen=True)
class TrainingData:
    """What the workers of a train or tune run get (`data` in their config: URIs every node
    can read, sizes, statistics), and what train logs about it to MLflow."""

    workers: dict[str, Any]
    logged: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Registration:
    """What `register` needs from a workload: the model file's metadata, a way to score any
    registered version on our val data (so champions are compared on the same data), and a
    way to log the model as a pyfunc into the active MLflow run (returns its URI)."""

    blob: dict[str, Any]
    rescore: Callable[[str], float]  # a version's local model file -> REGISTER_METRIC on our val data
    log_model: Callable[[], str]
    lineage: dict[str, str] = field(default_factory=dict)  # the workload's own version tags (a base model)


# The workload methods each stage calls: what its `stage_modules[stage]` must cover.
STAGE_CALLS: dict[str, tuple[str, ...]] = {
    "prepare": ("prepare",),
    "normalize": ("normalize",),
    "trial_params": (),
    "tune": ("training_data", "steps_per_pass", "worker_loop"),
    "train": ("training_data", "worker_loop", "publish", "arch", "budget", "published_metrics"),
    "evaluate": ("evaluate",),
    "register": ("registration", "floor", "arch"),
    "adapt": ("adapt",),
}


class Workload(ABC):
    """One kind of model. Subclasses set the class variables and implement the methods.
    Its params section has prepare, normalize, tune, train, evaluate and register sections,
    and `prepare.source` (dvc.yaml passes it to tune and train, which may read it)."""

    name: ClassVar[str]
    params: ClassVar[type[WorkloadParams]]  # its params.yaml section
    data_meta: ClassVar[str]  # the normalized folder's metadata file (vocabulary, statistics)
    live_metrics: ClassVar[tuple[str, ...]] = ("epoch", "train_loss", "val_loss", "lr")  # logged per epoch
    headline: ClassVar[tuple[str, ...]] = ()  # train keys train's first line shows besides the tuned ones
    select: ClassVar[tuple[str, str]] = ("val_loss", "min")  # the epoch train publishes is the best by this
    baseline_metric: ClassVar[str] = "val_loss"  # evaluate reports `baseline_<name>_<this>` per baseline
    # Its own modules each stage runs (names relative to its package), besides the module that
    # defines it: a stage's dvc.yaml deps and code fingerprint are their import closures, so
    # editing the model reruns the stages that run it and not those that only stage its data.
    # Checked against what each method imports (tests/unit/test_stage_deps.py).
    stage_modules: ClassVar[dict[str, tuple[str, ...]]] = {}
    # The same for a base class's own modules (absolute names): `TabularWorkload`'s data, loop, pyfunc.
    base_stage_modules: ClassVar[dict[str, tuple[str, ...]]] = {}
    extra_stages: ClassVar[tuple[str, ...]] = ()  # optional stages it has (`adapt`), besides the seven
    base_dep: ClassVar[str | None] = None  # a params key naming a model file it starts from: a dep of tune and train
    registered_after: ClassVar[str | None] = None  # a workload whose register must run first (its lineage names it)
    train_metrics: ClassVar[tuple[str, ...]] = ()  # the published epoch's numbers for train.json besides live ones
    # A train key that may name the user's own module by import path (`package.module:factory`):
    # its files become deps of the stages that build the model, and the registered model ships them.
    model_key: ClassVar[str | None] = None

    def model_spec(self, blob: dict[str, Any]) -> str:
        """What a model file's run named in `model_key` ('' for a workload without one)."""
        return str((blob.get("train") or {}).get(self.model_key) or "") if self.model_key else ""

    def arch(self, config: dict[str, Any]) -> str:
        """The model's architecture, as run tags, the registry and train's first line name it,
        from a train config or a model file's `config`."""
        return str(config.get("arch", self.name))

    def budget(self, cfg: dict[str, Any]) -> str:
        """`up to 30 epochs of one pass each, patience 3`: how long a train run with `cfg` trains."""
        per = f"{cfg['steps_per_epoch']} steps" if cfg.get("steps_per_epoch") else "one pass"
        out = f"up to {cfg['epochs']} epochs of {per} each"
        return out + (f", patience {cfg['patience']}" if cfg.get("patience") else "")

    def published_metrics(self, row: dict[str, Any]) -> dict[str, Any]:
        """What train publishes of the chosen epoch's report: the live metrics and `train_metrics`."""
        return {k: row[k] for k in (*self.live_metrics, *self.train_metrics) if k in row and k not in ("epoch", "lr")}

    @property
    def train_schema(self) -> type[BaseModel]:
        """The schema of its `train` section (a sweep's trial configs are checked against it)."""
        return self.params.model_fields["train"].annotation

    @property
    def data_files(self) -> tuple[str, ...]:
        """Normalized data whose md5s tag a registered version (what train reads: the train and val
        split folders, and the metadata file)."""
        return ("train", "val", self.data_meta)

    def floor(self, metrics: dict[str, Any]) -> tuple[str, float] | None:
        """The best baseline in `metrics` (evaluate's) on val, as (name, value), by the register
        metric's mode; None when evaluate reported none."""
        mode = self.params.REGISTER_METRIC[1]
        found = {k.removeprefix("baseline_").removesuffix(f"_{self.baseline_metric}"): float(v)
                 for k, v in metrics.items() if k.startswith("baseline_") and k.endswith(f"_{self.baseline_metric}")}
        if not found:
            return None
        name = (min if mode == "min" else max)(found, key=found.__getitem__)
        return name, found[name]

    def steps_per_pass(self, data: dict[str, Any], train: dict[str, Any]) -> int:
        """Steps of one pass over the training data for `train` on one worker (`data`: what
        `training_data` gives the workers): what a sweep's data-scaled trial epoch is a
        fraction of. Rows / `bs` unless a workload's steps are not rows."""
        return max(1, math.ceil(data["n_train"] / train["bs"]))

    @abstractmethod
    def prepare(self, p: Any, out: str) -> str:
        """Read the source named in `p.prepare`, publish Parquet + a manifest under `out`; the summary line."""

    @abstractmethod
    def normalize(self, p: Any, src: str, out: str) -> str:
        """Split and normalize `src` into `out` (statistics from train only); the summary line."""

    @abstractmethod
    def training_data(self, folder: str, train: dict[str, Any], p: Any) -> TrainingData:
        """Check the normalized train / val files and stage them for workers on any node."""

    @abstractmethod
    def worker_loop(self) -> Callable[[dict[str, Any]], None]:
        """The per-worker training function (`config["train"]`, `config["data"]`)."""

    @abstractmethod
    def publish(self, path: str | Path, state: dict[str, Any], folder: str, data: dict[str, Any],
                train: dict[str, Any]) -> None:
        """Write the self-contained model file from the final checkpoint's state, atomically
        (`folder`: the normalized data; `data`: what the workers got; `train`: the run's params)."""

    @abstractmethod
    def evaluate(self, p: Any, data: str, model: str, reports: Path, state: Path) -> tuple[dict[str, Any], list[str]]:
        """Score the model on val and test, write reports into `reports`; (metrics, summary lines).
        `state`: a folder for work worth resuming (a comparison model's training), keyed by the
        stage's run key (code, params, the model and data it reads): a rerun of the same resumes it."""

    @abstractmethod
    def registration(self, data: str, model: str) -> Registration:
        """What `register` needs for this model file."""

    def adapt(self, p: Any, data: str, out: str) -> str:
        """The optional `adapt` stage (`extra_stages`): fit a model the workload starts from to
        its normalized train data (`data`), written to `out`; the summary line."""
        from components.config import ParamsError

        raise ParamsError(f"--workload {self.name}: this workload has no adapt stage (extra_stages "
                          f"{list(self.extra_stages) or 'none'}); it runs for workloads that list it, "
                          "e.g. text_classifier")
