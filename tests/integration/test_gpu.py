"""The CUDA paths for real (marker `gpu`; they run where the machine has a GPU, CI has none):
Ray Train puts the worker on the GPU, the char-LM loop trains under bf16 autocast, and the
checkpoint written there loads on a host without one."""

from __future__ import annotations

import pytest
import torch

from components.cluster.resources import want_gpu
from components.training.checkpoints import load_state
from components.training.driver import fit, make_trainer
from components.workloads.char_lm.loop import train_loop_per_worker
from tests.integration.conftest import small_train_cfg

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_char_lm_trains_on_the_gpu_and_its_checkpoint_loads_on_a_cpu_host(ray_driver, token_data, tmp_path):
    assert want_gpu("auto", ray_driver, 1)  # `use_gpu: auto` picks the GPU when the cluster has one per worker
    cfg = small_train_cfg(epochs=3, steps_per_epoch=40, n_hidden=256, bs=64)
    result = fit(make_trainer(train_loop_per_worker, {"train": cfg, "data": token_data}, name="cuda", storage_path=str(tmp_path),
                              num_workers=1, cpus_per_worker=1, use_gpu=True, max_failures=0), 3)
    hist = result.state["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert hist[-1]["val_loss"] < hist[0]["val_loss"] < 4.0  # it learns under bf16 autocast
    ckpt = tmp_path / "cuda" / "epoch-0003"
    raw = torch.load(ckpt / "state.pt", weights_only=False)  # as written: tensors of the GPU it trained on
    assert {t.device.type for t in raw["model"].values()} == {"cuda"}
    state = load_state(ckpt)  # what evaluate / register do, on hosts without a GPU
    assert {t.device.type for t in state["model"].values()} == {"cpu"}
    assert all(v.dtype == torch.float32 for v in state["model"].values())  # autocast leaves weights fp32
