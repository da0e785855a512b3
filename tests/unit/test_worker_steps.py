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
