"""A supervised model on a table, for the price of a model: `TabularWorkload` does what most
workloads repeat, and a workload gives its params (`tabular_params`) and its `model`:

    class Houses(TabularWorkload):
        name = "houses"
        params = tabular_params("House prices from a CSV.", model_name="houses",
                                source="inputs/houses/houses.csv", target="price")

        def model(self, n_features, n_outputs, train):
            return nn.Sequential(nn.Linear(n_features, train["hidden"]), nn.ReLU(),
                                 nn.Linear(train["hidden"], n_outputs))

    WORKLOAD = Houses()

What the base does, stage by stage:
  prepare     the table (CSV / TSV / Parquet, a file or a folder, local or s3://) streamed into
              Parquet parts of float32 features and the target, each bad row one line
  normalize   rows to train / val / test at random by seed, standardised with train's mean and std
  tune/train  the model over Ray Train / Tune: row shards streamed, DDP, checkpoints, resume
              (`loss`: mean squared error, or cross-entropy for classification; override it)
  evaluate    the loss (and accuracy) on val and test beside the baseline a model must beat: the
              train mean (regression) or the majority class; a predictions report and plot
  register    a pyfunc taking the feature columns, with the workload's own package shipped
"""

from __future__ import annotations

import functools
import importlib
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from components.config import ParamsError
from components.workloads.base import Registration, TrainingData, Workload
from components.workloads.tabular.params import (
    TabularEvaluate,
    TabularNormalize,
    TabularParams,
    TabularPrepare,
    TabularRegister,
    TabularTrain,
    TabularTune,
    tabular_params,
    with_defaults,
)

__all__ = ["TabularEvaluate", "TabularNormalize", "TabularParams", "TabularPrepare", "TabularRegister",
           "TabularTrain", "TabularTune", "TabularWorkload", "load_model", "tabular_params", "with_defaults"]


_DATA, _LOOP, _PYFUNC = (f"{__name__}.{m}" for m in ("data", "loop", "pyfunc"))


def _outputs(st: dict[str, Any]) -> int:
    return 1 if st["task"] == "regression" else len(st["classes"])


