"""A tabular workload's registered model as an MLflow pyfunc: rows of feature columns in
(a DataFrame, or an array in the features' order), predictions out."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from components.tracking.pyfunc import CHECKPOINT_ARTIFACT, log_pyfunc


class TabularPyfunc(mlflow.pyfunc.PythonModel):
    """Regression: a `prediction` column; classification: `class_id`, `class_name`, `probability`."""

    def load_context(self, context) -> None:
        from components.workloads.tabular import load_model

        self.model, self.blob = load_model(context.artifacts[CHECKPOINT_ARTIFACT])

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import numpy as np
        import torch

        st = self.blob["stats"]
        if isinstance(model_input, pd.DataFrame) and set(st["features"]) <= set(model_input.columns):
            model_input = model_input[st["features"]]
        x = (np.asarray(model_input, dtype=np.float64) - np.asarray(st["mean"])) / np.asarray(st["std"])
        with torch.no_grad():
            out = self.model(torch.from_numpy(x.astype(np.float32)))
        if st["task"] == "regression":
            return pd.DataFrame({"prediction": out.squeeze(-1).numpy()})
        p, i = torch.softmax(out, 1).max(1)
        return pd.DataFrame({"class_id": i.numpy(), "class_name": [st["classes"][k] for k in i.tolist()],
                             "probability": p.numpy()})


def package_tree(module: str, root: Path, dest: Path) -> tuple[str, ...]:
    """The files of `module`'s package that importing it runs (its import closure under its top
    package, with the `__init__.py` files above), copied under `dest` as they lie under `root`:
    what a served model needs of a workload kept outside our code. () for our own modules."""
    from components.fingerprint import PACKAGES, import_closure

    top = module.split(".")[0]
    if top in PACKAGES or not (root / top).is_dir():
        return ()
    for f in import_closure(module, root, (top,)):
        target = dest / f.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
    return (str(dest / top),)


def log_model(model_file: str | Path, blob: dict[str, Any], example: pd.DataFrame):
    """Log the pyfunc into the active run, with the workload's own package when it lives outside ours."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    module = blob["config"]["workload"].split(":")[0]
    outputs = [ColSpec("float", "prediction")] if blob["stats"]["task"] == "regression" else \
        [ColSpec("long", "class_id"), ColSpec("string", "class_name"), ColSpec("float", "probability")]
    signature = ModelSignature(inputs=Schema([ColSpec("double", f) for f in blob["stats"]["features"]]),
                               outputs=Schema(outputs))
    with tempfile.TemporaryDirectory() as tmp:
        code = package_tree(module, Path.cwd(), Path(tmp))
        return log_pyfunc(TabularPyfunc(), model_file, signature, example.astype("float64"), code=code)
