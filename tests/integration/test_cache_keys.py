"""`dvc repro` never publishes a stale result: a code, data or params change reruns what it
changes (and only that), with real DVC, Ray and MLflow in a copy of the end-to-end project.

(A killed train stage with unchanged code still resumes: test_faults.py.)"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from components.data.dataset import data_digest
from components.data.parquet import file_md5
from components.fingerprint import code_fingerprint, import_closure
from components.workloads import stage_code
from tests.integration.conftest import run

pytestmark = pytest.mark.slow


@pytest.fixture
def project(tiny_project, tmp_path):
    """A copy of the end-to-end project after its full `dvc repro` (the original stays as the
    other tests read it): DVC cache, dvc.lock, run store and MLflow store included."""
    dest = tmp_path / "copy"
    shutil.copytree(tiny_project, dest, symlinks=True, ignore=shutil.ignore_patterns("repro.log"))
    return dest


def _status(project) -> dict:
    return json.loads(run(["dvc", "status", "--json"], project).stdout or "{}")


def _changed_deps(entries: list) -> set[str]:
    return {path for e in entries if isinstance(e, dict) for path in e.get("changed deps", {})}


def test_a_model_code_change_retrains_from_scratch_under_a_new_mlflow_run(project):
    model_py = project / "components/workloads/char_lm/model.py"
    before_fp = code_fingerprint("pipelines.train", stage_code("char_lm", "train"), project)
    old = json.loads((project / "metrics/char_lm/train.json").read_text())
    old_run = json.loads((project / "models/char_lm/train_run.json").read_text())["run_id"]
    old_md5 = file_md5(project / "models/char_lm/model.pt")
    model_py.write_text(model_py.read_text().replace("emb = self.emb(x)", "emb = 0.1 * self.emb(x)", 1))
    import_closure.cache_clear()
    assert code_fingerprint("pipelines.train", stage_code("char_lm", "train"), project) != before_fp
    st = _status(project)
    assert {"tune@char_lm", "train@char_lm", "evaluate@char_lm", "register@char_lm"} <= set(st)
    # code deps the size of a stage: the data stages do not run the model
    assert not {"prepare@char_lm", "normalize@char_lm", "trial_params@char_lm"} & set(st), st
    assert not any(stage.endswith("@image_classifier") for stage in st), st  # another workload's code

    # the sweep's picks as they were
    p = run(["dvc", "repro", "-s", "train@char_lm"], project)
    log = p.stdout + p.stderr
    assert "resumed from epoch" not in log and "[train] epoch 1/" in log, log[-3000:]
    new = json.loads((project / "metrics/char_lm/train.json").read_text())
    assert json.loads((project / "models/char_lm/train_run.json").read_text())["run_id"] != old_run
    assert file_md5(project / "models/char_lm/model.pt") != old_md5
    assert new["val_loss"] != old["val_loss"]


def test_editing_the_bptt_sampler_makes_train_and_tune_stale(project):
    shards = project / "components/data/shards.py"
    shards.write_text(shards.read_text() + "\n# a sampler change\n")
    st = _status(project)
    for stage in ("tune@char_lm", "train@char_lm", "tune@image_classifier", "train@image_classifier"):
        assert "components/data/shards.py" in _changed_deps(st[stage]), (stage, st.get(stage))


def test_changing_train_epochs_reruns_train_not_the_sweep(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["char_lm"]["train"]["epochs"] += 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert set(_status(project)) == {"trial_params@char_lm", "train@char_lm"}
    run(["dvc", "repro", "trial_params@char_lm"], project)  # a second: the trial's keys did not change
    assert set(_status(project)) == {"train@char_lm"}
    # a key a trial does use reaches tune through the same file
    params["char_lm"]["train"]["n_hidden"] += 8
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", "trial_params@char_lm"], project)
    assert {"tune@char_lm", "train@char_lm"} <= set(_status(project))


def test_a_searched_train_key_reruns_train_not_the_sweep(project):
    """`lr` is in the tiny `tune.space`: every trial sets its own, so its value in `train`
    changes no trial; only the final run reads it (when `use_tuned` is false)."""
    trial_file = project / "tune/char_lm/trial_params.json"
    assert "lr" not in json.loads(trial_file.read_text())["train"]
    before = trial_file.read_bytes()
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert "lr" in params["char_lm"]["tune"]["space"]
    params["char_lm"]["train"]["lr"] *= 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert set(_status(project)) == {"trial_params@char_lm", "train@char_lm"}
    run(["dvc", "repro", "trial_params@char_lm"], project)
    assert trial_file.read_bytes() == before
    assert set(_status(project)) == {"train@char_lm"}


def test_editing_a_local_corpus_in_place_reruns_prepare_and_all_after(project):
    corpus = project / "inputs/char_lm/corpus.txt"
    corpus.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(3000)))
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["char_lm"]["prepare"]["source"] = "inputs/char_lm/corpus.txt"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", "normalize@char_lm"], project)
    assert not {"prepare@char_lm", "normalize@char_lm"} & set(_status(project))
    normalized = {f: data_digest(project / "data/char_lm/normalized", f)[0] for f in ("train", "val")}

    with corpus.open("a") as f:  # edited in place: same path, same params
        f.write("".join(f"LINE {i}: A NEW VERSE.\n" for i in range(500)))
    assert "prepare@char_lm" in _status(project)
    run(["dvc", "repro", "normalize@char_lm"], project)
    assert all(data_digest(project / "data/char_lm/normalized", f)[0] != md5 for f, md5 in normalized.items())
    st = _status(project)
    for stage in ("tune@char_lm", "train@char_lm", "evaluate@char_lm", "register@char_lm"):
        assert "data/char_lm/normalized/val" in _changed_deps(st[stage]), (stage, st.get(stage))
