"""`dvc repro` on tiny params in a temporary copy of the repository, with real Ray, MLflow
and DVC, then the registry and metrics it produced."""

from __future__ import annotations

import contextlib
import json
import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import project_env, run, serve_and_ask, tiny_params

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def edited_params(project, edit):
    """params.yaml with `edit(params)` applied inside the block, the tiny params restored after."""
    params = tiny_params()
    edit(params)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        yield
    finally:
        (project / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))


@contextlib.contextmanager
def restored_outputs(project, workload: str):
    """After the block, dvc.lock and `workload`'s metrics (git's, not in DVC's cache) as they
    were before it, and the cached outputs dvc.lock names checked out: the tests after it (in
    this module or another) find the project as `dvc repro` left it."""
    kept = {f: (project / f).read_bytes()
            for f in ("dvc.lock", f"metrics/{workload}/train.json", f"metrics/{workload}/eval.json")}
    try:
        yield
    finally:
        for f, data in kept.items():
            (project / f).write_bytes(data)
        run(["dvc", "checkout", "--force"], project)


def _mlflow(project, code: str) -> str:
    """Run MLflow client code in the project (its SQLite store), return stdout."""
    prelude = ("import json, mlflow\nfrom mlflow import MlflowClient\n"
               "mlflow.set_tracking_uri('sqlite:///mlflow.db')\nc = MlflowClient()\n")
    return run([sys.executable, "-c", prelude + textwrap.dedent(code)], project).stdout


def test_metrics_and_outputs(tiny_project):
    ev = json.loads((tiny_project / "metrics/char_lm/eval.json").read_text())
    for k in ("val_loss", "test_loss", "val_bits_per_char", "val_perplexity"):
        assert math.isfinite(ev[k])
    assert ev["val_loss"] < math.log(80)  # better than uniform over the vocabulary
    assert ev["val_bits_per_char"] == pytest.approx(ev["val_loss"] / math.log(2))
    assert ev["val_loss"] < ev["baseline_bigram_val_loss"] < ev["baseline_unigram_val_loss"]
    tr = json.loads((tiny_project / "metrics/char_lm/train.json").read_text())
    assert tr["num_workers"] == 1 and tr["epochs"] == 2
    assert tr["published_epoch"] in (1, 2)
    # `dvc metrics` reads numbers only; the run record is beside the model
    assert all(isinstance(v, int | float) for v in tr.values()), tr
    info = json.loads((tiny_project / "models/char_lm/train_run.json").read_text())
    assert info["selected_by"] == "val_loss (min)" and len(info["run_id"]) == 32
    # one worker and no cluster: trained in the stage's own process, checkpoints in the run store
    assert info["run_path"].endswith("-in-process") and (Path(info["run_path"]) / "checkpoints.json").exists()
    assert "[train] lstm on 1 worker, in this process" in (tiny_project / "repro.log").read_text()
    curve = (tiny_project / "plots/char_lm/train_curve.csv").read_text().splitlines()
    assert curve[0] == "epoch,train_loss,val_loss,tokens_per_s" and len(curve) == 3
    sample = (tiny_project / "reports/char_lm/samples.txt").read_text()
    assert sample.count("for thos") == 2  # two temperatures


def test_stages_import_only_what_they_use(tiny_project):
    """Data stages start without torch, Ray or MLflow; register reads the model file's metadata
    and logs the model without torch (it imports torch only to re-score a champion, and the
    first version of each model has none to re-score)."""
    lines = [json.loads(s) for s in (tiny_project / "timings.jsonl").read_text().splitlines()]
    imported = {s["stage"]: s["imported"] for s in lines}
    assert len(imported) == 22, sorted(imported)  # 7 stages x 3 workloads, and the text classifier's adapt
    for stage, mods in imported.items():
        kind = stage.split("@")[0]
        if kind in ("prepare", "normalize", "trial_params"):
            assert mods == [], (stage, mods)
        if kind == "register":
            assert mods == ["mlflow"], (stage, mods)


