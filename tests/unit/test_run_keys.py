"""Run keys hold everything a stage declares it reads: `dvc.yaml` read as DVC reads it, and a
change to any declared dep (data, a base model, a param outside the stage's own) is a new key
for every stage that keeps state to resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from components.run_keys import OWN_PARAMS, declared, digest, interpolate, run_key
from components.workloads import names

REPO = Path(__file__).resolve().parents[2]
CODE = ("components", "pipelines")


@pytest.fixture(scope="module")
def dvc_stages():
    """Every stage as DVC itself resolves it: name -> (file deps, {params file: keys})."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        return {s.addressing: ({d.def_path for d in s.deps if not isinstance(d, ParamsDependency)},
                               {d.def_path: set(d.params) for d in s.deps if isinstance(d, ParamsDependency)})
                for s in repo.index.stages}


def test_dvc_yaml_is_read_as_dvc_reads_it(dvc_stages):
    for name, (files, params) in dvc_stages.items():
        got = declared(name, REPO)
        assert got is not None, name
        assert set(got.deps) == files, name
        assert {f: set(k) for f, k in got.params.items()} == params, name


def test_the_text_classifier_declares_the_char_lm_model_its_params_name(dvc_stages):
    encoder = yaml.safe_load((REPO / "params.yaml").read_text())["text_classifier"]["train"]["encoder_model"]
    for stage in ("tune", "train"):
        assert encoder in declared(f"{stage}@text_classifier", REPO).deps


def test_interpolation_fills_items_params_and_whole_values():
    ctx = {"key": "w", "item": {"base": "m.pt"}, "w": {"prepare": {"inputs": ["a", "b"]}}}
    assert interpolate("data/${key}/${item.base}", ctx, "s") == "data/w/m.pt"
    assert interpolate("${w.prepare.inputs}", ctx, "s") == ["a", "b"]
    with pytest.raises(KeyError, match=r"dvc.yaml: s: \$\{item.nope\} names nothing"):
        interpolate("${item.nope}", ctx, "s")


def _project(tmp_path: Path, stage: str) -> list[str]:
    """dvc.yaml and params.yaml in `tmp_path`, with every non-code dep of `stage` made up
    (distinct bytes each); returns those deps."""
    for f in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / f, tmp_path / f)
    deps = [d for d in declared(stage, tmp_path).deps if Path(d).parts[0] not in CODE]
    for i, d in enumerate(deps):
        path = tmp_path / d
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"dep {i}".encode())
    return deps


def _set(params_file: Path, dotted: str, value) -> None:
    raw = yaml.safe_load(params_file.read_text())
    node = raw
    *head, last = dotted.split(".")
    for k in head:
        node = node[k]
    node[last] = value
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.mark.parametrize("workload", names())
@pytest.mark.parametrize("stage", sorted(OWN_PARAMS))
def test_every_declared_dep_is_in_the_run_key(tmp_path, stage, workload):
    """The general check: each file dep and each param outside the stage's own changes the
    key; putting it back gives the old key (an unchanged stage resumes)."""
    deps = _project(tmp_path, f"{stage}@{workload}")
    assert deps, "a stateful stage reads data"
    key = lambda: run_key(stage, workload, {"own": 1}, root=tmp_path).key  # noqa: E731
    before = key()
    for d in deps:
        path = tmp_path / d
        old = path.read_bytes()
        path.write_bytes(old + b" changed")
        assert key() != before, f"{stage}@{workload}: a change to {d} leaves the run key as it was"
        path.write_bytes(old)
        assert key() == before, d
    own = {p.format(w=workload) for p in OWN_PARAMS[stage]}
    for file, keys in declared(f"{stage}@{workload}", tmp_path).params.items():
        for k in keys:
            if file in own or k in own:
                continue
            original = (tmp_path / file).read_text()
            _set(tmp_path / file, k, "something else")
            assert key() != before, f"{stage}@{workload}: param {file}:{k} is not in the run key"
            (tmp_path / file).write_text(original)
    # the stage's own params enter through what it passes, code through the fingerprint
    assert run_key(stage, workload, {"own": 2}, root=tmp_path).key != before


def test_a_new_base_model_is_a_new_text_classifier_sweep_and_run(tmp_path):
    _project(tmp_path, "train@text_classifier")
    _project(tmp_path, "tune@text_classifier")
    base = tmp_path / "models/text_classifier/lm.pt"  # the LM adapt wrote, from the char-LM
    old = base.read_bytes()
    keys = {s: run_key(s, "text_classifier", {}, root=tmp_path).key for s in ("tune", "train")}
    base.write_bytes(b"another char-LM")
    assert all(run_key(s, "text_classifier", {}, root=tmp_path).key != k for s, k in keys.items())
    # ... and a change to the char-LM's own data leaves the classifier's keys alone
    base.write_bytes(old)
    (tmp_path / "data/char_lm/normalized").mkdir(parents=True, exist_ok=True)
    (tmp_path / "data/char_lm/normalized/train.parquet").write_bytes(b"other corpus")
    assert {s: run_key(s, "text_classifier", {}, root=tmp_path).key for s in ("tune", "train")} == keys


def test_command_line_inputs_count_and_a_folder_digest_follows_its_files(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d/a.parquet").write_bytes(b"1")
    first = run_key("train", "char_lm", {}, inputs=("d",), root=tmp_path)
    assert set(first.inputs) == {"d"}  # no dvc.yaml here: a stage run by hand on its own files
    (tmp_path / "d/a.parquet").write_bytes(b"2")
    assert run_key("train", "char_lm", {}, inputs=("d",), root=tmp_path).key != first.key
    assert digest(tmp_path / "nothing") == "missing"
