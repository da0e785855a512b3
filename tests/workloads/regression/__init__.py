"""A workload defined outside the pipeline's code: linear regression on synthetic data.

It proves the plug-in boundary: the stages run it through DVC, Ray Train, Ray Tune and the
MLflow registry knowing only `components.workloads.base.Workload`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from components.data.dataset import PartWriter, open_split, read_range
from components.data.parquet import load_manifest, read_json, staging_dir, write_json
from components.workloads.base import Registration, TrainingData, Workload

from .params import RegressionParams


def schema(n_features: int) -> pa.Schema:
    return pa.schema([*(pa.field(f"x{i}", pa.float32()) for i in range(n_features)), pa.field("y", pa.float32())])


def read_xy(path: str | Path, manifest: dict[str, Any], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    split = open_split(path, name, manifest, schema(manifest["n_features"]))
    t = read_range(split.as_data(), 0, split.rows)
    x = np.stack([t.column(f"x{i}").to_numpy() for i in range(manifest["n_features"])], 1)
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(t.column("y").to_numpy().astype(np.float32))


def _table(x: np.ndarray, y: np.ndarray) -> pa.Table:
    return pa.table({**{f"x{i}": x[:, i].astype(np.float32) for i in range(x.shape[1])}, "y": y.astype(np.float32)},
                    schema=schema(x.shape[1]))


def load_model(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    blob = torch.load(path, map_location="cpu", weights_only=False)
    model = torch.nn.Linear(blob["config"]["n_features"], 1)
    model.load_state_dict(blob["model"])
    return model.eval(), blob


@torch.no_grad()
def mse(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.nn.functional.mse_loss(model(x).squeeze(1), y))


class Regression(Workload):
    name = "regression"
    params = RegressionParams
    data_meta = "stats.json"
    live_metrics = ("epoch", "train_loss", "val_loss", "lr")
    headline = ("lr",)
    stage_modules = {"tune": ("loop",), "train": ("loop",), "register": ("pyfunc",)}

    def prepare(self, p: RegressionParams, out: str) -> str:
        q = p.prepare
        rng = np.random.default_rng(q.seed)
        w = rng.normal(size=q.n_features)
        x = rng.normal(size=(q.n_rows, q.n_features)) * 3 + 1
        y = x @ w + rng.normal(scale=q.noise, size=q.n_rows)
        with staging_dir(out) as tmp:
            w = PartWriter(tmp / "rows", schema(q.n_features))
            w.write(_table(x, y))
            write_json(tmp / "manifest.json", {"n_features": q.n_features, "files": {"rows": w.close()}})
        return f"{q.n_rows} rows x {q.n_features} features -> {out}"

    def normalize(self, p: RegressionParams, src: str, out: str) -> str:
        m = load_manifest(src)
        x, y = (t.numpy() for t in read_xy(src, m, "rows"))
        n = len(y)
        cut = [int(n * (1 - p.normalize.val_frac - p.normalize.test_frac)), int(n * (1 - p.normalize.test_frac))]
        mean, std = x[:cut[0]].mean(0), x[:cut[0]].std(0) + 1e-8  # train only
        xs = (x - mean) / std
        parts = {"train": slice(0, cut[0]), "val": slice(cut[0], cut[1]), "test": slice(cut[1], n)}
        with staging_dir(out) as tmp:
            files = {}
            for k, s in parts.items():
                w = PartWriter(tmp / k, schema(int(x.shape[1])))
                w.write(_table(xs[s], y[s]))
                files[k] = w.close()
            write_json(tmp / "stats.json", {"mean": mean.tolist(), "std": std.tolist()})
            write_json(tmp / "manifest.json", {"n_features": int(x.shape[1]), "files": files})
        return f"{ {k: s.stop - s.start for k, s in parts.items()} } -> {out}"

    def training_data(self, folder: str, train: dict[str, Any], p: RegressionParams) -> TrainingData:
        from components.store import checked_and_staged

        m = load_manifest(folder)
        _, uris = checked_and_staged(Path(folder), schema(m["n_features"]))
        data = {"train_uri": uris["train"], "val_uri": uris["val"], "n_features": m["n_features"],
                "n_train": m["files"]["train"]["rows"], "n_val": m["files"]["val"]["rows"]}
        return TrainingData(data, {"n_train": data["n_train"]})

    def worker_loop(self) -> Callable[[dict[str, Any]], None]:
        from .loop import regression_loop

        return regression_loop

    def publish(self, path: str | Path, state: dict[str, Any], folder: str, data: dict[str, Any],
                train: dict[str, Any]) -> None:
        from components.data.parquet import atomic_path

        blob = {"model": state["model"], "config": {"arch": "linear", "n_features": data["n_features"]},
                "stats": read_json(Path(folder) / "stats.json"), "train": state.get("train", {})}
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(blob, f)

    def evaluate(self, p: RegressionParams, data: str, model: str, reports: Path,
                 state: Path) -> tuple[dict[str, Any], list[str]]:
        net, _ = load_model(model)
        m = load_manifest(data)
        metrics = {f"{s}_loss": mse(net, *read_xy(data, m, s)) for s in ("val", "test")}
        (reports / "mse.txt").write_text(f"{metrics}\n")
        return metrics, [f"val mse {metrics['val_loss']:.4f}, test mse {metrics['test_loss']:.4f}"]

    def registration(self, data: str, model: str) -> Registration:
        import mlflow

        _, blob = load_model(model)
        x, y = read_xy(data, load_manifest(data), "val")

        def rescore(model_file: str) -> float:
            return mse(load_model(model_file)[0], x, y)

        def log_model() -> str:
            from .pyfunc import RegressionPyfunc

            return mlflow.pyfunc.log_model(name="model", python_model=RegressionPyfunc(),
                                           artifacts={"checkpoint": str(model)}).model_uri

        return Registration(blob, rescore, log_model)


WORKLOAD = Regression()
