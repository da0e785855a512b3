"""A model named by import path: the user's own module for the price of a factory.

`train.arch` of a classifier workload takes, besides its own names:

- `package.module:factory`: a module in the project (`nets/tiny.py` -> `nets.tiny:build`) or in an
  installed package; called as `factory(in_shape=(C, H, W), n_classes=K)`, plus `dropout=` when
  it takes one, it returns an `nn.Module` mapping `(N, C, H, W)` floats to `(N, K)` logits;
- `torchvision:NAME`: one of torchvision's architectures (`torchvision.models.get_model`, random
  weights, never a download), with grey images repeated to its three channels.

The text classifier's `train.head` takes `package.module:factory` the same way, called as
`factory(in_features=F, n_classes=K)` (plus `dropout=`) for the pooled encoder states.

`check` builds the model once on the CPU and runs a batch of two through it before any
compute, so a wrong path, a factory that raises or an output that does not fit is one line
naming the key.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.config import ParamsError

SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_import_path(arch: str) -> bool:
    """Whether `arch` names a factory by import path (`package.module:factory`)."""
    return ":" in arch


def _project_on_path() -> None:
    # a stage runs from the project's root (python -m pipelines.X); a Ray worker has the
    # driver's working directory on its path; a served model has the module in its code paths
    root = str(Path.cwd())
    if root not in sys.path:
        sys.path.append(root)


def factory(spec: str, key: str) -> Callable[..., Any]:
    """The callable `spec` names; ParamsError naming `key` when it cannot be found."""
    if not SPEC.match(spec):
        raise ParamsError(f"{key}: {spec!r} is not a name of ours nor `package.module:factory`")
    module_name, attr = spec.split(":")
    if module_name == "torchvision":
        return _torchvision(attr, key)
    _project_on_path()
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any import failure is the user's module's
        raise ParamsError(f"{key}: cannot import {module_name!r} ({type(err).__name__}: {err})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ParamsError(f"{key}: {module_name!r} has no callable {attr!r}")
    return fn


def _torchvision(name: str, key: str) -> Callable[..., Any]:
    import torchvision

    if name.lower() not in {n.lower() for n in torchvision.models.list_models(module=torchvision.models)}:
        raise ParamsError(f"{key}: torchvision has no classification model {name!r} "
                          "(torchvision.models.list_models(module=torchvision.models) lists them)")

    def build(in_shape: tuple[int, int, int], n_classes: int) -> Any:
        import torch
        from torch import nn

        net = torchvision.models.get_model(name, weights=None, num_classes=n_classes)
        if in_shape[0] == 3:
            return net

        class Channels(nn.Module):
            """Grey (or any C) images to the three channels torchvision's stems take."""

            def __init__(self, c: int) -> None:
                super().__init__()
                self.c, self.net = c, net

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                x = x.expand(-1, 3, -1, -1) if self.c == 1 else x[:, :3] if self.c > 3 else \
                    torch.cat([x, x[:, :3 - self.c]], 1)
                return self.net(x)

        return Channels(in_shape[0])

    return build


def build_module(spec: str, key: str, dropout: float = 0.0, **shape: Any) -> Any:
    """The module `spec`'s factory builds, called with `shape` (`in_shape=` and `n_classes=`, or
    `in_features=` and `n_classes=`) and `dropout=` when it takes one."""
    fn = factory(spec, key)
    kwargs: dict[str, Any] = dict(shape)
    try:
        params = inspect.signature(fn).parameters
        if "dropout" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            kwargs["dropout"] = dropout
    except (TypeError, ValueError):  # a builtin without a signature: the required arguments only
        pass
    try:
        net = fn(**kwargs)
    except Exception as err:  # noqa: BLE001 - the factory is the user's
        raise ParamsError(f"{key}: {spec}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) raised "
                          f"{type(err).__name__}: {err}") from None
    import torch

    if not isinstance(net, torch.nn.Module):
        raise ParamsError(f"{key}: {spec} returned a {type(net).__name__}, not a torch.nn.Module")
    return net


def build(spec: str, key: str, in_shape: tuple[int, int, int], n_classes: int, dropout: float = 0.0) -> Any:
    """The image model `spec`'s factory builds for (C, H, W) inputs and `n_classes` classes."""
    return build_module(spec, key, dropout, in_shape=tuple(in_shape), n_classes=n_classes)


def build_head(spec: str, key: str, in_features: int, n_classes: int, dropout: float = 0.0) -> Any:
    """A classifier head by import path: `(N, in_features)` features to `(N, n_classes)` logits."""
    if spec.startswith("torchvision:"):
        raise ParamsError(f"{key}: {spec!r}: a head is package.module:factory (torchvision's models take images)")
    return build_module(spec, key, dropout, in_features=in_features, n_classes=n_classes)


