"""The sweep's search: grid dimensions, Optuna told of earlier rounds, round names."""

from __future__ import annotations

import pytest

from components.config import ParamsError, TuneParams, dims
from components.params import parse_params
from components.tuning.search import grid_points, planned, rounds, search_space, searcher

SPACE = dims(lr={"type": "loguniform", "low": 1e-3, "high": 1e-2}, bptt={"type": "choice", "values": [16, 32]})


def _done(n: int) -> list[dict]:
    return [{"trial_id": f"t{i}", "config": {"lr": 0.001 * (i + 1), "bptt": 16, "dropout": 0.1},
             "val_loss": 2.0 - 0.1 * i} for i in range(n)]


def test_optuna_is_told_every_earlier_trial_and_runs_none_of_them_again():
    tp = TuneParams(search="optuna", space=SPACE)
    alg = searcher(tp, concurrent=2, done=_done(3), round_index=1)
    study = alg.searcher._ot_study
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert sorted(t.value for t in study.trials) == pytest.approx([1.8, 1.9, 2.0])
    assert study.best_trial.params == {"lr": pytest.approx(0.003), "bptt": 16}
    assert alg.max_concurrent == 2


def test_a_later_random_round_draws_from_another_seed():
    tp = TuneParams(space=SPACE, seed=3)
    first, later = searcher(tp, 2, [], 0), searcher(tp, 2, _done(2), 1)
    assert first._random_state != later._random_state


def test_a_grid_is_every_point_in_a_seeded_shuffled_order_and_only_for_random_search():
    tp = TuneParams(num_samples=2, space=dims(lr={"type": "grid", "values": [0.001, 0.003, 0.01]},
                                              bptt={"type": "grid", "values": [16, 32]},
                                              dropout={"type": "uniform", "low": 0.0, "high": 0.3}))
    points = grid_points(tp)
    assert planned(tp) == len(points) == 12
    assert sorted((p["lr"], p["bptt"]) for p in points) == sorted(
        [(lr, b) for lr in (0.001, 0.003, 0.01) for b in (16, 32)] * 2)
    assert points != sorted(points, key=lambda p: (p["lr"], p["bptt"]))  # not the grid's own order
    assert points == grid_points(tp) != grid_points(tp.model_copy(update={"seed": 1}))
    # the generator runs those points first; a later round starts after the ones done
    assert searcher(tp, 2, _done(5), 1)._points_to_evaluate == points[5:]
    assert "grid_search" not in str(search_space(tp.space))
    with pytest.raises(ValueError, match="space.lr: a grid dimension needs search: random"):
        TuneParams(search="optuna", space=dims(lr={"type": "grid", "values": [0.001]}))


def test_search_must_be_one_the_sweep_knows():
    with pytest.raises(ParamsError, match="char_lm.tune.search"):
        parse_params({"char_lm": {"tune": {"search": "bayes"}}})


def test_a_sweep_with_no_stored_rounds_has_none(tmp_path):
    assert rounds(str(tmp_path), "sweep-abc") == []