def test_sweep_ran_six_trials_two_at_a_time_and_asha_stopped_some(tiny_project):
    best = json.loads((tiny_project / "tune/char_lm/best_params.json").read_text())
    assert best["num_trials"] == 6 and best["concurrent"] == 2
    assert best["stopped_early"] >= 1
    assert set(best["params"]) == {"bptt", "lr", "dropout"}
    # the train stage used the tuned values
    tr = json.loads((tiny_project / "models/char_lm/train_run.json").read_text())
    assert tr["params"]["lr"] == pytest.approx(best["params"]["lr"])
    # MLflow: one parent run, one finished child per trial, never more than 2 overlapping
    out = _mlflow(tiny_project, """
        exp = c.get_experiment_by_name('char_lm')
        runs = c.search_runs([exp.experiment_id], max_results=100)
        parents = [r for r in runs if r.data.tags.get('trainyard.stage') == 'tune']
        kids = [r for r in runs if r.data.tags.get('mlflow.parentRunId') == parents[0].info.run_id]
        print(json.dumps({'parents': len(parents), 'kids': [[r.info.status, r.info.start_time, r.info.end_time,
              len(c.get_metric_history(r.info.run_id, 'val_loss'))] for r in kids]}))
    """)
    info = json.loads(out.strip().splitlines()[-1])
    assert info["parents"] == 1
    assert len(info["kids"]) == 6 and all(k[0] == "FINISHED" for k in info["kids"])
    assert all(1 <= k[3] <= 3 for k in info["kids"])
    events = sorted([(k[1], 1) for k in info["kids"]] + [(k[2], -1) for k in info["kids"]])
    live = peak = 0
    for _, d in events:
        live += d
        peak = max(peak, live)
    assert peak <= 2


def test_registry_has_champion_with_lineage_matching_dvc(tiny_project):
    reg = json.loads((tiny_project / "registry/char_lm/registered.json").read_text())
    assert "champion" in reg["aliases"] and "challenger" in reg["aliases"]
    lock = yaml.safe_load((tiny_project / "dvc.lock").read_text())
    deps = {d["path"]: d["md5"] for d in lock["stages"]["register@char_lm"]["deps"]}
    for f in ("train", "val", "vocab.json"):  # split folders: DVC's .dir md5, from the manifest
        path = f"data/char_lm/normalized/{f}"
        assert reg["tags"][f"trainyard.data.{path}"] == deps[path]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tiny_project, capture_output=True, text=True).stdout.strip()
    assert reg["tags"]["trainyard.git_commit"].startswith(head)
    assert json.loads(reg["tags"]["trainyard.params"])["arch"] == "lstm"
    out = _mlflow(tiny_project, """
        v = c.get_model_version_by_alias('char-lm', 'champion')
        print(json.dumps({'version': v.version, 'n': len(c.search_model_versions("name='char-lm'"))}))
    """)
    info = json.loads(out.strip().splitlines()[-1])
    assert str(info["version"]) == reg["version"] and info["n"] == 1


def test_champion_loads_in_a_fresh_process_and_generates(tiny_project):
    code = textwrap.dedent("""
        import mlflow, pandas as pd
        mlflow.set_tracking_uri('sqlite:///mlflow.db')
        m = mlflow.pyfunc.load_model('models:/char-lm@champion')
        out = m.predict(pd.DataFrame({'prompt': ['for thos', 'ROMEO:'], 'n_chars': [30, 20]}))
        print(repr(out))
    """)
    out = run([sys.executable, "-c", code], tiny_project).stdout.strip().splitlines()[-1]
    texts = eval(out)  # noqa: S307 (our own repr of a list of str)
    assert len(texts) == 2 and texts[0].startswith("for thos") and len(texts[0]) == 38


def test_training_progress_reaches_the_console_once(tiny_project):
    # Ray Train's default print patch printed each worker line twice (log record + stdout)
    log = (tiny_project / "repro.log").read_text()
    lines = [ln for ln in log.splitlines() if "[train] epoch " in ln]
    assert lines, log[-3000:]
    twice = sorted({ln for ln in lines if lines.count(ln) > 1})
    assert not twice, twice[:5]
    # Ray's and MLflow's internal notices are off (TRAINYARD_RAY_VERBOSE=1 brings them back)
    for noise in ("PYTHON worker processes have been started", "Token authentication is enabled",
                  "serialized using CloudPickle", "owner has died", "RAW: Lock",
                  "Attempting to start training worker group", "Wrapping provided model in DistributedDataParallel",
                  "'PreemptionWatcher'", "Cleaning up placement group", "Reporting training result",
                  "Checkpoint successfully created at"):
        assert noise not in log, noise


