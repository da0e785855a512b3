"""dvc.yaml's dependencies are complete by construction, and the code fingerprint keys follow
the same import closure: what DVC reruns on and what the run store resumes on agree."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.config import FINAL_ONLY, trial_params
from components.fingerprint import code_fingerprint, import_closure, stage_code_files
from components.params import STAGES, load_params
from components.workloads import get, module_of, names, stage_code
from components.workloads.base import STAGE_CALLS

WORKLOADS = names()

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stages():
    """Every stage as DVC resolves it (foreach expanded, params interpolated): name ->
    (entry module, file deps, {params file: keys})."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    out = {}
    with Repo(str(REPO)) as repo:
        for s in repo.index.stages:
            entry = re.search(r"python -m (pipelines\.\w+)", s.cmd).group(1)
            files = {d.def_path for d in s.deps if not isinstance(d, ParamsDependency)}
            params = {d.def_path: list(d.params) for d in s.deps if isinstance(d, ParamsDependency)}
            out[s.addressing] = (entry, files, params)
    return out


def _covered(f: str, deps: set[str]) -> bool:
    return f in deps or any(f.startswith(d.rstrip("/") + "/") for d in deps)


def test_every_stage_depends_on_every_file_it_imports(stages):
    missing = {name: sorted(f for f in stage_code_files(entry, stage_code(*name.split("@")[::-1]))
                            if not _covered(f, files))
               for name, (entry, files, _) in stages.items()}
    missing = {k: v for k, v in missing.items() if v}
    assert not missing, "dvc.yaml stages import files they do not depend on:\n" + "\n".join(
        f"  {name}: {', '.join(files)}" for name, files in sorted(missing.items()))


def test_the_closure_follows_imports_inside_functions_and_relative_ones(tmp_path):
    pkg = tmp_path / "components"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from components.sub import b\n    return b\n")
    (pkg / "sub" / "b.py").write_text("from . import c\n")
    (pkg / "sub" / "c.py").write_text("import os\n")
    (pkg / "unused.py").write_text("")
    got = [p.relative_to(tmp_path).as_posix() for p in import_closure("components.a", tmp_path)]
    assert got == ["components/__init__.py", "components/a.py", "components/sub/__init__.py",
                   "components/sub/b.py", "components/sub/c.py"]
    assert stage_code_files("components.a", root=tmp_path) == ["components/a.py", "components/sub/b.py",
                                                          "components/sub/c.py"]


def _files(stage: str, workload: str) -> list[str]:
    return stage_code_files(f"pipelines.{stage}", stage_code(workload, stage))


def test_the_bptt_sampler_is_train_code_and_the_registry_is_not():
    assert "components/data/shards.py" in _files("train", "char_lm")
    assert "components/training/checkpoints.py" in _files("train", "char_lm")
    assert "components/workloads/char_lm/model.py" in _files("evaluate", "char_lm")
    assert "components/workloads/char_lm/model.py" not in _files("evaluate", "image_classifier")
    assert "components/tracking/registry.py" not in _files("train", "char_lm")


@pytest.mark.parametrize("workload", WORKLOADS)
def test_code_deps_are_the_size_of_a_stage(workload):
    """The model is code of the stages that run it, not of those that stage its data."""
    model = f"components/workloads/{workload}/model.py"
    for stage in ("tune", "train", "evaluate", "register"):
        assert model in _files(stage, workload), stage
    for stage in ("prepare", "normalize", "trial_params"):
        assert model not in _files(stage, workload), stage
        assert f"components/workloads/{workload}/loop.py" not in _files(stage, workload), stage


def _method_imports(workload: str) -> dict[str, set[str]]:
    """method -> the modules of its own package a workload's class imports inside that method."""
    module = module_of(workload)
    path = Path(sys.modules[module].__file__)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: dict[str, set[str]] = {}
    for cls in (n for n in ast.parse(path.read_text()).body if isinstance(n, ast.ClassDef)):
        for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
            found = set()
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom):
                    name = f"{package}.{node.module}" if node.level else node.module
                    if name.startswith(package + "."):
                        found.add(name)
            out[fn.name] = found
    return out


@pytest.mark.parametrize("workload", [*WORKLOADS, "regression"])
def test_each_stage_declares_the_workload_modules_its_calls_import(workload, monkeypatch):
    """`Workload.stage_modules` is what the stage's calls into the workload import (STAGE_CALLS):
    a module left out would be code DVC does not watch."""
    monkeypatch.setenv("TRAINYARD_WORKLOADS", "regression=tests.workloads.regression:WORKLOAD")
    w = get(workload)  # imported: its file is read from sys.modules
    imports = _method_imports(workload)
    missing = {}
    for stage in (*STAGES, *w.extra_stages):
        closure = set(stage_code_files(f"pipelines.{stage}", stage_code(workload, stage)))
        for method in STAGE_CALLS[stage]:
            for mod in imports.get(method, ()):
                rel = mod.replace(".", "/")
                if f"{rel}.py" not in closure and f"{rel}/__init__.py" not in closure:
                    missing.setdefault(stage, []).append(f"{method} imports {mod}")
    assert not missing, f"{workload}.stage_modules leaves out: {missing}"


