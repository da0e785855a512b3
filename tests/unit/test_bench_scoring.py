"""The benchmark's one scoring function: every val character scored once, both model kinds."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from components.workloads.char_lm.model import CharLM, stream_loss

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("char_lm_vs_gpt", BENCH / "char_lm_vs_gpt.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Bigram(torch.nn.Module):
    """Logits depend on the current character only: any window must give the same score."""

    def __init__(self, v):
        super().__init__()
        self.table = torch.nn.Embedding(v, v)

    def forward(self, idx):
        return self.table(idx)


def test_sliding_window_scores_each_val_character_once(bench):
    torch.manual_seed(0)
    seq = torch.randint(0, 11, (64 + 1000 + 7,))
    m = Bigram(11)
    expect = F.cross_entropy(m(seq[63:-1]), seq[64:]).item()  # every val target once
    assert bench.score_val(m, seq, 64) == pytest.approx(expect, rel=1e-5)


def test_recurrent_scoring_carries_state_from_the_context(bench):
    torch.manual_seed(0)
    m = CharLM(11, n_fac=4, n_hidden=8).eval()
    seq = torch.randint(0, 11, (64 + 700,))
    total, count = stream_loss(m, seq.view(-1, 1), bptt=100)  # one stream, all targets
    ctx_total, ctx_count = stream_loss(m, seq[:64].view(-1, 1), bptt=100)  # targets 1..63: context only
    assert count - ctx_count == 700
    got = bench.score_val(m, seq, 64)
    assert got == pytest.approx((total - ctx_total) / 700, rel=1e-4)