def test_repro_again_skips_everything_and_status_is_clean(tiny_project):
    p = run(["dvc", "repro"], tiny_project)
    assert "Running stage" not in p.stdout
    stages = run(["dvc", "stage", "list", "--names-only"], tiny_project).stdout.split()
    assert len(stages) >= 8 and len(re.findall(r"didn't change, skipping", p.stdout)) == len(stages)
    st = run(["dvc", "status"], tiny_project)
    assert "up to date" in st.stdout


def test_register_is_idempotent(tiny_project):
    before = (tiny_project / "registry/char_lm/registered.json").read_text()
    run(["dvc", "repro", "--force", "--single-item", "register@char_lm"], tiny_project)
    after = json.loads((tiny_project / "registry/char_lm/registered.json").read_text())
    assert after["version"] == json.loads(before)["version"]
    assert after["decision"] == "already champion"
    # the text classifier registers after the char-LM (its version tag names the char-LM's), so
    # its register stage is stale now; rerun, it makes no second version of the same file
    tc_before = json.loads((tiny_project / "registry/text_classifier/registered.json").read_text())
    st = json.loads(run(["dvc", "status", "--json"], tiny_project).stdout)
    assert set(st) == {"register@text_classifier"}
    run(["dvc", "repro", "register@text_classifier"], tiny_project)
    tc_after = json.loads((tiny_project / "registry/text_classifier/registered.json").read_text())
    assert tc_after["version"] == tc_before["version"]
    assert "up to date" in run(["dvc", "status"], tiny_project).stdout


