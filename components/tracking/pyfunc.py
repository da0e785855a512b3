"""Logging a workload's model as a self-contained MLflow pyfunc: the model file is an
artifact and the `components` package travels as model code, so `mlflow.pyfunc.load_model`
works in a fresh process and `mlflow models serve` can serve it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc

CHECKPOINT_ARTIFACT = "checkpoint"
REQUIREMENTS = ("torch==2.14.1", "numpy", "pandas", "pyarrow")


def log_pyfunc(python_model: mlflow.pyfunc.PythonModel, model_file: str | Path, signature: Any,
               input_example: Any, name: str = "model"):
    """Log `python_model` (which loads `context.artifacts[CHECKPOINT_ARTIFACT]`) into the active
    run; returns MLflow's ModelInfo."""
    import components

    return mlflow.pyfunc.log_model(
        name=name, python_model=python_model, artifacts={CHECKPOINT_ARTIFACT: str(model_file)},
        code_paths=[str(Path(components.__file__).parent)], signature=signature, input_example=input_example,
        pip_requirements=[*REQUIREMENTS, f"mlflow=={mlflow.__version__}"])
