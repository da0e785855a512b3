import numpy as np
import pytest
import torch

from components.workloads.char_lm.lr_find import lr_find, suggest
from components.workloads.char_lm.params import TrainParams


def test_suggest_is_a_tenth_of_the_minimum():
    lrs = list(np.logspace(-5, 0, 50))
    losses = [4.0 - 2.0 * np.exp(-((np.log10(lr) + 1.5) ** 2)) for lr in lrs]  # minimum near 10^-1.5
    suggested, steepest = suggest(lrs, losses)
    assert suggested == pytest.approx(lrs[int(np.argmin(losses))] / 10)
    assert steepest < lrs[int(np.argmin(losses))]
    with pytest.raises(ValueError, match="stopped after 2 steps"):
        suggest(lrs[:2], losses[:2])


def test_sweep_is_exponential_and_stops_when_the_loss_blows_up():
    torch.manual_seed(0)
    streams = torch.randint(1, 20, (4000, 8))
    cfg = TrainParams(n_hidden=16, n_fac=8, bs=8, bptt=16, clip=None).model_dump()
    res = lr_find(streams, 20, cfg, start_lr=1e-4, end_lr=100.0, steps=120)
    ratios = np.diff(np.log(res.lrs))
    assert np.allclose(ratios, ratios[0])  # a constant factor per step
    assert len(res.lrs) < 120  # lr 100 blows the loss up before the end
    assert res.lrs[0] == pytest.approx(1e-4) and 1e-4 < res.suggested_lr < 10