def test_image_classifier_registered_beside_the_char_lm(tiny_project):
    m = json.loads((tiny_project / "data/image_classifier/normalized/manifest.json").read_text())
    assert sum(f["rows"] for f in m["files"].values()) == 1797
    ev = json.loads((tiny_project / "metrics/image_classifier/eval.json").read_text())
    # crowned because it beats the simplest models on the same val images
    assert ev["accuracy"] > ev["baseline_linear_val_accuracy"] > ev["baseline_majority_val_accuracy"]
    assert set(ev["val_per_class_accuracy"]) == {str(i) for i in range(10)}
    reports = tiny_project / "reports/image_classifier"
    assert {"cam.png", "confusion_val.png", "confusion_test.png", "confusion.csv"} <= {p.name for p in reports.iterdir()}
    tr = json.loads((tiny_project / "metrics/image_classifier/train.json").read_text())
    assert tr["num_workers"] == 2 and tr["samples_padded"] >= 0
    # every train image once per epoch across the 2 workers, padding counted
    n_train = m["files"]["train"]["rows"]
    assert tr["samples_padded"] == 64 * -(-((n_train + 1) // 2) // 32) - n_train
    # the run records where its workers trained: both ranks on the project's one-node Ray; and
    # each trial of its sweep where it ran (the two-node placement: test_cluster.py)
    nodes = json.loads((tiny_project / "models/image_classifier/train_run.json").read_text())["worker_nodes"]
    assert len(nodes) == 2 and len(set(nodes)) == 1 and nodes[0]
    trials = json.loads((tiny_project / "tune/image_classifier/best_params.json").read_text())["trials"]
    assert trials and all(t["node_id"] for t in trials)
    code = textwrap.dedent("""
        import mlflow, numpy as np, pyarrow.parquet as pq
        from components.workloads.image_classifier.data import decode
        mlflow.set_tracking_uri('sqlite:///mlflow.db')
        m = mlflow.pyfunc.load_model('models:/image-classifier@champion')
        t = pq.read_table('data/image_classifier/normalized/test').combine_chunks()
        out = m.predict(decode(t.to_batches()[0])[:20])
        print(float((out['class_id'].to_numpy() == t.column('label').to_numpy()[:20]).mean()))
    """)
    acc = float(run([sys.executable, "-c", code], tiny_project).stdout.strip().splitlines()[-1])
    assert acc > 0.5
    out = _mlflow(tiny_project, """
        v = c.get_model_version_by_alias('image-classifier', 'champion')
        arts = [a.path for a in c.list_artifacts(v.run_id, 'evaluation')]
        print(json.dumps({'arch': v.tags['trainyard.arch'], 'arts': arts}))
    """)
    info = json.loads(out.strip().splitlines()[-1])
    assert info["arch"] == "resnet" and "evaluation/cam.png" in info["arts"]
    assert (tiny_project / "data/char_lm/normalized/train/part-00000.parquet").is_file()
    # changing an image_classifier param leaves every char_lm stage current
    with edited_params(tiny_project, lambda p: p["image_classifier"]["prepare"].update(seed=1)):
        st = json.loads(run(["dvc", "status", "--json"], tiny_project).stdout)
        assert set(st) == {"prepare@image_classifier"}


def test_changing_num_samples_reruns_tune_and_after_only(tiny_project):
    with edited_params(tiny_project, lambda p: p["char_lm"]["tune"].update(num_samples=7)):
        st = json.loads(run(["dvc", "status", "--json"], tiny_project).stdout)
        assert set(st) == {"tune@char_lm"}
        dry = run(["dvc", "repro", "--dry"], tiny_project).stdout
        ran = re.findall(r"Running stage '([^']+)'", dry)
        assert ran[0] == "tune@char_lm" and "prepare@char_lm" not in ran and "normalize@char_lm" not in ran


def test_registry_cli_lists_promotes_and_rolls_back(tiny_project):
    lst = run([sys.executable, "-m", "components.cli.registry", "list"], tiny_project).stdout
    assert "champion" in lst and "val_loss=" in lst
    p = run([sys.executable, "-m", "components.cli.registry", "rollback", "--why", "x"], tiny_project, check=False)
    assert p.returncode == 1 and "no earlier champion" in p.stderr
    # a model of its own, two versions of the char-LM's files, so char-lm stays as the other tests see it
    _mlflow(tiny_project, """
        src = c.get_model_version_by_alias('char-lm', 'champion')
        c.create_registered_model('cli-review')
        for _ in range(2):
            c.create_model_version('cli-review', src.source, run_id=src.run_id)
    """)
    cli = [sys.executable, "-m", "components.cli.registry", "--name", "cli-review"]
    assert "champion -> v1 (first look)" in run([*cli, "promote", "1", "--why", "first look"], tiny_project).stdout
    out = run([*cli, "promote", "2", "--why", "better samples", "--who", "reviewer"], tiny_project).stdout
    assert "champion -> v2 (better samples)" in out
    shown = json.loads(run([*cli, "show", "2"], tiny_project).stdout)
    assert shown["aliases"] == ["champion"] and shown["tags"]["trainyard.promoted_by"] == "reviewer"
    assert shown["tags"]["trainyard.promoted_reason"] == "better samples"
    lines = run([*cli, "list"], tiny_project).stdout.splitlines()
    assert "champion v2" in lines[0] and lines[1].startswith("v2 ") and "champion" in lines[1]
    out = run([*cli, "rollback", "--why", "v2 regressed"], tiny_project).stdout
    assert "champion rolled back to v1 (v2 regressed)" in out
    demoted = json.loads(run([*cli, "show", "2"], tiny_project).stdout)
    assert demoted["aliases"] == [] and json.loads(demoted["tags"]["trainyard.demoted"])["why"] == "v2 regressed"
    p = run([*cli, "rollback", "--why", "again"], tiny_project, check=False)
    assert p.returncode == 1 and "no earlier champion" in p.stderr


def test_registry_review_shows_what_a_person_decides_on(tiny_project):
    """`registry review` on the pipeline's own registry: evaluate's numbers, baselines, lineage and
    what to look at (per-class accuracy and report files; the char-LM's samples), written to
    reviews/ and set as the version's description in MLflow."""
    cli = [sys.executable, "-m", "components.cli.registry"]
    out = run([*cli, "--workload", "text_classifier", "review", "1"], tiny_project).stdout
    assert "# Review: text-classifier v1" in out and "| accuracy |" in out and "| tfidf_test_accuracy |" in out
    assert "Per-class val accuracy:" in out and "| prophets |" in out and "`evaluation/confusion_val.png`" in out
    assert "rows |" in out and "fine-tuned from | char-lm v" in out
    report = tiny_project / "reviews/text-classifier/v1.md"
    assert report.read_text() in out
    described = _mlflow(tiny_project, "print(c.get_model_version('text-classifier', '1').description)")
    assert described.strip() == report.read_text().strip()
    out = run([*cli, "review", "1"], tiny_project).stdout
    assert "# Review: char-lm v1" in out and "Samples from v1:" in out and "| val_loss |" in out


def _serve_and_ask(project, model_uri: str, body: dict) -> dict:
    return serve_and_ask(model_uri, body, project, project_env() | {"MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"})


@pytest.mark.serve
def test_mlflow_models_serve_answers_prompts(tiny_project):
    reply = _serve_and_ask(tiny_project, "models:/char-lm@champion",
                           {"dataframe_split": {"columns": ["prompt", "n_chars"], "data": [["ROMEO:", 25]]}})
    text = reply["predictions"][0]
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 25


@pytest.mark.serve
def test_mlflow_models_serve_answers_passages_with_a_genre(tiny_project):
    reply = _serve_and_ask(tiny_project, "models:/text-classifier/1",
                           {"dataframe_records": [{"text": "Friends, Romans, countrymen, lend me your ears"}]})
    classes = json.loads((tiny_project / "data/text_classifier/normalized/classes.json").read_text())["classes"]
    [row] = reply["predictions"]
    assert row["genre"] in classes and 0 < row["probability"] <= 1


@pytest.mark.changes  # a user's change (the architecture) replayed through train and register: 30 s
def test_gru_trains_and_registers_under_the_same_name(tiny_project):
    # a short run: what is checked is the architecture's path through train, evaluate and register
    with edited_params(tiny_project, lambda p: p["char_lm"]["train"].update(arch="gru", steps_per_epoch=30)), \
            restored_outputs(tiny_project, "char_lm"):
        # --single-item: rerun these stages only (the sweep of the LSTM is kept as it is)
        for stage in ("train", "evaluate", "register"):
            run(["dvc", "repro", "--force", "--single-item", f"{stage}@char_lm"], tiny_project)
        reg = json.loads((tiny_project / "registry/char_lm/registered.json").read_text())
        assert reg["name"] == "char-lm" and reg["tags"]["trainyard.arch"] == "gru"
        out = _mlflow(tiny_project, f"""
            r = c.get_run('{reg["run_id"]}')
            print(json.dumps({{'arch_tag': r.data.tags['trainyard.arch'], 'arch_param': r.data.params['arch'],
                              'versions': len(c.search_model_versions("name='char-lm'"))}}))
        """)
        info = json.loads(out.strip().splitlines()[-1])
        assert info == {"arch_tag": "gru", "arch_param": "gru", "versions": 2}
        assert math.isfinite(json.loads((tiny_project / "metrics/char_lm/eval.json").read_text())["val_loss"])
    # the tests after this one find the project as `dvc repro` left it
    assert run(["dvc", "status"], tiny_project).stdout.strip().endswith("up to date."), "project left stale"


def test_mlflow_runs_carry_source_tags_datasets_system_metrics_and_model_metrics(tiny_project):
    reg = json.loads((tiny_project / "registry/char_lm/registered.json").read_text())
    lock = yaml.safe_load((tiny_project / "dvc.lock").read_text())
    md5 = {d["path"]: d["md5"] for d in lock["stages"]["train@char_lm"]["deps"]}
    out = _mlflow(tiny_project, f"""
        r = c.get_run('{reg["run_id"]}')
        ds = [(i.dataset.name, i.dataset.digest, [t.value for t in i.tags]) for i in r.inputs.dataset_inputs]
        v = c.get_model_version('char-lm', '{reg["version"]}')
        lm = mlflow.get_logged_model(v.source.removeprefix('models:/'))
        reqs = open(mlflow.pyfunc.get_model_dependencies('models:/char-lm/{reg["version"]}')).read().split()
        img = open(mlflow.pyfunc.get_model_dependencies('models:/image-classifier@champion')).read().split()
        print(json.dumps({{'tags': r.data.tags, 'ds': ds, 'system': sorted(k for k in r.data.metrics
                          if k.startswith('system/')), 'model_metrics': [(m.key, m.dataset_name) for m in lm.metrics],
                          'reqs': reqs, 'img': img}}))
    """)
    info = json.loads(out.strip().splitlines()[-1])
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tiny_project, capture_output=True, text=True).stdout.strip()
    t = info["tags"]
    assert t["mlflow.source.git.commit"] == head and t["mlflow.user"] and t["mlflow.source.name"] == "dvc stage train@char_lm"
    inputs = {(name, digest): ctx for name, digest, ctx in info["ds"]}
    assert inputs[("char_lm/train", md5["data/char_lm/normalized/train"])] == ["training"]
    assert inputs[("char_lm/val", md5["data/char_lm/normalized/val"])] == ["validation"]
    assert any(name == "char_lm/test" and ctx == ["testing"] for (name, _), ctx in inputs.items())  # from evaluate
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(info["system"])
    on_model = {tuple(m) for m in info["model_metrics"]}
    assert {("eval_val_loss", "char_lm/val"), ("eval_test_loss", "char_lm/test")} <= on_model
    names = {r.split("==")[0].lower() for r in info["reqs"]}
    assert {"torch", "mlflow", "pandas", "numpy", "ray"} <= names, info["reqs"]
    img = {r.split("==")[0].lower() for r in info["img"]}
    assert {"torch", "torchvision", "ray", "scikit-learn", "pillow"} <= img, info["img"]


def test_dvc_metrics_are_numbers_and_plots_one_chart_per_workload_and_metric(tiny_project):
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], tiny_project).stdout)
    values = next(iter(shown.values()))["data"]

    def leaves(obj):
        for v in obj.values():
            yield from (leaves(v) if isinstance(v, dict) else [v])

    for path in (f"metrics/{w}/{f}.json" for w in ("char_lm", "image_classifier") for f in ("train", "eval")):
        got = list(leaves(values[path]["data"]))
        assert got and all(isinstance(v, int | float) for v in got), (path, got)
    plots = json.loads(run(["dvc", "plots", "show", "--json", "--split"], tiny_project).stdout)["data"]
    assert {"char_lm_loss", "image_classifier_loss", "image_classifier_accuracy"} <= set(plots)
    curves = [k for k in plots if "train_curve" in k]
    assert not curves, curves  # each curve file drawn once, through its chart above
    for pid in ("char_lm_loss", "image_classifier_loss"):
        spec = json.dumps(plots[pid])
        assert '"epoch"' in spec and "val_loss" in spec and "train_loss" in spec, pid


