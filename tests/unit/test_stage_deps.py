"""dvc.yaml's dependencies are complete by construction, and the code fingerprint keys follow
the same import closure: what DVC reruns on and what the run store resumes on agree."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from components.config import FINAL_ONLY, trial_params
from components.fingerprint import code_fingerprint, import_closure, stage_code_files
from components.params import load_params
from components.workloads import get, names

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
    missing = {name: sorted(f for f in stage_code_files(entry, name.split("@")[1]) if not _covered(f, files))
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


def test_the_bptt_sampler_is_train_code_and_the_registry_is_not():
    assert "components/data/shards.py" in stage_code_files("pipelines.train", "char_lm")
    assert "components/training/checkpoints.py" in stage_code_files("pipelines.train", "char_lm")
    assert "components/workloads/char_lm/model.py" in stage_code_files("pipelines.evaluate", "char_lm")
    assert "components/workloads/char_lm/model.py" not in stage_code_files("pipelines.evaluate", "image_classifier")
    assert "components/tracking/registry.py" not in stage_code_files("pipelines.train", "char_lm")


def test_dvc_yaml_code_deps_are_what_the_generator_writes():
    from components.cli.stage_deps import rewrite

    text = (REPO / "dvc.yaml").read_text()
    assert rewrite(text) == text, "run: python -m components.cli.stage_deps"


def test_the_fingerprint_changes_with_the_code_a_stage_runs_only(tmp_path):
    for pkg in ("components", "pipelines"):
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_fingerprint("pipelines.train", "char_lm", tmp_path)
    assert before == code_fingerprint("pipelines.train", "char_lm", REPO)  # a function of the files, not the place
    registry = tmp_path / "components/tracking/registry.py"
    registry.write_text(registry.read_text() + "\n# not train code\n")
    import_closure.cache_clear()
    assert code_fingerprint("pipelines.train", "char_lm", tmp_path) == before
    model = tmp_path / "components/workloads/char_lm/model.py"
    model.write_text(model.read_text().replace("emb = self.emb(x)", "emb = 0.1 * self.emb(x)", 1))
    import_closure.cache_clear()
    assert code_fingerprint("pipelines.train", "char_lm", tmp_path) != before


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
