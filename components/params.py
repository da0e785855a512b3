"""`params.yaml` as a whole: one section per workload (`<workload>.<stage>.<key>`), each
validated by its workload's schema before any stage does work, so a bad value stops the
stage with one line naming the key (`char_lm.train.lr: ...`)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError, create_model

from components import workloads
from components.config import ParamsError, Section, knob

STAGES = ("prepare", "normalize", "trial_params", "tune", "train", "evaluate", "register")
EXTRA_STAGES = ("adapt",)  # stages only some workloads have (`Workload.extra_stages`)


@cache
def _schema(table: tuple[tuple[str, str], ...]) -> type[BaseModel]:
    fields = {name: (workloads.get(name).params, knob(workloads.get(name).params)) for name, _ in table}
    return create_model("Params", __base__=Section, **fields)


def params_schema() -> type[BaseModel]:
    """The schema of the whole file: a section per workload in the table."""
    return _schema(tuple(workloads.table().items()))


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    got = first.get("input")
    shown = "" if first["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f" (got {got!r})"
    more = len(err.errors()) - 1
    tail = f" [+{more} more]" if more else ""
    return f"{source}: {key}: {msg}{shown}{tail}"


def parse_params(raw: dict[str, Any] | None, source: str = "params.yaml") -> Any:
    """Validate a params mapping; raise `ParamsError` with one line naming the key."""
    try:
        return params_schema().model_validate(raw or {})
    except ValidationError as err:
        raise ParamsError(_format_error(err, source)) from None


def load_params(path: str | Path = "params.yaml") -> Any:
    """Read and validate `params.yaml`."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping")
    return parse_params(raw, str(path))