def test_registry_cli_archives_and_traces_versions_to_data_and_commits(tiny_project):
    cli = [sys.executable, "-m", "components.cli.registry"]
    reg = json.loads((tiny_project / "registry/char_lm/registered.json").read_text())
    v = reg["version"]
    lock = yaml.safe_load((tiny_project / "dvc.lock").read_text())
    md5 = {d["path"]: d["md5"] for d in lock["stages"]["register@char_lm"]["deps"]}["data/char_lm/normalized/val"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tiny_project, capture_output=True, text=True).stdout.strip()
    for how in (["--md5", md5[:8]], ["--data", "data/char_lm/normalized/val"],
                ["--data", "data/char_lm/normalized"], ["--commit", head[:10]]):
        out = run([*cli, "trace", *how], tiny_project).stdout
        assert re.search(rf"^v{v}\s", out, re.M), (how, out)
    assert "0 version(s)" in run([*cli, "trace", "--md5", "0123456789"], tiny_project).stdout
    back = run([*cli, "trace", "--version", v], tiny_project).stdout
    assert head in back and reg["run_id"] in back and f"data/char_lm/normalized/val  md5 {md5}" in back
    # dvc.lock is not committed in this project: a revision without it is one clear error
    p = run([*cli, "trace", "--data", "data/char_lm/normalized/val", "--rev", "HEAD"], tiny_project, check=False)
    assert p.returncode == 1 and "no dvc.lock at HEAD" in p.stderr
    # archive, on the review model of the CLI test above (v1 champion, v2 demoted)
    review = [*cli, "--name", "cli-review"]
    p = run([*review, "archive", "1", "--why", "x"], tiny_project, check=False)
    assert p.returncode == 1 and "is the champion" in p.stderr
    assert "v2 archived (bad data)" in run([*review, "archive", "2", "--why", "bad data"], tiny_project).stdout
    assert re.search(r"^v2\s+archived", run([*review, "list"], tiny_project).stdout, re.M)
    p = run([*review, "promote", "2", "--why", "x"], tiny_project, check=False)
    assert p.returncode == 1 and "archived" in p.stderr


