"""A preemption notice mid-epoch: the loop writes a checkpoint there and goes on; a run that
restarts from it trains what an undisturbed run does, step for step."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from components.training.driver import worker_config
from components.training.session import LocalSession, running_in
from components.training.worker import PreemptionWatch
from tests.unit.test_session import _cfg

NOTICE = SimpleNamespace(deadline_ms=None, preempted_node_ids=["a" * 56], preempted_ranks=[0])


class Torn(RuntimeError):
    """The worker group torn down at the preemption deadline."""


class NoticeAt(LocalSession):
    """A runner whose node gets a preemption notice at its `at`-th look, and is torn down
    at the next epoch's report (training went on past the notice until the deadline)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.looks, self.tear = at, 0, True

    def preemption(self):
        self.looks += 1
        return NOTICE if self.looks >= self.at else None

    def report(self, metrics, checkpoint_dir=None, dir_name=None) -> None:
        if self.tear and "epoch" in metrics and any("preempted_at_step" in r for r in self.reports):
            raise Torn(f"torn down before epoch {metrics['epoch']} was reported")
        super().report(metrics, checkpoint_dir, dir_name)


def _same(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if not k.endswith(("_s", "per_s"))} for h in history]


def _char_lm(tmp_path, tiny_tokens):
    from components.workloads.char_lm.loop import train_loop_per_worker

    return train_loop_per_worker, _cfg(3), tiny_tokens


def _images(tmp_path, tiny_tokens):
    import numpy as np

    from components.data.parquet import write_table
    from components.workloads.image_classifier.data import ImageSet, images_table
    from components.workloads.image_classifier.loop import train_loop_per_worker
    from components.workloads.image_classifier.params import ImageTrainParams

    rng = np.random.default_rng(0)
    for split, n in (("train", 48), ("val", 16)):
        labels = rng.integers(0, 3, n)
        imgs = (rng.integers(0, 60, (n, 8, 8, 1)) + labels[:, None, None, None] * 60).astype(np.uint8)
        write_table(tmp_path / f"{split}.parquet", images_table(ImageSet(imgs, labels, ["a", "b", "c"]),
                                                                np.full(n, split)))
    data = {"train_uri": str(tmp_path / "train.parquet"), "val_uri": str(tmp_path / "val.parquet"), "n_train": 48,
            "n_val": 16, "shape": [1, 8, 8], "n_classes": 3, "mean": [90.0], "std": [60.0], "flip": True,
            "crop": True, "tta": False}
    tp = ImageTrainParams().model_dump() | {"arch": "simplenet", "epochs": 3, "steps_per_epoch": 4, "bs": 8,
                                            "dropout": 0.2, "num_workers": 1}
    return train_loop_per_worker, tp, data


def _text(tmp_path, tiny_tokens):
    from components.workloads.text_classifier.loop import train_loop_per_worker
    from components.workloads.text_classifier.params import TextTrainParams
    from tests.unit.conftest import write_tiny_text

    data, _ = write_tiny_text(tmp_path)
    tp = TextTrainParams().model_dump() | {"epochs": 3, "steps_per_epoch": 4, "bs": 16, "lr": 0.01, "dropout": 0.1,
                                           "head_hidden": 8, "unfreeze_every": 1, "num_workers": 1}
    return train_loop_per_worker, tp, data


def _train(session: LocalSession, run: tuple, every: int, monkeypatch) -> None:
    """Run the loop with a look every `every` steps (not timed: the same steps on every run)."""
    import sys

    loop, tp, data = run
    monkeypatch.setattr(sys.modules[loop.__module__], "preemption_watch",
                        lambda tp, device: PreemptionWatch(1.0, device, every=every))
    with running_in(session):
        loop(worker_config({"train": tp, "data": data}, 1, ("val_loss", "min")))


@pytest.mark.parametrize("workload", [_char_lm, _images, _text], ids=["char_lm", "image_classifier",
                                                                       "text_classifier"])
def test_a_checkpoint_on_a_preemption_notice_resumes_mid_epoch_to_what_an_undisturbed_run_trains(
        workload, tiny_tokens, tmp_path, capsys, monkeypatch):
    run = workload(tmp_path, tiny_tokens)
    undisturbed = LocalSession()
    preempted = NoticeAt(2)  # every 3 steps: the 2nd look is after step 6, 2 steps into epoch 2
    try:
        _train(undisturbed, run, 3, monkeypatch)
        with pytest.raises(Torn):
            _train(preempted, run, 3, monkeypatch)
        said = capsys.readouterr().out
        assert "preemption notice for node(s) aaaaaaaaaaaa (rank(s) 0; no deadline given): checkpoint at step 6, " \
               "2 steps into epoch 2, written" in said, said
        notice = [r for r in preempted.reports if "preempted_at_step" in r]
        assert len(notice) == 1 and notice[0]["preempted_at_step"] == 6 and math.isnan(notice[0]["val_loss"])
        assert preempted._last.name == "epoch-0001-step-00000006"

        # the restarted worker group (no notice now) goes on from step 6, not from epoch 1
        preempted.at, preempted.tear = math.inf, False
        _train(preempted, run, 3, monkeypatch)
        assert "resumed at step 6, 2 steps into epoch 2, from the checkpoint written on a preemption notice" \
            in capsys.readouterr().out
        epochs = [{k: v for k, v in r.items() if k != "history"} for r in preempted.reports if "epoch" in r]
        assert [r["epoch"] for r in epochs] == [1, 2, 3]
        assert _same(epochs) == _same([r for r in undisturbed.reports if "epoch" in r])
    finally:
        undisturbed.close()
        preempted.close()


class Looks:
    """A runner (all the watch asks of one) that records at which of the watch's steps it was
    asked, and answers `answer`."""

    def __init__(self, watch: PreemptionWatch, answer=None) -> None:
        self.watch, self.answer, self.at = watch, answer, []

    def preemption(self):
        self.at.append(self.watch.steps)
        return self.answer


def test_the_notice_is_looked_for_every_n_steps_and_heard_once():
    w = PreemptionWatch(1.0, every=5)
    with running_in(Looks(w, NOTICE)) as r:
        heard = [s for s in range(1, 21) if w.notice() is not None]
        assert heard == [5] and r.at == [5]
        off = PreemptionWatch(0.0)
        assert all(off.notice() is None for _ in range(10)) and r.at == [5]


def test_no_look_at_an_epochs_last_step_it_waits_for_the_next_due_one():
    w = PreemptionWatch(1.0, every=2)
    with running_in(Looks(w)) as r:
        for step in range(1, 9):
            w.notice(can=step % 4 != 0)  # steps 4 and 8 end an epoch
        assert r.at == [2, 6]


def test_the_cadence_is_set_from_the_first_steps_time(monkeypatch):
    """Steps of 0.25 s and a look every 2 s: every 8 steps, counted from the first step."""
    from components.training import worker

    w = PreemptionWatch(2.0)
    monkeypatch.setattr(worker.time, "perf_counter", lambda: w.steps * 0.25)  # a clock of steps
    with running_in(Looks(w)) as r:
        for _ in range(40):
            w.notice()
        assert w.every == 8 and r.at == [16, 24, 32, 40]
