"""The registered char-LM as an MLflow pyfunc: prompts in, generated text out.

Self-contained: the checkpoint (weights, config, vocabulary) is an artifact and the
`components` package travels as model code, so `mlflow.pyfunc.load_model` works in a fresh
process and `mlflow models serve` can serve it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

CHECKPOINT_ARTIFACT = "checkpoint"


class CharLMPyfunc(mlflow.pyfunc.PythonModel):
    """Generate text from prompts: columns `prompt` (str), optional `n_chars`, `temperature`, `seed`."""

    def load_context(self, context) -> None:
        from components.evaluation.char_lm import load_published_model

        self.model, self.vocab, self.meta = load_published_model(context.artifacts[CHECKPOINT_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        from components.evaluation.char_lm import sample_text

        if isinstance(model_input, dict):
            model_input = pd.DataFrame(model_input)
        out = []
        for _, row in model_input.iterrows():
            n_chars = int(row["n_chars"]) if "n_chars" in row and pd.notna(row["n_chars"]) else 200
            temp = float(row["temperature"]) if "temperature" in row and pd.notna(row["temperature"]) else 0.8
            seed = int(row["seed"]) if "seed" in row and pd.notna(row["seed"]) else 0
            out.append(sample_text(self.model, self.vocab, str(row["prompt"]), n_chars, temp, seed))
        return out


def log_pyfunc(model_file: str | Path, name: str = "model"):
    """Log the pyfunc into the active run; returns MLflow's ModelInfo."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    import components

    example = pd.DataFrame({"prompt": ["for thos"], "n_chars": [40], "temperature": [0.8], "seed": [0]})
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "prompt"), ColSpec("long", "n_chars", required=False),
                       ColSpec("double", "temperature", required=False), ColSpec("long", "seed", required=False)]),
        outputs=Schema([ColSpec("string")]))
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=CharLMPyfunc(),
        artifacts={CHECKPOINT_ARTIFACT: str(model_file)},
        code_paths=[str(Path(components.__file__).parent)],
        signature=signature,
        input_example=example,
        pip_requirements=["torch==2.14.1", "numpy", "pandas", "pyarrow", f"mlflow=={mlflow.__version__}"],
    )


class ImageClassifierPyfunc(mlflow.pyfunc.PythonModel):
    """Classify images: a uint8 array (N, H, W, C) or one (H, W, C) image -> class id, name, probability."""

    def load_context(self, context) -> None:
        from components.evaluation.images import load_image_model

        self.model, self.blob = load_image_model(context.artifacts[CHECKPOINT_ARTIFACT])

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import numpy as np
        import torch

        from components.evaluation.images import predict

        x = np.asarray(model_input)
        if x.ndim == 3:
            x = x[None]
        if x.dtype != np.uint8:  # floats are taken as [0, 1] pixels
            x = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
        probs = predict(self.model, self.blob, torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
        p, i = probs.max(1)
        return pd.DataFrame({"class_id": i.numpy(), "class_name": [self.blob["classes"][k] for k in i.tolist()],
                             "probability": p.numpy()})


def log_image_pyfunc(model_file: str | Path, example, name: str = "model"):
    """Log the image classifier pyfunc into the active run; `example` is one (H, W, C) uint8 image."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    import components

    h, w, c = example.shape
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype("uint8"), (-1, h, w, c))]),
                               outputs=Schema([ColSpec("long", "class_id"), ColSpec("string", "class_name"),
                                               ColSpec("float", "probability")]))
    return mlflow.pyfunc.log_model(
        name=name, python_model=ImageClassifierPyfunc(), artifacts={CHECKPOINT_ARTIFACT: str(model_file)},
        code_paths=[str(Path(components.__file__).parent)], signature=signature, input_example=example[None],
        pip_requirements=["torch==2.14.1", "numpy", "pandas", "pyarrow", f"mlflow=={mlflow.__version__}"])