def test_text_classifier_fine_tuned_from_the_registered_char_lm(tiny_project):
    """Lesson 10 end to end: the classifier's encoder came from this project's char-LM model
    file; evaluate compares it with its scratch twin and the majority class; its registered
    version names the char-LM version (and `trace --built-on` finds it); its pyfunc answers
    passages with a genre and a probability; a new char-LM reruns its train stage."""
    ev = json.loads((tiny_project / "metrics/text_classifier/eval.json").read_text())
    for k in ("accuracy", "test_accuracy", "scratch_accuracy", "scratch_test_accuracy", "general_accuracy",
              "general_test_accuracy", "tfidf_val_accuracy", "tfidf_test_accuracy",
              "baseline_majority_val_accuracy", "baseline_majority_test_accuracy"):
        assert 0.0 <= ev[k] <= 1.0, k
    assert ev["finetune_gain_test_accuracy"] == pytest.approx(ev["test_accuracy"] - ev["scratch_test_accuracy"])
    assert ev["adapt_gain_test_accuracy"] == pytest.approx(ev["test_accuracy"] - ev["general_test_accuracy"])
    classes = json.loads((tiny_project / "data/text_classifier/normalized/classes.json").read_text())["classes"]
    assert classes == ["epistles", "gospels_acts", "history", "law", "prophets", "wisdom"]  # the kjv source
    # ULMFiT's three steps: the general LM -> adapted on the train books -> the classifier on it
    assert "Running stage 'adapt@text_classifier'" in (tiny_project / "repro.log").read_text()
    assert set(ev["val_per_class_accuracy"]) <= set(classes)
    assert {"confusion_val.png", "confusion_test.png"} <= {p.name for p in (tiny_project / "reports/text_classifier").iterdir()}
    # whole plays held out: no document in two splits
    docs = run([sys.executable, "-c", textwrap.dedent("""
        import json, pyarrow.parquet as pq
        print(json.dumps({s: sorted(set(pq.read_table(f'data/text_classifier/normalized/{s}',
              columns=['document']).column('document').to_pylist())) for s in ('train', 'val', 'test')}))
    """)], tiny_project).stdout.strip().splitlines()[-1]
    docs = {k: set(v) for k, v in json.loads(docs).items()}
    assert docs["val"] and docs["test"] and not (docs["train"] & docs["val"] or docs["train"] & docs["test"]
                                                 or docs["val"] & docs["test"])
    import hashlib
    lm_md5 = hashlib.md5((tiny_project / "models/char_lm/model.pt").read_bytes()).hexdigest()
    lm_version = json.loads((tiny_project / "registry/char_lm/registered.json").read_text())["version"]
    out = _mlflow(tiny_project, """
        v = max(c.search_model_versions("name='text-classifier'"), key=lambda v: int(v.version))
        print(json.dumps({'version': v.version, 'tags': v.tags}))
    """)
    info = json.loads(out.strip().splitlines()[-1])
    assert info["tags"]["trainyard.base.model_md5"] == lm_md5
    assert info["tags"]["trainyard.base.version"] == f"char-lm v{lm_version}"
    adapted = hashlib.md5((tiny_project / "models/text_classifier/lm.pt").read_bytes()).hexdigest()
    assert info["tags"]["trainyard.adapted_lm.md5"] == adapted != lm_md5
    cli = [sys.executable, "-m", "components.cli.registry", "--name", "text-classifier", "trace"]
    built = run([*cli, "--built-on", f"char-lm:{lm_version}"], tiny_project).stdout
    assert f"1 version(s) fine-tuned from char-lm v{lm_version}" in built and f"v{info['version']} " in built
    assert "fine-tuned from models/char_lm/model.pt" in run([*cli, "--version", str(info["version"])], tiny_project).stdout
    code = textwrap.dedent(f"""
        import mlflow, pandas as pd
        mlflow.set_tracking_uri('sqlite:///mlflow.db')
        m = mlflow.pyfunc.load_model('models:/text-classifier/{info['version']}')
        out = m.predict(pd.DataFrame({{'text': ['Now is the winter of our discontent', 'Friends, Romans, countrymen']}}))
        print(out.to_json(orient='records'))
    """)
    rows = json.loads(run([sys.executable, "-c", code], tiny_project).stdout.strip().splitlines()[-1])
    assert len(rows) == 2 and all(r["genre"] in classes and 0 < r["probability"] <= 1 for r in rows)
    # a new char-LM model file adapts the LM again, from which the classifier sweeps and trains
    # again (and it registers after the char-LM): another valid model file in its place, then
    # the original back
    lm = tiny_project / "models/char_lm/model.pt"
    original = lm.read_bytes()
    run([sys.executable, "-c", "import torch; p = 'models/char_lm/model.pt'; b = torch.load(p, weights_only=False); "
         "b['retrained'] = True; torch.save(b, p)"], tiny_project)
    try:
        st = json.loads(run(["dvc", "status", "--json"], tiny_project).stdout)
    finally:
        lm.write_bytes(original)
    assert {"adapt@text_classifier", "register@char_lm"} <= set(st)
    assert not {"prepare@text_classifier", "normalize@text_classifier", "trial_params@text_classifier"} & set(st)
    dag = run(["dvc", "dag", "--dot", "register@text_classifier"], tiny_project).stdout
    assert '"register@char_lm" -> "register@text_classifier"' in dag
    # ULMFiT's chain: the general LM -> adapt -> tune and train (each step's file the next one's dep)
    assert '"train@char_lm" -> "adapt@text_classifier"' in dag
    assert '"adapt@text_classifier" -> "tune@text_classifier"' in dag
    assert '"adapt@text_classifier" -> "train@text_classifier"' in dag
    assert "up to date" in run(["dvc", "status"], tiny_project).stdout


