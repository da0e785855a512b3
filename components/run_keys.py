"""Run keys: what decides "resume or start anew" for a stage.

A stage's key holds three things, so that what DVC reruns on and what the run store resumes on
agree:
- the code the stage runs (`fingerprint.code_fingerprint`, its import closure);
- the params that change its result, as the stage passes them (it may leave out a key that
  does not change the result, such as `tune.num_samples`, which only adds trials);
- everything else the stage declares in `dvc.yaml`: the content of every non-code file or
  folder dep (the data, and any model another stage published: a base model), and the value
  of every declared param outside the stage's own params. These are read from `dvc.yaml`
  itself (foreach expanded, `${...}` filled from the stage's params file, as DVC does), so a
  new workload, or a new dep, is in the key without a line of code. Input paths given on the
  command line count too, for a stage run by hand on other files.

`tests/unit/test_run_keys.py` checks that this reading of `dvc.yaml` is DVC's, and that a change
to any declared dep changes the key of every stage that keeps state.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from components.config import ParamsError
from components.fingerprint import code_fingerprint
from components.store import params_key

VAR = re.compile(r"\$\{\s*([^}\s]+)\s*\}")
DEFAULT_PARAMS = "params.yaml"

# The stages that keep state to resume, and the declared params each keys on itself (in the
# parts it passes) rather than by their raw value: its own params section, which it may pare
# down (tune leaves out num_samples) or complete (train applies the sweep's picks from
# best_params.json only when `use_tuned` is true, so the file's values count only then).
OWN_PARAMS = {
    "tune": ("{w}.tune",),
    "train": ("{w}.train", "tune/{w}/best_params.json"),
    "evaluate": ("{w}.evaluate",),
}


@dataclass(frozen=True)
class Declared:
    """A stage as `dvc.yaml` declares it: file and folder deps, and params per params file."""

    deps: tuple[str, ...] = ()
    params: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class RunKey:
    """A stage's key and what went into it (`inputs`: path -> digest; `params`: declared
    params outside the stage's own, name -> value), for the run's tags and for tests."""

    key: str
    code: str
    inputs: dict[str, str]
    params: dict[str, Any]


def _lookup(ctx: dict[str, Any], name: str, where: str) -> Any:
    node: Any = ctx
    for part in re.sub(r"\[(\d+)\]", r".\1", name).split("."):  # `code[0]` is `code.0`, as DVC reads it
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(f"dvc.yaml: {where}: ${{{name}}} names nothing in the params or the foreach item")
    return node


def interpolate(value: Any, ctx: dict[str, Any], where: str) -> Any:
    """`value` with every `${name}` filled from `ctx`, as DVC does: a string that is one
    `${...}` becomes the value itself (a dict, a list), else the values are written in."""
    if isinstance(value, dict):
        return {interpolate(k, ctx, where): interpolate(v, ctx, where) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, ctx, where) for v in value]
    if not isinstance(value, str):
        return value
    whole = VAR.fullmatch(value.strip())
    if whole:
        return _lookup(ctx, whole.group(1), where)
    return VAR.sub(lambda m: str(_lookup(ctx, m.group(1), where)), value)


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text("utf-8")) if path.is_file() else None


def declared(stage: str, root: Path | None = None, params_file: str = DEFAULT_PARAMS) -> Declared | None:
    """The deps of `stage` (`train@char_lm`, DVC's name) in `root`'s `dvc.yaml`, resolved
    against `params_file` (the stage's own); None when `dvc.yaml` does not declare it (a stage
    run by hand outside a DVC project)."""
    root = Path.cwd() if root is None else root
    spec = _load_yaml(root / "dvc.yaml") or {}
    params = _load_yaml(root / params_file) or {}
    for extra in spec.get("vars", []) or []:  # top-level vars: a dict, or a params file to read
        params = {**params, **(extra if isinstance(extra, dict) else _load_yaml(root / str(extra)) or {})}
    group, _, key = stage.partition("@")
    body = (spec.get("stages") or {}).get(group)
    if body is None:
        return None
    ctx = dict(params)
    if "foreach" in body:
        items = interpolate(body["foreach"], params, stage)
        if isinstance(items, dict):
            if key not in items:
                return None
            ctx |= {"key": key, "item": items[key]}
        elif key in map(str, items):
            ctx |= {"item": key}
        else:
            return None
        body = body["do"]
    elif key:
        return None
    deps = tuple(str(d) for d in interpolate(body.get("deps", []) or [], ctx, stage))
    out: dict[str, tuple[str, ...]] = {}
    for entry in interpolate(body.get("params", []) or [], ctx, stage):
        if isinstance(entry, dict):  # {file: [keys]}
            for file, keys in entry.items():
                out.setdefault(str(file), ())
                out[str(file)] += tuple(str(k) for k in keys or ())
        else:  # a key of the default params file: for this stage, the one it was given
            out[params_file] = (*out.get(params_file, ()), str(entry))
    return Declared(deps, out)


@cache
def _md5(path: str, size: int, mtime_ns: int, inode: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()  # noqa: S324 (content address, as DVC)


def _file_md5(path: Path) -> str:
    # memoised by stat: a file that is a dep and inside a folder dep is read once
    st = path.stat()
    return _md5(str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def digest(path: Path) -> str:
    """md5 of a file, or of a folder's relative paths and files' md5s; `missing` when absent
    (the stage fails on it later with its own error)."""
    if path.is_file():
        return _file_md5(path)
    if path.is_dir():
        h = hashlib.md5()  # noqa: S324
        for f in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            h.update(f"{f.relative_to(path).as_posix()}\0{_file_md5(f)}\0".encode())
        return h.hexdigest()
    return "missing"


def is_code(dep: str, code_roots: tuple[str, ...]) -> bool:
    """A code dep: the fingerprint holds what of it the stage runs (its import closure)."""
    return Path(dep).parts[0] in code_roots if dep else False


def _read_params(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    if suffix == ".json":
        import json

        return json.loads(path.read_text("utf-8"))
    return _load_yaml(path) or {}


def run_key(stage: str, workload: str, *parts: Any, inputs: tuple[str | Path | None, ...] = (),
            params_file: str = DEFAULT_PARAMS, root: Path | None = None) -> RunKey:
    """The key of stage `stage` (`train`) of `workload`: its code, `parts` (its own params, as
    it uses them: `OWN_PARAMS`), and everything else `dvc.yaml` declares it reads; plus
    `inputs`, the input paths on its command line."""
    from components.workloads import stage_code

    own_params = tuple(p.format(w=workload) for p in OWN_PARAMS[stage])
    root = Path.cwd() if root is None else root
    workload_code = stage_code(workload, stage)
    code = code_fingerprint(f"pipelines.{stage}", workload_code)
    code_roots = workload_code.packages
    found = declared(f"{stage}@{workload}", root, params_file) or Declared()
    paths = [d for d in found.deps if not is_code(d, code_roots)]
    for p in inputs:  # relative to the project where they lie in it, as dvc.yaml's are
        if p is not None:
            full = (root / p).resolve()
            paths.append(full.relative_to(root.resolve()).as_posix() if full.is_relative_to(root.resolve()) else str(full))
    digests = {p: digest(root / p) for p in dict.fromkeys(paths)}
    values: dict[str, Any] = {}
    for file, keys in found.params.items():
        if file in own_params:
            continue
        for k in keys:
            if k in own_params:
                continue
            try:
                values[f"{file}:{k}"] = _lookup(_read_params(root / file), k, f"{stage}@{workload}")
            except (KeyError, FileNotFoundError):
                values[f"{file}:{k}"] = None  # DVC fails on it first; nothing to key on here
    key = params_key(parts, code, digests, values)
    return RunKey(key, code, digests, values)


def require_model_declared(name: str, params_file: str = DEFAULT_PARAMS, root: Path | None = None) -> None:
    """Under `dvc repro`: ParamsError unless dvc.yaml lists the user's model files among this
    stage's deps (else an edit to them would not rerun it, and a stale model would be published)."""
    import os

    from components.workloads.modules import model_files_by_key

    stage = os.environ.get("DVC_STAGE")
    root = Path.cwd() if root is None else root
    by_key = model_files_by_key(name, root, params_file) if stage else {}
    if not by_key:
        return
    found = declared(stage, root, params_file)
    for key, files in by_key.items():
        missing = [f for f in files if found is not None and f not in found.deps]
        if missing:
            raise ParamsError(f"{name}.train.{key}: dvc.yaml does not list {', '.join(missing)} among {stage}'s deps, "
                              "so an edit to them would not retrain; run python -m components.cli.stage_deps")
