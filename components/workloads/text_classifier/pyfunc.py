"""The registered text classifier as an MLflow pyfunc: passages in, genre and probability out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from components.tracking.pyfunc import CHECKPOINT_ARTIFACT, log_pyfunc


class TextClassifierPyfunc(mlflow.pyfunc.PythonModel):
    """Classify passages: a column `text` (or a list of strings) -> class name and probability."""

    def load_context(self, context) -> None:
        from components.workloads.text_classifier.model import load_model

        self.model, self.blob = load_model(context.artifacts[CHECKPOINT_ARTIFACT])

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from components.workloads.text_classifier.model import predict_texts

        if isinstance(model_input, pd.DataFrame):
            texts = model_input["text" if "text" in model_input else model_input.columns[0]].astype(str).tolist()
        else:
            texts = [str(t) for t in model_input]
        probs = predict_texts(self.model, self.blob, texts)
        p, i = probs.max(1)
        return pd.DataFrame({"genre": [self.blob["classes"][k] for k in i.tolist()], "probability": p.numpy()})


def log_model(model_file: str | Path, example: str):
    """Log the text classifier pyfunc into the active run; `example` is one passage."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from components.model_file import read_metadata
    from components.workloads.modules import module_code

    signature = ModelSignature(inputs=Schema([ColSpec("string", "text")]),
                               outputs=Schema([ColSpec("string", "genre"), ColSpec("double", "probability")]))
    code = module_code(str(read_metadata(model_file)["head"].get("spec", "concat_pool")))  # the user's head module
    return log_pyfunc(TextClassifierPyfunc(), model_file, signature, pd.DataFrame({"text": [example]}), code=code)