def load_model(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """A published model file -> (the workload's model with its weights, in eval mode; the file's blob)."""
    import torch

    blob = torch.load(path, map_location="cpu", weights_only=False)
    module, _, cls = blob["config"]["workload"].partition(":")
    workload = getattr(importlib.import_module(module), cls)()
    net = workload.model(blob["config"]["n_features"], blob["config"]["n_outputs"], blob["train"])
    net.load_state_dict(blob["model"])
    return net.eval(), blob


class TabularWorkload(Workload):
    """A supervised model on a table. Set `name` and `params` (`tabular_params(...)`), give `model`;
    override `loss` for another objective."""

    params: ClassVar[type[TabularParams]]
    data_meta = "stats.json"
    headline = ("lr",)
    base_stage_modules: ClassVar[dict[str, tuple[str, ...]]] = {
        "prepare": (_DATA,), "normalize": (_DATA,), "tune": (_DATA, _LOOP), "train": (_DATA, _LOOP),
        "evaluate": (_DATA, _LOOP), "register": (_DATA, _LOOP, _PYFUNC)}

    @abstractmethod
    def model(self, n_features: int, n_outputs: int, train: dict[str, Any]) -> Any:
        """The `torch.nn.Module` mapping (N, n_features) standardised float features to (N, n_outputs):
        one value per row (regression) or a logit per class. `train`: the run's train params
        (`hidden`, `dropout`, and any keys of your own)."""

    def loss(self, out: Any, y: Any) -> Any:
        """The mean loss of outputs `out` for targets `y`: mean squared error (regression), cross-entropy
        (classification, `y` class ids)."""
        from torch.nn import functional as F

        return F.mse_loss(out.squeeze(-1), y) if self.task == "regression" else F.cross_entropy(out, y)

    @property
    def task(self) -> str:
        """regression | classification (`tabular_params(task=...)`)."""
        return self.params.TASK

    @property
    def select(self) -> tuple[str, str]:  # type: ignore[override]
        return ("val_loss", "min") if self.task == "regression" else ("val_accuracy", "max")

    @property
    def live_metrics(self) -> tuple[str, ...]:  # type: ignore[override]
        extra = ("val_accuracy",) if self.task == "classification" else ()
        return ("epoch", "train_loss", "val_loss", *extra, "lr")

    @property
    def baseline_metric(self) -> str:  # type: ignore[override]
        return "val_loss" if self.task == "regression" else "val_accuracy"

    def prepare(self, p: TabularParams, out: str) -> str:
        from components.workloads.tabular.data import prepare

        q = p.prepare
        return prepare(q.source, q.target, q.features, self.task, q.batch_rows, out)

    def normalize(self, p: TabularParams, src: str, out: str) -> str:
        from components.workloads.tabular.data import normalize

        q = p.normalize
        return normalize(src, out, p.prepare.batch_rows, q.seed, q.val_frac, q.test_frac, q.part_mb)

    def training_data(self, folder: str, train: dict[str, Any], p: TabularParams) -> TrainingData:
        from components.store import checked_and_staged
        from components.workloads.tabular.data import schema, stats

        st = stats(folder)
        # before any compute; a sweep's base lacks the searched keys: the section's values stand in
        self.check_model(len(st["features"]), _outputs(st), p.train.model_dump() | train)
        target_type = "ids" if st["task"] == "classification" else st["task"]
        manifest, uris = checked_and_staged(Path(folder), schema(st["features"], st["target"], target_type))
        data = {"train_uri": uris["train"], "val_uri": uris["val"], "features": st["features"], "target": st["target"],
                "task": st["task"], "n_features": len(st["features"]), "n_outputs": _outputs(st),
                "n_train": manifest["files"]["train"]["rows"], "n_val": manifest["files"]["val"]["rows"]}
        return TrainingData(data, {"n_train": data["n_train"], "n_features": data["n_features"]})

    def check_model(self, n_features: int, n_outputs: int, train: dict[str, Any]) -> None:
        """Build the model and run two zero rows through it: one line naming the workload otherwise."""
        import torch

        where = f"{self.name}: {type(self).__name__}.model"
        try:
            net = self.model(n_features, n_outputs, train)
            with torch.no_grad():
                out = net.eval()(torch.zeros(2, n_features))
        except Exception as err:  # noqa: BLE001 - the model is the workload's
            raise ParamsError(f"{where}(n_features={n_features}, n_outputs={n_outputs}) failed on a batch of "
                              f"2 rows: {type(err).__name__}: {err}") from None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, n_outputs):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ParamsError(f"{where} maps (2, {n_features}) rows to {got}, not (2, {n_outputs})")

    def worker_loop(self) -> Callable[[dict[str, Any]], None]:
        from components.workloads.tabular.loop import tabular_loop

        return functools.partial(tabular_loop, self)

    def publish(self, path: str | Path, state: dict[str, Any], folder: str, data: dict[str, Any],
                train: dict[str, Any]) -> None:
        import torch

        from components.data.parquet import atomic_path
        from components.workloads.tabular.data import stats

        config = {"arch": self.arch(train), "workload": f"{type(self).__module__}:{type(self).__qualname__}",
                  "n_features": data["n_features"], "n_outputs": data["n_outputs"], "task": self.task}
        blob = {"model": state["model"], "config": config, "stats": stats(folder), "train": state.get("train", train)}
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(blob, f)

    def _score(self, net: Any, folder: str, split: str, bs: int, st: dict[str, Any],
               preview: int = 0) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        """One streamed pass over a split: {loss, accuracy, confusion (classification), baseline
        (the train mean's squared error, or the majority class's hits, per row)}, and the first
        `preview` rows' targets and predictions."""
        import torch

        from components.workloads.tabular.data import split_xy
        from components.workloads.tabular.loop import score

        regression = self.task == "regression"
        k = 1 if regression else len(st["classes"])
        sums = {"baseline": 0.0, "confusion": np.zeros((k, k), np.int64)}
        ys: list[np.ndarray] = []
        preds: list[np.ndarray] = []
        kept = [0]

        def seen(out: Any, y: Any) -> None:
            pred = (out.squeeze(-1) if regression else out.argmax(1)).numpy()
            yn = y.numpy()
            if regression:
                sums["baseline"] += float(np.square(yn.astype(np.float64) - st["train_target_mean"]).sum())
            else:
                sums["baseline"] += int((yn == int(np.argmax(st["train_class_counts"]))).sum())
                np.add.at(sums["confusion"], (yn, pred), 1)
            if kept[0] < preview:
                ys.append(yn[:preview - kept[0]])
                preds.append(pred[:preview - kept[0]])
                kept[0] += len(ys[-1])

        batches = ((torch.from_numpy(x), torch.from_numpy(y)) for x, y in split_xy(folder, split, bs))
        loss, correct, n = score(self, net, batches, torch.device("cpu"), seen)
        out = {"loss": loss / n, "baseline": sums["baseline"] / n}
        if not regression:
            out |= {"accuracy": correct / n, "confusion": sums["confusion"]}
        empty = np.empty(0)
        return out, (np.concatenate(ys) if ys else empty), (np.concatenate(preds) if preds else empty)

    def evaluate(self, p: TabularParams, data: str, model: str, reports: Path,
                 state: Path) -> tuple[dict[str, Any], list[str]]:
        from components.workloads.tabular.data import stats

        net, _ = load_model(model)
        st = stats(data)
        val, y, pred = self._score(net, data, "val", p.train.eval_bs, st, p.evaluate.preview_rows)
        test = self._score(net, data, "test", p.train.eval_bs, st)[0]
        if self.task == "regression":  # the baseline: the train mean, whatever the features say
            metrics = {"val_loss": val["loss"], "test_loss": test["loss"],
                       "baseline_mean_val_loss": val["baseline"], "baseline_mean_test_loss": test["baseline"]}
            lines = [f"val mse {metrics['val_loss']:.4f}, test mse {metrics['test_loss']:.4f}; the train mean "
                     f"scores {metrics['baseline_mean_val_loss']:.4f} on val"]
        else:  # the baseline: the train split's most frequent class, for every row
            metrics = {"accuracy": val["accuracy"], "test_accuracy": test["accuracy"], "val_loss": val["loss"],
                       "test_loss": test["loss"], "baseline_majority_val_accuracy": val["baseline"],
                       "baseline_majority_test_accuracy": test["baseline"]}
            lines = [f"accuracy {metrics['accuracy']:.4f} (val), {metrics['test_accuracy']:.4f} (test); the "
                     f"majority class scores {metrics['baseline_majority_val_accuracy']:.4f} on val"]
        self._report(reports, y, pred, st, val.get("confusion"))
        return metrics, lines

    def _report(self, reports: Path, y: np.ndarray, pred: np.ndarray, st: dict[str, Any],
                confusion: np.ndarray | None) -> None:
        """predictions.csv (the first val rows: actual, predicted) and a plot: those rows' predictions
        against the truth (regression), or the whole val split's confusion matrix."""
        if st["task"] == "classification":
            names = np.asarray(st["classes"], dtype=object)
            y, pred = names[y.astype(np.int64)], names[pred.astype(np.int64)]
        (reports / "predictions.csv").write_text("actual,predicted\n" + "".join(
            f"{a},{b}\n" for a, b in zip(y.tolist(), pred.tolist(), strict=True)))
        if confusion is not None:
            from components.evaluation import plot_confusion

            plot_confusion(reports / "predictions.png", confusion, list(st["classes"]), f"{self.name}: val")
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.scatter(y, pred, s=6, alpha=0.5)
        lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1)
        ax.set(xlabel=f"actual {st['target']}", ylabel="predicted", title=f"{self.name}: val predictions")
        fig.tight_layout()
        fig.savefig(reports / "predictions.png", dpi=100)
        plt.close(fig)

    def registration(self, data: str, model: str) -> Registration:
        from components.model_file import read_metadata
        from components.workloads.tabular.data import split_xy, stats

        blob = read_metadata(model)
        st = stats(data)
        x, _ = next(split_xy(data, "val", 5))
        import pandas as pd

        example = pd.DataFrame(x * np.asarray(st["std"], np.float32) + np.asarray(st["mean"], np.float32),
                               columns=st["features"])  # rows as a user sends them: not standardised

        def rescore(model_file: str) -> float:
            net, _ = load_model(model_file)
            got = self._score(net, data, "val", 4096, st)[0]
            return got["loss"] if self.task == "regression" else got["accuracy"]

        def log_model() -> str:
            from components.workloads.tabular.pyfunc import log_model as log

            return log(model, blob | {"stats": st}, example).model_uri

        return Registration(blob, rescore, log_model)
