import math

import pytest

from components.training.schedules import cosine, multiplier, one_cycle, sgdr


def test_cosine_values():
    assert cosine(0.0) == pytest.approx(1.0)
    assert cosine(0.5) == pytest.approx(0.1 + 0.9 * 0.5)
    assert cosine(1.0) == pytest.approx(0.1)
    assert cosine(2.0) == pytest.approx(0.1)  # past the end: stays at the floor


def test_sgdr_restarts_at_cycle_boundaries():
    # cycles of 1, 2, 4 epochs
    assert sgdr(0.0, 1, 2, 0.0) == pytest.approx(1.0)
    assert sgdr(0.5, 1, 2, 0.0) == pytest.approx(0.5)
    assert sgdr(0.999, 1, 2, 0.0) < 0.001
    assert sgdr(1.0, 1, 2, 0.0) == pytest.approx(1.0)  # restart
    assert sgdr(2.0, 1, 2, 0.0) == pytest.approx(0.5)  # middle of the 2-epoch cycle
    assert sgdr(3.0, 1, 2, 0.0) == pytest.approx(1.0)  # restart, 4-epoch cycle
    assert sgdr(5.0, 1, 2, 0.0) == pytest.approx(0.5)
    assert sgdr(1.5, 1, 1, 0.0) == pytest.approx(0.5)  # cycle_mult 1: every epoch


def test_one_cycle_shape():
    assert one_cycle(0.0, 0.25, 25, 1e4) == pytest.approx(1 / 25)
    assert one_cycle(0.125, 0.25, 25, 1e4) == pytest.approx((1 / 25 + 1) / 2)
    assert one_cycle(0.25, 0.25, 25, 1e4) == pytest.approx(1.0)
    assert one_cycle(1.0, 0.25, 25, 1e4) == pytest.approx(1 / 25e4)
    xs = [one_cycle(i / 100, 0.25, 25, 1e4) for i in range(101)]
    peak = xs.index(max(xs))
    assert peak == 25 and all(a <= b for a, b in zip(xs[:peak], xs[1:peak + 1], strict=True))
    assert all(a >= b for a, b in zip(xs[peak:], xs[peak + 1:], strict=False))


def test_multiplier_dispatch():
    cfg = {"schedule": "sgdr", "epochs": 7, "cycle_len": 1, "cycle_mult": 2, "min_lr_frac": 0.0,
           "pct_start": 0.3, "div_factor": 10, "final_div": 100}
    assert multiplier(cfg, 1 / 7) == pytest.approx(1.0)  # epoch 1: first restart
    assert multiplier(cfg | {"schedule": "constant"}, 0.7) == 1.0
    assert multiplier(cfg | {"schedule": "onecycle"}, 0.3) == pytest.approx(1.0)
    assert multiplier(cfg | {"schedule": "cosine", "min_lr_frac": 0.0}, 1.0) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        multiplier(cfg | {"schedule": "linear"}, 0.1)
    assert not math.isnan(multiplier(cfg, 1.0))

