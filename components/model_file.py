"""Reading a published model file's metadata without torch.

A model file is `torch.save` of a dict: the weights beside plain metadata (config, classes,
the run's params, lineage). `register` needs only the metadata, and importing torch to read
it cost 1.5 s of a 5 s stage. The file is a zip holding one pickle; this reads that pickle with
tensors and storages as `Tensor` placeholders, and refuses any class it does not know, as
`torch.load(weights_only=True)` would.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

# What a model file's metadata may hold besides tensors.
_ALLOWED = {("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
            ("builtins", "slice"), ("builtins", "complex"), ("_codecs", "encode")} | {
    (m, n) for m in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray")  # numpy arrays (a bigram table)
    for n in ("_reconstruct", "ndarray", "dtype", "scalar")}


class Tensor:
    """Where the file holds a tensor (its values are not read)."""

    def __repr__(self) -> str:
        return "Tensor(...)"


def _rebuild(*_args: Any, **_kwargs: Any) -> Tensor:
    return Tensor()


class _MetaUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" or module.startswith("torch."):
            return _rebuild  # rebuilders, storage classes, dtypes: anything of torch's is a placeholder
        if (module, name) in _ALLOWED or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a model file")

    def persistent_load(self, pid: Any) -> Tensor:  # a storage: its bytes are another zip member
        return Tensor()


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The dict a model file holds, tensors as `Tensor` placeholders; ValueError naming the
    file when it is not a model file of this kind."""
    try:
        with zipfile.ZipFile(path) as z:
            pkl = next((n for n in z.namelist() if n.endswith("/data.pkl")), None)
            if pkl is None:
                raise ValueError(f"{path}: not a torch model file (no data.pkl inside)")
            blob = _MetaUnpickler(z.open(pkl)).load()
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError) as err:
        raise ValueError(f"{path}: not a readable model file ({err})") from None
    if not isinstance(blob, dict):
        raise ValueError(f"{path}: holds a {type(blob).__name__}, not a model file's dict")
    return blob
