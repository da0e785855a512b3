"""The regression model as an MLflow pyfunc: feature rows in, predictions out."""

from __future__ import annotations

import mlflow.pyfunc


class RegressionPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from . import load_model

        self.model, _ = load_model(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None):
        import numpy as np
        import torch

        with torch.no_grad():
            return self.model(torch.from_numpy(np.asarray(model_input, dtype=np.float32))).squeeze(1).numpy()
