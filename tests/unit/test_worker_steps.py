"""Shared worker steps: which epoch is best, and when patience runs out."""

from __future__ import annotations


def test_the_best_epoch_is_the_earliest_best_and_patience_counts_from_it(capsys):
    from components.training.worker import Progress, best_epoch, stop_early

    hist = [{"val_loss": v, "val_accuracy": a} for v, a in ((2.0, 0.5), (1.5, 0.9), (1.7, 0.9), (1.6, 0.8))]
    assert best_epoch(hist, ("val_loss", "min")) == 2
    assert best_epoch(hist, ("val_accuracy", "max")) == 2  # the earliest of a tie
    p = Progress(None)
    p.history = hist
    config = {"select": ["val_loss", "min"], "train": {"patience": 2}}
    assert stop_early(p, config, rank=0)  # epochs 3 and 4 did not beat epoch 2
    assert "stopping after epoch 4 (best: epoch 2)" in capsys.readouterr().out
    assert not stop_early(p, {"select": ["val_loss", "min"], "train": {"patience": 3}}, rank=0)
    assert not stop_early(p, {"select": ["val_loss", "min"], "train": {"patience": None}}, rank=0)


def test_an_epoch_is_a_pass_unless_set_and_max_steps_caps_the_run():
    from components.training.worker import plan_steps
    from components.workloads.char_lm.data import max_windows

    full = plan_steps({"steps_per_epoch": None, "epochs": 30}, 13)
    assert (full.per_epoch, full.total, full.epochs) == (13, 390, 30)
    capped = plan_steps({"steps_per_epoch": None, "epochs": 30}, 1100, max_steps=1600)
    assert (capped.total, capped.epochs) == (1600, 2)
    assert [capped.steps_in(e) for e in range(3)] == [1100, 500, 0]
    fixed = plan_steps({"steps_per_epoch": 40, "epochs": 3}, 1100)
    assert (fixed.per_epoch, fixed.total, fixed.epochs) == (40, 120, 3)
    assert capped.schedule_cfg({"epochs": 30})["epochs"] == 1600 / 1100
    # the char-LM caps characters, not windows: a shorter bptt gets more windows for the same text
    assert max_windows({"max_tokens": 6_553_600, "bs": 64, "bptt": 64}) == 1600
    assert max_windows({"max_tokens": 6_553_600, "bs": 64, "bptt": 32}) == 3200
    assert max_windows({"max_tokens": None, "bs": 64, "bptt": 32}) is None


def test_a_run_that_reached_its_step_cap_is_finished_when_started_again():
    from components.training.session import LocalSession, running_in
    from components.training.worker import Progress, StepPlan, finished_already

    local = LocalSession()
    reported = local.reports
    state = {"history": [{"epoch": 1, "val_loss": 2.0}], "epoch": 1, "schedule": {"step": 120, "train_s": 1.0}}
    config = {"train": {"epochs": 30, "patience": None}, "select": ["val_loss", "min"]}
    # a pass ran a few windows past its estimate: the cap (120) was reached in epoch 1 of 2
    with running_in(local):
        assert finished_already(Progress(state), config, 0, StepPlan(per_epoch=100, total=120, epochs=2))
        assert reported and not finished_already(Progress(state), config, 0, StepPlan(100, 200, 2))
    local.close()


def test_train_publishes_the_best_epochs_weights_with_the_whole_history():
    from components.training.driver import TrainOutcome

    last = {"model": {"w": 3}, "history": [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}], "epoch": 3}
    out = TrainOutcome(state=last, best={"model": {"w": 1}, "epoch": 1}, run_path="/runs/x", num_workers=2)
    assert out.published == {"model": {"w": 1}, "history": last["history"], "epoch": 3}
    assert last["model"] == {"w": 3}  # the loaded state itself is left as it was


def test_in_epoch_progress_is_rate_limited_rank_0_only_and_has_an_eta(monkeypatch, capsys):
    from components.training import worker

    clock = iter([0.0, 5.0, 31.0, 40.0, 62.0])
    monkeypatch.setattr(worker.time, "monotonic", lambda: next(clock, 100.0))
    m = worker.EpochMeter(rank=0, epoch=2, epochs=10, steps=400, unit="windows", every_s=30)  # t=0
    assert m.update(50, 2.5) is None  # t=5: not due
    line = m.update(100, 2.25)  # t=31: 100 windows in 31 s, 300 left
    assert line == "[train] epoch 3/10: 100/400 windows, loss 2.2500, 3.2 windows/s, epoch ETA 1:33"
    assert m.update(120, 2.2) is None  # t=40: 9 s after the last line
    assert "ETA 1:02" in m.update(200, 2.1)  # t=62: 200 in 62 s, 200 left
    assert capsys.readouterr().out.count("[train] epoch 3/10:") == 2
    quiet = worker.EpochMeter(rank=1, epoch=0, epochs=1, steps=10, every_s=0.0)
    assert quiet.update(5, 1.0) is None  # other ranks never print
    monkeypatch.setenv("TRAINYARD_PROGRESS_S", "0")
    assert not worker.EpochMeter(rank=0, epoch=0, epochs=1, steps=10).on  # off by the variable
