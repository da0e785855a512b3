"""Sweeps through `run_sweep` on the session's shared Ray: in-process 1-worker trials,
more trials added to a finished sweep, and a reproducible pick."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from components.config import TuneParams, dims
from components.tuning.sweep import run_sweep
from components.workloads import get
from tests.integration.conftest import small_train_cfg

pytestmark = pytest.mark.slow

SPACE = dims(lr={"type": "loguniform", "low": 0.003, "high": 0.03}, dropout={"type": "uniform", "low": 0.0, "high": 0.3})


def _sweep(tmp_path, data, name: str, **tune):
    tp = TuneParams(**{"num_samples": 2, "epochs": 2, "steps_per_epoch": 6, "grace_period": 1, "space": SPACE,
                       **tune})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return run_sweep(tp, small_train_cfg(), data, workload=get("char_lm"), tracking_uri=uri,
                     storage=str(tmp_path / "runs"), name=name, use_gpu_setting=False), uri


def _children(uri: str, parent: str) -> dict[str, tuple[str, int]]:
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("char_lm").experiment_id
    return {r.data.tags["trainyard.trial_id"]: (r.info.status, r.info.end_time)
            for r in c.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")}


def test_a_finished_optuna_sweep_raised_to_more_samples_runs_only_the_new_ones(ray_driver, token_data, tmp_path):
    first, uri = _sweep(tmp_path, token_data, "sw", search="optuna")
    old = {t["trial_id"] for t in first.trials}
    assert len(old) == 2 and all(t["val_loss"] is not None for t in first.trials)
    # 1-worker trials ran in the trial's own process: no Ray Train run was stored
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["done", "sw"]
    before = _children(uri, first.parent_run_id)

    more, _ = _sweep(tmp_path, token_data, "sw", search="optuna", num_samples=3)
    assert (tmp_path / "runs" / "sw-r2").is_dir()
    ids = {t["trial_id"] for t in more.trials}
    assert len(ids) == 3 and old < ids
    assert more.parent_run_id == first.parent_run_id
    after = _children(uri, first.parent_run_id)
    # the old trials' child runs are kept as they were; one new child, finished
    assert {k: after[k] for k in before} == before and len(after) == 3
    assert all(status == "FINISHED" for status, _ in after.values())
    assert more.best_metric == min(t["val_loss"] for t in more.trials)


def test_a_reproducible_sweep_picks_the_same_trial_every_time(ray_driver, token_data, tmp_path):
    a, _ = _sweep(tmp_path, token_data, "rep-a", reproducible=True, num_samples=3)
    b, _ = _sweep(tmp_path, token_data, "rep-b", reproducible=True, num_samples=3)
    assert a.plan.concurrent == b.plan.concurrent == 1
    assert a.best_params == b.best_params and a.best_metric == b.best_metric
    assert sorted((t["config"]["lr"], t["val_loss"], t["epochs"]) for t in a.trials) == \
        sorted((t["config"]["lr"], t["val_loss"], t["epochs"]) for t in b.trials)


@pytest.mark.faults
def test_two_worker_trials_asha_stops_end_quietly_and_a_failing_one_says_its_cause_once(
        ray_driver, token_data, tmp_path, capfd):
    import time

    # Ray Train runs each trial (2 workers); ASHA stops the worse ones after their first epoch
    out, _ = _sweep(tmp_path, token_data, "two", num_samples=3, epochs=3, workers_per_trial=2, reduction_factor=2,
                    steps_per_epoch=150)
    assert any(t["epochs"] < 3 for t in out.trials), out.trials  # some trial was stopped early
    time.sleep(2)  # Ray relays worker output asynchronously
    said = capfd.readouterr()
    for noise in ("Traceback", "SIGABRT", "*** ", "owner has died", "Error in training function"):
        assert noise not in said.out + said.err, noise

    # a trial whose workers fail: the cause once, in one line; no traceback; the stage's error names it
    data = {**token_data, "train_uri": str(tmp_path / "gone.parquet")}
    with pytest.raises(RuntimeError, match=r"every trial failed; first error: FileNotFoundError: .*gone\.parquet"):
        _sweep(tmp_path, data, "bad", num_samples=1, workers_per_trial=2)
    time.sleep(2)
    said = capfd.readouterr()
    text = said.out + said.err
    assert "Traceback" not in text and "Error in training function" not in text, text[-3000:]
    assert len([ln for ln in text.splitlines() if "gone.parquet" in ln]) == 1, text[-3000:]
