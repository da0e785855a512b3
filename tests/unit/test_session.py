"""The worker loop's runner: a plain process (LocalSession) runs, checkpoints and resumes it."""

from __future__ import annotations

import numpy as np
import pytest

from components.data.parquet import TOKEN_ROW_GROUP, write_table
from components.training.driver import worker_config
from components.training.session import LocalSession, TrainSession, TuneSession, current, running_in
from components.workloads.char_lm.data import tokens_table
from components.workloads.char_lm.loop import train_loop_per_worker
from components.workloads.char_lm.params import TrainParams


@pytest.fixture
def tiny_tokens(tmp_path):
    rng = np.random.default_rng(0)
    out = {"vocab_size": 12}
    for split, n in (("train", 6000), ("val", 1500)):
        ids = rng.integers(0, 12, n)
        write_table(tmp_path / f"{split}.parquet", tokens_table(ids), row_group_size=TOKEN_ROW_GROUP)
        out[f"{split}_uri"], out[f"n_{split}"] = str(tmp_path / f"{split}.parquet"), n
    return out


def _cfg(epochs: int) -> dict:
    return TrainParams(epochs=epochs, steps_per_epoch=4, bs=4, n_hidden=16, val_bptt=32).model_dump()


def test_a_plain_process_trains_checkpoints_and_resumes_the_loop(tiny_tokens):
    local = LocalSession()
    try:
        with running_in(local):
            train_loop_per_worker(worker_config({"train": _cfg(1), "data": tiny_tokens}, 1, None))
            assert [r["epoch"] for r in local.reports] == [1]
            # started again with one more epoch: it goes on from the kept checkpoint
            train_loop_per_worker(worker_config({"train": _cfg(2), "data": tiny_tokens}, 1, None))
        assert [r["epoch"] for r in local.reports] == [1, 2]
        assert local.reports[1]["history"][0] == local.reports[0]  # the first report after a resume replays
    finally:
        local.close()
    assert isinstance(current(), TrainSession)  # the block's session is gone after it


def test_one_rank_runners_refuse_to_wrap_ddp():
    for s in (LocalSession(), TuneSession()):
        with pytest.raises(RuntimeError, match="one rank"):
            s.prepare_model(None)