def _stage_logs(out: str) -> dict[str, str]:
    """`dvc repro`'s output cut per stage: name -> what that stage printed."""
    parts = re.split(r"^Running stage '([^']+)':$", out, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.changes
def test_a_new_char_lm_trains_the_text_classifier_anew_and_the_old_one_resumes(tiny_project):
    """The base model is in every run key of the stages that read it: another char-LM (here
    from another seed) is a new text-classifier sweep, run and version naming the new base;
    the old char-LM back, nothing trains again and no version is added."""
    tc_model, lm = tiny_project / "models/text_classifier/model.pt", tiny_project / "models/char_lm/model.pt"
    tc_run = lambda: json.loads((tiny_project / "models/text_classifier/train_run.json").read_text())["run_id"]  # noqa: E731
    versions = lambda name: int(_mlflow(tiny_project, f"print(len(c.search_model_versions(\"name='{name}'\")))")  # noqa: E731
                                .strip().splitlines()[-1])
    before = {"lm": _md5(lm), "tc": _md5(tc_model), "run": tc_run(), "versions": versions("text-classifier")}
    with restored_outputs(tiny_project, "char_lm"), restored_outputs(tiny_project, "text_classifier"):
        with edited_params(tiny_project, lambda p: p["char_lm"]["train"].update(seed=1)):
            p = run(["dvc", "repro"], tiny_project, timeout=1200)
        logs = _stage_logs(p.stdout + p.stderr)
        assert _md5(lm) != before["lm"]
        assert {"train@char_lm", "tune@text_classifier", "train@text_classifier"} <= set(logs)
        assert "resuming the sweep" not in logs["tune@text_classifier"], logs["tune@text_classifier"][-2000:]
        assert "resumed from epoch" not in logs["train@text_classifier"], logs["train@text_classifier"][-2000:]
        assert tc_run() != before["run"] and _md5(tc_model) != before["tc"]
        assert versions("text-classifier") == before["versions"] + 1
        lm_version = json.loads((tiny_project / "registry/char_lm/registered.json").read_text())["version"]
        tags = json.loads(_mlflow(tiny_project, """
            v = max(c.search_model_versions("name='text-classifier'"), key=lambda v: int(v.version))
            print(json.dumps(v.tags))
        """).strip().splitlines()[-1])
        assert tags["trainyard.base.model_md5"] == _md5(lm)
        assert tags["trainyard.base.version"] == f"char-lm v{lm_version}"
        # the old params back: the char-LM's finished run is read again, so is the old base
        # model, and the classifier's sweep and run resume as they were (or DVC's run cache
        # restores their outputs): the same model, the same MLflow run, no new version
        p = run(["dvc", "repro"], tiny_project, timeout=1200)
        logs = _stage_logs(p.stdout + p.stderr)
        assert _md5(lm) == before["lm"]
        for stage in ("tune@text_classifier", "train@text_classifier"):
            if stage in logs:  # it ran: it resumed, and trained no epoch
                assert re.search(r"resuming the sweep|resumed from epoch", logs[stage]), logs[stage][-2000:]
        assert "epoch 1/" not in logs.get("train@text_classifier", "")
        assert _md5(tc_model) == before["tc"] and tc_run() == before["run"]
        assert versions("text-classifier") == before["versions"] + 1
        assert "up to date" in run(["dvc", "status"], tiny_project).stdout
