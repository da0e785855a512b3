"""The registered image classifier as an MLflow pyfunc: uint8 images in, class and probability out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from components.tracking.pyfunc import CHECKPOINT_ARTIFACT, log_pyfunc


class ImageClassifierPyfunc(mlflow.pyfunc.PythonModel):
    """Classify images: a uint8 array (N, H, W, C) or one (H, W, C) image -> class id, name, probability."""

    def load_context(self, context) -> None:
        from components.workloads.image_classifier.model import load_model

        self.model, self.blob = load_model(context.artifacts[CHECKPOINT_ARTIFACT])

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import numpy as np
        import torch

        from components.workloads.image_classifier.evaluate import predict

        x = np.asarray(model_input)
        if x.ndim == 3:
            x = x[None]
        if x.dtype != np.uint8:  # floats are taken as [0, 1] pixels
            x = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
        probs = predict(self.model, self.blob, torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
        p, i = probs.max(1)
        return pd.DataFrame({"class_id": i.numpy(), "class_name": [self.blob["classes"][k] for k in i.tolist()],
                             "probability": p.numpy()})


def log_model(model_file: str | Path, example):
    """Log the image classifier pyfunc into the active run; `example` is one (H, W, C) uint8 image."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    h, w, c = example.shape
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype("uint8"), (-1, h, w, c))]),
                               outputs=Schema([ColSpec("long", "class_id"), ColSpec("string", "class_name"),
                                               ColSpec("float", "probability")]))
    from components.model_file import read_metadata
    from components.workloads.modules import module_code

    code = module_code(str(read_metadata(model_file)["config"]["arch"]))  # the user's model module
    return log_pyfunc(ImageClassifierPyfunc(), model_file, signature, example[None], code=code)