def _check_output(net: Any, spec: str, key: str, example: Any, what: str, n_classes: int) -> None:
    import torch

    net.eval()
    try:
        with torch.no_grad():
            out = net(example)
    except Exception as err:  # noqa: BLE001 - the forward is the user's
        raise ParamsError(f"{key}: {spec} cannot take a batch of {what}: {type(err).__name__}: {err}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, n_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ParamsError(f"{key}: {spec} maps {what} to {got}, not (2, {n_classes}) logits for the "
                          f"{n_classes} classes")


def check(spec: str, key: str, in_shape: tuple[int, int, int], n_classes: int, dropout: float = 0.0) -> None:
    """Build `spec` and run two zero images through it on the CPU: ParamsError naming `key` unless
    the output is (2, n_classes) logits. Before any compute: a stage calls it first."""
    import torch

    net = build(spec, key, in_shape, n_classes, dropout)
    _check_output(net, spec, key, torch.zeros(2, *in_shape),
                  f"(2, {', '.join(map(str, in_shape))}) images", n_classes)


def check_head(spec: str, key: str, in_features: int, n_classes: int, dropout: float = 0.0) -> None:
    """`check` for a head: two zero feature rows of `in_features` in, (2, n_classes) logits out."""
    import torch

    net = build_head(spec, key, in_features, n_classes, dropout)
    _check_output(net, spec, key, torch.zeros(2, in_features), f"(2, {in_features}) features", n_classes)


def load_weights(net: Any, path: str | Path, key: str) -> tuple[list[str], list[str]]:
    """Load a state-dict file into `net` (torchvision's weights saved beforehand, a model file of
    ours, a checkpoint): each tensor whose name (or `net.` + name, for a torchvision model wrapped
    for grey images) and shape fit is loaded; (loaded names, the model's names left as built).
    ParamsError naming `key` when the file cannot be read or none of it fits."""
    import torch

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a missing, damaged or pickled-code file
        raise ParamsError(f"{key}: cannot read {str(path)!r} as a state dict ({type(err).__name__}: {err})") from None
    if isinstance(blob, dict) and isinstance(blob.get("model") or blob.get("state_dict"), dict):
        blob = blob.get("model") or blob["state_dict"]
    own = net.state_dict()
    fit = {}
    for name, t in (blob.items() if isinstance(blob, dict) else ()):
        for mine in (name, f"net.{name}", name.removeprefix("module.")):
            if mine in own and isinstance(t, torch.Tensor) and own[mine].shape == t.shape:
                fit[mine] = t
                break
    if not fit:
        raise ParamsError(f"{key}: none of the tensors in {str(path)!r} fits the model (another architecture?)")
    net.load_state_dict(own | fit)
    return sorted(fit), sorted(set(own) - set(fit))


MODEL_STAGES = ("tune", "train", "evaluate", "register")  # the stages that build the model


def project_code(spec: str, root: Path) -> Path | None:
    """Where the project keeps the module `spec` names: its top package's folder (or the module's
    file) under `root`; None for our names, torchvision's, and an installed package's (the
    environment pins those)."""
    if not is_import_path(spec) or spec.startswith("torchvision:"):
        return None
    top = spec.split(":")[0].split(".")[0]
    for where in (root / top, root / f"{top}.py"):
        if where.exists():
            return where
    return None


def spec_files(spec: str, root: Path) -> list[str]:
    """The project's files the model `spec` runs (its import closure), root-relative; [] when
    the project holds none of its code."""
    from components.fingerprint import import_closure

    where = project_code(spec, root)
    if where is None:
        return []
    module = spec.split(":")[0]
    return [p.relative_to(root).as_posix() for p in import_closure(module, root, (module.split(".")[0],))]


def model_files_by_key(name: str, root: Path, params_file: str = "params.yaml") -> dict[str, list[str]]:
    """The project's files the model of workload `name` reads, by the train key that names them in
    `params_file`: `spec_files` of its `Workload.model_key` (`arch`, `head`) and the file `weights`
    names; {} for a workload without a model key."""
    import yaml

    from components import workloads

    key = workloads.get(name).model_key
    if key is None or not (root / params_file).is_file():
        return {}
    train = ((yaml.safe_load((root / params_file).read_text()) or {}).get(name) or {}).get("train") or {}
    out = {key: spec_files(str(train.get(key) or ""), root)}
    if isinstance(train.get("weights"), str):
        out["weights"] = [Path(train["weights"]).as_posix()]
    return {k: v for k, v in out.items() if v}


def model_files(name: str, root: Path, params_file: str = "params.yaml") -> list[str]:
    """`model_files_by_key`, flattened: what dvc.yaml lists for the stages that build the model."""
    return [f for files in model_files_by_key(name, root, params_file).values() for f in files]


def module_code(spec: str, root: Path | None = None) -> tuple[str, ...]:
    """What a registered model built by `spec` ships beside our code (MLflow `code_paths`): the
    project's folder (or file) of its top package; () when the project holds none of it."""
    where = project_code(spec, Path.cwd() if root is None else root)
    return () if where is None else (str(where),)
