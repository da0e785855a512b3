"""A model file's metadata, read without torch."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch

from components.model_file import Tensor, read_metadata


def _blob() -> dict:
    return {"model": OrderedDict(w=torch.ones(3, 2), b=torch.zeros(2, dtype=torch.int64)),
            "config": {"arch": "lstm", "n_hidden": 8, "dropout": 0.25}, "classes": ["a", "b"],
            "train": {"lr": 0.01, "bs": None}, "history": [{"epoch": 1, "val_loss": 1.5}],
            "mix": {"table": np.arange(6, dtype=np.float32).reshape(2, 3), "lambda": 0.9},
            "fine_tuned_from": {"md5": "ab" * 16, "file": "models/char_lm/model.pt"}}


def test_metadata_equals_torch_load_with_tensors_as_placeholders(tmp_path):
    path = tmp_path / "model.pt"
    with open(path, "wb") as f:
        torch.save(_blob(), f)
    meta, full = read_metadata(path), torch.load(path, weights_only=False)
    assert meta.keys() == full.keys()
    for k in ("config", "classes", "train", "history", "fine_tuned_from"):
        assert meta[k] == full[k]
    assert isinstance(meta["model"], OrderedDict) and all(isinstance(v, Tensor) for v in meta["model"].values())
    np.testing.assert_array_equal(meta["mix"]["table"], full["mix"]["table"])


def test_reading_metadata_does_not_import_torch(tmp_path):
    path = tmp_path / "model.pt"
    with open(path, "wb") as f:
        torch.save(_blob(), f)
    code = ("import sys; from components.model_file import read_metadata; "
            f"m = read_metadata({str(path)!r}); assert m['config']['arch'] == 'lstm'; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=os.environ | {"PYTHONPATH": os.getcwd()})
    assert out.stdout.strip() == "False"


def test_a_class_outside_the_allowlist_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    buf = io.BytesIO()
    pickle.dump({"config": subprocess.Popen}, buf)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", buf.getvalue())
    with pytest.raises(ValueError, match=r"evil\.pt: not a readable model file \(subprocess\.Popen is not allowed"):
        read_metadata(path)


@pytest.mark.parametrize("content", [b"", b"not a zip", None])
def test_not_a_model_file_names_the_file(tmp_path, content):
    path = tmp_path / "model.pt"
    if content is None:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("other.txt", "x")
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=r"model\.pt: not a"):
        read_metadata(path)