def test_a_workload_from_elsewhere_gets_its_own_files_as_deps(monkeypatch):
    from components.cli.stage_deps import rewrite

    monkeypatch.setenv("TRAINYARD_WORKLOADS", "regression=tests.workloads.regression:WORKLOAD")
    spec = yaml.safe_load(rewrite((REPO / "dvc.yaml").read_text()))
    items = {stage: body["foreach"]["regression"] for stage, body in spec["stages"].items()
             if "regression" in body["foreach"]}
    assert items["prepare"]["inputs"] == "${regression.prepare.inputs}"
    own = [f for f in dict.fromkeys(items["train"]["code"]) if f.startswith("tests/")]
    assert own == ["tests/workloads/regression/__init__.py"]
    tabular = "components/workloads/tabular"
    assert f"{tabular}/loop.py" in items["train"]["code"] and f"{tabular}/loop.py" not in items["prepare"]["code"]
    assert f"{tabular}/pyfunc.py" in items["register"]["code"] and f"{tabular}/pyfunc.py" not in items["train"]["code"]
    assert f"{tabular}/data.py" in items["prepare"]["code"]
    assert "adapt" not in items and list(spec["stages"]["adapt"]["foreach"]) == ["text_classifier"]
    assert items["train"]["base"] == items["register"]["after"] == "data/regression/normalized/manifest.json"
    # the built-in ones are written as they are
    assert spec["stages"]["train"]["foreach"]["text_classifier"]["base"] == "${text_classifier.train.encoder_model}"
    assert spec["stages"]["register"]["foreach"]["text_classifier"]["after"] == "registry/char_lm/registered.json"


def test_dvc_yaml_code_deps_are_what_the_generator_writes():
    from components.cli.stage_deps import rewrite

    text = (REPO / "dvc.yaml").read_text()
    assert rewrite(text) == text, "run: python -m components.cli.stage_deps"


def test_the_fingerprint_changes_with_the_code_a_stage_runs_only(tmp_path):
    for pkg in ("components", "pipelines"):
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    code = stage_code("char_lm", "train")
    before = code_fingerprint("pipelines.train", code, tmp_path)
    assert before == code_fingerprint("pipelines.train", code, REPO)  # a function of the files, not the place
    registry = tmp_path / "components/tracking/registry.py"
    registry.write_text(registry.read_text() + "\n# not train code\n")
    import_closure.cache_clear()
    assert code_fingerprint("pipelines.train", code, tmp_path) == before
    model = tmp_path / "components/workloads/char_lm/model.py"
    model.write_text(model.read_text().replace("emb = self.emb(x)", "emb = 0.1 * self.emb(x)", 1))
    import_closure.cache_clear()
    assert code_fingerprint("pipelines.train", code, tmp_path) != before
    assert code_fingerprint("pipelines.prepare", stage_code("char_lm", "prepare"), tmp_path) == \
        code_fingerprint("pipelines.prepare", stage_code("char_lm", "prepare"), REPO)


@pytest.mark.parametrize("workload", WORKLOADS)
def test_tune_depends_on_the_train_keys_a_trial_uses_not_on_final_run_keys(stages, workload):
    _, tune_files, tune_params = stages[f"tune@{workload}"]
    assert f"{workload}.train" not in tune_params["params.yaml"]
    assert f"tune/{workload}/trial_params.json" in tune_files
    _, _, tp_params = stages[f"trial_params@{workload}"]
    assert tp_params["params.yaml"] == [f"{workload}.train", f"{workload}.tune.space"]
    # the file holds every train key except the final-run and searched ones, so a new key reaches tune
    schema = get(workload).train_schema
    assert set(trial_params(schema())) == set(schema.model_fields) - set(FINAL_ONLY)
    space = set(getattr(load_params(), workload).tune.space)
    assert space and set(trial_params(schema(), space)) == set(schema.model_fields) - set(FINAL_ONLY) - space


@pytest.mark.parametrize("workload", WORKLOADS)
def test_train_declares_the_tuned_values_as_params(stages, workload):
    _, _, params = stages[f"train@{workload}"]
    assert params[f"tune/{workload}/best_params.json"] == ["params"]


@pytest.mark.parametrize("workload", WORKLOADS)
def test_prepare_depends_on_the_local_source_folder(stages, workload):
    _, files, _ = stages[f"prepare@{workload}"]
    assert f"inputs/{workload}" in files
    assert (REPO / "inputs" / workload).is_dir()


def _dvc(project: Path, *args: str) -> str:
    dvc = Path(sys.executable).with_name("dvc")
    p = subprocess.run([str(dvc), *args], cwd=project, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"dvc {' '.join(args)}: {p.stdout}{p.stderr}"
    return p.stdout


def test_dvc_reruns_the_stages_that_run_an_edited_model_only(tmp_path):
    """Real DVC on a copy of the project's code, dvc.yaml and params, every stage's outputs
    stood in for by placeholders and committed: editing the char-LM's model makes exactly its
    tune, train, evaluate and register stale."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    for part in ("components", "pipelines", "inputs"):
        shutil.copytree(REPO / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("dvc.yaml", "params.yaml"):
        shutil.copy2(REPO / f, tmp_path / f)
    _dvc(tmp_path, "init", "--no-scm", "-q")
    with Repo(str(tmp_path)) as repo:
        paths = {(o.def_path, True) for s in repo.index.stages for o in s.outs}
        paths |= {(d.def_path, False) for s in repo.index.stages for d in s.deps
                  if not isinstance(d, ParamsDependency)}
    for rel, is_out in sorted(paths):
        path = tmp_path / rel
        if path.exists():
            continue
        if is_out and not path.suffix:  # a folder output
            path.mkdir(parents=True)
            (path / "placeholder").write_text("x\n")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text('{"params": {}}\n' if path.suffix == ".json" else "x\n")
    _dvc(tmp_path, "commit", "--force", "-q")
    assert json.loads(_dvc(tmp_path, "status", "--json") or "{}") == {}
    model = tmp_path / "components/workloads/char_lm/model.py"
    model.write_text(model.read_text() + "\n# a model change\n")
    stale = set(json.loads(_dvc(tmp_path, "status", "--json") or "{}"))
    assert stale == {"tune@char_lm", "train@char_lm", "evaluate@char_lm", "register@char_lm"}, stale
