"""The registered char-LM as an MLflow pyfunc: prompts in, generated text out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from components.tracking.pyfunc import CHECKPOINT_ARTIFACT, log_pyfunc


class CharLMPyfunc(mlflow.pyfunc.PythonModel):
    """Generate text from prompts: columns `prompt` (str), optional `n_chars`, `temperature`, `seed`."""

    def load_context(self, context) -> None:
        from components.workloads.char_lm.model import load_model

        self.model, self.vocab, self.meta = load_model(context.artifacts[CHECKPOINT_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        from components.workloads.char_lm.evaluate import sample_text

        if isinstance(model_input, dict):
            model_input = pd.DataFrame(model_input)
        out = []
        for _, row in model_input.iterrows():
            n_chars = int(row["n_chars"]) if "n_chars" in row and pd.notna(row["n_chars"]) else 200
            temp = float(row["temperature"]) if "temperature" in row and pd.notna(row["temperature"]) else 0.8
            seed = int(row["seed"]) if "seed" in row and pd.notna(row["seed"]) else 0
            out.append(sample_text(self.model, self.vocab, str(row["prompt"]), n_chars, temp, seed))
        return out


def log_model(model_file: str | Path):
    """Log the char-LM pyfunc into the active run; returns MLflow's ModelInfo."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    example = pd.DataFrame({"prompt": ["for thos"], "n_chars": [40], "temperature": [0.8], "seed": [0]})
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "prompt"), ColSpec("long", "n_chars", required=False),
                       ColSpec("double", "temperature", required=False), ColSpec("long", "seed", required=False)]),
        outputs=Schema([ColSpec("string")]))
    return log_pyfunc(CharLMPyfunc(), model_file, signature, example)
